"""The gRPC service in-process: every RPC, both image forms, every dtype, equal to the library."""

from __future__ import annotations

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from interop.harness import inprocess_server

import warpsvc
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose
from warpsvc_api import convert
from warpsvc_api.v1 import warp_pb2 as pb
from warpsvc_api.v1 import warp_pb2_grpc

DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def make_image(shape, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random(shape), (0, 0), 2.0)
    img = (img - img.min()) / (img.max() - img.min())
    if np.dtype(dtype).kind == "u":
        return np.round(img * np.iinfo(dtype).max).astype(dtype)
    return img.astype(dtype)


@pytest.fixture(scope="module")
def server():
    with inprocess_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield warp_pb2_grpc.WarpServiceStub(channel)


TRANSFORMS = {
    "affine": AffineTransform.from_components(scale=(0.9, 1.1), rotation=0.2, shear=0.1, translation=(5, -4)),
    "homography": HomographyTransform([[0.9, 0.08, 6.0], [-0.05, 1.05, 3.0], [4e-4, -3e-4, 1.0]]),
    "polar": PolarTransform((40, 30), 28.0, (90, 50)),
    "logpolar_inverse": PolarTransform((40, 30), 28.0, (90, 50), log=True, inverse=True, cartesian_shape=(60, 80)),
    "chain": compose(AffineTransform.from_components(rotation=0.1), PolarTransform((40, 30), 28.0, (90, 50))),
}


def warp_request(image, transform, **kw) -> pb.WarpRequest:
    return pb.WarpRequest(image=convert.image_message(image), transforms=convert.transforms(transform), **kw)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_warp_raw_tensor_equals_library(stub, name, dtype):
    img = make_image((60, 80, 3), dtype, seed=11)
    t = TRANSFORMS[name]
    resp = stub.Warp(warp_request(img, t))
    out = convert.array(resp.image.tensor)
    expected = warpsvc.warp(img, t)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("options", [
    dict(interpolation=pb.INTERPOLATION_CUBIC, border=pb.BORDER_REFLECT),
    dict(interpolation=pb.INTERPOLATION_NEAREST, border=pb.BORDER_WRAP),
    dict(border=pb.BORDER_CONSTANT, border_value=7.5, intensity=pb.INTENSITY_CONSERVE),
    dict(antialias=True, border=pb.BORDER_SYMMETRIC),
    dict(interpolation=pb.INTERPOLATION_LANCZOS, border=pb.BORDER_REPLICATE,
         output_shape=pb.ImageSize(height=33, width=47)),
], ids=["cubic-reflect", "nearest-wrap", "conserve", "antialias", "lanczos-shape"])
def test_warp_options_equal_library(stub, options):
    img = make_image((60, 80), np.float32, seed=12)
    t = TRANSFORMS["homography"]
    resp = stub.Warp(warp_request(img, t, **options))
    names = {"interpolation": {1: "nearest", 2: "linear", 3: "cubic", 4: "lanczos"},
             "border": {1: "constant", 2: "replicate", 3: "reflect", 4: "symmetric", 5: "wrap"},
             "intensity": {1: "plain", 2: "conserve"}}
    kwargs = {k: names[k][v] if k in names else v for k, v in options.items() if k != "output_shape"}
    shape = (33, 47) if "output_shape" in options else None
    np.testing.assert_array_equal(convert.array(resp.image.tensor), warpsvc.warp(img, t, shape, **kwargs))


# (file extension, request dtype, channels) for every format/dtype pair the formats hold.
ENCODED = [(".png", np.uint8, 3), (".png", np.uint16, 1), (".png", np.uint8, 4), (".tiff", np.uint8, 3),
           (".tiff", np.uint16, 3), (".tiff", np.float32, 1), (".tiff", np.float64, 3), (".jpg", np.uint8, 3)]


