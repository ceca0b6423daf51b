"""Hostile input at the gRPC boundary, against the server the way a user starts it (``warpsvc serve``
as a subprocess, small limits so every limit is cheap to hit).

A fixed corpus (this file's ``CORPUS`` plus ``test_service_errors.CASES``) and property-based cases
(hypothesis, ``derandomize=True``: the same cases on every run) send corrupt and truncated
PNG/JPEG/TIFF, decompression-bomb headers, tensors whose bytes do not match shape x dtype,
negative/zero/huge shapes, NaN/Inf/singular/huge matrices, bad polar radii, out-of-range enum
integers written as raw protobuf, empty and garbage messages, messages over the size limit, absurd
output shapes and alignments whose initial warp has no overlap. Every refusal must be
INVALID_ARGUMENT / RESOURCE_EXHAUSTED / OUT_OF_RANGE, arrive before its deadline and name the
field (message prefix and ``google.rpc.BadRequest`` detail); after each group the server must
still be alive and answer a valid request; at the end its peak resident memory (VmHWM from
/proc) must stay bounded. ``-s`` prints the case count and the memory figures.
"""

from __future__ import annotations

import struct

import cv2
import grpc
import numpy as np
import pytest
from hostile_server import (
    CLIENT_ERRORS,
    HealthWatch,
    affine,
    deflate_tiff,
    encoded,
    hostile_server,
    polar_chain,
    proc_status,
    progressive_jpeg,
    tensor,
    violation,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from interop.harness import ServerProcess, wait_serving
from test_service_errors import CASES as ERROR_TABLE
from test_service_errors import IMG, LIMITS, SHIFT, _encoded, _png_claiming, _tensor, _tiff_claiming
from warpsvc_client import convert

from warpsvc.v1 import warp_pb2 as pb
from warpsvc.v1 import warp_pb2_grpc
from warpsvc_api import wire

INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
REFUSALS = {INVALID, EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
DEADLINE_S = 20.0  # generous: a loaded 2-core CI machine; hostile cases are answered in milliseconds
RSS_BOUND_MIB = 256  # VmHWM may exceed the post-warm-up RSS by at most this much
MIN_CASES = 500
BASE = settings(derandomize=True, database=None, deadline=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def hypo(n: int) -> settings:
    """``n`` derandomized examples (the same cases on every run)."""
    return settings(BASE, max_examples=n)

SENT = {"cases": 0}

PNG8 = cv2.imencode(".png", IMG)[1].tobytes()
PNG16 = cv2.imencode(".png", IMG.astype(np.uint16) * 257)[1].tobytes()
JPEG = cv2.imencode(".jpg", IMG)[1].tobytes()
TIFF = cv2.imencode(".tiff", IMG)[1].tobytes()
TIFF_F32 = cv2.imencode(".tiff", IMG.astype(np.float32) / 255)[1].tobytes()
FILES = {"png8": PNG8, "png16": PNG16, "jpeg": JPEG, "tiff": TIFF, "tiff_f32": TIFF_F32}

rng = np.random.default_rng(7)
SCENE = (cv2.GaussianBlur(rng.random((80, 100)), (0, 0), 3) * 255).astype(np.float32)
TEMPLATE = np.ascontiguousarray(SCENE[10:70, 10:90])


def _jpeg_claiming(h: int, w: int) -> bytes:
    data = bytearray(JPEG)
    i = 2
    while not (0xC0 <= data[i + 1] <= 0xC3):
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


# -- raw protobuf (the protocol package's own varint and field-header writers) ---------------------
INT64_MASK = (1 << 64) - 1  # negative int32/int64 travel as 10-byte two's complement


def _field_varint(number: int, value: int) -> bytes:
    return wire.varint(number << 3) + wire.varint(value & INT64_MASK)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return wire.field_header(number, len(payload)) + payload


# -- the server ----------------------------------------------------------------------------------
class Hostile:
    """The subprocess server, a channel, and helpers that send a case and check the answer."""

    def __init__(self, srv: ServerProcess, channel: grpc.Channel):
        self.srv = srv
        self.stub = warp_pb2_grpc.WarpServiceStub(channel)
        self.raw = {m: channel.unary_unary(f"/warpsvc.v1.WarpService/{m}")
                    for m in ("Warp", "JacobianDeterminant", "Align")}

    def call(self, method: str, request):
        """Send one case; returns the response or the ``grpc.RpcError``."""
        SENT["cases"] += 1
        fn = self.raw[method] if isinstance(request, bytes) else getattr(self.stub, method)
        try:
            return fn(request, timeout=DEADLINE_S)
        except grpc.RpcError as err:
            assert err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, f"{method}: no answer within {DEADLINE_S} s"
            assert self.srv.proc.poll() is None, f"server died: {''.join(self.srv.stderr[-20:])}"
            return err

    def refused(self, method: str, request, field: str | None, codes=REFUSALS) -> grpc.RpcError:
        """The case must be refused with one of ``codes``; ``field`` must prefix the message and be
        (a prefix of) the BadRequest field violation."""
        err = self.call(method, request)
        assert isinstance(err, grpc.RpcError), f"{method} accepted a hostile request"
        assert err.code() in codes, (err.code(), err.details())
        if field is not None:
            assert err.details().startswith(field), err.details()
            named = violation(err)
            assert named is not None and named.startswith(field), (named, err.details())
        return err

    def alive(self) -> None:
        """A valid request right after a batch of hostile ones."""
        out = self.stub.Warp(pb.WarpRequest(image=_tensor(), transforms=SHIFT), timeout=DEADLINE_S)
        assert list(out.image.tensor.shape) == [40, 50, 3]
        assert self.srv.proc.poll() is None


@pytest.fixture(scope="module")
def server():
    args = ["--port", "0", "--max-input-pixels", str(LIMITS["max_input_pixels"]),
            "--max-output-pixels", str(LIMITS["max_output_pixels"]),
            "--max-message-bytes", str(LIMITS["max_message_bytes"])]
    with ServerProcess(*args) as srv:
        wait_serving(srv.target)
        opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(srv.target, options=opts) as channel:
            h = Hostile(srv, channel)
            for _ in range(5):  # warm up: imports, first allocations, thread pool
                h.alive()
            h.baseline = proc_status(srv.proc.pid)
            yield h


@pytest.fixture
def h(server):
    yield server
    server.alive()


# -- fixed corpus ----------------------------------------------------------------------------------
def _align(**kw) -> pb.AlignRequest:
    base = {"template": convert.image(TEMPLATE), "image": convert.image(SCENE), "model": pb.MOTION_MODEL_AFFINE}
    return pb.AlignRequest(**{**base, **kw})


def _warp(**kw) -> pb.WarpRequest:
    return pb.WarpRequest(**{"image": _tensor(), "transforms": SHIFT, **kw})


def _det(shape=(60, 30), **kw) -> pb.JacobianDeterminantRequest:
    return pb.JacobianDeterminantRequest(
        **{"transforms": SHIFT, "output_shape": pb.ImageSize(height=shape[0], width=shape[1]), **kw})


BIG = 1 << 62
CORPUS = [
    # (id, method, request, field prefix or None, codes)
    ("png-bomb-100000", "Warp", _warp(image=_encoded(_png_claiming(100_000, 100_000))), "image.encoded", {EXHAUSTED}),
    ("png-bomb-2^31", "Warp", _warp(image=_encoded(_png_claiming(2**31 - 1, 2**31 - 1))), "image.encoded",
     {EXHAUSTED}),
    ("jpeg-bomb", "Warp", _warp(image=_encoded(_jpeg_claiming(65_000, 65_000))), "image.encoded", {EXHAUSTED}),
    ("tiff-bomb", "Warp", _warp(image=_encoded(_tiff_claiming(2**32 - 1, 2**32 - 1))), "image.encoded", {EXHAUSTED, INVALID}),  # a strip OpenCV refuses: invalid file
    ("align-template-bomb", "Align", _align(template=_encoded(_png_claiming(100_000, 100_000))),
     "template.encoded", {EXHAUSTED}),
    ("align-image-bomb", "Align", _align(image=_encoded(_png_claiming(100_000, 100_000))), "image.encoded",
     {EXHAUSTED}),
    ("align-mask-bomb", "Align", _align(template_mask=_encoded(_png_claiming(100_000, 100_000))),
     "template_mask.encoded", {EXHAUSTED}),
    ("png-zero-size", "Warp", _warp(image=_encoded(_png_claiming(0, 0))), "image.encoded", {INVALID}),
    ("png-ihdr-lies", "Warp", _warp(image=_encoded(_png_claiming(30, 30))), "image.encoded", {INVALID}),
    ("tiff-header-only", "Warp", _warp(image=_encoded(_tiff_claiming(10, 10))), "image.encoded", {INVALID}),
    ("jpeg-soi-only", "Warp", _warp(image=_encoded(b"\xff\xd8\xff")), "image.encoded", {INVALID}),
    ("tensor-shape-huge", "Warp", _warp(image=_tensor(shape=[BIG, BIG, 3])), "image.tensor", {INVALID}),
    ("tensor-shape-int64-max", "Warp", _warp(image=_tensor(shape=[2**63 - 1, 2**63 - 1])), "image.tensor",
     {INVALID}),
    ("tensor-shape-int64-min", "Warp", _warp(image=_tensor(shape=[-2**63, 5])), "image.tensor.shape", {INVALID}),
    ("tensor-shape-empty", "Warp", _warp(image=_tensor(shape=[])), "image.tensor.shape", {INVALID}),
    ("tensor-zero-channels", "Warp", _warp(image=_tensor(shape=[40, 50, 0], data=b"")), "image.tensor.shape",
     {INVALID}),
    ("tensor-data-long", "Warp", _warp(image=_tensor(data=IMG.tobytes() + b"\x00")), "image.tensor.data",
     {INVALID}),
    ("tensor-data-empty", "Warp", _warp(image=_tensor(data=b"")), "image.tensor.data", {INVALID}),
    ("float64-shape-as-uint8", "Warp", _warp(image=_tensor(dtype=pb.DTYPE_FLOAT64)), "image.tensor.data",
     {INVALID}),
    ("output-2^62", "Warp", _warp(output_shape=pb.ImageSize(height=BIG, width=BIG)), "output_shape", {EXHAUSTED}),
    ("output-int64-max", "Warp", _warp(output_shape=pb.ImageSize(height=2**63 - 1, width=1)), "output_shape",
     {EXHAUSTED}),
    ("output-negative", "Warp", _warp(output_shape=pb.ImageSize(height=-1, width=-1)), "output_shape", {INVALID}),
    ("det-output-2^62", "JacobianDeterminant", _det((BIG, BIG)), "output_shape", {EXHAUSTED}),
    ("det-output-zero", "JacobianDeterminant", _det((0, 0)), "output_shape", {INVALID}),
    ("polar-default-output-huge", "Warp", _warp(transforms=[pb.Transform(polar=pb.PolarTransform(
        center=pb.Point(x=1, y=1), max_radius=5, polar_shape=pb.ImageSize(height=BIG, width=BIG)))]),
     "output_shape", {EXHAUSTED}),
    ("polar-cartesian-shape-negative", "Warp", _warp(transforms=[pb.Transform(polar=pb.PolarTransform(
        center=pb.Point(x=1, y=1), max_radius=5, polar_shape=pb.ImageSize(height=10, width=10), inverse=True,
        cartesian_shape=pb.ImageSize(height=-4, width=10)))]), "transforms[0].polar.cartesian_shape", {INVALID}),
    ("chain-of-200-singular-last", "Warp", _warp(transforms=SHIFT * 199 + [pb.Transform(affine=pb.AffineTransform(
        matrix=[0, 0, 0, 0, 0, 0]))]), "transforms[199].affine.matrix", {INVALID}),
    ("align-no-template", "Align", _align(template=None), "template", {INVALID}),
    ("align-empty-init", "Align", _align(init=[1, 0]), "init", {INVALID}),
    ("align-init-inf", "Align", _align(init=[1, 0, float("inf"), 0, 1, 0]), "init", {INVALID}),
    ("align-init-singular", "Align", _align(init=[1, 2, 0, 2, 4, 0]), "init", {INVALID}),
    ("align-levels-negative", "Align", _align(levels=-3), "levels", {INVALID}),
    ("align-max-iterations-negative", "Align", _align(max_iterations=-1), "max_iterations", {INVALID}),
    ("align-tolerance-nan", "Align", _align(tolerance=float("nan")), "tolerance", {INVALID}),
    ("align-budget-inf", "Align", _align(time_budget_seconds=float("inf")), "time_budget_seconds", {INVALID}),
    ("align-mask-shape", "Align", _align(template_mask=convert.image(np.ones((5, 5), np.uint8))), "template_mask",
     {INVALID}),
    ("align-channel-mismatch", "Align", _align(image=convert.image(np.dstack([SCENE] * 3))), "image", {INVALID}),
    ("empty-warp", "Warp", b"", "image", {INVALID}),
    ("empty-det", "JacobianDeterminant", b"", "transforms", {INVALID}),
    ("empty-align", "Align", b"", "template", {INVALID}),
    ("empty-warp-message", "Warp", pb.WarpRequest(), "image", {INVALID}),
    ("empty-det-message", "JacobianDeterminant", pb.JacobianDeterminantRequest(), "transforms", {INVALID}),
    ("empty-align-message", "Align", pb.AlignRequest(), "template", {INVALID}),
    ("over-limit-warp", "Warp", _warp(image=pb.Image(tensor=pb.Tensor(shape=[1100, 1000], dtype=pb.DTYPE_UINT8,
                                                                      data=bytes(1_100_000)))), None, {EXHAUSTED}),
    ("over-limit-align", "Align", _align(image=_encoded(bytes(2 << 20))), None, {EXHAUSTED}),
    ("over-limit-det-transforms", "JacobianDeterminant", _det(transforms=SHIFT * 30_000), None, {EXHAUSTED}),
]


@pytest.mark.parametrize("method,request_,field,codes", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_fixed_corpus(h, method, request_, field, codes):
    h.refused(method, request_, field, codes)


@pytest.mark.parametrize("call,code,field", [c[1:] for c in ERROR_TABLE], ids=[c[0] for c in ERROR_TABLE])
def test_error_table_over_the_cli_server(h, call, code, field):
    """The table of ``test_service_errors`` (run there in-process) against the subprocess server."""
    h.refused(*call, field, {code})


@pytest.mark.parametrize("init", [[1, 0, 1e4, 0, 1, 1e4], [1, 0, -500, 0, 1, 0], [1, 0, 0, 0, 1, 300],
                                  [1, 0, 0, 0, 1, 0, 0, 0.5, 1], [0.001, 0, 0, 0, 0.001, 0]],
                         ids=["far", "left", "below", "horizon", "tiny"])
def test_align_zero_overlap_is_a_result_not_an_error(h, init):
    """Documented behaviour (docs/alignment.md): an alignment that cannot converge is an OK answer
    with ``converged=false`` and a reason, never an error or a hang."""
    resp = h.call("Align", _align(init=init))
    assert isinstance(resp, pb.AlignResponse), resp
    assert not resp.converged and resp.reason != "converged", resp.reason
    assert resp.reason in {"max_iterations", "time_budget", "no_progress", "insufficient_overlap", "flat_template",
                           "degenerate_warp", "low_correlation"}


# -- property-based ----------------------------------------------------------------------------------
@hypo(70)
@given(name=st.sampled_from(sorted(FILES)), frac=st.floats(0, 1, exclude_max=True))
def test_truncated_files(h, name, frac):
    data = FILES[name]
    h.refused("Warp", _warp(image=_encoded(data[:int(len(data) * frac)])), "image.encoded", {INVALID})


@hypo(70)
@given(name=st.sampled_from(sorted(FILES)), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                          min_size=1, max_size=8),
       header=st.booleans())
def test_corrupt_files(h, name, edits, header):
    """Random byte edits (in the first 64 bytes, or anywhere): refused with the field named, or,
    when the damage still decodes (pixel data of a JPEG), answered OK; never anything else."""
    data = bytearray(FILES[name])
    for pos, value in edits:
        data[pos % (64 if header else len(data))] = value
    out = h.call("Warp", _warp(image=_encoded(bytes(data))))
    if isinstance(out, grpc.RpcError):
        assert out.code() in REFUSALS and out.details().startswith("image"), (out.code(), out.details())
        assert (violation(out) or "").startswith("image")
    else:
        assert out.image.WhichOneof("kind") == "tensor"


@hypo(40)
@given(sig=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*"]),
       tail=st.binary(max_size=300))
def test_signature_then_garbage(h, sig, tail):
    out = h.call("Warp", _warp(image=_encoded(sig + tail)))
    assert isinstance(out, grpc.RpcError) and out.code() in REFUSALS, out
    assert out.details().startswith("image.encoded"), out.details()


DIM = st.one_of(st.integers(-3, 70), st.integers(-2**63, 2**63 - 1), st.sampled_from([0, -1, 2**31, 2**62]))


@hypo(90)
@given(shape=st.lists(DIM, max_size=5), dtype=st.one_of(st.integers(0, 6), st.integers(-2**31, 2**31 - 1)),
       nbytes=st.one_of(st.integers(0, 9000), st.sampled_from([6000, 12000, 24000, 48000])),
       rpc=st.sampled_from(["Warp", "Align"]))
def test_tensor_bytes_shape_dtype(h, shape, dtype, nbytes, rpc):
    itemsize = {1: 1, 2: 2, 3: 4, 4: 8}.get(dtype)
    valid = (itemsize and len(shape) in (2, 3) and all(s > 0 for s in shape)
             and int(np.prod(shape, dtype=object)) * itemsize == nbytes)
    tensor = pb.Image(tensor=pb.Tensor(shape=shape, dtype=dtype, data=bytes(nbytes)))
    request = _warp(image=tensor) if rpc == "Warp" else _align(image=tensor)
    if valid:  # hypothesis found a consistent tensor: any answer but a crash (checked by call)
        h.call(rpc, request)
    else:
        h.refused(rpc, request, "image")


FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e308, -1e308, 1e-308]))


