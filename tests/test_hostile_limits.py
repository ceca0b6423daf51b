"""Result sizes, request lists and empty files against a real server on loopback: each refused
before the work with the field it concerns, none failing in gRPC's send after it (found by a
hostile-client test with @grpc/grpc-js; see docs/service.md's limits table)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hostile_server import affine, hostile_server, tensor
from test_batch_helpers import read_manifest, run_batch
from test_service_errors import LIMITS, SHIFT, _tensor

from warpsvc.v1 import warp_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEADLINE_S = 20.0


@pytest.fixture(scope="module")
def h():
    with hostile_server("--max-input-pixels", str(LIMITS["max_input_pixels"]),
                        "--max-output-pixels", str(LIMITS["max_output_pixels"]),
                        "--max-message-bytes", str(LIMITS["max_message_bytes"])) as srv:
        yield srv


def refused(srv, method: str, request, field: str, codes):
    """The call must be refused with one of ``codes``; ``field`` must prefix the message and the
    BadRequest field violation (the checks of test_hostile_inputs' ``Hostile.refused``)."""
    out = srv.call(method, request, DEADLINE_S)
    assert out.code in codes, (out.code, out.details)
    assert out.details.startswith(field), out.details
    assert out.field is not None and out.field.startswith(field), (out.field, out.details)
    return out


def answered(srv, method: str, request) -> None:
    out = srv.call(method, request, DEADLINE_S)
    assert out.code is grpc.StatusCode.OK, (out.code, out.details)


def _warp(**kw) -> pb.WarpRequest:
    return pb.WarpRequest(**{"image": _tensor(), "transforms": SHIFT, **kw})


def _det(shape=(60, 30), **kw) -> pb.JacobianDeterminantRequest:
    return pb.JacobianDeterminantRequest(
        **{"transforms": SHIFT, "output_shape": pb.ImageSize(height=shape[0], width=shape[1]), **kw})


def test_results_at_the_message_limit_are_refused_before_computing(h):
    """A result whose bytes fit the message limit but not with the message's framing failed in
    gRPC's send ("Sent message larger than max (67108888 vs. 67108864)", no field) after the
    work; found by a hostile-client test. Now refused up front, naming ``output_shape``: a raw
    tensor of 114 x 126 x 73 uint8 = the limit - 4 bytes; one channel fewer is answered."""
    limit = LIMITS["max_message_bytes"]
    assert 114 * 126 * 73 == limit - 4 and 114 * 126 <= LIMITS["max_output_pixels"]
    shape, one = pb.ImageSize(height=114, width=126), [affine(1, 0, 0, 0, 1, 0)]
    err = refused(h, "Warp", _warp(image=tensor(np.zeros((1, 1, 73), np.uint8)), transforms=one, output_shape=shape),
                  "output_shape", {EXHAUSTED})
    assert "message limit" in err.details
    answered(h, "Warp", _warp(image=tensor(np.zeros((1, 1, 72), np.uint8)), transforms=one, output_shape=shape))


def test_an_empty_file_is_called_empty(h, tmp_path):
    """A zero-byte file was "not a PNG, JPEG or TIFF file (unrecognised signature)" (found by a
    new-user test); now "an empty file (0 bytes)", on the server and in warpsvc-batch alike."""
    err = refused(h, "Warp", _warp(image=pb.Image(encoded=pb.EncodedImage(data=b""))), "image.encoded.data", {INVALID})
    assert "an empty file (0 bytes)" in err.details
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "zero.png").write_bytes(b"")
    res = run_batch("warp", tmp_path / "in", tmp_path / "out", "--matrix", "1,0,0,0,1,0", "--no-report")
    [rec] = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert res.returncode == 1 and "an empty file (0 bytes)" in rec["error"], rec["error"]


