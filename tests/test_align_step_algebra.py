"""The solver's scalar 3x3 step algebra and evaluation fast paths against their definitions.

* ``model_rows`` vs :func:`unchecked_matrix`; ``inverse_rows`` vs ``np.linalg.inv``;
* ``Stepper.compose`` vs the matrix product ``W C^-1 M^-1 C`` (normalised), ``Stepper.size``
  vs the corner motion computed with numpy, ``Stepper.ok`` vs the determinant / corner test;
* ``evaluate`` (full and partial overlap, with and without gain/bias) vs the residual from
  its definition ``(I(W x) - b) / a - T`` with ``cv2.warpAffine``.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from warpsvc.core.align import gauss_newton as gn
from warpsvc.core.align import pyramid
from warpsvc.core.align.chart import chart_scale, make_chart
from warpsvc.core.transforms.models import N_PARAMS, unchecked_matrix

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")


@pytest.mark.parametrize("model", MODELS)
def test_model_rows_and_inverse_match_numpy(model):
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = (rng.normal(0, 0.2, N_PARAMS[model]) * ([1, 1, 30, 1, 1, 30, 1e-3, 1e-3][:N_PARAMS[model]]
                                                     if model in ("affine", "homography") else 1)).tolist()
        m = gn.model_rows(model, p)
        expect = unchecked_matrix(model, p)
        np.testing.assert_array_equal(np.array(m), expect)
        np.testing.assert_allclose(np.array(gn.inverse_rows(m)), np.linalg.inv(expect), rtol=1e-12, atol=1e-12)
    assert gn.inverse_rows(((1.0, 2.0, 0.0), (2.0, 4.0, 0.0), (0.0, 0.0, 1.0))) is None


@pytest.mark.parametrize("model", MODELS)
def test_compose_size_ok_match_the_matrix_definitions(model):
    shape = (60, 80, 1)
    chart = make_chart(shape)
    chart_inv = np.linalg.inv(chart)
    h, w = shape[:2]
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64)
    stepper = gn.Stepper(model, chart, chart_inv, corners, chart_scale(chart) / 2.0)
    rng = np.random.default_rng(2)
    for trial in range(20):
        W = np.array([[1.05, 0.03, 12.5], [-0.02, 0.97, 7.25], [0.0, 0.0, 1.0]])
        if model == "homography" and trial % 2:
            W[2, :2] = (2e-4, -1e-4)
        p = rng.normal(0, 0.05, N_PARAMS[model]).tolist()
        m = gn.model_rows(model, p)
        M = np.array(m)
        expect = W @ chart_inv @ np.linalg.inv(M) @ chart
        expect /= expect[2, 2]
        got = np.array(stepper.compose(W, m))
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
        if W[2, 0] == 0.0 and W[2, 1] == 0.0 and model != "homography":
            assert got[2, 0] == 0.0 and got[2, 1] == 0.0  # affine stays exactly affine
        cu = corners @ chart.T
        moved = cu @ M.T
        moved = moved[:, :2] / moved[:, 2:]
        size = np.abs(moved - cu[:, :2]).max() * chart_scale(chart) / 2.0
        assert stepper.size(m) == pytest.approx(size, rel=1e-12, abs=1e-12)
        assert stepper.ok(got) and stepper.ok(tuple(map(tuple, got.tolist())))
    flip = np.diag([-1.0, 1.0, 1.0])
    assert not stepper.ok(flip)  # orientation reversed
    behind = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.05, 0, 1.0]])  # far corners at w <= 0
    assert not stepper.ok(behind)
    assert not stepper.ok(np.full((3, 3), np.nan))


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = np.cumsum(np.cumsum(rng.normal(0, 1, (h, w)), axis=0), axis=1)
    return (img / img.std() * 40 + 100).astype(np.float32)[:, :, None]


@pytest.mark.parametrize("photometric", [False, True])
@pytest.mark.parametrize("shift", [(2.25, 1.5), (-20.0, 3.0)])  # inside / partly outside the image
def test_evaluate_matches_the_residual_definition(photometric, shift):
    t = _texture(40, 50, seed=3)
    image = np.full((70, 80, 1), np.nan, np.float32)
    image[:, :] = _texture(70, 80, seed=4) * 1.2 + 5.0
    chart = make_chart(t.shape)
    lv = pyramid.build_level(0, t, image, "affine", chart, photometric)
    W = np.array([[1.01, 0.02, 10.0 + shift[0]], [-0.01, 0.99, 12.0 + shift[1]], [0.0, 0.0, 1.0]])
    ev = gn.evaluate(lv, W, True, None, photometric, None, None, 1e-12)
    warped = cv2.warpAffine(image[:, :, 0], W[:2], (50, 40), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan).reshape(-1)
    valid = lv.usable & ~np.isnan(warped)
    np.testing.assert_array_equal(ev.valid, valid)
    assert ev.n_valid == int(valid.sum())
    a, b = 1.0, 0.0
    if photometric:
        tv, iv = lv.tflat[valid].astype(np.float64), warped[valid].astype(np.float64)
        a, b = np.polyfit(tv, iv, 1)
        assert ev.gain[0] == pytest.approx(a, rel=1e-5)
        assert ev.bias[0] == pytest.approx(b, rel=1e-4, abs=1e-3)
    expect = np.where(valid, (warped.astype(np.float64) - b) / a - lv.tflat, 0.0)
    np.testing.assert_allclose(ev.e, expect, rtol=1e-4, atol=1e-3)
    assert np.all(ev.e[~valid] == 0.0)
    assert ev.cost == pytest.approx(float(np.dot(expect, expect)) / valid.sum(), rel=1e-4)


@pytest.mark.parametrize("perspective", [(0.0, 0.0), (2e-4, -1e-4), (-8.5e-3, 0.0)])  # last: fallback
def test_sample_points_fast_maps_match_the_direct_division(perspective):
    rng = np.random.default_rng(5)
    image = _texture(90, 120, seed=6)
    image[10:20, 30:50] = np.nan
    n = 5000  # more than one REMAP_ROW row, with padding
    points = np.column_stack([rng.uniform(-5, 125, n), rng.uniform(-5, 95, n), np.ones(n)])
    W = np.array([[1.02, 0.03, 2.5], [-0.02, 0.98, -1.25], [*perspective, 1.0]])
    fast = pyramid.sample_points(image, W, points, pyramid.point_maps(points))
    q = points @ W.T
    with np.errstate(divide="ignore", invalid="ignore"):
        mx = (q[:, 0] / q[:, 2]).astype(np.float32).reshape(1, -1)
        my = (q[:, 1] / q[:, 2]).astype(np.float32).reshape(1, -1)
    direct = cv2.remap(image[:, :, 0], mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                       borderValue=np.nan).reshape(-1, 1)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(direct))
    np.testing.assert_allclose(fast, direct, rtol=0, atol=1e-3, equal_nan=True)
