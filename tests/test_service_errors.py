"""Bad requests -> exact status codes, with the offending field named (google.rpc.BadRequest)."""

from __future__ import annotations

import struct
import threading

import cv2
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from interop.harness import inprocess_server

import warpsvc
from warpsvc import AffineTransform, PolarTransform
from warpsvc_api import convert
from warpsvc_api.v1 import warp_pb2 as pb
from warpsvc_api.v1 import warp_pb2_grpc

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
IMG = (np.arange(40 * 50 * 3) % 251).astype(np.uint8).reshape(40, 50, 3)
SHIFT = convert.transforms(AffineTransform([[1, 0, 2.0], [0, 1, 1.0]]))
POLAR = convert.transforms(PolarTransform((25, 20), 18.0, (60, 30)))
# Limits of the server these tests run against (small, to exercise them cheaply).
LIMITS = dict(max_input_pixels=100 * 100, max_output_pixels=120 * 120, max_message_bytes=1 << 20)


def _tensor(**kw) -> pb.Image:
    base = dict(shape=[40, 50, 3], dtype=pb.DTYPE_UINT8, data=IMG.tobytes())
    return pb.Image(tensor=pb.Tensor(**{**base, **kw}))


def _encoded(data: bytes, fmt=pb.IMAGE_FORMAT_UNSPECIFIED) -> pb.Image:
    return pb.Image(encoded=pb.EncodedImage(format=fmt, data=data))


def _png_claiming(h: int, w: int) -> bytes:
    """A real PNG whose IHDR claims h x w (a decompression bomb's header)."""
    data = bytearray(cv2.imencode(".png", IMG)[1].tobytes())
    data[16:24] = struct.pack(">II", w, h)
    return bytes(data)


def _tiff_claiming(h: int, w: int) -> bytes:
    """A little-endian TIFF header with one IFD: ImageWidth, ImageLength (LONG)."""
    entries = struct.pack("<HHII", 256, 4, 1, w) + struct.pack("<HHII", 257, 4, 1, h)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 2) + entries + b"\x00" * 4


def _affine(*values):
    return [pb.Transform(affine=pb.AffineTransform(matrix=values))]


def _polar(**kw):
    base = dict(center=pb.Point(x=25, y=20), max_radius=18.0, polar_shape=pb.ImageSize(height=60, width=30))
    return [pb.Transform(polar=pb.PolarTransform(**{**base, **kw}))]


def warp(**kw):
    return "Warp", pb.WarpRequest(**{"image": _tensor(), "transforms": SHIFT, **kw})


def det(**kw):
    return "JacobianDeterminant", pb.JacobianDeterminantRequest(
        **{"transforms": POLAR, "output_shape": pb.ImageSize(height=60, width=30), **kw})


