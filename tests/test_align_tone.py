"""The tone curve of photometric="auto" (warpsvc.core.align.tone).

Oracles: numpy's least squares for the fit; the analytic derivative for the reported line;
known homographies of real photographs (skimage) under a known gamma change for the end-to-end
accuracy, compared with the linear gain/bias model on the same pairs."""

import numpy as np
import pytest
from skimage import data

from test_align_search import cut
from warpsvc import align
from warpsvc.core.align.tone import MIN_BEND, ToneCurve, fit_tone_curve

RNG = np.random.default_rng(7)
T = RNG.uniform(20, 230, 4000)


def gamma(t, g, gain=1.0, bias=0.0):
    return 255.0 * (np.clip(t, 0, 255) / 255.0) ** g * gain + bias


def test_fit_is_the_least_squares_quadratic():
    i = gamma(T, 1.25, 0.9, 5.0) + RNG.normal(0, 2, T.size)
    curve = fit_tone_curve(T, i)
    u = (T - T.mean()) / T.std()
    expected = np.linalg.lstsq(np.column_stack([np.ones(T.size), u, u * u]), i, rcond=None)[0]
    assert curve.mean == pytest.approx(T.mean()) and curve.scale == pytest.approx(T.std())
    np.testing.assert_allclose(curve.c, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(curve(T), np.column_stack([np.ones(T.size), u, u * u]) @ expected, rtol=1e-5)


def test_nan_pixels_are_left_out_and_stay_nan():
    i = gamma(T, 0.8)
    t, i2 = T.copy(), i.copy()
    t[::7], i2[3::11] = np.nan, np.nan
    ok = np.isfinite(t) & np.isfinite(i2)
    curve = fit_tone_curve(t, i2)
    np.testing.assert_allclose(curve.c, fit_tone_curve(t[ok], i2[ok]).c, rtol=1e-12)
    assert np.isnan(curve(np.array([np.nan]))[0])


@pytest.mark.parametrize("case", ["linear", "tiny_bend", "decreasing", "not_monotone", "few", "flat"])
def test_no_curve_when_there_is_none_to_follow(case):
    noise = RNG.normal(0, 1, T.size)
    t = T
    if case == "linear":
        i = 1.2 * T + 3 + noise
    elif case == "tiny_bend":  # significant (noise-free) but bends less than MIN_BEND
        i = gamma(T, 1.01)
    elif case == "decreasing":
        i = 300.0 - gamma(T, 1.2)
    elif case == "not_monotone":
        i = -0.01 * (T - 100) ** 2 + noise
    elif case == "few":
        t, i = T[:20], gamma(T[:20], 1.25)
    else:
        t, i = np.full(100, 50.0), np.linspace(0, 1, 100)
    assert fit_tone_curve(t, i) is None


def test_monotone_over_the_mapped_template_too():
    i = gamma(T, 1.25) + RNG.normal(0, 1, T.size)
    curve = fit_tone_curve(T, i)
    assert curve is not None and curve.monotone_over(T)
    # a mapped template far below the fitted range, where the quadratic turns back
    low = np.array([curve.mean - curve.scale * curve.c[1] / (2 * curve.c[2]) - 1.0])
    assert not curve.monotone_over(low)
    assert fit_tone_curve(T, i, finest=low) is None


def test_reported_line_is_the_tangent_at_the_mean():
    curve = ToneCurve(mean=100.0, scale=40.0, c=(120.0, 50.0, 6.0))
    a, b = 0.9, 4.0
    gain, bias = curve.line([a], [b])
    h = 1e-3
    slope = (curve(np.array([100.0 + h]))[0].astype(np.float64) - curve(np.array([100.0 - h]))[0]) / (2 * h)
    assert gain[0] == pytest.approx(a * 50.0 / 40.0)
    assert gain[0] == pytest.approx(a * slope, rel=2e-3)
    assert a * 120.0 + b == pytest.approx(gain[0] * 100.0 + bias[0])  # the line passes through f(mean)


def test_bend_threshold_matches_its_documented_meaning():
    """MIN_BEND separates a 3 % gamma change (kept linear) from a 10 % one (curve)."""
    assert fit_tone_curve(T, gamma(T, 1.03)) is None
    assert fit_tone_curve(T, gamma(T, 1.1)) is not None
    assert 0 < MIN_BEND < 0.08


@pytest.mark.parametrize("g", [0.8, 1.25])
def test_gamma_change_aligns_far_better_than_the_linear_model(g):
    """A 100x100 crop of the camera photograph through a known homography, under gamma g,
    gain 0.9, bias 5 and noise 2: the default (tone curve) lands within 0.04 px; the linear
    model on the same pair is at least twice as far off."""
    camera = data.camera().astype(np.float32)
    W = np.array([[1.02, 0.03, 181.0], [-0.02, 0.98, 148.0], [1e-4, -5e-5, 1.0]])
    start = np.linalg.inv(np.array([[1, 0, 180.0], [0, 1, 150.0], [0, 0, 1.0]]))
    t = gamma(cut(camera, W, n=100), g, 0.9, 5.0)
    t = (t + np.random.default_rng(1).normal(0, 2, t.shape)).astype(np.float32)
    corners = np.column_stack([np.array([[0, 0], [99, 0], [99, 99], [0, 99]], float), np.ones(4)])

    def error(r):
        a, b = corners @ r.inverse.T, corners @ W.T
        return float(np.abs(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]).max())

    curved = align(t, camera, "homography", start)
    linear = align(t, camera, "homography", start, photometric="gain_bias")
    assert curved.converged and linear.converged
    assert error(curved) < 0.04
    assert error(linear) > 2 * error(curved)
