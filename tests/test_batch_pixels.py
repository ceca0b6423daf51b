"""``warpsvc_client.batch.pixels`` without OpenCV (Pillow, tifffile) against the oracle
``cv2.imdecode(IMREAD_UNCHANGED)``: the same array (shape, dtype, BGR order, every sample) for
every file it claims to read exactly, a refusal naming the reason for those it cannot (16-bit
colour, CMYK), float maps that OpenCV reads back; and the report's numpy coverage mask against
the library's warp of an all-ones image."""

from __future__ import annotations

import io
import itertools

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image
from warpsvc_client.batch import jobs, pixels, probe, report

import warpsvc
from warpsvc.core.errors import InvalidArgumentError, InvalidImageError

rng = np.random.default_rng(20261202)
Y, X = np.mgrid[0:37, 0:53]
SMOOTH = (np.sin(X / 5.0) + np.cos(Y / 7.0) + 2) / 4  # (37, 53) in [0, 1]
BGR8 = np.dstack([SMOOTH, SMOOTH[::-1], rng.random(SMOOTH.shape)]) * 255


def _cv(ext: str, arr, *params) -> bytes:
    ok, buf = cv2.imencode(ext, arr, list(params))
    assert ok
    return buf.tobytes()


def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _tifffile(arr, **kw) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kw)
    return buf.getvalue()


