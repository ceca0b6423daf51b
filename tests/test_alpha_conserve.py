"""A conserving warp of a file with an alpha channel keeps alpha a value (coverage), not a
density (:mod:`warpsvc_api.alpha_warp`; found by a new-user test: alpha up to 2229 in float TIFFs
declaring the 4th channel alpha). Oracle: the library's own warps of the colour channels
(``intensity="conserve"``) and of the alpha channel (``intensity="plain"``), bit for bit; a
4-channel *array* (no file to say what channel 4 is) keeps the library's meaning."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import tifffile
from interop.harness import inprocess_server
from PIL import Image
from test_batch_helpers import read_manifest, run_batch
from warpsvc_client import WarpClient

import warpsvc
from warpsvc_api.image_probe import probe_image

RNG = np.random.default_rng(4)
RGBA = cv2.GaussianBlur(RNG.integers(0, 256, (70, 90, 4), dtype=np.uint8), (0, 0), 1.2)
RGBA[..., 3] = np.linspace(40, 250, 90, dtype=np.uint8)[None, :]
SHRINK = warpsvc.AffineTransform.from_components(scale=(0.55, 0.6), rotation=0.2, translation=(9, 4))


def _expected(img, **kw):
    colour = warpsvc.warp(np.ascontiguousarray(img[..., :3]), SHRINK, intensity="conserve", **kw)
    alpha = warpsvc.warp(np.ascontiguousarray(img[..., 3]), SHRINK, **kw)
    return colour, alpha


def _png(arr) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def test_the_probe_says_which_files_carry_alpha():
    assert probe_image(_png(RGBA)).alpha and not probe_image(_png(RGBA[..., :3])).alpha
    la = io.BytesIO()
    Image.fromarray(RGBA[..., :2], "LA").save(la, "PNG")
    assert probe_image(la.getvalue()).alpha  # grey + alpha: OpenCV decodes BGRA
    _, tif = cv2.imencode(".tif", RGBA)  # OpenCV's RGBA TIFF declares no ExtraSamples
    assert probe_image(tif.tobytes()).alpha
    for extra, alpha in ((2, True), (1, True), (0, False)):  # unassociated, associated, unspecified
        buf = io.BytesIO()
        tifffile.imwrite(buf, RGBA, photometric="rgb", extrasamples=[extra])
        assert probe_image(buf.getvalue()).alpha is alpha, extra


@pytest.mark.parametrize("antialias", [False, True])
def test_the_server_keeps_a_files_alpha_as_values_under_conserve(antialias):
    colour, alpha = _expected(RGBA, antialias=antialias)
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        out = client.warp(_png(RGBA), SHRINK, intensity="conserve", antialias=antialias)
        np.testing.assert_array_equal(out[..., :3], colour)
        np.testing.assert_array_equal(out[..., 3], alpha.astype(out.dtype))
        assert out[..., 3].max() <= 255 and colour.max() > 255  # colour concentrated, alpha not
        # the same pixels as an array: four intensities, as the library has always warped them
        arr = client.warp(RGBA, SHRINK, intensity="conserve", antialias=antialias)
        np.testing.assert_array_equal(arr, warpsvc.warp(RGBA, SHRINK, intensity="conserve", antialias=antialias))
        plain = client.warp(_png(RGBA), SHRINK)  # plain warps: one call, every channel alike
        np.testing.assert_array_equal(plain, warpsvc.warp(RGBA, SHRINK))


def test_the_batch_keeps_alpha_as_values_locally_and_writes_it_as_declared(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(_png(RGBA))
    m = SHRINK.matrix
    res = run_batch("warp", src, out, "--matrix", ",".join(str(v) for v in m[:2].ravel()), "--intensity", "conserve",
                    "--no-report")
    assert res.returncode == 0, res.stderr
    [rec] = read_manifest(out / "manifest.jsonl")
    got = tifffile.imread(out / rec["output"])  # RGBA float32, ExtraSamples = unassociated alpha
    colour, alpha = _expected(RGBA)
    np.testing.assert_array_equal(got[..., :3], colour[..., ::-1])  # BGR -> RGB in the file
    np.testing.assert_array_equal(got[..., 3], alpha.astype(np.float32))
    with tifffile.TiffFile(out / rec["output"]) as tf:
        assert tf.pages[0].extrasamples == (2,)
