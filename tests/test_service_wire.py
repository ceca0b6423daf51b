"""The hand-written payload fields serialise byte-for-byte like protobuf itself."""

from __future__ import annotations

import numpy as np
import pytest
from warpsvc_client import convert
from warpsvc_client import wire as client_wire

from warpsvc import AffineTransform
from warpsvc.server import codecs, wire
from warpsvc.server.servicer import DET_RESPONSE_TENSOR, WARP_RESPONSE_IMAGE
from warpsvc.v1 import warp_pb2 as pb


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 6220800, 2**35 + 5])
def test_varint(value):
    assert wire.varint(value) == client_wire.varint(value)
    assert pb.Tensor(shape=[value]).SerializeToString() == b"\x0a" + wire.varint(len(wire.varint(value))) + \
        wire.varint(value)


@pytest.mark.parametrize("shape,dtype", [((1, 1), np.uint8), ((37, 53, 3), np.uint16), ((128, 129), np.float32),
                                         ((300, 200, 4), np.float64), ((1080, 1920, 3), np.uint8)])
def test_server_response_bytes_equal_protobuf(shape, dtype):
    arr = (np.arange(int(np.prod(shape))) % 251).astype(dtype).reshape(shape)
    ours = wire.serialize(codecs.encode_image(arr, pb.RESPONSE_FORM_TENSOR).nested(WARP_RESPONSE_IMAGE))
    theirs = pb.WarpResponse(image=pb.Image(tensor=codecs.encode_tensor(arr, pb.Tensor()))).SerializeToString()
    assert ours == theirs
    det = wire.serialize(codecs.tensor_parts(arr).nested(DET_RESPONSE_TENSOR))
    assert det == pb.JacobianDeterminantResponse(determinant=codecs.encode_tensor(arr, pb.Tensor())).SerializeToString()


@pytest.mark.parametrize("value", [np.zeros((5, 7, 3), np.float32), np.ones((600, 400), np.uint16), b"\x89PNG..."])
def test_client_request_bytes_equal_protobuf(value):
    t = convert.transforms(AffineTransform.identity())
    fields = pb.WarpRequest(transforms=t, border_value=2.5)
    ours = client_wire.serialize(client_wire.Message(
        [fields.SerializeToString(), *convert.image_field(value, 1).chunks]))
    theirs = pb.WarpRequest(transforms=t, border_value=2.5, image=convert.image(value)).SerializeToString()
    assert pb.WarpRequest.FromString(ours) == pb.WarpRequest.FromString(theirs)
    assert sorted(ours) == sorted(theirs) and len(ours) == len(theirs)  # same fields, order may differ


def _owner(arr):
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_request_payload_is_read_in_place():
    arr = (np.arange(30 * 40 * 3) % 256).astype(np.uint8).reshape(30, 40, 3)
    raw = pb.WarpRequest(image=convert.image(arr), transforms=convert.transforms(AffineTransform.identity()),
                         border_value=1.0).SerializeToString()
    msg = pb.WarpRequest.FromString(raw)
    token = codecs.RAW_REQUEST.set((raw, pb.WarpRequest.DESCRIPTOR))
    try:
        got = codecs.decode_tensor(msg.image.tensor, "image.tensor")
    finally:
        codecs.RAW_REQUEST.reset(token)
    np.testing.assert_array_equal(got, arr)
    assert _owner(got) is raw  # a view of the received bytes, not a copy
    # Outside a call (or for odd encodings) the parsed message is read instead.
    np.testing.assert_array_equal(codecs.decode_tensor(msg.image.tensor, "image.tensor"), arr)
    assert wire.payload_view(raw + raw, (1, 1, 3)) is None  # repeated field: protobuf merges, so do not guess


def test_client_response_payload_is_read_in_place():
    arr = np.linspace(0, 1, 24 * 5).reshape(24, 5)
    raw = pb.JacobianDeterminantResponse(determinant=codecs.encode_tensor(arr, pb.Tensor())).SerializeToString()
    response = client_wire.deserializer(pb.JacobianDeterminantResponse)(raw)
    got = convert.array(response.message.determinant, response.payload(1))
    np.testing.assert_array_equal(got, arr)
    assert _owner(got) is raw
