"""What decoding an encoded image will cost, read from its headers before any pixel is decoded.

One probe for every side: the server (``warpsvc.server.codecs``, before ``cv2.imdecode``) and
``warpsvc-batch`` (``--max-pixels``, before a file is sent or decoded) refuse the same files with
the same words. Dependencies: numpy and :mod:`warpsvc.core.errors` (which imports nothing), so
the protocol package stays free of OpenCV, numba and the server (``tests/test_layers.py``).

:func:`probe_image` parses a PNG, JPEG or TIFF file the way the decoder behind
``cv2.imdecode(data, cv2.IMREAD_UNCHANGED)`` does (libpng, libjpeg, libtiff as OpenCV 5 drives them)
and returns an :class:`ImageCost`: the ``(height, width, channels, dtype)`` the decoder will really
produce, the bytes it will allocate and the work it will do. It raises a core error naming the
field (:class:`~warpsvc.core.errors.InvalidImageError` for files the decoder would refuse or
crash on with ``cv2.error``, :class:`~warpsvc.core.errors.ImageTooLargeError` for files over a
limit) so that nothing over budget ever reaches OpenCV.

Cost model (all integers; ``P = height x width``, ``C`` channels, ``B`` bytes per sample)
--------------------------------------------------------------------------------------------
* ``output_bytes = P x C x B``: the array ``imdecode`` returns.
* ``buffer_bytes``: what the decoder allocates besides the output:
  - TIFF (``grfmt_tiff.cpp``): one tile or strip buffer, ``tile_w x tile_h x 4`` bytes when the
    output is 8-bit (libtiff's ``TIFFReadRGBA*`` always fills 32-bit RGBA), else
    ``tile_w x tile_h x spp x bits / 8`` (+ the same at 16 bits when 10/12/14-bit samples are
    unpacked). ``tile_h`` is RowsPerStrip for striped files, *not* clamped to the image height
    (OpenCV does not clamp it), which is how a 1x1 image can cost an 8192^2 buffer.
  - JPEG: a progressive or multi-scan file keeps every DCT coefficient of the image,
    ``sum_c ceil(W h_c / h_max / 8) ceil(H v_c / v_max / 8) x 64 x 2`` bytes (``JCOEF`` is 16
    bits); a single-scan baseline file needs only a few MCU rows (counted as 0).
  - PNG: 0 (rows are decoded into the output), ``2 x output_bytes`` for an animated PNG (OpenCV
    keeps the previous and next frame).
  The buffer may not exceed ``max(buffer_floor_bytes, buffer_ratio x output_bytes)``: ordinary
  files need at most 4x (a grey 8-bit image read through the RGBA buffer) or ~2x (progressive JPEG
  coefficients); a tile much larger than its image is refused.
* ``decode_work``: samples the entropy decoder touches, ``scans x P`` (each progressive scan
  visits every block of its components; one for PNG/TIFF/baseline JPEG). A JPEG may have at most
  ``max_jpeg_scans`` scans and ``scans x P <= max_scan_passes x max_pixels`` (standard encoders
  write 1, 3 or 10 scans: ``jpeg_simple_progression`` gives 10 for colour, 6 for grey).
  For TIFF with JPEG compression every strip or tile is a JPEG stream: the number of scans is
  bounded from above by the number of SOS markers (``FF DA``) in the whole file (entropy-coded data
  cannot contain one), each visiting at most one tile.

Cost of the probe itself: well under 1 ms for ordinary files (1-3 % of their decode time); at
most ~0.2 s for 64 MiB of hostile JPEG entropy data (the marker search is vectorised in 4 MiB
chunks); ``benchmarks/bench_image_probe.py`` measures both.

OpenCV's own cap: ``cv::imdecode`` asserts ``width <= 2^20``, ``height <= 2^20`` and
``width x height <= OPENCV_IO_MAX_IMAGE_PIXELS`` (default 2^30) and raises ``cv2.error`` otherwise;
the probe refuses those first (the server also lowers OpenCV's pixel cap to its limit before
``cv2`` is loaded: ``warpsvc.server.image_probe.configure_opencv_io``).
"""