@hypo(60)
@given(kind=st.sampled_from(["affine", "homography"]), values=st.lists(st.floats(-10, 10), min_size=9, max_size=9),
       bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]), where=st.integers(0, 8),
       rpc=st.sampled_from(["Warp", "JacobianDeterminant"]), position=st.integers(0, 1))
def test_non_finite_matrices(h, kind, values, bad, where, rpc, position):
    n = 6 if kind == "affine" else 9
    values = values[:n]
    values[where % n] = bad
    t = pb.Transform(**{kind: getattr(pb, kind.capitalize() + "Transform")(matrix=values)})
    chain = SHIFT + [t] if position else [t]
    request = _warp(transforms=chain) if rpc == "Warp" else _det(transforms=chain)
    h.refused(rpc, request, f"transforms[{position}].{kind}.matrix", {INVALID})


@hypo(50)
@given(kind=st.sampled_from(["affine", "homography"]), row=st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
       k=st.floats(-1e3, 1e3), rpc=st.sampled_from(["Warp", "JacobianDeterminant"]))
def test_singular_matrices(h, kind, row, k, rpc):
    """Second row a multiple of the first: the 2x2 part is singular."""
    values = row + [k * v for v in row] + ([0.0, 0.0, 1.0] if kind == "homography" else [])
    t = pb.Transform(**{kind: getattr(pb, kind.capitalize() + "Transform")(matrix=values)})
    request = _warp(transforms=[t]) if rpc == "Warp" else _det(transforms=[t])
    h.refused(rpc, request, f"transforms[0].{kind}.matrix", {INVALID})