@pytest.mark.parametrize("ext,dtype,channels", ENCODED, ids=lambda v: str(v))
def test_warp_encoded_input_equals_library_on_decoded(stub, ext, dtype, channels):
    img = make_image((60, 80, channels) if channels > 1 else (60, 80), dtype, seed=13)
    data = cv2.imencode(ext, img)[1].tobytes()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.dtype == np.dtype(dtype)
    t = TRANSFORMS["affine"]
    resp = stub.Warp(pb.WarpRequest(image=pb.Image(encoded=pb.EncodedImage(data=data)),
                                    transforms=convert.transforms(t)))
    np.testing.assert_array_equal(convert.array(resp.image.tensor), warpsvc.warp(decoded, t))


@pytest.mark.parametrize("form,ext,dtype", [
    (pb.RESPONSE_FORM_PNG, ".png", np.uint8), (pb.RESPONSE_FORM_PNG, ".png", np.uint16),
    (pb.RESPONSE_FORM_TIFF, ".tiff", np.float32), (pb.RESPONSE_FORM_TIFF, ".tiff", np.float64),
    (pb.RESPONSE_FORM_JPEG, ".jpg", np.uint8),
], ids=["png8", "png16", "tiff32f", "tiff64f", "jpeg"])
def test_warp_encoded_response(stub, form, ext, dtype):
    img = make_image((60, 80, 3), dtype, seed=14)
    t = TRANSFORMS["polar"]
    resp = stub.Warp(warp_request(img, t, response_form=form, jpeg_quality=90))
    assert resp.image.WhichOneof("kind") == "encoded"
    assert resp.image.encoded.format == {".png": pb.IMAGE_FORMAT_PNG, ".jpg": pb.IMAGE_FORMAT_JPEG,
                                         ".tiff": pb.IMAGE_FORMAT_TIFF}[ext]
    got = cv2.imdecode(np.frombuffer(resp.image.encoded.data, np.uint8), cv2.IMREAD_UNCHANGED)
    expected = warpsvc.warp(img, t)
    if ext == ".jpg":
        assert got.shape == expected.shape
        ref = cv2.imencode(".jpg", expected, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        assert resp.image.encoded.data == ref
    else:
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype,enum", [(np.float64, pb.DTYPE_UNSPECIFIED), (np.float64, pb.DTYPE_FLOAT64),
                                        (np.float32, pb.DTYPE_FLOAT32)], ids=["default", "f64", "f32"])
@pytest.mark.parametrize("name", TRANSFORMS)
def test_jacobian_determinant_equals_library(stub, name, dtype, enum):
    t = TRANSFORMS[name]
    resp = stub.JacobianDeterminant(pb.JacobianDeterminantRequest(
        transforms=convert.transforms(t), output_shape=pb.ImageSize(height=45, width=70), dtype=enum))
    det = convert.array(resp.determinant)
    expected = warpsvc.jacobian_determinant(t, (45, 70), dtype=dtype)
    assert det.dtype == expected.dtype
    np.testing.assert_array_equal(det, expected)


def test_health_and_reflection(server):
    target = f"127.0.0.1:{server.port}"
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "warpsvc.v1.WarpService"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"warpsvc.v1.WarpService", "grpc.health.v1.Health"} <= services
        from google.protobuf.descriptor_pool import DescriptorPool

        svc = DescriptorPool(db).FindServiceByName("warpsvc.v1.WarpService")
        assert [m.name for m in svc.methods] == ["Warp", "JacobianDeterminant", "Align", "AlignStream"]


def test_health_not_serving_while_draining():
    with inprocess_server() as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        srv.health.enter_graceful_shutdown()
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_access_log_one_line_per_call(stub, caplog):
    import json

    img = make_image((20, 30), np.uint8, seed=15)
    with caplog.at_level("INFO", logger="warpsvc.access"):
        stub.Warp(warp_request(img, TRANSFORMS["affine"]))
        with pytest.raises(grpc.RpcError):
            stub.Warp(pb.WarpRequest())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "warpsvc.access"]
    assert [(d["method"], d["status"]) for d in lines] == [
        ("/warpsvc.v1.WarpService/Warp", "OK"), ("/warpsvc.v1.WarpService/Warp", "INVALID_ARGUMENT")]
    assert lines[0]["in_px"] == 600 and lines[0]["out_px"] == 600 and lines[0]["ms"] >= 0