from __future__ import annotations

import dataclasses
import math
import struct
from dataclasses import dataclass

import numpy as np

from warpsvc.core.errors import ImageTooLargeError, InvalidImageError

OPENCV_MAX_SIDE = 1 << 20  # CV_IO_MAX_IMAGE_WIDTH / _HEIGHT defaults (loadsave.cpp)
OPENCV_MAX_PIXELS = 1 << 30  # CV_IO_MAX_IMAGE_PIXELS default
DEFAULT_MAX_PIXELS = 1 << 25  # the server's WARPSVC_MAX_INPUT_PIXELS default (and warpsvc-batch's --max-pixels)
MIB = 1 << 20
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
              (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"))  # TIFF: classic and BigTIFF, both byte orders


@dataclass(frozen=True)
class ProbeLimits:
    """What one decoded input image may cost (defaults: the server's defaults)."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # height x width (the server's max_input_pixels)
    max_side: int = OPENCV_MAX_SIDE  # OpenCV raises cv2.error above this
    max_jpeg_scans: int = 40  # standard progressive files have ~10
    max_scan_passes: int = 16  # scans x pixels <= this x max_pixels
    buffer_ratio: float = 4.0  # decoder buffers <= max(floor, ratio x output bytes)
    buffer_floor_bytes: int = 32 * MIB
    max_tiff_ifds: int = 1024  # IFDs walked (OpenCV decodes the first; libtiff counts them all)
    max_segments: int = 16384  # JPEG marker segments / PNG chunks before the image data
    dtypes: tuple[str, ...] = ("uint8", "uint16", "float32", "float64")  # what the server accepts
    limit_name: str = "the server limit of {} pixels"  # how refusals name max_pixels ("--max-pixels {}")


@dataclass(frozen=True)
class ImageCost:
    """The decoder's output and cost for one file (see the module docstring for the model)."""

    format: str  # "png", "jpeg", "tiff"
    height: int
    width: int
    channels: int
    dtype: np.dtype
    buffer_bytes: int
    decode_work: int
    scans: int = 1
    pages: int = 1  # TIFF: directories in the file (the decoder reads the first only)
    alpha: bool = False  # the 4th decoded channel is alpha (PNG with alpha / tRNS; RGB TIFF, alpha ExtraSample or none)
    orientation: int = 1  # a JPEG's EXIF Orientation, which ``imdecode(IMREAD_UNCHANGED)`` does not apply
    # (a TIFF's own Orientation tag it applies, transposing where needed: see _tiff_cost)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape ``cv2.imdecode(..., IMREAD_UNCHANGED)`` returns."""
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, self.channels)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def output_bytes(self) -> int:
        return self.pixels * self.channels * self.dtype.itemsize

    @property
    def decode_bytes(self) -> int:
        """Peak bytes the decode allocates: the output plus the decoder's buffers."""
        return self.output_bytes + self.buffer_bytes


def sniff(data: bytes | memoryview) -> str | None:
    """``"png"``, ``"jpeg"`` or ``"tiff"`` from the file signature, else ``None``."""
    head = bytes(data[:8])
    return next((fmt for magic, fmt in SIGNATURES if head.startswith(magic)), None)


def unrecognised(data: bytes) -> str:
    """The refusal of bytes that are no PNG, JPEG or TIFF: an empty file said as such."""
    return "an empty file (0 bytes)" if len(data) == 0 else "not a PNG, JPEG or TIFF file (unrecognised signature)"


def probe_image(data: bytes | memoryview, limits: ProbeLimits = ProbeLimits(), field: str = "image.encoded") -> ImageCost:
    """The :class:`ImageCost` of decoding ``data``, or a core error naming ``field.data``."""
    data = bytes(data) if isinstance(data, memoryview) else data
    f = f"{field}.data"
    fmt = sniff(data)
    if fmt is None:
        raise _invalid(f, unrecognised(data))
    cost = PROBES[fmt](data, limits, f)
    _check_budget(cost, limits, field)
    return cost