@hypo(50)
@given(kind=st.sampled_from(["affine", "homography"]), values=st.lists(FLOATS, min_size=9, max_size=9),
       rpc=st.sampled_from(["Warp", "JacobianDeterminant"]))
def test_arbitrary_matrices(h, kind, values, rpc):
    """Anything at all, huge values included: OK, or refused naming the matrix or the output."""
    t = pb.Transform(**{kind: getattr(pb, kind.capitalize() + "Transform")(matrix=values[:6 if kind == "affine"
                                                                                       else 9])})
    request = _warp(transforms=[t], output_shape=pb.ImageSize(height=20, width=20)) if rpc == "Warp" \
        else _det(transforms=[t])
    out = h.call(rpc, request)
    if isinstance(out, grpc.RpcError):
        assert out.code() in REFUSALS, (out.code(), out.details())
        assert out.details().startswith((f"transforms[0].{kind}.matrix", "output_shape")), out.details()


RADII = st.one_of(st.floats(max_value=0.0), st.sampled_from([0.0, -0.0, -1.0, float("nan"), float("inf"),
                                                              float("-inf")]))


@hypo(50)
@given(radius=RADII, log=st.booleans(), inverse=st.booleans(), position=st.integers(0, 1),
       rpc=st.sampled_from(["Warp", "JacobianDeterminant"]))
