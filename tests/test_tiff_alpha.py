"""4-channel TIFFs written by OpenCV get their ``ExtraSamples`` tag (``warpsvc_api.tiff_alpha``).

Oracles: OpenCV's own decoder (the round trip must give back the array written), tifffile (an
independent TIFF reader: the tag and, for uncompressed floats, the pixels), and libtiff's
warning on stderr, which the malformed file triggers and the repaired one must not.
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
import tifffile

from warpsvc.server import codecs
from warpsvc_api import wire
from warpsvc_api.tiff_alpha import declare_alpha
from warpsvc_api.v1 import warp_pb2 as pb

DTYPES = [np.uint8, np.uint16, np.float32, np.float64]


def _array(dtype, channels, seed=0):
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    return (np.random.default_rng(seed).random(shape) * 200).astype(dtype)


def _tags(data: bytes) -> dict:
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        return {t.name: t.value for t in tif.pages[0].tags.values()}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_opencv_round_trip_and_tag(dtype, channels):
    a = _array(dtype, channels)
    ok, buf = cv2.imencode(".tiff", a)
    assert ok
    raw = buf.tobytes()
    assert "ExtraSamples" not in _tags(raw)  # what OpenCV writes (the bug this repairs)
    fixed = declare_alpha(raw)
    back = cv2.imdecode(np.frombuffer(fixed, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back, a)
    assert back.dtype == a.dtype
    if channels == 4 and dtype != np.uint8:
        assert [int(v) for v in _tags(fixed)["ExtraSamples"]] == [2]  # unassociated alpha
        assert fixed[len(raw) // 2:len(raw) - 200] == raw[len(raw) // 2:len(raw) - 200]  # pixels untouched
    else:
        assert fixed == raw  # 1 / 3 channels need no tag; 8-bit is left alone (see the module)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_independent_reader_sees_the_same_pixels(dtype):
    a = _array(dtype, 4, seed=3)
    fixed = declare_alpha(cv2.imencode(".tiff", a)[1].tobytes())
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(fixed)), a[:, :, [2, 1, 0, 3]])  # written RGBA


def test_libtiff_warning_gone(capfd):
    a = _array(np.float32, 4)
    raw = cv2.imencode(".tiff", a)[1].tobytes()
    capfd.readouterr()
    cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
    assert "ExtraSamples" in capfd.readouterr().err  # the malformed file warns
    cv2.imdecode(np.frombuffer(declare_alpha(raw), np.uint8), cv2.IMREAD_UNCHANGED)
    assert "ExtraSamples" not in capfd.readouterr().err


def _big_endian_rgba_float(value=(1.5, -2.0, 3.25, 0.5)) -> bytes:
    """A 1x1 big-endian classic TIFF, 4 float32 samples, RGB, no ExtraSamples (built by hand)."""
    pixel = struct.pack(">4f", *value)
    bits = struct.pack(">4H", 32, 32, 32, 32)
    fmt = struct.pack(">4H", 3, 3, 3, 3)
    n = 10
    ifd_at = 8
    data_at = ifd_at + 2 + n * 12 + 4
    bits_at, fmt_at, pix_at = data_at, data_at + 8, data_at + 16
    entries = [(256, 4, 1, 1), (257, 4, 1, 1), (258, 3, 4, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, pix_at), (277, 3, 1, 4), (278, 4, 1, 1), (279, 4, 1, 16), (339, 3, 4, fmt_at)]
    out = b"MM\x00*" + struct.pack(">I", ifd_at) + struct.pack(">H", n)
    for tag, kind, count, value_ in entries:
        field = struct.pack(">H2x", value_) if kind == 3 and count == 1 else struct.pack(">I", value_)
        out += struct.pack(">HHI", tag, kind, count) + field
    return out + struct.pack(">I", 0) + bits + fmt + pixel


def test_big_endian():
    raw = _big_endian_rgba_float()
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(raw)).ravel(), [1.5, -2.0, 3.25, 0.5])
    fixed = declare_alpha(raw)
    assert [int(v) for v in _tags(fixed)["ExtraSamples"]] == [2]
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(fixed)).ravel(), [1.5, -2.0, 3.25, 0.5])
    assert declare_alpha(fixed) == fixed  # already declared: unchanged


@pytest.mark.parametrize("data", [b"", b"II*\x00", b"II*\x00\xff\xff\xff\xff", b"\x89PNG\r\n\x1a\n" + b"\0" * 40,
                                  b"II+\x00\x08\x00\x00\x00" + b"\0" * 40,  # BigTIFF
                                  b"II*\x00\x08\x00\x00\x00\x05\x00"])  # IFD cut short
def test_not_a_classic_tiff_or_truncated_is_returned_as_is(data):
    assert declare_alpha(data) == data


def test_truncated_opencv_file_is_returned_as_is():
    raw = cv2.imencode(".tiff", _array(np.float32, 4))[1].tobytes()
    first = struct.unpack("<I", raw[4:8])[0]
    assert declare_alpha(raw[:first + 20]) == raw[:first + 20]


def test_server_and_batch_write_the_same_repaired_bytes():
    a = _array(np.float32, 4, seed=5)
    msg = pb.Image.FromString(wire.serialize(codecs.encode_image(a, "tiff")))
    served = msg.encoded.data
    from warpsvc_client.batch.backends import encode

    assert served == encode(a, "tiff")
    assert [int(v) for v in _tags(served)["ExtraSamples"]] == [2]
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(served, np.uint8), cv2.IMREAD_UNCHANGED), a)
