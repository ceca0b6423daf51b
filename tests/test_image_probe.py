"""``warpsvc_api.image_probe`` (the one header probe: server and ``warpsvc-batch``) agrees with ``cv2.imdecode`` on ordinary files
(the oracle: shape and dtype of the decoded array) and refuses, before decoding, each hostile file
of issue 13 (duplicate TIFF size tags, LONG8 size tags, a 1x1 image with an 8192^2 tile, claims
over OpenCV's 2^30-pixel cap, progressive JPEGs with hundreds of scans)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from warpsvc.core.errors import ImageTooLargeError, InvalidImageError
from warpsvc.server import image_probe
from warpsvc_api.image_probe import ImageCost, ProbeLimits, probe_image, sniff

ALL_DTYPES = ProbeLimits(dtypes=("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64",
                                 "uint64", "int64"))
rng = np.random.default_rng(20261201)


def _decoded(data: bytes):
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return None if img is None else (img.shape, img.dtype)


def _probed(data: bytes, limits=ALL_DTYPES):
    cost = probe_image(data, limits)
    return cost.shape, cost.dtype


# -- ordinary files: the probe equals the decoder -------------------------------------------------
def _ordinary_files():
    out = []
    for dt in (np.uint8, np.uint16, np.float32, np.float64):
        for ch in (1, 3, 4):
            a = np.squeeze((rng.random((13, 17, ch)) * 200).astype(dt))
            if dt in (np.uint8, np.uint16):
                out.append((f"cv-png-{np.dtype(dt).name}-{ch}", cv2.imencode(".png", a)[1].tobytes()))
            if dt == np.uint8 and ch != 4:
                out.append((f"cv-jpeg-{ch}", cv2.imencode(".jpg", a)[1].tobytes()))
            out.append((f"cv-tiff-{np.dtype(dt).name}-{ch}", cv2.imencode(".tiff", a)[1].tobytes()))
            photometric = "minisblack" if ch == 1 else "rgb"
            for name, kw in (("tifffile", {}), ("tifffile-bigtiff-be", {"bigtiff": True, "byteorder": ">"}),
                             ("tifffile-deflate", {"compression": "zlib"})):
                buf = io.BytesIO()
                tifffile.imwrite(buf, a, photometric=photometric, **kw)
                out.append((f"{name}-{np.dtype(dt).name}-{ch}", buf.getvalue()))
            if dt != np.uint8:  # (OpenCV cannot read tifffile's 8-bit tiles: imdecode returns None)
                buf = io.BytesIO()
                tifffile.imwrite(buf, a, photometric=photometric, tile=(16, 16))
                out.append((f"tifffile-tiled-{np.dtype(dt).name}-{ch}", buf.getvalue()))
    for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK", "YCbCr"):
        for fmt, kw in (("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("TIFF", {}),
                        ("TIFF", {"compression": "tiff_deflate"}), ("TIFF", {"compression": "jpeg"}),
                        ("TIFF", {"compression": "packbits"}), ("TIFF", {"compression": "tiff_lzw"})):
            buf = io.BytesIO()
            try:
                Image.new(mode, (23, 19), color=None).save(buf, fmt, **kw)
            except (OSError, ValueError, KeyError):
                continue  # Pillow cannot write this mode in this format
            out.append((f"pil-{fmt}-{mode}-{'-'.join(map(str, kw.values())) or 'plain'}", buf.getvalue()))
    for name, kw in (("p-trns", {"transparency": 0}),):
        buf = io.BytesIO()
        Image.new("P", (9, 7)).save(buf, "PNG", **kw)
        out.append((f"pil-png-{name}", buf.getvalue()))
    for name, mode, trns in (("l-trns", "L", 0), ("rgb-trns", "RGB", (0, 0, 0))):
        buf = io.BytesIO()
        Image.new(mode, (9, 7)).save(buf, "PNG", transparency=trns)
        out.append((f"pil-png-{name}", buf.getvalue()))
    for mode, default_image in (("RGB", True), ("RGBA", False)):  # animated PNG: OpenCV decodes one frame
        frames = [Image.new(mode, (11, 9), color=(40 * i,) * len(mode)) for i in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:], default_image=default_image)
        out.append((f"pil-apng-{mode}-default-{default_image}", buf.getvalue()))
    return out


ORDINARY = _ordinary_files()


@pytest.mark.parametrize("data", [d for _, d in ORDINARY], ids=[n for n, _ in ORDINARY])
def test_probe_matches_imdecode_on_ordinary_files(data):
    assert _decoded(data) is not None, "the oracle must decode every ordinary file"
    assert _probed(data) == _decoded(data)


def test_ordinary_files_cover_the_formats_and_dtypes():
    """The oracle table above really spans PNG/JPEG/TIFF x 8/16-bit/float x 1/3/4 channels."""
    seen = {(probe_image(d, ALL_DTYPES).format, probe_image(d, ALL_DTYPES).dtype.name,
             probe_image(d, ALL_DTYPES).channels) for _, d in ORDINARY}
    for want in [("png", "uint8", 1), ("png", "uint16", 3), ("png", "uint8", 4), ("jpeg", "uint8", 1),
                 ("jpeg", "uint8", 3), ("tiff", "uint16", 4), ("tiff", "float32", 3), ("tiff", "float64", 1)]:
        assert want in seen, want


def test_png_channels_follow_opencv_not_the_colour_type():
    """Grey+alpha decodes to 4 channels, RGB/palette with tRNS to 4, grey with tRNS to 1."""
    by_name = dict(ORDINARY)
    assert probe_image(by_name["pil-PNG-LA-plain"]).channels == 4
    assert probe_image(by_name["pil-png-p-trns"]).channels == 4
    assert probe_image(by_name["pil-png-rgb-trns"]).channels == 4
    assert probe_image(by_name["pil-png-l-trns"]).channels == 1


def test_animated_png_buffers_counted():
    data = dict(ORDINARY)["pil-apng-RGB-default-True"]
    assert b"acTL" in data
    cost = probe_image(data)
    assert cost.buffer_bytes == 2 * cost.output_bytes == 2 * 9 * 11 * 3


def test_jpeg_marker_search_through_fill_bytes():
    """0xFF fill and 0xFF00 stuffing in the entropy data are not markers; the EOI after them is."""
    base = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes()
    eoi = base.rindex(b"\xff\xd9")
    for filler in (b"\xff" * 5000, b"\xff\x00" * 5000, b"\xff\xd3" * 100):
        data = base[:eoi] + filler + base[eoi:]
        assert _decoded(data) == ((16, 16), np.uint8)
        assert probe_image(data).scans == 1
    extra_scan = base[:eoi] + b"\xff" * 3000 + base[base.index(b"\xff\xda"):eoi] + base[eoi:]
    assert probe_image(extra_scan).scans == 2


def test_server_dtypes_only_by_default():
    """An int32 TIFF (Pillow mode I) decodes, but the server takes uint8/16 and float32/64 only:
    refused before decoding, naming the field."""
    data = dict(ORDINARY)["pil-TIFF-I-plain"]
    assert _decoded(data)[1] == np.int32
    with pytest.raises(InvalidImageError) as info:
        probe_image(data, field="image.encoded")
    assert info.value.field == "image.encoded.data" and "int32" in info.value.message


# -- a TIFF writer for hostile directories ----------------------------------------------------------
SHORT, LONG, LONG8 = 3, 4, 16


def _tiff(entries, *, pixels: bytes = b"", big=False, end="<", extra_ifds=0, loop=False) -> bytes:
    """A TIFF whose first IFD has ``entries`` [(tag, type, [values])] written in the given order
    (duplicates kept), values inline or after the directory; ``pixels`` appended and pointed to by
    StripOffsets (tag 273) when the entries do not set it."""
    fmt = {SHORT: "H", LONG: "I", LONG8: "Q"}
    inline = 8 if big else 4
    head = (b"II" if end == "<" else b"MM") + (struct.pack(end + "HHHQ", 43, 8, 0, 16) if big
                                               else struct.pack(end + "HI", 42, 8))
    ifd_at = len(head)
    entry_size, count_fmt, next_fmt = (20, "Q", "Q") if big else (12, "H", "I")
    n = len(entries)
    ifd_len = struct.calcsize(end + count_fmt) + n * entry_size + struct.calcsize(end + next_fmt)
    blob_at = ifd_at + ifd_len
    blobs = b""
    body = struct.pack(end + count_fmt, n)
    for tag, typ, values in entries:
        raw = struct.pack(end + fmt[typ] * len(values), *values)
        if len(raw) <= inline:
            value = raw.ljust(inline, b"\x00")
        else:
            value = struct.pack(end + ("Q" if big else "I"), blob_at + len(blobs))
            blobs += raw
        body += struct.pack(end + ("HHQ" if big else "HHI"), tag, typ, len(values)) + value
    chain_at = blob_at + len(blobs)
    nxt = chain_at if extra_ifds else 0
    body += struct.pack(end + next_fmt, nxt)
    chain = b""
    for k in range(extra_ifds):  # empty directories: count 0, next -> the following one
        here = chain_at + len(chain)
        following = (chain_at if loop else here + struct.calcsize(end + count_fmt + next_fmt)) \
            if k < extra_ifds - 1 or loop else 0
        chain += struct.pack(end + count_fmt + next_fmt, 0, following)
    data = head + body + blobs + chain
    return data + pixels


def _strip_entries(h, w, *, spp=1, bits=8, photometric=1, offset=None, size_type=LONG, rows=None):
    """Entries of an uncompressed, single-strip image; the pixel data follows the directory."""
    return [(256, size_type, [w]), (257, size_type, [h]), (258, SHORT, [bits] * spp), (259, SHORT, [1]),
            (262, SHORT, [photometric]), (273, LONG, [offset or 0]), (277, SHORT, [spp]),
            (278, LONG, [min(rows or h, 2**32 - 1)]), (279, LONG, [min(h * w * spp * bits // 8, 2**32 - 1)])]


def _with_pixels(entries, pixels: bytes, **kw) -> bytes:
    """Two passes: lay the file out, then point StripOffsets at the appended pixels."""
    first = _tiff(entries, **kw)
    fixed = [(t, typ, [len(first)] if t == 273 else v) for t, typ, v in entries]
    return _tiff(fixed, pixels=pixels, **kw)


def test_tiff_writer_is_an_oracle_match():
    """The hand-written TIFF decodes with OpenCV exactly as the probe says (writer self-check)."""
    img = (np.arange(6 * 10) % 251).astype(np.uint8).reshape(6, 10)
    data = _with_pixels(_strip_entries(6, 10), img.tobytes())
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), img)
    assert _probed(data) == ((6, 10), np.uint8)


# -- hostile TIFF ---------------------------------------------------------------------------------------
def test_duplicate_size_tags_first_wins_like_libtiff():
    """Oracle: a small file with ImageWidth/ImageLength twice decodes at the FIRST values."""
    img = (np.arange(6 * 10) % 251).astype(np.uint8).reshape(6, 10)
    entries = _strip_entries(6, 10)
    dup = entries[:2] + [(256, LONG, [3]), (257, LONG, [2])] + entries[2:]
    data = _with_pixels(dup, img.tobytes())
    assert _decoded(data) == ((6, 10), np.uint8)
    assert _probed(data) == ((6, 10), np.uint8)


def test_duplicate_size_tags_cannot_hide_a_bomb():
    """First ImageWidth/Length 16384^2 (what libtiff decodes), later duplicates 1x1 (what the old
    reader saw): refused as too large before decoding."""
    entries = _strip_entries(16384, 16384)
    dup = entries[:2] + [(256, LONG, [1]), (257, LONG, [1])] + entries[2:]
    data = _tiff(dup, pixels=bytes(64))
    with pytest.raises(ImageTooLargeError) as info:
        probe_image(data, ProbeLimits(max_pixels=1 << 25), field="image.encoded")
    assert info.value.field == "image.encoded" and "16384x16384" in info.value.message


@pytest.mark.parametrize("big", [False, True], ids=["classic", "bigtiff"])
@pytest.mark.parametrize("end", ["<", ">"], ids=["II", "MM"])
@pytest.mark.parametrize("size_type", [SHORT, LONG, LONG8], ids=["SHORT", "LONG", "LONG8"])
def test_size_tag_types_and_byte_orders(big, end, size_type):
    """ImageWidth/ImageLength typed SHORT, LONG or LONG8 (an 8-byte value stored after the
    directory in a classic TIFF), both byte orders, classic and BigTIFF: the probe reads the value
    libtiff reads, checked against the decoded array."""
    img = (np.arange(5 * 7) % 251).astype(np.uint8).reshape(5, 7)
    data = _with_pixels(_strip_entries(5, 7, size_type=size_type), img.tobytes(), big=big, end=end)
    assert _decoded(data) == ((5, 7), np.uint8)
    assert _probed(data) == ((5, 7), np.uint8)


def test_long8_size_tag_bomb():
    """A LONG8 width of 16384 (the old reader took the 4-byte offset field as the value)."""
    data = _tiff(_strip_entries(16384, 16384, size_type=LONG8), pixels=bytes(64))
    with pytest.raises(ImageTooLargeError):
        probe_image(data)


def test_long8_size_over_32_bits_is_invalid_not_truncated():
    data = _tiff(_strip_entries(1, (1 << 32) + 1, size_type=LONG8), pixels=bytes(64))
    with pytest.raises(InvalidImageError, match="out of range"):
        probe_image(data)


def test_one_pixel_image_with_an_8192_tile():
    """Issue 13: a 1x1 image whose tile is 8192^2 makes OpenCV allocate a 256 MiB RGBA tile
    buffer. Refused before decoding; ordinary 256x256 tiles on a small image are fine."""
    entries = [(256, SHORT, [1]), (257, SHORT, [1]), (258, SHORT, [8]), (259, SHORT, [1]), (262, SHORT, [1]),
               (277, SHORT, [1]), (322, LONG, [8192]), (323, LONG, [8192]), (324, LONG, [0]), (325, LONG, [1])]
    with pytest.raises(ImageTooLargeError) as info:
        probe_image(_tiff(entries, pixels=b"\x00"), field="image.encoded")
    assert "buffer" in info.value.message and info.value.field == "image.encoded"
    small = [(t, typ, [256] if t in (322, 323) else v) for t, typ, v in entries]
    cost = probe_image(_tiff(small, pixels=b"\x00"))
    assert cost.buffer_bytes == 256 * 256 * 4 and cost.shape == (1, 1)


def test_rows_per_strip_far_beyond_the_height():
    """RowsPerStrip is not clamped to the height by OpenCV: 2^20 rows of a 4096-wide, 2-row image
    would need a 16 GiB strip buffer (OpenCV: cv2.error 'buffer_size is too large')."""
    data = _tiff(_strip_entries(2, 4096, rows=1 << 20), pixels=bytes(8192))
    with pytest.raises(ImageTooLargeError):
        probe_image(data)


def test_over_opencv_pixel_cap_is_too_large_not_a_cv2_error():
    """Over 2^30 pixels (with the server's limit raised even higher): OpenCV itself raises
    ``cv2.error`` (the server answered INTERNAL); the probe says RESOURCE_EXHAUSTED first."""
    data = _tiff(_strip_entries(40000, 40000), pixels=bytes(64))
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    with pytest.raises(ImageTooLargeError):
        probe_image(data, ProbeLimits(max_pixels=1 << 32))


def test_side_over_opencv_cap():
    """2^21 x 1 is only 2 Mpx, but OpenCV refuses sides over 2^20 with cv2.error."""
    data = _tiff(_strip_entries(1, 1 << 21), pixels=bytes(1 << 21))
    with pytest.raises(cv2.error):
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    with pytest.raises(ImageTooLargeError, match="side"):
        probe_image(data)


@pytest.mark.parametrize("spp", [0, 5, 9])
def test_samples_per_pixel_outside_1_to_4(spp):
    """OpenCV's normalizeChannelsNumber raises cv2.error outside 1..4: refused as invalid."""
    entries = [(t, typ, [spp] if t == 277 else v) for t, typ, v in _strip_entries(4, 4, spp=max(spp, 1))]
    with pytest.raises(InvalidImageError, match="samples per pixel"):
        probe_image(_tiff(entries, pixels=bytes(64)))


def test_unsupported_compression_refused():
    entries = [(t, typ, [50000] if t == 259 else v) for t, typ, v in _strip_entries(4, 4)]
    with pytest.raises(InvalidImageError, match="compression 50000"):
        probe_image(_tiff(entries, pixels=bytes(16)))


@pytest.mark.parametrize("compression,mode", [("tiff_ccitt", "1"), ("group3", "1"), ("group4", "1"),
                                              ("tiff_lzw", "RGB"), ("tiff_jpeg", "L"), ("tiff_adobe_deflate", "L"),
                                              ("tiff_deflate", "RGB"), ("packbits", "1")])
def test_tiff_compressions_opencv_decodes_are_accepted(compression, mode):
    buf = io.BytesIO()
    Image.new(mode, (16, 8)).save(buf, "TIFF", compression=compression)
    assert _decoded(buf.getvalue()) is not None
    assert _probed(buf.getvalue()) == _decoded(buf.getvalue())


@pytest.mark.parametrize("compression,code", [("lzma", 34925), ("zstd", 50000)])
def test_tiff_compressions_opencv_cannot_decode_are_refused(compression, code):
    """OpenCV's bundled libtiff has no LZMA/ZSTD codec (imdecode returns None): refused by name."""
    buf = io.BytesIO()
    Image.new("L", (16, 8)).save(buf, "TIFF", compression=compression)
    assert _decoded(buf.getvalue()) is None
    with pytest.raises(InvalidImageError, match=f"compression {code}"):
        probe_image(buf.getvalue())


def test_ifd_chain_bounded_and_loops_survive():
    img = np.zeros((4, 4), np.uint8)
    ok = _with_pixels(_strip_entries(4, 4), img.tobytes(), extra_ifds=5)
    assert probe_image(ok).shape == (4, 4)
    looped = _with_pixels(_strip_entries(4, 4), img.tobytes(), extra_ifds=3, loop=True)
    assert probe_image(looped).shape == (4, 4)
    long_chain = _with_pixels(_strip_entries(4, 4), img.tobytes(), extra_ifds=50)
    with pytest.raises(InvalidImageError, match="directories"):
        probe_image(long_chain, ProbeLimits(max_tiff_ifds=20))


def test_orientation_transposes_like_opencv():
    """Orientation 5..8: OpenCV transposes the decoded TIFF, so (H, W) swap."""
    img = (np.arange(5 * 7) % 251).astype(np.uint16).reshape(5, 7)
    entries = _strip_entries(5, 7, bits=16) + [(274, SHORT, [6])]
    entries.sort(key=lambda e: e[0])
    data = _with_pixels(entries, img.tobytes())
    assert _decoded(data) == ((7, 5), np.uint16)
    assert _probed(data) == ((7, 5), np.uint16)


# -- JPEG scans -----------------------------------------------------------------------------------------
def _progressive(mode="RGB", size=(64, 48)) -> bytes:
    arr = (rng.random((size[1], size[0], 3 if mode == "RGB" else 1)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.squeeze(arr), mode=None).convert(mode).save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def _scan_segments(data: bytes) -> tuple[int, int]:
    """(start of the last SOS, start of EOI) by a plain search: the last scan's bytes."""
    return data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")


@pytest.mark.parametrize("mode,scans", [("RGB", 10), ("L", 6)])
def test_standard_progressive_scan_counts(mode, scans):
    """libjpeg's ``jpeg_simple_progression`` writes 10 scans for YCbCr and 6 for grey. The
    coefficient buffer, by hand: grey 64x48 is 8x6 blocks of 128 bytes = 6144; Pillow's colour
    default is 4:2:0, MCUs of 16x16: 4x3 MCUs, Y 2x2 blocks each (6144) + Cb, Cr 1 block each
    (2 x 1536) = 9216."""
    cost = probe_image(_progressive(mode))
    assert cost.scans == scans and cost.decode_work == scans * 64 * 48
    assert cost.buffer_bytes == {"RGB": 9216, "L": 6144}[mode]


def test_baseline_has_one_scan_and_no_coefficient_buffer():
    cost = probe_image(cv2.imencode(".jpg", np.zeros((40, 56, 3), np.uint8))[1].tobytes())
    assert cost.scans == 1 and cost.buffer_bytes == 0 and cost.shape == (40, 56, 3)


def test_progressive_jpeg_with_hundreds_of_scans_refused():
    """Issue 13: the last scan repeated 400 times (libjpeg decodes it, spending one pass over the
    image per scan) -- refused by the scan cap, and by the work budget at a lower cap."""
    data = _progressive()
    start, eoi = _scan_segments(data)
    hostile = data[:eoi] + data[start:eoi] * 400 + data[eoi:]
    assert _decoded(hostile) == ((48, 64, 3), np.uint8)  # OpenCV really decodes it
    with pytest.raises(ImageTooLargeError, match="scans") as info:
        probe_image(hostile, field="image.encoded")
    assert info.value.field == "image.encoded"
    limits = ProbeLimits(max_pixels=64 * 48 * 4, max_jpeg_scans=10_000, max_scan_passes=16)
    with pytest.raises(ImageTooLargeError, match="budget"):
        probe_image(hostile, limits)
    assert probe_image(data, limits).scans == 10


def test_jpeg_scans_inside_an_exif_thumbnail_do_not_count():
    """An APP1 segment holding a whole JPEG (a thumbnail) is skipped by its length."""
    data = _progressive()
    thumb = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes()
    app1 = b"\xff\xe1" + struct.pack(">H", len(thumb) + 2) + thumb
    with_thumb = data[:2] + app1 + data[2:]
    assert _decoded(with_thumb) == ((48, 64, 3), np.uint8)
    assert probe_image(with_thumb).scans == 10 and probe_image(with_thumb).shape == (48, 64, 3)


def test_jpeg_many_segments_bounded():
    data = _progressive()
    com = b"\xff\xfe\x00\x02" * 50
    with pytest.raises(InvalidImageError, match="segments"):
        probe_image(data[:2] + com + data[2:], ProbeLimits(max_segments=20))


def test_tiff_with_jpeg_compression_counts_scans():
    """JPEG-in-TIFF: every SOS marker in the file may cost a pass over one strip."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "TIFF", compression="jpeg")
    data = buf.getvalue()
    cost = probe_image(data)
    assert cost.shape == (48, 64, 3) and cost.decode_work >= 64 * 48
    n_sos = data.count(b"\xff\xda")
    padded = data + b"\xff\xda\x00\x02" * 2000  # SOS markers after the image: an upper bound
    assert n_sos >= 1 and probe_image(padded).decode_work >= (n_sos + 2000) * 64  # at least a row each
    with pytest.raises(ImageTooLargeError, match="budget"):
        probe_image(padded, ProbeLimits(max_pixels=64 * 48, max_scan_passes=16))


# -- robustness: mutated headers never raise anything but the two core errors ------------------------
SEEDS = [d for n, d in ORDINARY if n.startswith(("cv-", "pil-PNG", "pil-JPEG"))][:12]


@settings(derandomize=True, database=None, deadline=None, max_examples=300,
          suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, len(SEEDS) - 1),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 4000))
def test_mutated_headers_give_a_cost_or_a_core_error(which, edits, cut):
    data = bytearray(SEEDS[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[:max(cut, 4)])
    try:
        cost = probe_image(data, ALL_DTYPES)
    except (InvalidImageError, ImageTooLargeError):
        return
    assert isinstance(cost, ImageCost) and cost.pixels >= 1 and cost.decode_bytes >= cost.output_bytes
    decoded = _decoded(data)
    if decoded is not None:  # whatever OpenCV manages to decode has the shape the probe said
        assert decoded[0] == cost.shape, (decoded, cost)


# -- OpenCV's own limit --------------------------------------------------------------------------------
def test_opencv_environment_value():
    assert image_probe.opencv_io_environment(1 << 25) == {"OPENCV_IO_MAX_IMAGE_PIXELS": str(1 << 25)}
    assert image_probe.opencv_io_environment(1 << 40) == {"OPENCV_IO_MAX_IMAGE_PIXELS": str(1 << 30)}
    with pytest.raises(ValueError):
        image_probe.opencv_io_environment(0)


def test_configure_refuses_once_cv2_is_loaded():
    """In this process cv2 is imported already: setting the limit now would silently not apply."""
    assert "cv2" in sys.modules
    with pytest.raises(RuntimeError, match="before the first"):
        image_probe.configure_opencv_io(1234)
    env = {}
    assert image_probe.configure_opencv_io(1234, environ=env) == env == {"OPENCV_IO_MAX_IMAGE_PIXELS": "1234"}


def test_configure_before_import_makes_opencv_refuse():
    """In a fresh interpreter: the server's probe module loaded (it loads neither cv2 nor the
    compute code), ``configure_opencv_io`` called, then cv2 imported: a 50x50 PNG (2500 px) is
    refused by OpenCV itself at a 2000-pixel limit and decodes at 2500."""
    script = (
        "import os, sys\n"
        "os.environ.pop('OPENCV_IO_MAX_IMAGE_PIXELS', None)\n"
        "from warpsvc.server import image_probe as probe\n"
        "assert not [m for m in ('cv2', 'numba', 'grpc', 'warpsvc.core.warp') if m in sys.modules]\n"
        "probe.configure_opencv_io(int(sys.argv[1]))\n"
        "import cv2, numpy as np\n"
        "png = cv2.imencode('.png', np.zeros((50, 50), np.uint8))[1]\n"
        "try:\n    print(cv2.imdecode(png, cv2.IMREAD_UNCHANGED).shape)\n"
        "except cv2.error:\n    print('refused')\n"
    )
    outs = [subprocess.run([sys.executable, "-c", script, str(limit)], capture_output=True,
                           text=True, timeout=60, check=True).stdout.strip() for limit in (2000, 2500)]
    assert outs == ["refused", "(50, 50)"], outs


# -- one probe for server and batch client ------------------------------------------------------------
def test_the_protocol_probe_imports_no_compute_stack():
    """Real imports, in a fresh interpreter: the shared probe needs numpy and the core errors only."""
    code = ("import sys, warpsvc_api.image_probe; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cv2', 'numba', 'grpc', 'google', 'warpsvc_client') or m.startswith(('warpsvc.server', "
            "'warpsvc.core.warp', 'warpsvc.core.sampling'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_server_and_batch_use_the_same_probe():
    from warpsvc_client.batch import probe as batch_probe

    assert image_probe.probe_image is probe_image and batch_probe.probe_image is probe_image
    png = cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes()
    assert batch_probe.check(png, 1200) == (30, 40)
    with pytest.raises(ImageTooLargeError, match="the server limit of 1000 pixels"):
        probe_image(png, ProbeLimits(max_pixels=1000))
    with pytest.raises(batch_probe.ImageHeaderError, match=r"^input: an image of 30x40 = 1200 pixels exceeds "
                                                           r"--max-pixels 1000$"):
        batch_probe.check(png, 1000)


@pytest.mark.parametrize("data, fmt", [(b"\x89PNG\r\n\x1a\nxxxx", "png"), (b"\xff\xd8\xff\xe0", "jpeg"),
                                       (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"II+\x00\x08\x00", "tiff"),
                                       (b"MM\x00+", "tiff"), (b"GIF89a", None), (b"", None), (b"\x89PNG", None)])
def test_sniff(data, fmt):
    assert sniff(data) == fmt and sniff(memoryview(data)) == fmt
