"""Noise-dominated templates: solved on a denoised copy, polished on the template (issue 11).

Oracles: synthetic images with known noise (the denoiser against the clean image), and a
Baker-Matthews trial on scikit-image's rocket (a bar on flat sky; its true homography known)
that the plain solve ends 6 px off at noise 8, as the mechanism in ``align/denoise.py`` says.
"""

import cv2
import numpy as np
import pytest
from skimage import data

import warpsvc
from tests.oracles import photo_bm_trial
from warpsvc.core.align import denoise
from warpsvc.core.align import problem as problem_module
from warpsvc.core.align.chart import make_chart
from warpsvc.core.align.covariance import template_noise_share
from warpsvc.core.align.pyramid import build_level


def _steps(h=96, w=96):
    """Piecewise-constant scene: vertical bands of 40 / 120 / 200 (edges at x = 32, 64)."""
    img = np.full((h, w), 40.0, np.float32)
    img[:, 32:64] = 120.0
    img[:, 64:] = 200.0
    return img


def test_denoised_removes_most_noise_and_keeps_edges():
    clean = _steps()
    rng = np.random.default_rng(0)
    noisy = clean + rng.normal(0, 8, clean.shape).astype(np.float32)
    out = denoise.denoised(noisy[:, :, None], 64.0)[:, :, 0]
    before = np.mean((noisy - clean) ** 2)
    after = np.mean((out - clean)[:, 3:-3] ** 2)
    assert after < before / 4
    profile = out.mean(axis=0)
    for edge, lo, hi in ((32, 40.0, 120.0), (64, 120.0, 200.0)):
        mid = 0.5 * (lo + hi)
        x = edge - 3 + np.interp(mid, profile[edge - 3:edge + 3], np.arange(6))  # where the edge crosses mid-level
        assert abs(x - (edge - 0.5)) < 0.25


def test_denoised_keeps_nan_and_large_ranges_and_zero_noise():
    rng = np.random.default_rng(1)
    t = (_steps() * 300.0 + rng.normal(0, 2000, (96, 96))).astype(np.float32)  # ~0..60000: quantisation q < 64
    t[10:20, 10:20] = np.nan
    out = denoise.denoised(t[:, :, None], 2000.0 ** 2)[:, :, 0]
    assert np.array_equal(np.isnan(out), np.isnan(t))
    ok = np.isfinite(t)
    assert np.mean((out[ok] - _steps()[ok] * 300.0) ** 2) < np.mean((t[ok] - _steps()[ok] * 300.0) ** 2) / 4
    same = denoise.denoised(t[:, :, None], 0.0)[:, :, 0]
    assert np.array_equal(same[ok], t[ok])