def test_transform_lists_are_capped(h):
    """50 000 adjacent matrices (4 MB) took 3.3 s of composing, deadline unheeded, since the
    chain limit counts a run of matrices as one step (found by a hostile-client test): more than
    ``MAX_TRANSFORM_MESSAGES`` elements are refused naming ``transforms``; the cap itself works."""
    from warpsvc_api.convert import MAX_TRANSFORM_MESSAGES

    step = pb.Transform(homography=pb.HomographyTransform(matrix=[1, 0, 0.1, 0, 1, 0, 0, 0, 1]))
    for rpc, make in (("Warp", lambda ts: _warp(transforms=ts)), ("JacobianDeterminant", lambda ts: _det(transforms=ts))):
        err = refused(h, rpc, make([step] * (MAX_TRANSFORM_MESSAGES + 1)), "transforms", {EXHAUSTED})
        assert str(MAX_TRANSFORM_MESSAGES) in err.details
        answered(h, rpc, make([step] * MAX_TRANSFORM_MESSAGES))


SMALL_MESSAGE = 200_000  # bytes; with 300 x 300 output pixels (4-channel float64: 2.9 MB raw)


@pytest.fixture(scope="module")
def small_server():
    with hostile_server("--max-message-bytes", str(SMALL_MESSAGE), "--max-output-pixels", str(300 * 300)) as srv:
        yield srv


def test_maps_and_encoded_results_over_the_message_limit_are_refused_naming_a_field(small_server):
    """Found by a hostile-client test: a Jacobian map of the limit minus its framing failed in
    gRPC's send (no field), and its refusal hint named a ``response_form`` that RPC lacks; an
    encoded response had no size check at all (a 2x2 float64 input asking for a 5792x5792 TIFF
    took 35 s and 2.5 GB, then failed in the send). Now: the map refused before computing
    (``output_shape``, a hint about ``dtype``); an encoded result whose raw bytes exceed 4
    limits refused before computing (``output_shape``); one whose file exceeds the limit
    refused once encoded (``response_form``); a small one answered."""
    srv, one = small_server, [affine(1, 0, 0, 0, 1, 0)]
    n = (SMALL_MESSAGE - 100) // 8  # a float64 map whose bytes fit, but not with the framing
    out = srv.call("JacobianDeterminant", pb.JacobianDeterminantRequest(
        transforms=SHIFT, output_shape=pb.ImageSize(height=1, width=n)), 20.0)
    assert out.code is EXHAUSTED and out.field == "output_shape", (out.code, out.details, out.field)
    assert "dtype float32" in out.details and "response_form" not in out.details
    half = srv.call("JacobianDeterminant", pb.JacobianDeterminantRequest(
        transforms=SHIFT, output_shape=pb.ImageSize(height=1, width=n), dtype=pb.DTYPE_FLOAT32), 20.0)
    assert half.code is grpc.StatusCode.OK, (half.code, half.details)
    tiny = tensor(np.full((2, 2, 4), 7.0))  # float64 RGBA
    out = srv.call("Warp", _warp(image=tiny, transforms=[affine(150, 0, 0, 0, 150, 0)],
                                 output_shape=pb.ImageSize(height=300, width=300),
                                 response_form=pb.RESPONSE_FORM_TIFF), 20.0)
    assert out.code is EXHAUSTED and out.field == "output_shape", (out.code, out.details, out.field)
    assert out.elapsed < 2.0, out.elapsed  # refused before computing
    noise = np.random.default_rng(0).integers(0, 256, (120, 120, 4), np.uint8)  # incompressible
    request = _warp(image=tensor(noise), transforms=one, intensity=pb.INTENSITY_CONSERVE,
                    response_form=pb.RESPONSE_FORM_TIFF)  # 120 x 120 x 4 float32: 230 KB raw and in TIFF
    out = srv.call("Warp", request, 20.0)
    assert out.code is EXHAUSTED and out.field == "response_form", (out.code, out.details, out.field)
    small = srv.call("Warp", _warp(image=tensor(noise[:60, :60]), transforms=one, intensity=pb.INTENSITY_CONSERVE,
                                   response_form=pb.RESPONSE_FORM_TIFF), 20.0)
    assert small.code is grpc.StatusCode.OK, (small.code, small.details)
