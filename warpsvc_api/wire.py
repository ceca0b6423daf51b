"""Zero-extra-copy reading and writing of messages that carry a tensor payload (server and client).

Building a ``Tensor`` with protobuf costs three copies of its payload (``ndarray.tobytes``, the
copy into the upb arena, ``SerializeToString``), assigning a nested message one more, and every
read of ``msg.data`` on a parsed message copies it again: ~8 ms for a 6 MB image, a large share
of a round trip. The protobuf wire format lets us do the payload field ourselves: a message is
the concatenation of its fields, and a length-delimited field is ``tag, varint length, bytes``.

Writing: a message is its small fields serialised by protobuf, followed by the payload field
written by hand from a memoryview of the array, joined once (``b"".join``)::

    WarpResponse.image(1) -> Image.tensor(1) -> [Tensor header (shape, dtype) by protobuf,
                                                  Tensor.data(3) tag + length, raw array bytes]

byte-for-byte what ``SerializeToString`` produces (fields may come in another order, which the
format allows), so every client in every language reads the ordinary message.

Reading: a :class:`Received` message keeps its serialised bytes, and :meth:`Received.payload`
views a bytes field in place by its *field numbers* (``WarpRequest.image(1) -> tensor(1) ->
data(3)``), found by a scan that gives up (``None``: read the parsed message) on anything
unusual: a repeated field (protobuf would merge), groups, truncation.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from .v1 import warp_pb2 as pb


def number(message_type, name: str) -> int:
    """The field number of ``message_type.name`` (``number(pb.WarpRequest, "image") == 1``)."""
    return message_type.DESCRIPTOR.fields_by_name[name].number


TENSOR_DATA = number(pb.Tensor, "data")
IMAGE_TENSOR = number(pb.Image, "tensor")


# -- writing ---------------------------------------------------------------------------------------
def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer (least significant group first)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_header(field_number: int, length: int) -> bytes:
    """Tag (wire type 2, length-delimited) and length of a bytes or sub-message field."""
    return varint(field_number << 3 | 2) + varint(length)


class Parts:
    """A message serialised as a list of byte chunks (bytes or memoryviews), joined once."""

    __slots__ = ("chunks", "size")

    def __init__(self, chunks: list):
        self.chunks = chunks
        self.size = sum(memoryview(c).nbytes for c in chunks)

    @classmethod
    def of(cls, message) -> Parts:
        """A protobuf message (its small fields) as parts."""
        return cls([message.SerializeToString()])

    def nested(self, field_number: int) -> Parts:
        """These bytes as field ``field_number`` of an enclosing message."""
        return Parts([field_header(field_number, self.size), *self.chunks])

    def then(self, *others: Parts) -> Parts:
        """These fields followed by ``others``' (the concatenation of messages merges them)."""
        return Parts([*self.chunks, *(c for other in others for c in other.chunks)])

    def join(self) -> bytes:
        return b"".join(self.chunks)


def tensor_parts(header: pb.Tensor, array: np.ndarray) -> Parts:
    """``header`` (shape and dtype set, no data) followed by ``array``'s bytes as the data field
    (``array`` must already be little-endian; it is viewed, not copied)."""
    flat = memoryview(np.ascontiguousarray(array)).cast("B")
    return Parts([header.SerializeToString(), field_header(TENSOR_DATA, flat.nbytes), flat])


def serialize(message) -> bytes:
    """gRPC serializer (both sides): protobuf messages as usual, :class:`Parts` joined."""
    return message.join() if isinstance(message, Parts) else message.SerializeToString()


# -- reading ---------------------------------------------------------------------------------------
def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _find(buf, start: int, end: int, field_number: int) -> tuple[int, int] | None:
    """(offset, length) of the single length-delimited field ``field_number`` in
    ``buf[start:end]``; ``None`` if absent, repeated, or the bytes are not plain wire format."""
    found = None
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        kind, field = key & 7, key >> 3
        if kind == 0:
            _, pos = _read_varint(buf, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        elif kind == 2:
            length, pos = _read_varint(buf, pos)
            if field == field_number:
                if found is not None:
                    return None
                found = (pos, length)
            pos += length
        else:
            return None  # groups: let protobuf handle it
    return found if pos == end else None


def payload_view(raw: bytes, numbers: tuple[int, ...]) -> memoryview | None:
    """A zero-copy view of the bytes field reached through field ``numbers`` of the serialised
    message ``raw``, or ``None`` (then read the parsed message instead)."""
    try:
        start, end = 0, len(raw)
        for field_number in numbers:
            hit = _find(raw, start, end, field_number)
            if hit is None:
                return None
            start, end = hit[0], hit[0] + hit[1]
    except (IndexError, ValueError):
        return None
    return memoryview(raw)[start:end]


class Received:
    """A parsed message with its serialised bytes, to read tensor payloads in place."""

    __slots__ = ("message", "raw")

    def __init__(self, message, raw: bytes):
        self.message, self.raw = message, raw

    def payload(self, *numbers: int) -> memoryview | None:
        """The ``Tensor.data`` bytes of the tensor at field path ``numbers`` (``None``: absent or
        unusual encoding; read ``message`` instead)."""
        return payload_view(self.raw, (*numbers, TENSOR_DATA))


def deserializer(message_type, *, keep_errors: bool = False):
    """gRPC deserializer returning :class:`Received`. With ``keep_errors`` undecodable bytes come
    back as a ``Received`` whose ``message`` is the ``DecodeError`` (so the server answers
    INVALID_ARGUMENT instead of gRPC's INTERNAL)."""

    def deserialize(raw: bytes) -> Received:
        try:
            return Received(message_type.FromString(raw), raw)
        except DecodeError as err:
            if not keep_errors:
                raise
            return Received(err, raw)

    return deserialize