def _check_budget(cost: ImageCost, limits: ProbeLimits, field: str) -> None:
    """Refuse what OpenCV would raise ``cv2.error`` on, or what exceeds ``limits``."""
    h, w = cost.height, cost.width
    if max(h, w) > limits.max_side:
        raise _too_large(f"{field}: a {h}x{w} image has a side over {limits.max_side} pixels", field=field)
    max_pixels = min(limits.max_pixels, OPENCV_MAX_PIXELS)
    if h * w > max_pixels:
        raise _too_large(f"{field}: an image of {h}x{w} = {h * w} pixels exceeds "
                         f"{limits.limit_name.format(max_pixels)}", field=field)
    if cost.dtype.name not in limits.dtypes:
        raise _invalid(f"{field}.data", f"decodes to {cost.dtype.name} pixels, not {'/'.join(limits.dtypes)}")
    allowed = max(limits.buffer_floor_bytes, int(limits.buffer_ratio * cost.output_bytes))
    if cost.buffer_bytes > allowed:
        raise _too_large(
            f"{field}: decoding this {cost.format.upper()} needs a {cost.buffer_bytes}-byte buffer for a "
            f"{cost.output_bytes}-byte image (limit {allowed} bytes): tiles, strips or scans out of proportion",
            field=field)
    if cost.scans > limits.max_jpeg_scans:
        raise _too_large(f"{field}: {cost.scans} JPEG scans exceed the limit of {limits.max_jpeg_scans}",
                         field=field)
    budget = limits.max_scan_passes * limits.max_pixels
    if cost.decode_work > budget:
        raise _too_large(f"{field}: decoding touches {cost.decode_work} samples ({cost.scans} scan(s) of "
                         f"{h}x{w}), over the budget of {budget} ({limits.max_scan_passes} passes over "
                         f"{limits.max_pixels} pixels)", field=field)


def _invalid(field: str, what: str) -> InvalidImageError:
    """An ``InvalidImageError`` (INVALID_ARGUMENT) naming ``field``."""
    return InvalidImageError(f"{field}: {what}", field=field)


def _too_large(message: str, *, field: str) -> ImageTooLargeError:
    """An ``ImageTooLargeError`` (RESOURCE_EXHAUSTED) with ``message`` already naming ``field``."""
    return ImageTooLargeError(message, field=field)


# -- PNG ------------------------------------------------------------------------------------------
# colour type -> (allowed bit depths, channels without tRNS, channels with tRNS); OpenCV's
# PngDecoder::readHeader gives grey+alpha 4 channels and RGB/palette with a tRNS chunk 4.
PNG_COLOUR = {0: ((1, 2, 4, 8, 16), 1, 1), 2: ((8, 16), 3, 4), 3: ((1, 2, 4, 8), 3, 4),
              4: ((8, 16), 4, 4), 6: ((8, 16), 4, 4)}


def _probe_png(data: bytes, limits: ProbeLimits, field: str) -> ImageCost:
    if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise _invalid(field, "truncated or malformed PNG header (IHDR must come first)")
    w, h, depth, colour, _comp, _filter, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if not (0 < w < 2**31 and 0 < h < 2**31) or colour not in PNG_COLOUR or depth not in PNG_COLOUR[colour][0] \
            or interlace > 1:
        raise _invalid(field, f"invalid PNG IHDR ({w}x{h}, bit depth {depth}, colour type {colour})")
    trns = animated = False
    pos, chunks = 33, 0
    while pos + 8 <= len(data):  # ancillary chunks before the image data
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        trns |= kind == b"tRNS"
        animated |= kind == b"acTL"
        chunks += 1
        if chunks > limits.max_segments:
            raise _invalid(field, f"more than {limits.max_segments} PNG chunks before the image data")
        pos += 12 + length
    _, plain, with_trns = PNG_COLOUR[colour]
    channels = with_trns if trns else plain
    dtype = np.dtype(np.uint16 if depth == 16 else np.uint8)
    out = h * w * channels * dtype.itemsize
    return ImageCost("png", h, w, channels, dtype, buffer_bytes=2 * out if animated else 0, decode_work=h * w,
                     alpha=channels == 4)