def test_polar_radius(h, radius, log, inverse, position, rpc):
    polar = pb.Transform(polar=pb.PolarTransform(center=pb.Point(x=25, y=20), max_radius=radius, log=log,
                                                 inverse=inverse, polar_shape=pb.ImageSize(height=60, width=30)))
    chain = SHIFT + [polar] if position else [polar]
    request = _warp(transforms=chain) if rpc == "Warp" else _det(transforms=chain)
    h.refused(rpc, request, f"transforms[{position}].polar.max_radius", {INVALID})


# (method, base request, path of field numbers to the enum, field name, known values)
ENUM_FIELDS = [
    ("Warp", _warp(), (4,), "interpolation", pb.Interpolation.values()),
    ("Warp", _warp(), (5,), "border", pb.Border.values()),
    ("Warp", _warp(), (7,), "intensity", pb.Intensity.values()),
    ("Warp", _warp(), (9,), "response_form", pb.ResponseForm.values()),
    ("Warp", _warp(), (1, 1, 2), "image.tensor.dtype", [1, 2, 3, 4]),
    ("Warp", _warp(image=_encoded(PNG8)), (1, 2, 1), "image.encoded.format", [0, 1]),
    ("JacobianDeterminant", _det(), (3,), "dtype", [0, 3, 4]),
    ("Align", _align(), (3,), "model", pb.MotionModel.values()),
    ("Align", _align(), (8,), "robust", pb.RobustLoss.values()),
    ("Align", _align(), (9,), "photometric", pb.Photometric.values()),
    ("Align", _align(), (1, 1, 2), "template.tensor.dtype", [1, 2, 3, 4]),
]


