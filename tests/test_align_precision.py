"""The covariance's bread (``covariance.cross_hessian``) and the precision gate (``reason="uncertain"``).

Oracles: the analytic Gauss-Newton Hessian of a noise-free pair at its exact alignment (the
image's steepest-descent images then equal the template's), the expected value of the noise
energy the template-only Hessian adds (``sigma^2 / 2`` per gradient component), Monte-Carlo
scatter of estimates on known shifts, and hand-computed corner bounds."""

import cv2
import numpy as np
import pytest

import warpsvc
from warpsvc.core.align.chart import make_chart
from warpsvc.core.align.covariance import cross_hessian
from warpsvc.core.align.gauss_newton import evaluate
from warpsvc.core.align.options import AlignOptions
from warpsvc.core.align.pyramid import build_level, prepare
from warpsvc.core.align.verify import BOUND_SIGMAS, corner_bound
from warpsvc.core.errors import InvalidArgumentError


def _texture(seed, shape=(240, 320), blur=2.0, scale=4.0):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, shape).astype(np.float32), (0, 0), blur) * scale - 1.5 * 255 * (scale - 1) / 3


def _shift(x, y):
    return np.array([[1.0, 0, x], [0, 1.0, y], [0, 0, 1.0]])


def _level(t, img, W, photometric=True, model="homography"):
    chart = make_chart(t.shape)
    lv = build_level(0, prepare(t, None, "t", "m"), prepare(img, None, "i", "m"), model, chart, photometric, None)
    ev = evaluate(lv, W, True, None, photometric, None, None, 1e-12)
    return lv, ev, chart


@pytest.mark.parametrize("photometric", [False, True])
def test_cross_hessian_is_the_gauss_newton_hessian_without_noise(photometric):
    img = _texture(3)
    t = img[60:160, 80:180].copy()
    lv, ev, chart = _level(t, img, _shift(80, 60), photometric)
    a = cross_hessian(lv, ev, chart, "homography")
    assert a is not None
    # rows where the image-side gradient exists (the image is larger: every usable template row)
    np.testing.assert_allclose(a, lv.hessian, rtol=1e-4, atol=1e-6 * np.abs(lv.hessian).max())


def test_cross_hessian_drops_the_template_noise_energy():
    """H from the noisy template = clean H + noise energy (diagonal of the translation block
    grows by sigma^2/2 * s^2 * n per axis); the cross Hessian stays at the clean one."""
    rng = np.random.default_rng(0)
    img = _texture(4, blur=4.0, scale=1.0)  # smooth, low-contrast: the noise energy dominates
    clean = img[60:160, 80:180].copy()
    sigma = 8.0
    t = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
    noisy_img = img + rng.normal(0, sigma, img.shape).astype(np.float32)
    lv_clean, ev_clean, chart = _level(clean, img, _shift(80, 60), False, "translation")
    lv, ev, _ = _level(t, noisy_img, _shift(80, 60), False, "translation")
    h_clean = lv_clean.hessian
    a = cross_hessian(lv, ev, chart, "translation")
    s = 1.0 / chart[0, 0]
    n = np.count_nonzero(lv.usable)
    excess = np.diag(lv.hessian) - np.diag(h_clean)
    np.testing.assert_allclose(excess, 0.5 * sigma ** 2 * s * s * n, rtol=0.1)  # the oracle of the bias
    assert np.all(np.abs(np.diag(a) - np.diag(h_clean)) < 0.1 * excess)


def test_smooth_noisy_patch_is_uncertain_not_converged():
    """A smooth patch (std ~14) under noise 8: the estimate is ~2 px off (the truth is a pure
    shift). The former covariance (template-only Hessian) claimed 0.07 px and the call said
    ``converged``; now the covariance is not estimable / large and the call says ``uncertain``."""
    rng = np.random.default_rng(0)
    img = _texture(5, blur=8.0, scale=4.0)
    t = img[60:160, 80:180] + rng.normal(0, 8, (100, 100)).astype(np.float32)
    noisy = img + rng.normal(0, 8, img.shape).astype(np.float32)
    r = warpsvc.align(t, noisy, "homography", _shift(-80.5, -60.5))
    corners = np.array([[0, 0], [99, 0], [99, 99], [0, 99]], float)
    q = np.column_stack([corners, np.ones(4)]) @ r.inverse.T
    error = np.sqrt(np.mean((q[:, :2] / q[:, 2:] - corners - [80, 60]) ** 2))
    assert error > 1.0  # the oracle: this result is wrong
    assert not r.converged and r.reason == "uncertain"
    assert corner_bound(r.corner_covariance) > 1.0
    off = warpsvc.align(t, noisy, "homography", _shift(-80.5, -60.5), options=AlignOptions(max_corner_error=None))
    assert off.reason != "uncertain"


def test_textured_noisy_patch_still_converged_and_covered():
    """Monte Carlo: on a textured patch the gate lets the results through, and the predicted
    corner covariance matches their scatter (mean of e^T C^-1 e over corners ~ 2)."""
    img = _texture(6)
    truth = np.array([[80.0, 60.0]])
    z2, converged = [], 0
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        t = img[60:160, 80:180] + rng.normal(0, 8, (100, 100)).astype(np.float32)
        noisy = img + rng.normal(0, 8, img.shape).astype(np.float32)
        r = warpsvc.align(t, noisy, "homography", _shift(-80.5, -60.5))
        converged += r.converged
        corners = np.array([[0, 0], [99, 0], [99, 99], [0, 99]], float)
        q = np.column_stack([corners, np.ones(4)]) @ r.inverse.T
        err = q[:, :2] / q[:, 2:] - (corners + truth)
        z2 += [float(e @ np.linalg.solve(c, e)) for e, c in zip(err, r.corner_covariance)]
    assert converged == 12
    assert 1.0 <= np.mean(z2) <= 3.5


def test_corner_bound_values():
    cov = np.stack([np.diag([0.04, 0.09])] * 4)
    assert corner_bound(cov) == pytest.approx(BOUND_SIGMAS * np.sqrt((0.04 + 0.09) / 2))
    assert corner_bound(None) == float("inf")
    assert corner_bound(np.full((4, 2, 2), np.nan)) == float("inf")


def test_max_corner_error_guard_names_the_field():
    img = _texture(7)
    for bad in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(InvalidArgumentError) as info:
            warpsvc.align(img[:100, :100], img, "translation", options=AlignOptions(max_corner_error=bad))
        assert info.value.field == "max_corner_error"


def test_max_corner_error_inf_is_off_like_none():
    """``inf`` (the gRPC field's spelling of "off") gives exactly the ``None`` result, and a
    bound no estimate meets makes the same alignment ``uncertain`` with the same matrix."""
    img = _texture(7)
    t, init = img[40:140, 50:150], np.array([[1.0, 0, -48.0], [0, 1.0, -41.0], [0, 0, 1.0]])
    off = warpsvc.align(t, img, "homography", init, max_corner_error=None)
    inf = warpsvc.align(t, img, "homography", init, max_corner_error=float("inf"))
    strict = warpsvc.align(t, img, "homography", init, max_corner_error=1e-12)
    assert off.converged and inf.converged and (inf.reason, inf.iterations) == (off.reason, off.iterations)
    np.testing.assert_array_equal(inf.matrix, off.matrix)
    assert strict.reason == "uncertain" and not strict.converged
    np.testing.assert_array_equal(strict.matrix, off.matrix)


def test_uncertain_in_the_reason_vocabulary():
    from warpsvc.core.align import REASONS
    assert REASONS[-1] == "uncertain"
