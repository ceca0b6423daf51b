"""Image sizes from file headers (PNG, JPEG, TIFF), read before anything is decoded.

The batch client refuses an input whose header claims more than ``--max-pixels`` (default: the
server's ``WARPSVC_MAX_INPUT_PIXELS``, 2^25) *before* decoding it, so a small file claiming a huge
image costs nothing. No OpenCV here (the server-target path does not decode at all).

* PNG: the IHDR chunk (must be the first chunk).
* JPEG: the first SOFn segment's height and width.
* TIFF (classic and BigTIFF, both byte orders): the first IFD -- the page OpenCV decodes -- read
  as libtiff reads it: the *first* ImageWidth/ImageLength tag wins over duplicates, SHORT, LONG
  and LONG8 values; a TileWidth x TileLength larger than the limit is refused too, since
  libtiff allocates one whole tile whatever the image size (strips are capped at the image).
"""

from __future__ import annotations

import struct

DEFAULT_MAX_PIXELS = 1 << 25


class ImageHeaderError(ValueError):
    """An input whose header is missing, malformed, or claims too many pixels."""


def sniff(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _png(data: bytes):
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return (h, w), h * w


def _jpeg(data: bytes):
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (h, w), h * w
        i += 2 + length
    return None


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
WIDTH, LENGTH, TILE_WIDTH, TILE_LENGTH = 256, 257, 322, 323


def _tiff(data: bytes):
    end = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    head = 16 if big else 8
    if len(data) < head:
        return None
    ifd = struct.unpack(end + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
    count_fmt, entry, value_at = ("Q", 20, 12) if big else ("H", 12, 8)
    csize = struct.calcsize(count_fmt)
    if ifd + csize > len(data):
        return None
    (count,) = struct.unpack(end + count_fmt, data[ifd:ifd + csize])
    tags: dict[int, int] = {}
    for k in range(count):
        off = ifd + csize + entry * k
        if off + entry > len(data):
            return None
        tag, typ = struct.unpack(end + "HH", data[off:off + 4])
        if tag in tags or tag not in (WIDTH, LENGTH, TILE_WIDTH, TILE_LENGTH):
            continue  # libtiff keeps the first of duplicated tags
        fmt = _TIFF_TYPES.get(typ)
        if fmt is None or (fmt == "Q" and not big):
            return None
        (tags[tag],) = struct.unpack(end + fmt, data[off + value_at:off + value_at + struct.calcsize(fmt)])
    if WIDTH not in tags or LENGTH not in tags:
        return None
    h, w = tags[LENGTH], tags[WIDTH]
    cost = h * w
    if TILE_WIDTH in tags or TILE_LENGTH in tags:
        cost = max(cost, tags.get(TILE_WIDTH, 0) * tags.get(TILE_LENGTH, 0))
    return (h, w), cost


READERS = {"png": _png, "jpeg": _jpeg, "tiff": _tiff}


def check(data: bytes, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` from the header; :class:`ImageHeaderError` when the file is not a
    PNG/JPEG/TIFF, the header is malformed, or it claims more than ``max_pixels`` (image or
    tile)."""
    fmt = sniff(data)
    if fmt is None:
        raise ImageHeaderError("input: not a PNG, JPEG or TIFF file (unrecognised signature)")
    found = READERS[fmt](data)
    if found is None:
        raise ImageHeaderError(f"input: truncated or malformed {fmt.upper()} header")
    (h, w), cost = found
    if cost > max_pixels or h * w == 0:
        what = f"{h}x{w} = {h * w} pixels" if h * w >= cost else f"a tile of {cost} pixels"
        raise ImageHeaderError(f"input: the {fmt.upper()} header claims {what}, over --max-pixels {max_pixels}"
                               if h * w else f"input: the {fmt.upper()} header claims an empty image")
    return h, w