def _with_enum(base, path: tuple[int, ...], value: int) -> bytes:
    """``base`` serialised with the enum at ``path`` set to ``value``, written as raw protobuf
    (a later occurrence of a scalar field wins; a nested message is merged field by field)."""
    inner = _field_varint(path[-1], value)
    for number in reversed(path[:-1]):
        inner = _field_bytes(number, inner)
    return base.SerializeToString() + inner


@hypo(80)
@given(which=st.integers(0, len(ENUM_FIELDS) - 1),
       value=st.one_of(st.integers(-2**31, 2**31 - 1), st.integers(-3, 12), st.sampled_from([-1, 2**31 - 1, -2**31])))
def test_unknown_enum_values_as_raw_protobuf(h, which, value):
    method, base, path, field, known = ENUM_FIELDS[which]
    if value in known:
        value = 1000 + value
    h.refused(method, _with_enum(base, path, value), field, {INVALID})


@hypo(60)
@given(height=DIM, width=DIM, rpc=st.sampled_from(["Warp", "JacobianDeterminant"]))
def test_output_shapes(h, height, width, rpc):
    shape = pb.ImageSize(height=height, width=width)
    request = _warp(output_shape=shape) if rpc == "Warp" else _det(transforms=SHIFT, output_shape=shape)
    if height <= 0 or width <= 0:
        h.refused(rpc, request, "output_shape", {INVALID})
    elif height * width > LIMITS["max_output_pixels"]:
        h.refused(rpc, request, "output_shape", {EXHAUSTED})
    else:
        assert not isinstance(h.call(rpc, request), grpc.RpcError)


