"""Declare the alpha channel of the 4-channel TIFFs OpenCV writes.

``cv2.imencode(".tiff", bgra)`` writes ``SamplesPerPixel = 4`` with ``Photometric = RGB`` and
no ``ExtraSamples`` tag (tag 338), for every depth (OpenCV 5.0.0; a pull request to fix it,
opencv/opencv#28734, was closed). The TIFF 6.0 specification requires that tag for every
sample beyond the colour ones, so such a file is malformed: libtiff warns on every read ("Sum
of Photometric type-related color channels and ExtraSamples doesn't match SamplesPerPixel"),
and other readers guess what the fourth sample is. :func:`declare_alpha` adds
``ExtraSamples = [2]`` (unassociated alpha: the fourth sample is an alpha the colours are not
multiplied by, which is what a BGRA array written by OpenCV holds) without touching the pixel
data: it appends a copy of the first image file directory (IFD) with the tag inserted (IFD
entries are sorted by tag) and points the header at it. Every value stored outside the IFD
(strip offsets, bits per sample, ...) stays where it is, so the pixels and their compression are
OpenCV's own bytes; the old IFD is left as 12 bytes per entry of dead space.

Only classic TIFF (not BigTIFF) with a first IFD of 4 samples per pixel of more than 8 bits,
RGB photometric and no ``ExtraSamples`` is changed; anything else is returned as it is. 8-bit
images are left alone on purpose: OpenCV reads 8-bit TIFFs through libtiff's RGBA interface,
which multiplies the colours by an alpha declared unassociated, so ``cv2.imdecode`` would no
longer give back the array that was written (16-bit and float images are read sample by
sample and round-trip either way; measured for uint8 / uint16 / float32 / float64, OpenCV
5.0.0). Declaring the fourth sample "unspecified" instead keeps OpenCV's round trip but makes
Pillow drop it (an RGBA PNG warped and written as TIFF would lose its alpha there).
"""

from __future__ import annotations

import struct

TAG_BITS_PER_SAMPLE = 258
TAG_SAMPLES_PER_PIXEL = 277
TAG_PHOTOMETRIC = 262
TAG_EXTRA_SAMPLES = 338
PHOTOMETRIC_RGB = 2
EXTRASAMPLE_UNASSOCIATED_ALPHA = 2
_SHORT = 3
_ENTRY = 12  # bytes per classic-TIFF IFD entry: tag, type, count, value or offset


def declare_alpha(data: bytes) -> bytes:
    """``data`` (a TIFF file) with ``ExtraSamples = [unassociated alpha]`` declared if its first
    image is a 4-sample RGB image that lacks the tag; otherwise ``data`` unchanged."""
    if len(data) < 8:
        return data
    if data[:4] == b"II*\x00":
        end = "<"
    elif data[:4] == b"MM\x00*":
        end = ">"
    else:
        return data  # not a classic TIFF (BigTIFF has 43 here)
    (first,) = struct.unpack(end + "I", data[4:8])
    if first < 8 or first + 2 > len(data):
        return data
    (count,) = struct.unpack(end + "H", data[first:first + 2])
    entries_end = first + 2 + count * _ENTRY
    if entries_end + 4 > len(data):
        return data
    entries = [data[first + 2 + i * _ENTRY: first + 2 + (i + 1) * _ENTRY] for i in range(count)]
    tags = {struct.unpack(end + "H", e[:2])[0]: e for e in entries}
    if TAG_EXTRA_SAMPLES in tags or _short_value(tags.get(TAG_SAMPLES_PER_PIXEL), end) != 4 \
            or _short_value(tags.get(TAG_PHOTOMETRIC), end) != PHOTOMETRIC_RGB \
            or _first_bits(tags.get(TAG_BITS_PER_SAMPLE), data, end) in (None, 8):
        return data
    # a SHORT value of count 1 sits in the first two bytes of the 4-byte value field
    tags[TAG_EXTRA_SAMPLES] = struct.pack(end + "HHIH2x", TAG_EXTRA_SAMPLES, _SHORT, 1,
                                          EXTRASAMPLE_UNASSOCIATED_ALPHA)
    next_ifd = data[entries_end:entries_end + 4]
    pad = b"\x00" * (len(data) % 2)  # an IFD starts on a word boundary
    at = len(data) + len(pad)
    ifd = struct.pack(end + "H", len(tags)) + b"".join(tags[t] for t in sorted(tags)) + next_ifd
    return data[:4] + struct.pack(end + "I", at) + data[8:] + pad + ifd


def _short_value(entry: bytes | None, end: str) -> int | None:
    """The value of a one-value SHORT (or LONG) entry, None for anything else."""
    if entry is None:
        return None
    _, kind, n = struct.unpack(end + "HHI", entry[:8])
    if n != 1:
        return None
    if kind == _SHORT:
        return struct.unpack(end + "H", entry[8:10])[0]
    if kind == 4:  # LONG
        return struct.unpack(end + "I", entry[8:12])[0]
    return None


def _first_bits(entry: bytes | None, data: bytes, end: str) -> int | None:
    """The first sample's bits of a SHORT ``BitsPerSample`` entry (inline for up to 2 values,
    else at its offset), None if absent or malformed."""
    if entry is None:
        return None
    _, kind, n = struct.unpack(end + "HHI", entry[:8])
    if kind != _SHORT or n < 1:
        return None
    if n <= 2:
        return struct.unpack(end + "H", entry[8:10])[0]
    (at,) = struct.unpack(end + "I", entry[8:12])
    if at + 2 > len(data):
        return None
    return struct.unpack(end + "H", data[at:at + 2])[0]
