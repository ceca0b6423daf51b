"""The fused conserving matrix warp (``warp._conserve_fused``: OpenCV warps a block of rows,
the block is scaled by ``|det J|`` at once): oracle values block by block, the documented
tolerance against the whole-image warp, independence from the thread count, the strip count
and ``poll``, both projective tiers, and the paths that keep the whole-image warp."""

from __future__ import annotations

import importlib

import cv2
import numpy as np
import pytest

from warpsvc import AffineTransform, HomographyTransform, warp
from warpsvc.core import _scale_kernels, sampling, strips, threads

warp_module = importlib.import_module("warpsvc.core.warp")

AFF = AffineTransform.from_components(scale=(0.9, 0.8), rotation=0.2, shear=0.1, translation=(30.0, 12.0))
HOM = HomographyTransform(np.array([[1.05, 0.02, -30.0], [0.01, 0.97, 12.0], [2e-4, -3e-4, 1.01]]))
# Documented tolerance (docs/warping.md, warp._conserve_fused): a block's sampled values equal
# the whole-image warp's except where OpenCV's float32 row offsets round the other way; for
# integer images by at most one count, on a small fraction of the values.
MAX_DIFFERING_FRACTION = 1e-3


def _image(dtype=np.uint8, channels=3, shape=(300, 420)):
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    base = np.stack([127 + 100 * np.sin(x / (7.0 + 2 * c)) * np.cos(y / (11.0 + c)) for c in range(channels)], -1)
    img = np.clip(base + np.random.default_rng(12).normal(0, 6, base.shape), 0, 255)
    if dtype == np.uint16:
        return (img * 250).astype(np.uint16)
    return img.astype(dtype)


def _factor(t, shape):
    """``|det J_{T^-1}|`` on the output grid, float64 (analytic, as the library defines it)."""
    m = t.inverse().matrix
    if np.array_equal(m[2], [0, 0, 1]):
        return np.full(shape, abs(np.linalg.det(m[:2, :2])))
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    w = m[2, 0] * x + (m[2, 1] * y + m[2, 2])
    return abs(np.linalg.det(m)) / np.abs(w) ** 3