@hypo(25)
@given(tx=st.one_of(st.floats(120, 1e9), st.floats(-1e9, -120)), ty=st.floats(-1e9, 1e9),
       model=st.sampled_from([pb.MOTION_MODEL_TRANSLATION, pb.MOTION_MODEL_AFFINE, pb.MOTION_MODEL_HOMOGRAPHY]))
def test_align_from_zero_overlap(h, tx, ty, model):
    """Initial warps that put the template entirely outside the image: ``converged=false``; or,
    for translations so large that the matrix is ill-conditioned (from ~1e5 px), refused naming
    ``init``."""
    resp = h.call("Align", _align(model=model, init=[1, 0, tx, 0, 1, ty]))
    if isinstance(resp, grpc.RpcError):
        assert resp.code() is INVALID and resp.details().startswith("init:"), (resp.code(), resp.details())
        assert max(abs(tx), abs(ty)) > 1e4, (tx, ty)
    else:
        assert not resp.converged, (resp.reason, list(resp.matrix))


@hypo(10)
@given(extra=st.integers(1, 2 << 20), rpc=st.sampled_from(["Warp", "Align"]))
def test_messages_over_the_size_limit(h, extra, rpc):
    blob = _encoded(bytes(LIMITS["max_message_bytes"] + extra))
    request = _warp(image=blob) if rpc == "Warp" else _align(template=blob)
    h.refused(rpc, request, None, {EXHAUSTED})


