"""The hand-written payload fields serialise byte-for-byte like protobuf, and payloads are read in
place by field numbers (warpsvc_api.wire, shared by server and client)."""

from __future__ import annotations

import numpy as np
import pytest

import warpsvc
from warpsvc import AffineTransform
from warpsvc.core.validate import output_dtype
from warpsvc.server import codecs
from warpsvc.server.servicer import DET_RESPONSE_TENSOR, WARP_RESPONSE_IMAGE
from warpsvc_api import convert, wire
from warpsvc_api.v1 import warp_pb2 as pb


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 6220800, 2**35 + 5])
def test_varint(value):
    assert pb.Tensor(shape=[value]).SerializeToString() == b"\x0a" + wire.varint(len(wire.varint(value))) + \
        wire.varint(value)


@pytest.mark.parametrize("shape,dtype", [((1, 1), np.uint8), ((37, 53, 3), np.uint16), ((128, 129), np.float32),
                                         ((300, 200, 4), np.float64), ((1080, 1920, 3), np.uint8)])
def test_server_response_bytes_equal_protobuf(shape, dtype):
    arr = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    ours = wire.serialize(codecs.encode_image(arr, "tensor").nested(WARP_RESPONSE_IMAGE))
    theirs = pb.WarpResponse(image=pb.Image(tensor=convert.fill_tensor(pb.Tensor(), arr))).SerializeToString()
    assert ours == theirs
    det = wire.serialize(convert.tensor_parts(arr).nested(DET_RESPONSE_TENSOR))
    assert det == pb.JacobianDeterminantResponse(determinant=convert.fill_tensor(pb.Tensor(), arr)).SerializeToString()


def test_big_endian_arrays_travel_little_endian():
    arr = np.arange(12, dtype=">f8").reshape(3, 4)
    raw = wire.serialize(convert.tensor_parts(arr))
    np.testing.assert_array_equal(convert.array(pb.Tensor.FromString(raw)), arr)
    assert pb.Tensor.FromString(raw).data == arr.astype("<f8").tobytes()


@pytest.mark.parametrize("value", [np.zeros((5, 7, 3), np.float32), np.ones((600, 400), np.uint16), b"\x89PNG..."])
def test_client_request_bytes_equal_protobuf(value):
    fields = convert.warp_request(AffineTransform.identity(), border_value=2.5)
    ours = wire.serialize(wire.Parts.of(fields).then(convert.image_field(value, 1)))
    theirs = convert.warp_request(AffineTransform.identity(), border_value=2.5)
    theirs.image.CopyFrom(convert.image_message(value))
    theirs = theirs.SerializeToString()
    assert pb.WarpRequest.FromString(ours) == pb.WarpRequest.FromString(theirs)
    assert sorted(ours) == sorted(theirs) and len(ours) == len(theirs)  # same fields, order may differ


def _owner(arr):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_request_payload_is_read_in_place():
    arr = (np.arange(30 * 40 * 3) % 256).astype(np.uint8).reshape(30, 40, 3)
    raw = pb.WarpRequest(image=convert.image_message(arr), border_value=1.0,
                         transforms=convert.transforms(AffineTransform.identity())).SerializeToString()
    call = wire.deserializer(pb.WarpRequest)(raw)
    got = codecs.decode_image(call.message.image, call.payload(1, 1), "image", 1 << 20)
    np.testing.assert_array_equal(got, arr)
    assert _owner(got) is raw  # a view of the received bytes, not a copy
    # Without the raw bytes (or for odd encodings) the parsed message is read instead.
    np.testing.assert_array_equal(codecs.decode_image(call.message.image, None, "image", 1 << 20), arr)
    assert wire.payload_view(raw + raw, (1, 1, 3)) is None  # repeated field: protobuf merges, so do not guess
    assert wire.payload_view(raw[:-1], (1, 1, 3)) is None  # truncated


def test_client_response_payload_is_read_in_place():
    arr = np.linspace(0, 1, 24 * 5).reshape(24, 5)
    raw = pb.JacobianDeterminantResponse(determinant=convert.fill_tensor(pb.Tensor(), arr)).SerializeToString()
    response = wire.deserializer(pb.JacobianDeterminantResponse)(raw)
    got = convert.array(response.message.determinant, response.payload(1))
    np.testing.assert_array_equal(got, arr)
    assert _owner(got) is raw


def test_undecodable_request_is_kept_for_the_servicer_to_refuse():
    bad = b"\x0a\xff"  # field 1, length 255, no bytes
    assert isinstance(wire.deserializer(pb.WarpRequest, keep_errors=True)(bad).message, Exception)
    with pytest.raises(Exception, match="Error parsing message"):
        wire.deserializer(pb.WarpRequest)(bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"intensity": "plain"}, {"intensity": "conserve"}, {"antialias": True},
                                     {"intensity": "conserve", "antialias": True}])
def test_output_dtype_is_the_one_warp_returns(dtype, options):
    """The servicer sizes a response with ``output_dtype`` before warping: the oracle is ``warp``."""
    img = np.ones((8, 8), dtype)
    got = warpsvc.warp(img, AffineTransform.from_components(scale=(0.9, 1.1)), **options).dtype
    assert output_dtype(dtype, **options) == got
