"""Request serialisation with one copy of the image (the client's twin of ``warpsvc/server/wire.py``;
the client does not import the server).

A protobuf message is the concatenation of its fields, so a request is its small fields
serialised by protobuf followed by the image field written by hand (``tag, length, bytes``) from a
memoryview of the array, joined once: byte-for-byte what ``SerializeToString`` would give, without
``tobytes`` + the upb arena copy + the serialisation copy (~8 ms for a 6 MB image).
"""

from __future__ import annotations

import numpy as np

from warpsvc.v1 import warp_pb2 as pb


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
    return varint(number << 3 | 2) + varint(length)


class Message:
    """A request serialised as byte chunks, joined once by :func:`serialize`."""

    def __init__(self, chunks: list):
        self.chunks = chunks

    @property
    def size(self) -> int:
        return sum(memoryview(c).nbytes for c in self.chunks)

    def nested(self, number: int) -> "Message":
        return Message([field_header(number, self.size), *self.chunks])


def tensor(header: pb.Tensor, array: np.ndarray) -> Message:
    flat = memoryview(array).cast("B")
    number = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number
    return Message([header.SerializeToString(), field_header(number, flat.nbytes), flat])


def serialize(message) -> bytes:
    return b"".join(message.chunks) if isinstance(message, Message) else message.SerializeToString()