@hypo(40)
@given(data=st.binary(min_size=1, max_size=200), rpc=st.sampled_from(["Warp", "JacobianDeterminant", "Align"]))
def test_garbage_messages(h, data, rpc):
    """Random bytes as the request: refused with a status that names a field, never INTERNAL
    (bytes that do not parse as the request message are INVALID_ARGUMENT naming ``request``)."""
    out = h.call(rpc, data)
    if isinstance(out, grpc.RpcError):
        assert out.code() in REFUSALS, (out.code(), out.details())
        assert out.code() is not grpc.StatusCode.INVALID_ARGUMENT or ":" in out.details(), out.details()


# -- amplification (issue 13) ----------------------------------------------------------------------
AMP_DEADLINE_S = 2.0
AMP_RSS_BOUND_MIB = 128  # peak over the whole run, at 2^20-pixel limits
AMP_GRID = pb.ImageSize(height=500, width=500)


def _amp_antialias(stretch: float, cols: int):
    image = tensor(np.full((8, cols), 50, np.uint8))
    shape = pb.ImageSize(height=max(1, int(8 * stretch)), width=max(1, int(cols / stretch)))
    return "Warp", pb.WarpRequest(image=image, transforms=[affine(1 / stretch, 0, 0, 0, stretch, 0)],
                                  output_shape=shape, antialias=True)