# -- JPEG -----------------------------------------------------------------------------------------
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC
DECODABLE_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB}  # libjpeg-turbo: no hierarchical (C5-C7, CD-CF)
PROGRESSIVE_SOF = {0xC2, 0xCA}
SOS, EOI = 0xDA, 0xD9
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7 (no length)
MARKER_SEARCH_CHUNK = 1 << 22  # bytes examined per vectorised step (bounds the temporaries)


def _is_marker(second: int) -> bool:
    """In entropy-coded data a 0xFF is followed by 0x00 (stuffing), RSTn or a fill 0xFF; any other
    byte makes it the next marker."""
    return second not in (0x00, 0xFF) and not 0xD0 <= second <= 0xD7


def _next_marker(data: bytes, arr: np.ndarray, pos: int) -> int | None:
    """Position of the next marker at or after ``pos`` (libjpeg also skips garbage between
    segments up to it). Vectorised in chunks: ~0.2 s and a few MiB for 64 MiB of 0xFF fill, where
    a byte loop or a regex takes seconds."""
    n = len(data)
    if pos + 1 < n and data[pos] == 0xFF and _is_marker(data[pos + 1]):
        return pos  # the common case: the next segment starts right here
    while pos + 1 < n:
        end = min(n, pos + MARKER_SEARCH_CHUNK + 1)
        a, b = arr[pos:end - 1], arr[pos + 1:end]
        hit = (a == 0xFF) & (b != 0x00) & (b != 0xFF) & ((b < 0xD0) | (b > 0xD7))
        first = int(hit.argmax())
        if hit[first]:
            return pos + first
        pos = end - 1
    return None


def _probe_jpeg(data: bytes, limits: ProbeLimits, field: str) -> ImageCost:
    frame = None  # (precision, height, width, components [(h, v)])
    scans = segments = 0
    orientation = None
    pos, n = 2, len(data)
    arr = np.frombuffer(data, np.uint8)
    while True:
        found = _next_marker(data, arr, pos)
        if found is None:
            break  # truncated: libjpeg warns and decodes what it has
        pos = found
        marker = data[pos + 1]
        segments += 1
        if segments > limits.max_segments:
            raise _invalid(field, f"more than {limits.max_segments} JPEG marker segments")
        if marker == EOI:
            break
        if marker in STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            break
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise _invalid(field, f"JPEG segment FF{marker:02X} with length {length}")
        body = data[pos + 4:pos + 2 + length]
        if marker == APP1 and body[:6] == b"Exif\x00\x00" and orientation is None:
            orientation = exif_orientation(body[6:])
        if marker in SOF_MARKERS:
            if frame is not None:
                raise _invalid(field, "JPEG with two SOF markers (libjpeg refuses it)")
            frame = _jpeg_frame(marker, body, field)
        elif marker == SOS:
            if frame is None:
                raise _invalid(field, "JPEG scan (SOS) before the frame header (SOF)")
            scans += 1
            if scans > limits.max_jpeg_scans:  # stop walking: refused anyway
                break
        pos += 2 + length
    if frame is None:
        raise _invalid(field, "truncated or malformed JPEG header (no SOF marker)")
    marker, h, w, comps = frame
    channels = 1 if len(comps) == 1 else 3  # libjpeg converts YCbCr and CMYK/YCCK to BGR
    buffer = _coefficient_bytes(h, w, comps) if (marker in PROGRESSIVE_SOF or scans > 1) else 0
    return ImageCost("jpeg", h, w, channels, np.dtype(np.uint8), buffer_bytes=buffer,
                     decode_work=max(scans, 1) * h * w, scans=max(scans, 1), orientation=orientation or 1)


