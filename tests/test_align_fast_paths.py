"""The solver's fast paths against their direct definitions (oracles).

* steepest-descent images from the monomial factorisation vs ``jx gx + jy gy`` from
  :func:`identity_jacobian` (bit for bit), and the Hessian vs ``sd^T sd`` in float64;
* the Sobel central differences vs the slice expression (bit for bit);
* the fused robust losses vs the loss objects' ``weights`` / ``rho``;
* the partition median vs ``np.median``;
* the one-channel gain/bias from the raw residual vs the general weighted least squares.
"""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc.core.align import gauss_newton as gn
from warpsvc.core.align import pyramid
from warpsvc.core.align.chart import chart_scale, make_chart
from warpsvc.core.align.losses import LOSSES
from warpsvc.core.transforms.models import identity_jacobian

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 30, (h, w)).astype(np.float32)
    img = np.cumsum(np.cumsum(img, axis=0), axis=1)  # smooth-ish, large dynamic range
    return (img / img.std() * 40).astype(np.float32)[:, :, None]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("photometric", [False, True])
def test_steepest_descent_images_match_the_direct_jacobian(model, photometric):
    t = _texture(37, 45)
    t[5:9, 10:14] = np.nan  # masked pixels: rows drop out
    chart = make_chart((37 * 2, 45 * 2))
    lv = pyramid.build_level(1, t, t, model, chart, photometric)
    h, w, _ = t.shape
    ys, xs = np.mgrid[0:h, 0:w]
    u = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64) * 2.0 @ chart[:2, :2].T + chart[:2, 2]
    jx, jy = (j.astype(np.float32) for j in identity_jacobian(model, u))
    np.testing.assert_array_equal(lv.jx, jx)
    np.testing.assert_array_equal(lv.jy, jy)
    gx = np.full((h, w), np.nan, np.float32)
    gy = np.full((h, w), np.nan, np.float32)
    gx[:, 1:-1] = 0.5 * (t[:, 2:, 0] - t[:, :-2, 0])
    gy[1:-1] = 0.5 * (t[2:, :, 0] - t[:-2, :, 0])
    usable = ~(np.isnan(t.ravel()) | np.isnan(gx.ravel()) | np.isnan(gy.ravel()))
    np.testing.assert_array_equal(lv.usable, usable)
    s = np.float32(chart_scale(chart) / 2.0)
    gxs, gys = np.where(usable, gx.ravel() * s, 0), np.where(usable, gy.ravel() * s, 0)
    sd = jx * gxs[:, None] + jy * gys[:, None]
    if photometric:
        sd = np.column_stack([sd, np.where(usable, t.ravel(), 0), usable.astype(np.float32)])
    np.testing.assert_array_equal(lv.sd, sd)
    h64 = sd.astype(np.float64).T @ sd.astype(np.float64)
    np.testing.assert_allclose(lv.hessian, h64, rtol=1e-5, atol=1e-6 * np.abs(h64).max())
    sub = lv.restrict([0, 1]) if model != "translation" else lv
    np.testing.assert_array_equal(sub.jx, lv.jx[:, :sub.n_params])


@pytest.mark.parametrize("model", ["affine", "homography"])
def test_sampled_level_matches_the_grid_rows(model):
    """A level that samples its strongest pixels has the grid level's rows at those pixels."""
    t = _texture(60, 70, seed=3)
    chart = make_chart(t.shape)
    full = pyramid.build_level(0, t, t, model, chart, True, None)
    part = pyramid.build_level(0, t, t, model, chart, True, 1000)
    assert part.points is not None
    sel = (part.points[:, 1] * 70 + part.points[:, 0]).astype(int)
    np.testing.assert_array_equal(part.sd, full.sd[sel])
    np.testing.assert_array_equal(part.jx, full.jx[sel])


def test_sobel_gradients_equal_central_differences():
    t = _texture(20, 31, seed=5)
    gx, gy = pyramid.central_gradients(t)
    ex = np.full_like(t, np.nan)
    ey = np.full_like(t, np.nan)
    ex[:, 1:-1] = 0.5 * (t[:, 2:] - t[:, :-2])
    ey[1:-1] = 0.5 * (t[2:] - t[:-2])
    np.testing.assert_array_equal(gx, ex)
    np.testing.assert_array_equal(gy, ey)


@pytest.mark.parametrize("loss", ["huber", "tukey"])
def test_fused_loss_matches_the_definitions(loss):
    rng = np.random.default_rng(2)
    e = (rng.standard_t(2, 5000) * 3).astype(np.float32)
    valid = rng.random(5000) > 0.1
    e[~valid] = 0.0
    sigma = 2.5
    w, rho_sum = LOSSES[loss].weights_and_rho_sum(e.copy(), valid, sigma)
    z = np.abs(e[valid]).astype(np.float64) / sigma
    np.testing.assert_allclose(w[valid], LOSSES[loss].weights(z), rtol=2e-5, atol=1e-6)
    assert np.all(w[~valid] == 0)
    assert rho_sum == pytest.approx(float(LOSSES[loss].rho(z).sum()), rel=1e-5)


def test_mad_median_by_partition():
    rng = np.random.default_rng(4)
    for n in (7, 8, 1000, 50_001):
        e = rng.normal(0, 3, n).astype(np.float32)
        valid = rng.random(n) > 0.3
        e[~valid] = 0.0
        step = max(1, n // 20000)
        expect = 1.4826 * float(np.median(np.abs(e[::step][valid[::step]])))
        assert gn.mad_sigma(e, valid, 1e-12) == pytest.approx(expect, rel=1e-6)
    assert gn.mad_sigma(np.zeros(4, np.float32), np.zeros(4, bool), 0.5) == 0.5


@pytest.mark.parametrize("lost", [0, 300])
def test_one_channel_gain_bias_matches_least_squares(lost):
    t = _texture(40, 40, seed=6)
    lv = pyramid.build_level(0, t, t, "affine", make_chart(t.shape), True)
    rng = np.random.default_rng(7)
    warped = (1.3 * lv.tflat + 12.0 + rng.normal(0, 2, lv.tflat.size)).astype(np.float32)
    warped[rng.choice(warped.size, lost, replace=False)] = np.nan
    e = warped - lv.tflat
    missing = np.isnan(e)
    n = int(np.count_nonzero(~missing))
    a, b = gn._fit_gain_bias_1(lv, np.where(missing, np.float32(0), e), missing, n)
    v = ~missing
    tv, iv = lv.tflat[v].astype(np.float64), warped[v].astype(np.float64)
    a_ls, b_ls = np.polyfit(tv, iv, 1)
    assert a[0] == pytest.approx(a_ls, rel=1e-5)
    assert b[0] == pytest.approx(b_ls, rel=1e-4, abs=1e-3)