grey8 = BGR8[:, :, 0].astype(np.uint8)
bgr8 = BGR8.astype(np.uint8)
bgra8 = np.dstack([bgr8, (SMOOTH * 200).astype(np.uint8)])
grey16 = (SMOOTH * 65535).astype(np.uint16)
grey32 = SMOOTH.astype(np.float32)
bgr32 = (BGR8 / 255).astype(np.float32)
EXACT = {
    "png grey8": _cv(".png", grey8), "png bgr8": _cv(".png", bgr8), "png bgra8": _cv(".png", bgra8),
    "png grey16": _cv(".png", grey16),
    "jpeg grey q95": _cv(".jpg", grey8, cv2.IMWRITE_JPEG_QUALITY, 95),
    "jpeg bgr q95": _cv(".jpg", bgr8, cv2.IMWRITE_JPEG_QUALITY, 95),
    "jpeg bgr q60": _cv(".jpg", bgr8, cv2.IMWRITE_JPEG_QUALITY, 60),
    "jpeg progressive": _cv(".jpg", bgr8, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
    "tiff grey8 (lzw)": _cv(".tiff", grey8), "tiff bgr8 (lzw)": _cv(".tiff", bgr8),
    "tiff bgra8 (lzw)": _cv(".tiff", bgra8), "tiff grey16 (lzw)": _cv(".tiff", grey16),
    "tiff grey f32": _cv(".tiff", grey32), "tiff bgr f32": _cv(".tiff", bgr32),
    "tiff grey f64": _cv(".tiff", SMOOTH), "tiff bgr f64": _cv(".tiff", BGR8 / 255),
    "tiff deflate f32 (tifffile)": _tifffile(grey32, compression="zlib"),
    "png palette": _pil(Image.fromarray(bgr8[:, :, ::-1]).convert("P"), "PNG"),
    "png palette + tRNS": _pil(Image.fromarray(bgr8[:, :, ::-1]).convert("P"), "PNG", transparency=3),
    "png grey+alpha": _pil(Image.fromarray(np.dstack([grey8, grey8[::-1]]), "LA"), "PNG"),
    "png 1-bit": _pil(Image.fromarray(grey8 > 128), "PNG"),
    "jpeg pillow 4:2:0": _pil(Image.fromarray(bgr8[:, :, ::-1]), "JPEG", quality=80),
}


def _cost(data: bytes):
    return probe.cost(data, probe.DEFAULT_MAX_PIXELS)


@pytest.mark.parametrize("name", list(EXACT))
def test_same_array_as_opencv(name):
    data = EXACT[name]
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    got = pixels.decode_without_opencv(data, _cost(data))
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("data, reason", [
    (_cv(".png", (BGR8 * 257).astype(np.uint16)), "Pillow reads uint8"),
    (_cv(".tiff", (BGR8 * 257).astype(np.uint16)), "Pillow reads uint8"),
    (_pil(Image.fromarray(bgr8[:, :, ::-1]).convert("CMYK"), "JPEG"), "CMYK"),
], ids=["png bgr16", "tiff bgr16 (lzw)", "jpeg cmyk"])
def test_refused_where_it_cannot_be_exact_and_approximate_for_pictures(data, reason):
    cost = _cost(data)
    with pytest.raises(InvalidImageError, match=reason) as err:
        pixels.decode_without_opencv(data, cost)
    assert err.value.field == "image" and "warpsvc[compute]" in str(err.value)
    approx = pixels.decode_without_opencv(data, cost, exact=False)  # good enough for a picture
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert approx.shape == want.shape
    if want.dtype == np.uint16:  # Pillow keeps the high byte
        assert np.abs(approx.astype(int) - (want >> 8)).max() <= 1


def test_undecodable_bytes_are_refused_naming_the_image():
    data = EXACT["png bgr8"][:200]  # header fine, data truncated
    with pytest.raises(InvalidImageError) as err:
        pixels.decode_without_opencv(data, _cost(data))
    assert err.value.field == "image"


def test_float_maps_read_back_by_opencv_and_numpy():
    det = warpsvc.jacobian_determinant(warpsvc.HomographyTransform([[1.1, 0.1, 2], [0, 0.9, 1], [1e-3, 2e-3, 1]]),
                                       (41, 57), dtype=np.float32)
    tif = pixels.encode_map(det, "tiff")
    back = cv2.imdecode(np.frombuffer(tif, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.float32 and back.shape == det.shape
    np.testing.assert_array_equal(back, det)
    np.testing.assert_array_equal(np.load(io.BytesIO(pixels.encode_map(det, "npy"))), det)
    with pytest.raises(InvalidArgumentError, match="not png"):
        pixels.encode_map(det, "png")


def test_report_pictures_are_rgb():
    pic = report.to_u8(bgr8)
    np.testing.assert_array_equal(pic, bgr8[:, :, ::-1])
    np.testing.assert_array_equal(report.to_u8(grey16), np.repeat((grey16 / 257.0).astype(np.uint8)[:, :, None], 3, 2))
    png = pixels.png(pic)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), bgr8)


def test_contact_sheet_titles_escape_a_non_ascii_name_once():
    from PIL import Image, ImageDraw

    def drawn(text):
        strip = Image.new("RGB", (report.CELL, report.LABEL_H), (230, 230, 230))
        ImageDraw.Draw(strip).text((3, 3), text, fill=(0, 0, 0))
        return np.asarray(strip)

    title = report.contact_sheet([("caf\u00e9 \u00fcn.jpg", [("input", np.zeros((8, 8, 3), np.uint8))])])
    row = title[report.LABEL_H:2 * report.LABEL_H]  # the image's title strip, under the column labels
    np.testing.assert_array_equal(row, drawn("caf\\xe9 \\xfcn.jpg"))  # one backslash each, as printed
    assert not np.array_equal(row, drawn("caf\\\\xe9 \\\\xfcn.jpg"))


def test_report_float_pictures_stretch_linearly_unless_a_density_spans_decades():
    rng = np.random.default_rng(5)
    texture = rng.uniform(50, 200, (60, 90, 3))
    scale = []
    pic = report.to_u8(texture.astype(np.float32), scale)
    lo, hi = np.percentile(texture.astype(np.float32).astype(np.float64), (1, 99))
    expected = (np.clip((texture.astype(np.float32).astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pic, expected[:, :, ::-1])  # the linear 1-99 % stretch, as before
    assert scale == []
    # a conserving log-polar result: the same texture times |det J| ~ exp(2 k rho), 6 decades
    # along the columns; linearly the first two thirds would be black
    trend = np.exp(np.linspace(np.log(1e-3), np.log(1e3), 90))[None, :, None]
    density = (texture * trend).astype(np.float32)
    scale = []
    pic = report.to_u8(density, scale).astype(np.float64)
    assert scale == ["log"]
    lum = pic.mean(axis=2)
    assert lum[:, 10:30].mean() > 40 and lum[:, -20:].mean() > 150  # inner radii visible, outer bright
    blocks = [lum[:, a:a + 10].mean() for a in range(0, 60, 10)]
    assert all(b > a + 5 for a, b in itertools.pairwise(blocks))  # brightness still rises with the density
    # the hue is kept: where no channel clipped, the channel ratios are the texture's
    bgr = density[:, 20:60].astype(np.float64)
    shown = pic[:, 20:60, ::-1]
    ok = (shown.max(axis=2) < 250) & (shown.min(axis=2) > 20)
    assert ok.sum() > 100
    ratio_in = bgr[..., 0][ok] / bgr[..., 2][ok]
    ratio_out = shown[..., 0][ok] / shown[..., 2][ok]
    np.testing.assert_allclose(ratio_out, ratio_in, rtol=0.1)
    # signed values or a mostly-zero picture stay linear
    assert report._log_stretch(density - 1.0) is None
    sparse = np.zeros((60, 90)); sparse[0, 0] = 1e6; sparse[0, 1] = 1
    assert report._log_stretch(sparse) is None


@pytest.mark.parametrize("matrix", [
    [[0.95, 0.05, 4], [-0.03, 1.02, 2], [2e-4, -1e-4, 1]],
    [[1.3, 0.2, -9], [-0.1, 1.1, -4], [1e-3, 2e-3, 1]],
    [[0.6, 0, 30], [0, 0.6, 20], [0, 0, 1]],
])
def test_coverage_mask_equals_the_warp_of_ones(matrix):
    """The oracle: a constant-border bilinear warp of an all-ones image is 1 exactly where every
    sample it takes is inside the image."""
    t = warpsvc.HomographyTransform(np.array(matrix, float))
    src, out = (50, 70), (60, 64)
    want = warpsvc.warp(np.ones(src, np.float32), t, out) > 0.999
    got = report.covered(t.matrix, out, src, rows=7)  # several row blocks
    assert 0.05 < want.mean() < 1 or want.all()
    assert (got != want).sum() <= 0.002 * want.size, (got != want).sum()


@pytest.mark.parametrize("channels", [3, 4])
def test_colour_float_tiff_reads_back_as_opencv_writes_it(channels):
    """A colour float32 stack (BGR[A], OpenCV's order) written by tifffile decodes, by OpenCV and
    by the OpenCV-free path alike, to the same array; and its bytes say RGB as cv2.imencode's do."""
    rng = np.random.default_rng(channels)
    img = rng.random((9, 11, channels)).astype(np.float32)
    tif = pixels.encode_map(img, "tiff")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(tif, np.uint8), cv2.IMREAD_UNCHANGED), img)
    np.testing.assert_array_equal(jobs.decode(tif), img)
    ours = tifffile.imread(io.BytesIO(tif))
    theirs = tifffile.imread(io.BytesIO(cv2.imencode(".tiff", img)[1].tobytes()))
    np.testing.assert_array_equal(ours, theirs)