def _block_oracle(img, t, opts=sampling.SampleOptions()):
    """What the fused path computes, written out: each block of ``FUSED_BLOCK_VALUES // (W C)``
    rows warped alone by OpenCV with ``M @ row_shift(r0)``, then multiplied by the factor in
    float32 (the factor rounded to float32 first, as the scaling kernels do)."""
    h, w = img.shape[:2]
    c = img.shape[2]
    m = t.inverse().matrix
    block = max(1, warp_module.FUSED_BLOCK_VALUES // (w * c))
    sampled = np.empty_like(img)
    for r0 in range(0, h, block):
        r1 = min(h, r0 + block)
        mb = m @ sampling.row_shift(r0)
        kw = dict(flags=sampling.INTERPOLATIONS[opts.interpolation] | cv2.WARP_INVERSE_MAP,
                  borderMode=sampling.BORDERS[opts.border], borderValue=(opts.border_value,) * 4)
        part = (cv2.warpAffine(img, mb[:2], (w, r1 - r0), **kw) if np.array_equal(m[2], [0, 0, 1])
                else cv2.warpPerspective(img, mb, (w, r1 - r0), **kw))
        sampled[r0:r1] = part.reshape(r1 - r0, w, c)
    return sampled.astype(np.float32) * _factor(t, (h, w)).astype(np.float32)[:, :, None]


@pytest.fixture
def restore_threads():
    previous = threads._chosen
    yield
    threads._chosen = previous


@pytest.mark.parametrize("t", [AFF, HOM], ids=["affine", "homography"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_fused_values_are_the_block_oracle(t, channels):
    img = _image(channels=channels)
    out = warp(img if channels > 1 else img[:, :, 0], t, intensity="conserve")
    expected = _block_oracle(img, t)
    np.testing.assert_allclose(out.reshape(expected.shape), expected, rtol=2.0 ** -22, atol=0)


@pytest.mark.parametrize("t", [AFF, HOM], ids=["affine", "homography"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_fused_is_the_whole_image_warp_within_the_documented_tolerance(t, dtype):
    """Against ``warp(plain) * |det J|`` (one OpenCV call for the whole image). A block's sample
    positions differ from the whole image's by float32 round-off of OpenCV's row offsets (and,
    for a homography, of its division), a few ulps: ``eps = 2^-20 max side`` px here, so a sampled value moves by at most ``G eps`` (``G``: the
    largest difference between neighbouring pixels) plus, for integer images, one count of
    rounding. uint8 photographs: < 1e-3 of the values differ (~2e-5 measured)."""
    img = _image(dtype)
    out = warp(img, t, intensity="conserve")
    factor = _factor(t, img.shape[:2])[:, :, None]
    whole = warp(img, t).astype(np.float64) * factor
    diff = np.abs(out - whole)
    rounding = 2.0 ** -21 * np.abs(whole) + 1e-9  # the float32 factor and product (2 roundings)
    f64 = img.astype(np.float64)
    g = max(np.abs(np.diff(f64, axis=0)).max(), np.abs(np.diff(f64, axis=1)).max())
    eps = 2.0 ** -20 * max(img.shape[:2])  # a few float32 ulps of a coordinate (< 2 max side here)
    count = 0.0 if dtype == np.float32 else 1.0
    assert out.dtype == np.float32 and out.shape == img.shape
    assert (diff <= factor * (count + g * eps) + rounding).all()
    if dtype == np.uint8:
        assert (diff > rounding).mean() < MAX_DIFFERING_FRACTION
    assert abs(out.sum(dtype=np.float64) / whole.sum() - 1) < 1e-5


@pytest.mark.parametrize("t", [AFF, HOM], ids=["affine", "homography"])
def test_fused_does_not_depend_on_threads_strips_or_poll(t, restore_threads, monkeypatch):
    img = _image(shape=(420, 300))
    threads.set_threads(1, opencv=False)
    one = warp(img, t, intensity="conserve")
    threads.set_threads(2, opencv=False)
    two = warp(img, t, intensity="conserve")
    polled = warp(img, t, intensity="conserve", poll=lambda: None)
    monkeypatch.setattr(strips, "strip_count", lambda work=None: 7)
    seven = warp(img, t, intensity="conserve")
    monkeypatch.setattr(warp_module, "SCALE_BAND_ELEMENTS", 300 * 3 * 10)  # bands of one block
    small_bands = warp(img, t, intensity="conserve", poll=lambda: None)
    for other in (two, polled, seven, small_bands):
        np.testing.assert_array_equal(one, other)


def test_fused_is_polled_per_band_and_aborts(monkeypatch):
    """A poll after every band of whole blocks; an exception raised by the poll propagates and
    stops the call there."""
    img = _image(shape=(400, 300))
    block = 20
    monkeypatch.setattr(warp_module, "FUSED_BLOCK_VALUES", 300 * 3 * block)
    monkeypatch.setattr(warp_module, "SCALE_BAND_ELEMENTS", 300 * 3 * block * 2)  # two blocks a band
    calls = []
    warp(img, AFF, intensity="conserve", poll=lambda: calls.append(1))
    assert len(calls) == -(-400 // (2 * block))

    class Abort(Exception):
        pass

    def poll():
        calls.append(1)
        if len(calls) == 2:
            raise Abort

    calls.clear()
    launched = []
    real = sampling.warp_matrix_rows
    monkeypatch.setattr(warp_module, "warp_matrix_rows", lambda *a: (launched.append(1), real(*a)))
    with pytest.raises(Abort):
        warp(img, AFF, intensity="conserve", poll=poll)
    assert len(launched) == 4  # two bands of two blocks, then the abort


def test_fused_projective_tiers_agree(monkeypatch):
    """Tier 1 (compiled, one numba thread per strip) and tier 0 (numpy) give the same bits."""
    img = _image()
    _scale_kernels.compile_tier1(keys=((np.dtype(np.uint8), np.dtype(np.float32)),))
    one = warp(img, HOM, intensity="conserve")
    monkeypatch.setattr(_scale_kernels, "projective_tier", lambda *a: 0)
    zero = warp(img, HOM, intensity="conserve")
    np.testing.assert_array_equal(one, zero)


@pytest.mark.parametrize("interpolation", ["nearest", "cubic", "lanczos"])
@pytest.mark.parametrize("border", ["constant", "replicate", "reflect", "symmetric", "wrap"])
def test_fused_options_are_opencvs(interpolation, border):
    """Interpolations and border rules (a non-zero constant too) reach each block's OpenCV call."""
    img = _image(channels=3, shape=(120, 160))
    opts = sampling.SampleOptions(interpolation, border, 17.0)
    out = warp(img, AFF, interpolation=interpolation, border=border, border_value=17.0, intensity="conserve")
    np.testing.assert_allclose(out, _block_oracle(img, AFF, opts), rtol=2.0 ** -22, atol=0)


@pytest.mark.parametrize("case", ["five channels", "float64"])
def test_other_images_keep_the_whole_image_warp(case, monkeypatch):
    """Images the fused path does not take (> 4 channels, float64) are warped whole, then scaled."""
    img = _image(channels=5) if case == "five channels" else _image().astype(np.float64)
    monkeypatch.setattr(warp_module, "warp_matrix_rows", lambda *a: pytest.fail("fused path taken"))
    out = warp(img, AFF, intensity="conserve")
    factor = _factor(AFF, img.shape[:2])[:, :, None]
    if img.dtype == np.float64:
        np.testing.assert_allclose(out, warp(img, AFF) * factor, rtol=1e-15)
    else:
        np.testing.assert_array_equal(out, warp(img, AFF).astype(np.float32) * factor.astype(np.float32))


def test_run_blocks_runs_every_block_once_and_reraises(restore_threads):
    threads.set_threads(2, opencv=False)
    seen = []
    assert strips.run_blocks(lambda i, scratch: seen.append(i), 50, 1 << 20) == 2
    assert sorted(seen) == list(range(50))

    def fail(i, scratch):
        if i == 3:
            raise ValueError("block 3")

    with pytest.raises(ValueError, match="block 3"):
        strips.run_blocks(fail, 50, 1 << 20)
    assert strips.run_blocks(lambda i, s: None, 0) == 0