def _amp_chain(steps: int):
    return "JacobianDeterminant", pb.JacobianDeterminantRequest(transforms=polar_chain(steps, 500),
                                                                output_shape=AMP_GRID)


def _amp_channels(channels: int, form: int):
    return "Warp", pb.WarpRequest(image=tensor(np.zeros((1, 1, channels), np.uint8)), transforms=[affine(1, 0, 0, 0, 1, 0)],
                                  output_shape=pb.ImageSize(height=700, width=700), response_form=form)


def _amp_scans(extra: int):
    return "Warp", pb.WarpRequest(image=encoded(progressive_jpeg(512, extra)), transforms=[affine(1, 0, 0, 0, 1, 0)])


def _amp_tile(side: int):
    return "Warp", pb.WarpRequest(image=encoded(deflate_tiff(1, 1, tile=side)), transforms=[affine(1, 0, 0, 0, 1, 0)])


AMPLIFIERS = st.one_of(
    st.builds(_amp_antialias, st.floats(1.0, 80.0), st.integers(10, 2000)),
    st.builds(_amp_chain, st.integers(1, 150)),
    st.builds(_amp_channels, st.integers(5, 512), st.sampled_from([pb.RESPONSE_FORM_PNG, pb.RESPONSE_FORM_JPEG,
                                                                   pb.RESPONSE_FORM_TIFF])),
    st.builds(_amp_scans, st.integers(0, 5000)),
    st.builds(_amp_tile, st.sampled_from([16, 256, 1024, 2048, 4096])),
)


@pytest.fixture(scope="module")
def amp_server():
    with hostile_server("--max-input-pixels", str(1 << 20), "--max-output-pixels", str(1 << 20)) as srv:
        yield srv


@settings(BASE, max_examples=15, phases=[Phase.explicit, Phase.generate])  # no shrinking: each case costs seconds
@given(case=AMPLIFIERS)
def test_amplification_fuzz(amp_server, case):
    """Small requests that ask for large work: each answered within its deadline + 1 s, OK or a
    client error, health SERVING within 1 s throughout, peak RSS bounded."""
    method, request = case
    SENT["cases"] += 1
    with HealthWatch(amp_server.target) as watch:
        out = amp_server.call(method, request, AMP_DEADLINE_S)
    assert out.code in CLIENT_ERRORS | {grpc.StatusCode.OK}, (out.code, out.details)
    assert out.elapsed <= AMP_DEADLINE_S + 1.0, out.elapsed
    assert watch.failures == [], watch.failures
    assert amp_server.peak_growth_mib() <= AMP_RSS_BOUND_MIB


# -- the figures -----------------------------------------------------------------------------------
def test_zz_memory_bounded_and_case_count(server, request):
    """Last in the file: the server survived everything, its peak RSS stayed bounded, and (when the
    whole file ran) at least MIN_CASES hostile cases were sent."""
    server.alive()
    now = proc_status(server.srv.proc.pid)
    base = server.baseline
    peak_growth_mib = (now["VmHWM"] - base["VmRSS"]) / 1024
    print(f"\nhostile cases sent: {SENT['cases']}; server RSS after warm-up {base['VmRSS'] / 1024:.1f} MiB, "
          f"now {now['VmRSS'] / 1024:.1f} MiB, peak (VmHWM) {now['VmHWM'] / 1024:.1f} MiB")
    assert peak_growth_mib < RSS_BOUND_MIB, (base, now)
    assert not any("Segmentation" in line or "core dumped" in line for line in server.srv.stderr)
    here = [item for item in request.session.items if item.path == request.node.path]
    whole_file = len(CORPUS) + len(ERROR_TABLE) + 5 + 14 + 1  # parametrized cases + hypothesis tests + this
    if len(here) >= whole_file:
        assert SENT["cases"] >= MIN_CASES, SENT
