"""Zero-extra-copy serialisation of messages that carry an image payload.

Building a ``Tensor`` with protobuf costs three copies of its payload (``ndarray.tobytes``, the
copy into the upb arena, ``SerializeToString``), and assigning a nested message one more: ~8 ms
for a 6 MB image, a large share of a Warp round trip. The protobuf wire format lets us write the
payload field ourselves: a message is the concatenation of its fields, a length-delimited field
is ``tag, varint length, bytes``. So a response is serialised as::

    WarpResponse.image(1) -> Image.tensor(1) -> [Tensor header (shape, dtype) by protobuf,
                                                  Tensor.data(3) tag + length, raw array bytes]

joined once (``b"".join``) from a memoryview of the array: one copy. The result is byte-for-byte
what ``SerializeToString`` produces (tests/test_service_wire.py checks it), so every client in
every language reads it as the ordinary message.
"""

from __future__ import annotations

import numpy as np

from warpsvc.v1 import warp_pb2 as pb

TENSOR_DATA_FIELD = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_header(number: int, length: int) -> bytes:
    """Tag (wire type 2, length-delimited) and length of a bytes or sub-message field."""
    return varint(number << 3 | 2) + varint(length)


class Parts:
    """A message serialised as a list of byte chunks (bytes or memoryviews), joined once."""

    def __init__(self, chunks: list):
        self.chunks = chunks
        self.size = sum(memoryview(c).nbytes for c in chunks)

    def nested(self, number: int) -> Parts:
        """These bytes as field ``number`` of an enclosing message."""
        return Parts([field_header(number, self.size), *self.chunks])

    def then(self, other: Parts | bytes) -> Parts:
        extra = other.chunks if isinstance(other, Parts) else [other]
        return Parts([*self.chunks, *extra])

    def join(self) -> bytes:
        return b"".join(self.chunks)


def tensor_parts(header: pb.Tensor, array: np.ndarray) -> Parts:
    """``header`` (shape and dtype set, no data) followed by ``array``'s bytes as the data field."""
    flat = memoryview(np.ascontiguousarray(array)).cast("B")
    return Parts([header.SerializeToString(), field_header(TENSOR_DATA_FIELD, flat.nbytes), flat])


def serialize(message) -> bytes:
    """Response serializer: protobuf messages as usual, :class:`Parts` joined."""
    return message.join() if isinstance(message, Parts) else message.SerializeToString()


# -- reading payloads in place ---------------------------------------------------------------------
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


def _find(buf, start: int, end: int, number: int) -> tuple[int, int] | None:
    """(offset, length) of the single length-delimited field ``number`` in ``buf[start:end]``;
    ``None`` if absent, repeated (protobuf would merge), or the bytes are not plain wire format."""
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
            if field == number:
                if found is not None:
                    return None
                found = (pos, length)
            pos += length
        else:
            return None  # groups: let protobuf handle it
    return found if pos == end else None


def payload_view(raw: bytes, numbers: tuple[int, ...]) -> memoryview | None:
    """A zero-copy view of the bytes field reached through field ``numbers`` (e.g. WarpRequest
    image(1) -> tensor(1) -> data(3)) of the serialised message ``raw``, or ``None`` (then read the
    parsed message instead). ``msg.data`` on a parsed message copies the payload each time."""
    try:
        start, end = 0, len(raw)
        for number in numbers:
            hit = _find(raw, start, end, number)
            if hit is None:
                return None
            start, end = hit[0], hit[0] + hit[1]
    except (IndexError, ValueError):
        return None
    return memoryview(raw)[start:end]
