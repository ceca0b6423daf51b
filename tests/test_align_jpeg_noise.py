"""The final check's noise estimate on JPEG-decoded images (warpsvc.core.align.noise).

Oracles: the true noise is measured as the decoded noisy JPEG minus the clean, unquantised
frame; the alignments are known synthetic shifts of seeded low-contrast scenes."""

import cv2
import numpy as np
import pytest

import warpsvc
from warpsvc.core.align import noise
from warpsvc.core.align.covariance import template_noise_variance


def _jpeg(a, quality=85):
    ok, buf = cv2.imencode(".jpg", np.clip(a, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _scene(seed, amplitude=100.0, shape=(480, 640)):
    """A dim, low-contrast scene (a night sky with faint structure): a ramp plus blurred noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    texture = cv2.GaussianBlur(rng.uniform(-1, 1, shape).astype(np.float32), (0, 0), 2.5)
    return (40 + 30 * xx / w + 10 * yy / h + amplitude * texture).astype(np.float32)


SHIFT = np.array([[1.0, 0, 200.4], [0, 1.0, 120.7], [0, 0, 1.0]])  # image_from_template


def _pair(seed, amplitude=100.0, image_seed=None):
    rng = np.random.default_rng([seed, 7])
    scene = _scene(seed, amplitude)
    other = scene if image_seed is None else _scene(image_seed, amplitude)
    t = cv2.warpPerspective(scene, SHIFT, (240, 240), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    t8 = _jpeg(t + rng.normal(0, 4, t.shape))
    i8 = _jpeg(other + rng.normal(0, 4, other.shape))
    return t, t8, i8


def test_grid_is_seen_on_jpeg_at_any_crop_offset_and_not_on_raw_images():
    clean, t8, _ = _pair(0)
    assert noise.block_grid_ratio(t8) >= noise.JPEG_GRID
    assert noise.block_grid_ratio(t8[3:, 5:]) >= noise.JPEG_GRID  # the grid's phase is free
    rng = np.random.default_rng(1)
    raw = clean + rng.normal(0, 4, clean.shape)
    assert noise.block_grid_ratio(raw) < noise.JPEG_GRID
    assert noise.block_grid_ratio(np.clip(raw, 0, 255).astype(np.uint8)) < noise.JPEG_GRID  # rounding is no grid


def test_half_resolution_estimate_of_white_noise_errs_a_little_low():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:256, 0:256]
    img = 100 + 0.2 * xx + 0.1 * yy + rng.normal(0, 8, (256, 256))
    assert 0.7 * 64 <= noise.half_resolution_noise(img) <= 64  # the flattest tiles' quantile: ~0.83


@pytest.mark.parametrize("seed", [0, 3])
def test_jpeg_noise_is_measured_where_immerkaer_misses_it(seed):
    clean, t8, _ = _pair(seed)
    truth = float(np.var(t8.astype(np.float64) - clean))  # noise 4 after JPEG quality 85
    t = t8.astype(np.float32)[:, :, None]
    white = template_noise_variance(t)
    assert white < truth / 4  # Immerkaer sees only the frequencies JPEG removed
    est = noise.check_noise_variance(t, white)
    assert 0.6 * truth <= est <= 1.4 * truth


def test_images_without_a_jpeg_grid_keep_the_white_estimate():
    rng = np.random.default_rng(4)
    img = (_scene(4)[:240, :240] + rng.normal(0, 8, (240, 240))).astype(np.float32)[:, :, None]
    white = template_noise_variance(img)
    assert noise.check_noise_variance(img, white) == white
    nan_img = img.copy()
    nan_img[:, :120] = np.nan  # masked half: no crash, still the white estimate
    assert noise.check_noise_variance(nan_img, white) == white


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_right_alignment_of_jpeg_pair_is_converged(seed, monkeypatch):
    """Before the JPEG-aware estimate these right results (<= 0.1 px) were ``low_correlation``
    (checked below by switching the grid detection off)."""
    _, t8, i8 = _pair(seed)
    start = SHIFT.copy()
    start[:2, 2] += (1.5, -1.0)
    r = warpsvc.align(t8, i8, "homography", np.linalg.inv(start))
    assert np.abs(r.inverse - SHIFT)[:2].max() < 0.2
    assert r.converged, r.reason
    monkeypatch.setattr(noise, "JPEG_GRID", np.inf)
    old = warpsvc.align(t8, i8, "homography", np.linalg.inv(start))
    assert not old.converged and old.reason == "low_correlation"


@pytest.mark.parametrize("search", ["local", "auto"])
def test_jpeg_pair_of_different_scenes_is_not_converged(search):
    _, t8, i8 = _pair(5, image_seed=105)
    init = np.linalg.inv(SHIFT) if search == "local" else None
    r = warpsvc.align(t8, i8, "homography", init, search=search)
    assert not r.converged
