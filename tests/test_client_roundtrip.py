"""WarpClient mirrors the library: same signatures, numpy in and out, every dtype, both forms."""

from __future__ import annotations

import inspect

import cv2
import numpy as np
import pytest
from interop.harness import inprocess_server
from warpsvc_client import WarpClient

import warpsvc
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose

DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
T = compose(HomographyTransform([[1.02, 0.04, 3.0], [-0.02, 0.97, 1.0], [1e-4, 2e-4, 1.0]]),
            PolarTransform((35, 25), 30.0, (72, 40), log=True))


@pytest.fixture(scope="module")
def client():
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}") as c:
        yield c


def image(dtype, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (50, 70, channels) if channels > 1 else (50, 70)
    v = rng.random(shape)
    return np.round(v * np.iinfo(dtype).max).astype(dtype) if np.dtype(dtype).kind == "u" else v.astype(dtype)


def test_signatures_mirror_the_library():
    for name in ("warp", "jacobian_determinant", "align"):
        lib = inspect.signature(getattr(warpsvc, name)).parameters
        remote = inspect.signature(getattr(WarpClient, name)).parameters
        shared = [p for p in lib if p in remote]
        # every library parameter the transport carries exists with the same default
        missing = set(lib) - set(remote) - {"should_stop", "options", "poll", "limits"}
        assert not missing, f"{name} lacks {missing}"
        for p in shared:
            assert lib[p].default == remote[p].default or p in ("max_iterations", "tolerance"), (name, p)


@pytest.mark.parametrize("channels", [1, 3, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_warp_every_dtype_raw(client, dtype, channels):
    img = image(dtype, channels, seed=51)
    for kwargs in (dict(), dict(intensity="conserve", border="wrap"), dict(antialias=True)):
        np.testing.assert_array_equal(client.warp(img, T, **kwargs), warpsvc.warp(img, T, **kwargs))


@pytest.mark.parametrize("dtype,ext,form", [(np.uint8, ".png", "png"), (np.uint16, ".png", "png"),
                                            (np.uint16, ".tiff", "tiff"), (np.float32, ".tiff", "tiff"),
                                            (np.float64, ".tiff", "tiff")])
def test_warp_encoded_both_ways(client, dtype, ext, form):
    img = image(dtype, 3, seed=52)
    data = cv2.imencode(ext, img)[1].tobytes()
    affine = AffineTransform.from_components(rotation=0.05, translation=(2, 1))
    got = client.warp(data, affine, (40, 60), response_form=form)
    assert isinstance(got, bytes)
    decoded = cv2.imdecode(np.frombuffer(got, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded, warpsvc.warp(img, affine, (40, 60)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_jacobian_determinant(client, dtype):
    np.testing.assert_array_equal(client.jacobian_determinant(T, (72, 40), dtype=dtype),
                                  warpsvc.jacobian_determinant(T, (72, 40), dtype=dtype))