APP1 = 0xE1  # (TAG_ORIENTATION: with the TIFF tags below; EXIF IFD0 uses TIFF's tag numbers)


def exif_orientation(tiff: bytes) -> int:
    """The Orientation (1-8) of an EXIF block (a little TIFF file: header, IFD0), 1 when absent
    or malformed: a bad EXIF block is not the image's problem, libjpeg ignores it too."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return 1
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        value = _Ifd(tiff, end, False, struct.unpack(end + "I", tiff[4:8])[0], "exif").scalar(TAG_ORIENTATION, 1,
                                                                                              bits=16)
    except InvalidImageError:
        return 1
    return value if 1 <= value <= 8 else 1


def _jpeg_frame(marker: int, body: bytes, field: str):
    if marker not in DECODABLE_SOF:
        raise _invalid(field, f"JPEG process SOF{marker - 0xC0} (hierarchical) is not decodable")
    if len(body) < 6:
        raise _invalid(field, "truncated JPEG frame header")
    precision, h, w, ncomp = struct.unpack(">BHHB", body[:6])
    if precision != 8:
        raise _invalid(field, f"{precision}-bit JPEG samples are not supported (8-bit only)")
    if h == 0 or w == 0:
        raise _invalid(field, f"JPEG frame of {h}x{w} pixels (DNL-defined heights are not supported)")
    if ncomp not in (1, 3, 4) or len(body) < 6 + 3 * ncomp:
        raise _invalid(field, f"JPEG with {ncomp} components (1, 3 or 4 expected)")
    comps = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(ncomp)]
    if any(not (1 <= hs <= 4 and 1 <= vs <= 4) for hs, vs in comps):
        raise _invalid(field, f"JPEG sampling factors {comps} outside 1..4")
    return marker, h, w, comps


def _coefficient_bytes(h: int, w: int, comps) -> int:
    """libjpeg's whole-image coefficient buffer: 64 ``JCOEF`` (2 bytes) per 8x8 block, blocks
    padded to whole MCUs."""
    hmax, vmax = max(c[0] for c in comps), max(c[1] for c in comps)
    mcu_x, mcu_y = math.ceil(w / (8 * hmax)), math.ceil(h / (8 * vmax))
    return sum(mcu_x * hs * mcu_y * vs * 128 for hs, vs in comps)


def jpeg_scan_count(data: bytes) -> int:
    """Upper bound on the scans in all JPEG streams in ``data``: the count of SOS markers (entropy-
    coded data cannot contain ``FF DA``; any other place only over-counts)."""
    return data.count(b"\xff\xda")


# -- TIFF -----------------------------------------------------------------------------------------
TAG_WIDTH, TAG_LENGTH, TAG_BITS, TAG_COMPRESSION, TAG_PHOTOMETRIC = 256, 257, 258, 259, 262
TAG_ORIENTATION, TAG_SPP, TAG_ROWS, TAG_PLANAR = 274, 277, 278, 284
TAG_TILE_W, TAG_TILE_H, TAG_EXTRA, TAG_SAMPLE_FORMAT = 322, 323, 338, 339
# type -> (struct code, size); the integer types libtiff's TIFFReadDirEntryLong/Short accept
TIFF_INT_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 6: ("b", 1), 8: ("h", 2), 9: ("i", 4), 13: ("I", 4),
                  16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8)}
TIFF_TYPE_SIZES = {2: 1, 5: 8, 7: 1, 10: 8, 11: 4, 12: 8, **{t: s for t, (_c, s) in TIFF_INT_TYPES.items()}}
# Compression schemes OpenCV's bundled libtiff decodes: none, CCITT RLE/G3/G4, LZW, JPEG, deflate
# (both codes), PackBits, NeXT, CCITT RLEW, ThunderScan, SGI LogLuv.
TIFF_COMPRESSIONS = {1, 2, 3, 4, 5, 7, 8, 32766, 32771, 32773, 32809, 32946, 34676, 34677}
PHOTOMETRIC_GREY, PHOTOMETRIC_RGB, PHOTOMETRIC_PALETTE, PHOTOMETRIC_LOGLUV = (0, 1), 2, 3, 32845
MAX_TILE_SIDE = 1 << 24  # grfmt_tiff.cpp: TILE_MAX_WIDTH / TILE_MAX_HEIGHT
MAX_TILE_BYTES = 1 << 30  # grfmt_tiff.cpp: MAX_TILE_SIZE ("buffer_size is too large: >= 1Gb")


class _Ifd:
    """One image file directory: the first entry of each tag (libtiff ignores later duplicates)."""

    def __init__(self, data: bytes, end: str, big: bool, offset: int, field: str):
        self.data, self.end, self.big, self.field = data, end, big, field
        head, entry = (8, 20) if big else (2, 12)
        if offset < 8 or offset + head > len(data):
            raise _invalid(field, "TIFF directory offset outside the file")
        (count,) = struct.unpack(end + ("Q" if big else "H"), data[offset:offset + head])
        first = offset + head
        if first + count * entry + (8 if big else 4) > len(data):
            raise _invalid(field, "truncated TIFF directory")
        self.entries: dict[int, tuple[int, int, bytes]] = {}
        for k in range(count):
            at = first + k * entry
            if big:
                tag, typ, n = struct.unpack(end + "HHQ", data[at:at + 12])
                raw = data[at + 12:at + 20]
            else:
                tag, typ, n = struct.unpack(end + "HHI", data[at:at + 8])
                raw = data[at + 8:at + 12]
            self.entries.setdefault(tag, (typ, n, raw))
        at = first + count * entry
        (self.next,) = struct.unpack(end + ("Q" if big else "I"), data[at:at + (8 if big else 4)])

    def values(self, tag: int, limit: int = 1 << 16) -> list[int] | None:
        """The integer values of ``tag`` (inline or at their offset), ``None`` when absent."""
        if tag not in self.entries:
            return None
        typ, n, raw = self.entries[tag]
        if typ not in TIFF_INT_TYPES:
            raise _invalid(self.field, f"TIFF tag {tag} has type {typ}, not an integer type")
        code, size = TIFF_INT_TYPES[typ]
        if n == 0 or n > limit:
            raise _invalid(self.field, f"TIFF tag {tag} has {n} values")
        nbytes = n * size
        if nbytes <= len(raw):
            blob = raw[:nbytes]
        else:
            (off,) = struct.unpack(self.end + ("Q" if self.big else "I"), raw)
            if off + nbytes > len(self.data):
                raise _invalid(self.field, f"TIFF tag {tag} points outside the file")
            blob = self.data[off:off + nbytes]
        vals = list(struct.unpack(f"{self.end}{n}{code}", blob))
        if any(v < 0 for v in vals):
            raise _invalid(self.field, f"TIFF tag {tag} is negative")
        return vals

    def scalar(self, tag: int, default: int | None, bits: int = 32, per_sample: bool = False) -> int | None:
        """One value as libtiff reads it: count 1 (or, ``per_sample``, all values equal), within
        ``bits`` (a LONG8 width over 2^32-1 is an error in libtiff, not a truncation)."""
        vals = self.values(tag)
        if vals is None:
            return default
        if len(vals) != 1 and not (per_sample and len(set(vals)) == 1):
            raise _invalid(self.field, f"TIFF tag {tag} has {len(vals)} different values")
        if vals[0] >= 1 << bits:
            raise _invalid(self.field, f"TIFF tag {tag} = {vals[0]} is out of range")
        return vals[0]


def _probe_tiff(data: bytes, limits: ProbeLimits, field: str) -> ImageCost:
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        if len(data) < 16 or struct.unpack(end + "HH", data[4:8]) != (8, 0):
            raise _invalid(field, "malformed BigTIFF header")
        (first,) = struct.unpack(end + "Q", data[8:16])
    else:
        if len(data) < 8:
            raise _invalid(field, "truncated TIFF header")
        (first,) = struct.unpack(end + "I", data[4:8])
    ifd = _Ifd(data, end, big, first, field)
    pages = _walk_ifds(ifd, limits, field)
    return dataclasses.replace(_tiff_cost(ifd, data, field), pages=pages)  # (OpenCV applies a TIFF's orientation)


def _walk_ifds(ifd: _Ifd, limits: ProbeLimits, field: str) -> int:
    """Follow the IFD chain (libtiff counts every directory on open) at most ``max_tiff_ifds``
    deep; returns the directories found."""
    seen, nxt = 1, ifd.next
    offsets = {nxt}
    head = 8 if ifd.big else 2
    while nxt:
        if seen >= limits.max_tiff_ifds:
            raise _invalid(field, f"more than {limits.max_tiff_ifds} TIFF directories")
        if nxt + head > len(ifd.data):
            return seen  # libtiff stops at a bad offset
        (count,) = struct.unpack(ifd.end + ("Q" if ifd.big else "H"), ifd.data[nxt:nxt + head])
        at = nxt + head + count * (20 if ifd.big else 12)
        size = 8 if ifd.big else 4
        if at + size > len(ifd.data):
            return seen
        (nxt,) = struct.unpack(ifd.end + ("Q" if ifd.big else "I"), ifd.data[at:at + size])
        seen += 1
        if nxt in offsets:
            return seen  # a loop: libtiff detects it and stops
        offsets.add(nxt)
    return seen


def _tiff_cost(ifd: _Ifd, data: bytes, field: str) -> ImageCost:
    w, h = ifd.scalar(TAG_WIDTH, None), ifd.scalar(TAG_LENGTH, None)
    if w is None or h is None:
        raise _invalid(field, "TIFF directory without ImageWidth/ImageLength")
    if w == 0 or h == 0:
        raise _invalid(field, f"TIFF image of {h}x{w} pixels")
    spp = ifd.scalar(TAG_SPP, 1, bits=16)
    photometric = ifd.scalar(TAG_PHOTOMETRIC, PHOTOMETRIC_RGB if spp >= 3 else 1, bits=16)
    bits = ifd.scalar(TAG_BITS, 1, bits=16, per_sample=True)
    fmt = ifd.scalar(TAG_SAMPLE_FORMAT, 1, bits=16, per_sample=True)
    compression = ifd.scalar(TAG_COMPRESSION, 1, bits=16)
    orientation = ifd.scalar(TAG_ORIENTATION, 1, bits=16)
    if compression not in TIFF_COMPRESSIONS:
        raise _invalid(field, f"TIFF compression {compression} is not one OpenCV decodes")
    if not 1 <= spp <= 4:
        raise _invalid(field, f"TIFF with {spp} samples per pixel (1 to 4 supported)")
    dtype, channels = _tiff_output_type(photometric, spp, bits, fmt, field)
    tiled = TAG_TILE_W in ifd.entries or TAG_TILE_H in ifd.entries
    if tiled:
        tw, th = ifd.scalar(TAG_TILE_W, None), ifd.scalar(TAG_TILE_H, None)
        if not tw or not th:
            raise _invalid(field, "TIFF with a missing or zero TileWidth/TileLength")
    else:
        tw, th = w, ifd.scalar(TAG_ROWS, 0)
        if th in (0, 2**32 - 1):
            th = h
    if tw > MAX_TILE_SIDE or th > MAX_TILE_SIDE:
        raise _invalid(field, f"TIFF tile or strip of {th}x{tw} pixels (OpenCV allows up to {MAX_TILE_SIDE})")
    buffer = _tiff_buffer(ifd, tw, th, h, tiled, spp, bits, photometric, dtype.itemsize, field)
    if orientation in (5, 6, 7, 8):  # OpenCV transposes the decoded image
        h, w = w, h
    work = h * w
    if compression == 7:  # JPEG-compressed strips/tiles: each SOS visits at most one tile
        work = max(work, jpeg_scan_count(data) * tw * th)
    return ImageCost("tiff", h, w, channels, dtype, buffer_bytes=buffer, decode_work=work,
                     alpha=channels == 4 and photometric == PHOTOMETRIC_RGB and _declared_extra(ifd) != 0)


def _declared_extra(ifd: _Ifd) -> int | None:
    """The first ExtraSamples value (0 unspecified, 1 associated alpha, 2 unassociated alpha),
    ``None`` when the tag is absent or malformed (OpenCV's own RGBA TIFFs leave it out)."""
    try:
        return (ifd.values(TAG_EXTRA) or [None])[0]
    except InvalidImageError:
        return None


def _tiff_output_type(photometric: int, spp: int, bits: int, fmt: int, field: str):
    """``TiffDecoder::readHeader`` (OpenCV 5): the decoded dtype and channel count."""
    grey = photometric in PHOTOMETRIC_GREY
    if photometric == PHOTOMETRIC_LOGLUV and spp == 3:
        return np.dtype(np.float32), 3
    if bits > 8 and (photometric > 2 or spp not in (1, 3, 4)):
        bits = 8  # read through libtiff's 8-bit RGBA interface
    if fmt not in (1, 2, 3):
        raise _invalid(field, f"TIFF SampleFormat {fmt} is not supported")
    if bits in (1, 4, 8):
        if fmt == 3:
            raise _invalid(field, f"TIFF {bits}-bit floating-point samples")
        if bits == 4 and photometric != PHOTOMETRIC_PALETTE:
            raise _invalid(field, "TIFF 4-bit samples are only supported for palette images")
        channels = 3 if photometric == PHOTOMETRIC_PALETTE else (1 if grey else spp)
        if channels == 2:
            raise _invalid(field, "TIFF with 2 colour samples per pixel (OpenCV reads 1, 3 or 4)")
        return np.dtype(np.int8 if fmt == 2 else np.uint8), channels
    if bits in (10, 12, 14, 16):
        if fmt == 3:
            raise _invalid(field, "TIFF 16-bit floating-point samples are not supported")
        return np.dtype(np.int16 if fmt == 2 else np.uint16), (1 if grey else spp)
    if bits in (32, 64):
        kind = {1: "uint", 2: "int", 3: "float"}[fmt]
        return np.dtype(f"{kind}{bits}"), spp
    raise _invalid(field, f"TIFF with {bits} bits per sample (1, 4, 8, 10-16, 32 or 64 supported)")


def _tiff_buffer(ifd: _Ifd, tw: int, th: int, h: int, tiled: bool, spp: int, bits: int, photometric: int,
                 itemsize: int, field: str) -> int:
    """``TiffDecoder::readData``'s tile/strip buffer in bytes (see the module docstring)."""
    if itemsize == 1:
        rgba = tw * th * 4
        planar = ifd.scalar(TAG_PLANAR, 1, bits=16)
        extra = ifd.values(TAG_EXTRA) or []
        scanline = (rgba >= MAX_TILE_BYTES * 95 // 100 and not tiled and spp in (1, 3, 4) and bits in (8, 16)
                    and th == h and (photometric in PHOTOMETRIC_GREY or photometric == PHOTOMETRIC_RGB)
                    and planar != 2 and (spp != 4 or extra == [1]))
        src = tw * spp * bits // 8 if scanline else rgba  # TIFFReadScanline: one row
    else:
        src = th * math.ceil(spp * tw * max(bits, 8) / 8)
        if bits < 16:  # 10/12/14-bit samples unpacked to 16
            src += th * math.ceil(spp * tw * 16 / 8)
    if src >= MAX_TILE_BYTES:
        raise _too_large(f"{field}: a TIFF tile or strip buffer of {src} bytes (OpenCV refuses 1 GiB)",
                         field=field)
    return src


PROBES = {"png": _probe_png, "jpeg": _probe_jpeg, "tiff": _probe_tiff}