# (id, (method, request), status code, field named in the message and the BadRequest detail)
CASES = [
    ("no-image", warp(image=None), INVALID, "image"),
    ("dtype-unset", warp(image=_tensor(dtype=pb.DTYPE_UNSPECIFIED)), INVALID, "image.tensor.dtype"),
    ("dtype-unknown", warp(image=_tensor(dtype=17)), INVALID, "image.tensor.dtype"),
    ("shape-1d", warp(image=_tensor(shape=[6000])), INVALID, "image.tensor.shape"),
    ("shape-4d", warp(image=_tensor(shape=[40, 50, 3, 1])), INVALID, "image.tensor.shape"),
    ("shape-negative", warp(image=_tensor(shape=[-40, -50, 3])), INVALID, "image.tensor.shape"),
    ("data-short", warp(image=_tensor(data=IMG.tobytes()[:-1])), INVALID, "image.tensor.data"),
    ("data-not-image", warp(image=_encoded(b"GIF89a" + b"\x00" * 20)), INVALID, "image.encoded.data"),
    ("format-mismatch", warp(image=_encoded(cv2.imencode(".png", IMG)[1].tobytes(), pb.IMAGE_FORMAT_TIFF)),
     INVALID, "image.encoded.format"),
    ("png-truncated", warp(image=_encoded(cv2.imencode(".png", IMG)[1].tobytes()[:60])), INVALID,
     "image.encoded.data"),
    ("png-header-only", warp(image=_encoded(b"\x89PNG\r\n\x1a\n")), INVALID, "image.encoded.data"),
    ("png-bomb", warp(image=_encoded(_png_claiming(100_000, 100_000))), EXHAUSTED, "image.encoded"),
    ("tiff-bomb", warp(image=_encoded(_tiff_claiming(50_000, 50_000))), EXHAUSTED, "image.encoded.data"),
    ("input-too-large", warp(image=pb.Image(tensor=pb.Tensor(shape=[101, 100], dtype=pb.DTYPE_UINT8,
                                                             data=bytes(10100)))), EXHAUSTED, "image"),
    ("no-transforms", warp(transforms=[]), INVALID, "transforms"),
    ("transform-unset", warp(transforms=[pb.Transform()]), INVALID, "transforms[0]"),
    ("affine-7-values", warp(transforms=_affine(*range(7))), INVALID, "transforms[0].affine.matrix"),
    ("affine-singular", warp(transforms=_affine(1, 2, 0, 2, 4, 0)), INVALID, "transforms[0].affine.matrix"),
    ("affine-last-row", warp(transforms=_affine(1, 0, 0, 0, 1, 0, 0, 0, 2)), INVALID,
     "transforms[0].affine.matrix"),
    ("homography-nan", warp(transforms=SHIFT + [pb.Transform(homography=pb.HomographyTransform(
        matrix=[1, 0, 0, 0, 1, 0, 0, 0, float("nan")]))]), INVALID, "transforms[1].homography.matrix"),
    ("homography-6-values", warp(transforms=[pb.Transform(homography=pb.HomographyTransform(
        matrix=[1, 0, 0, 0, 1, 0]))]), INVALID, "transforms[0].homography.matrix"),
    ("polar-radius-0", warp(transforms=SHIFT + _polar(max_radius=0)), INVALID, "transforms[1].polar.max_radius"),
    ("logpolar-radius-1", warp(transforms=_polar(max_radius=1.0, log=True)), INVALID,
     "transforms[0].polar.max_radius"),
    ("polar-shape-unset", warp(transforms=_polar(polar_shape=None)), INVALID, "transforms[0].polar.polar_shape"),
    ("polar-centre-inf", warp(transforms=_polar(center=pb.Point(x=float("inf")))), INVALID,
     "transforms[0].polar.center"),
    ("output-shape-zero", warp(output_shape=pb.ImageSize(height=0, width=5)), INVALID, "output_shape"),
    ("output-too-large", warp(output_shape=pb.ImageSize(height=121, width=120)), EXHAUSTED, "output_shape"),
    ("output-over-message-limit", warp(image=_tensor(shape=[40, 50, 10], dtype=pb.DTYPE_FLOAT64,
                                                     data=bytes(40 * 50 * 10 * 8)),
                                       output_shape=pb.ImageSize(height=120, width=120)),
     EXHAUSTED, "output_shape"),
    ("default-output-too-large", warp(transforms=_polar(polar_shape=pb.ImageSize(height=200, width=200))),
     EXHAUSTED, "output_shape"),
    ("interpolation-unknown", warp(interpolation=99), INVALID, "interpolation"),
    ("border-unknown", warp(border=42), INVALID, "border"),
    ("intensity-unknown", warp(intensity=5), INVALID, "intensity"),
    ("border-value-inf", warp(border_value=float("inf")), INVALID, "border_value"),
    ("response-form-unknown", warp(response_form=9), INVALID, "response_form"),
    ("png-of-float", warp(intensity=pb.INTENSITY_CONSERVE, response_form=pb.RESPONSE_FORM_PNG), INVALID,
     "response_form"),
    ("jpeg-of-4-channels", warp(image=_tensor(shape=[40, 50, 3], data=IMG.tobytes()),
                                output_shape=pb.ImageSize(height=10, width=10), response_form=pb.RESPONSE_FORM_JPEG,
                                jpeg_quality=101), INVALID, "jpeg_quality"),
    ("det-no-shape", det(output_shape=None), INVALID, "output_shape"),
    ("det-dtype-uint8", det(dtype=pb.DTYPE_UINT8), INVALID, "dtype"),
    ("det-no-transforms", det(transforms=[]), INVALID, "transforms"),
    ("det-too-large", det(output_shape=pb.ImageSize(height=1000, width=1000)), EXHAUSTED, "output_shape"),
    ("det-bad-polar", det(transforms=_polar(polar_shape=pb.ImageSize(height=-3, width=2))), INVALID,
     "transforms[0].polar.polar_shape"),
]


@pytest.fixture(scope="module")
def stub():
    with inprocess_server(**LIMITS) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        yield warp_pb2_grpc.WarpServiceStub(channel)


def _violation(err: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status"
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return bad.field_violations[0].field
    return None


@pytest.mark.parametrize("call,code,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request(stub, call, code, field):
    method, request = call
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=10)
    err = info.value
    assert err.code() == code, err.details()
    assert err.details().startswith(field + ":"), err.details()
    assert _violation(err) == field


def test_message_over_limit_is_resource_exhausted(stub):
    big = np.zeros((800, 800, 3), np.uint8)  # 1.9 MB > the 1 MiB limit of this server
    with pytest.raises(grpc.RpcError) as info:
        stub.Warp(pb.WarpRequest(image=convert.image_message(big), transforms=SHIFT), timeout=10)
    assert info.value.code() == EXHAUSTED


def test_concurrent_rpc_cap_answers_resource_exhausted(monkeypatch):
    release = threading.Event()
    entered = threading.Event()
    real = warpsvc.warp

    def slow_warp(*args, **kwargs):
        entered.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(warpsvc, "warp", slow_warp)
    with inprocess_server(max_concurrent_rpcs=1, threads=2) as srv, \
            grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = warp_pb2_grpc.WarpServiceStub(channel)
        request = pb.WarpRequest(image=_tensor(), transforms=SHIFT)
        first = stub.Warp.future(request, timeout=10)
        assert entered.wait(10)
        with pytest.raises(grpc.RpcError) as info:
            stub.Warp(request, timeout=10)
        assert info.value.code() == EXHAUSTED
        release.set()
        assert first.result().image.tensor.shape == [40, 50, 3]


def test_unexpected_exception_is_internal_not_unknown(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(warpsvc, "warp", broken)
    with inprocess_server() as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        with pytest.raises(grpc.RpcError) as info:
            warp_pb2_grpc.WarpServiceStub(channel).Warp(pb.WarpRequest(image=_tensor(), transforms=SHIFT), timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "bug" not in info.value.details()
