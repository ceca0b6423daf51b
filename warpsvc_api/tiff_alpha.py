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
OpenCV's own bytes; the old IFD is left as 12 bytes per entry of dead space (a duplicated tag
keeps its first entry, the one libtiff reads).

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

from warpsvc.core.errors import InvalidImageError

from .image_probe import PHOTOMETRIC_RGB, _Ifd

TAG_BITS_PER_SAMPLE = 258
TAG_SAMPLES_PER_PIXEL = 277
TAG_PHOTOMETRIC = 262
TAG_EXTRA_SAMPLES = 338
EXTRASAMPLE_UNASSOCIATED_ALPHA = 2
_SHORT = 3


def declare_alpha(data: bytes) -> bytes:
    """``data`` (a TIFF file) with ``ExtraSamples = [unassociated alpha]`` declared if its first
    image is a 4-sample RGB image of more than 8 bits that lacks the tag; otherwise ``data``
    unchanged. The directory is read by the header probe's :class:`.image_probe._Ifd`."""
    if len(data) < 8 or data[:4] not in (b"II*\x00", b"MM\x00*"):
        return data  # not a classic TIFF (BigTIFF has 43 here)
    end = "<" if data[:2] == b"II" else ">"
    (first,) = struct.unpack(end + "I", data[4:8])
    try:
        ifd = _Ifd(data, end, False, first, "tiff")
        if TAG_EXTRA_SAMPLES in ifd.entries or ifd.values(TAG_SAMPLES_PER_PIXEL) != [4] \
                or ifd.values(TAG_PHOTOMETRIC) != [PHOTOMETRIC_RGB] \
                or (ifd.values(TAG_BITS_PER_SAMPLE) or [8])[0] <= 8:
            return data
    except InvalidImageError:  # a malformed directory: not ours to repair
        return data
    entries = {tag: struct.pack(end + "HHI", tag, typ, n) + raw for tag, (typ, n, raw) in ifd.entries.items()}
    # a SHORT value of count 1 sits in the first two bytes of the 4-byte value field
    entries[TAG_EXTRA_SAMPLES] = struct.pack(end + "HHIH2x", TAG_EXTRA_SAMPLES, _SHORT, 1,
                                             EXTRASAMPLE_UNASSOCIATED_ALPHA)
    pad = b"\x00" * (len(data) % 2)  # an IFD starts on a word boundary
    at = len(data) + len(pad)
    new_ifd = (struct.pack(end + "H", len(entries)) + b"".join(entries[t] for t in sorted(entries))
               + struct.pack(end + "I", ifd.next))
    return data[:4] + struct.pack(end + "I", at) + data[8:] + pad + new_ifd