def _rocket_trial(k=94, noise=8.0, seed=0):
    """Trial ``k`` of the photograph benchmark's ``bm_noise8`` on the rocket
    (:func:`tests.oracles.photo_bm_trial`)."""
    im = cv2.cvtColor(data.rocket(), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return photo_bm_trial(im, k, noise, seed)


def _corner_rms(result, tp, truth_pts):
    q = np.column_stack([tp, np.ones(4)]) @ result.inverse.T
    return float(np.sqrt(np.mean((q[:, :2] / q[:, 2:] - truth_pts) ** 2)))


def test_rocket_template_is_noise_dominated_and_a_photograph_patch_is_not():
    t, img, *_ = _rocket_trial()
    t3 = t[:, :, None]
    lv = build_level(0, t3, t3, "homography", make_chart(t3.shape), False)
    assert template_noise_share(lv, "homography", make_chart(t3.shape)) > denoise.NOISE_DOMINATED
    cam = data.camera().astype(np.float32)[200:300, 200:300, None]
    lv = build_level(0, cam, cam, "homography", make_chart(cam.shape), False)
    assert template_noise_share(lv, "homography", make_chart(cam.shape)) < denoise.NOISE_DOMINATED


def test_denoised_solve_rescues_the_rippled_rocket_trial():
    """Without the denoised solve the trial ends ~6 px off (a ripple of the noisy cost, see
    align/denoise.py); with it, within 1 px and reported converged or uncertain, never a
    converged result off by more than a pixel."""
    t, img, start, truth_pts, tp = _rocket_trial()
    init = np.linalg.inv(start)
    result = warpsvc.align(t, img, "homography", init)
    err = _corner_rms(result, tp, truth_pts)
    assert err < 1.0
    assert result.levels == 4 and len(result.iterations) == 4
    plain = warpsvc.align(t, img, "homography", init, denoise=None)  # the option: the solve as before
    assert _corner_rms(plain, tp, truth_pts) > 3.0
    via_options = warpsvc.align(t, img, "homography", init, options=warpsvc.AlignOptions(denoise=None))
    np.testing.assert_array_equal(via_options.matrix, plain.matrix)


def test_denoise_option_is_checked():
    t, img, start, *_ = _rocket_trial()
    for bad in ("always", True, 1):
        with pytest.raises(warpsvc.InvalidArgumentError) as info:
            warpsvc.align(t, img, "homography", np.linalg.inv(start), denoise=bad)
        assert info.value.field == "denoise"
    with pytest.raises(warpsvc.InvalidArgumentError):
        warpsvc.AlignOptions(denoise="yes").checked()


def test_clean_templates_are_not_denoised(monkeypatch):
    """Noise-free inputs never reach the denoiser (the MIN_NOISE_RATIO gate): the same rocket
    trial without noise, whose weakest direction is dominated by its quantisation noise."""
    def refuse(*args, **kwargs):
        raise AssertionError("a clean template was denoised")

    monkeypatch.setattr(problem_module, "denoised", refuse)
    for k in (46, 94):
        t, img, start, truth_pts, tp = _rocket_trial(k=k, noise=0.0)
        result = warpsvc.align(t, img, "homography", np.linalg.inv(start))
        assert _corner_rms(result, tp, truth_pts) < 1.0


@pytest.mark.parametrize("channels", ["mean", "all"])
def test_noisy_colour_template_goes_through_the_denoised_path(channels):
    """(H, W, 3) inputs: the denoiser runs per channel (``channels="all"``) or on the mean;
    the rescued trial stays rescued."""
    t, img, start, truth_pts, tp = _rocket_trial()
    t3, i3 = np.dstack([t] * 3), np.dstack([img] * 3)
    result = warpsvc.align(t3, i3, "homography", np.linalg.inv(start),
                           options=warpsvc.AlignOptions(channels=channels))
    assert _corner_rms(result, tp, truth_pts) < 1.0


def test_denoised_does_not_depend_on_the_data_scale():
    """The same scene as 8-bit values, as floats in [0, 1] and x200: the same result up to the
    scale (the uint16 the filter takes spans each channel's own range). With a quantisation
    fixed per grey level, [0, 1] data got ~58 levels in all."""
    rng = np.random.default_rng(2)
    noisy = (_steps() + rng.normal(0, 8, (96, 96))).astype(np.float32)
    ref = denoise.denoised(noisy[:, :, None], 64.0)[:, :, 0]
    for scale in (1 / 255.0, 200.0):
        out = denoise.denoised((noisy * scale)[:, :, None], (8.0 * scale) ** 2)[:, :, 0] / scale
        assert np.allclose(out, ref, atol=0.02)


def test_calibrated_hessian_restores_the_motion_energy():
    """``covariance.calibrated_hessian``: the motion block's trace becomes ``tr(H - N)``, the
    photometric block is untouched, the cross terms scale by sqrt(s), and without a noise
    estimate the matrix is returned as it is."""
    from warpsvc.core.align.covariance import calibrated_hessian

    rng = np.random.default_rng(4)
    a = rng.normal(size=(10, 10))
    h_d = a @ a.T + 10 * np.eye(10)
    b = rng.normal(size=(10, 10))
    H = b @ b.T + 40 * np.eye(10)
    noise = np.zeros((10, 10))
    noise[:8, :8] = 5 * np.eye(8)
    out = calibrated_hessian(h_d, H, noise, 8)
    s = np.trace(H[:8, :8] - noise[:8, :8]) / np.trace(h_d[:8, :8])
    assert np.trace(out[:8, :8]) == pytest.approx(np.trace(H[:8, :8] - noise[:8, :8]))
    np.testing.assert_allclose(out[8:, 8:], h_d[8:, 8:])
    np.testing.assert_allclose(out[:8, 8:], np.sqrt(s) * h_d[:8, 8:])
    assert calibrated_hessian(h_d, H, None, 8) is h_d
