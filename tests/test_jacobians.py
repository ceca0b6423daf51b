"""Analytic Jacobians vs central finite differences; determinant maps vs closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.conftest import catalogue
from tests.tolerances import DET_CLOSED_FORM_RTOL, JACOBIAN_FD_RTOL, ROUND_TRIP_ATOL
from warpsvc import AffineTransform, HomographyTransform, MotionModel, PolarTransform, compose, jacobian_determinant
from warpsvc.core.transforms import MODELS

H, W = 120, 160
POLAR_H, POLAR_W = 180, 100


def fd_jacobian(f, xy, h=1e-4):
    """Central differences: ``(N, 2, 2)``, column j from steps along coordinate j."""
    cols = []
    for j in range(2):
        step = np.zeros(2)
        step[j] = h
        cols.append((f(xy + step) - f(xy - step)) / (2 * h))
    return np.stack(cols, axis=-1)


def sample_points(name: str, n: int, seed: int) -> np.ndarray:
    """Points in each transform's domain, away from the polar centre and angle seam."""
    rng = np.random.default_rng(seed)
    t = catalogue(H, W)[name]
    if name.startswith(("polar_inverse", "logpolar_inverse")):
        return np.column_stack([rng.uniform(1, POLAR_W, n), rng.uniform(0, POLAR_H, n)])
    pts = np.column_stack([rng.uniform(0, W, n * 4), rng.uniform(0, H, n * 4)])
    if "polar" in name:
        out = t.map(pts)
        ok = (out[:, 1] > 2) & (out[:, 1] < POLAR_H - 2) & (out[:, 0] > 8)
        pts = pts[ok]
    return pts[:n]


@pytest.mark.parametrize("name", list(catalogue(H, W)))
def test_jacobian_matches_finite_differences(name):
    t = catalogue(H, W)[name]
    xy = sample_points(name, 200, seed=11)
    assert len(xy) >= 100
    analytic = t.jacobian(xy)
    numeric = fd_jacobian(t.map, xy)
    scale = np.abs(analytic).max(axis=(1, 2), keepdims=True)
    assert np.all(np.abs(analytic - numeric) <= JACOBIAN_FD_RTOL * scale)


@pytest.mark.parametrize("name", list(catalogue(H, W)))
def test_inverse_round_trip_and_inverse_jacobian(name):
    t = catalogue(H, W)[name]
    xy = sample_points(name, 200, seed=12)
    back = t.inverse().map(t.map(xy))
    assert np.abs(back - xy).max() < ROUND_TRIP_ATOL * 1e3
    # J_{T^-1}(T(x)) = J_T(x)^{-1}
    prod = t.inverse().jacobian(t.map(xy)) @ t.jacobian(xy)
    assert np.abs(prod - np.eye(2)).max() < 1e-9


def test_composition_jacobian_is_chain_rule():
    hom = catalogue(H, W)["homography"]
    polar = catalogue(H, W)["polar"]
    chain = compose(hom, polar)
    xy = sample_points("homography_then_polar", 100, seed=13)
    expected = polar.jacobian(hom.map(xy)) @ hom.jacobian(xy)
    np.testing.assert_allclose(chain.jacobian(xy), expected, rtol=1e-13, atol=1e-15)


def test_adjacent_matrices_merge_into_one_matrix():
    a = AffineTransform.from_components(rotation=0.3, translation=(2, 3))
    b = HomographyTransform([[1, 0.1, 0], [0, 1, 0], [1e-3, 0, 1]])
    merged = compose(a, b)
    assert merged.is_matrix()
    np.testing.assert_allclose(merged.matrix, b.matrix @ a.matrix, rtol=1e-15)
    assert isinstance(compose(a, a), AffineTransform)
    assert (b @ a) == merged


@pytest.mark.parametrize("model", MODELS)
def test_jacobian_params_matches_finite_differences(model):
    rng = np.random.default_rng(21)
    mm = MotionModel(model)
    p = rng.normal(0, 0.02, mm.n_params)
    if model == "homography":
        p[6:] *= 1e-2
    xy = np.column_stack([rng.uniform(0, W, 50), rng.uniform(0, H, 50)])
    analytic = mm.jacobian_params(p, xy)
    assert analytic.shape == (50, 2, mm.n_params)
    h = 1e-6
    numeric = np.empty_like(analytic)
    for k in range(mm.n_params):
        dp = np.zeros_like(p)
        dp[k] = h
        plus = HomographyTransform(mm.matrix(p + dp)).map(xy)
        minus = HomographyTransform(mm.matrix(p - dp)).map(xy)
        numeric[:, :, k] = (plus - minus) / (2 * h)
    scale = np.abs(analytic).max()
    assert np.abs(analytic - numeric).max() <= JACOBIAN_FD_RTOL * scale


@pytest.mark.parametrize("model", MODELS)
def test_params_round_trip_and_transform_jacobian_params(model):
    rng = np.random.default_rng(22)
    mm = MotionModel(model)
    p = rng.normal(0, 0.05, mm.n_params)
    if model == "homography":
        p[6:] *= 1e-3
    cls = HomographyTransform if model == "homography" else AffineTransform
    t = cls.from_params(p, model=model)
    np.testing.assert_allclose(t.params, p, rtol=1e-12, atol=1e-14)
    xy = rng.uniform(0, 100, (10, 2))
    np.testing.assert_allclose(t.jacobian_params(xy), mm.jacobian_params(p, xy), rtol=1e-14)


def test_from_points_is_exact_for_minimal_sets():
    src = np.array([[0, 0], [100, 0], [100, 80], [0, 80]], float)
    dst = np.array([[3, 4], [95, -2], [110, 90], [-5, 70]], float)
    hom = HomographyTransform.from_points(src, dst)
    np.testing.assert_allclose(hom.map(src), dst, atol=1e-9)
    aff = AffineTransform.from_points(src[:3], dst[:3])
    np.testing.assert_allclose(aff.map(src[:3]), dst[:3], atol=1e-9)


# -- determinant maps vs the closed forms of design.md, every pixel, borders included ----

def pixel_grid(shape):
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return xs, ys


def test_det_map_affine():
    t = catalogue(H, W)["affine"]
    det = jacobian_determinant(t, (H, W))
    expected = np.full((H, W), abs(np.linalg.det(np.linalg.inv(t.matrix)[:2, :2])))
    np.testing.assert_allclose(det, expected, rtol=DET_CLOSED_FORM_RTOL, atol=0)


def test_det_map_homography():
    t = catalogue(H, W)["homography"]
    m = np.linalg.inv(t.matrix)  # dst -> src
    xs, ys = pixel_grid((H, W))
    w = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    expected = abs(np.linalg.det(m)) / np.abs(w) ** 3
    np.testing.assert_allclose(jacobian_determinant(t, (H, W)), expected, rtol=DET_CLOSED_FORM_RTOL, atol=0)


@pytest.mark.parametrize("log", [False, True])
def test_det_map_polar(log):
    r_max = 55.0
    t = PolarTransform((W / 2, H / 2), r_max, (POLAR_H, POLAR_W), log=log)
    u, _ = pixel_grid((POLAR_H, POLAR_W))
    if log:
        k = math.log(r_max) / POLAR_W
        r = np.expm1(u * k)
        expected = r * (r + 1) * k * 2 * math.pi / POLAR_H
    else:
        expected = 2 * math.pi * r_max**2 * u / (POLAR_W**2 * POLAR_H)
    det = jacobian_determinant(t, (POLAR_H, POLAR_W))
    np.testing.assert_allclose(det, expected, rtol=DET_CLOSED_FORM_RTOL, atol=0)


def test_det_map_composition_is_product_of_closed_forms():
    hom, polar = catalogue(H, W)["homography"], catalogue(H, W)["polar"]
    chain = compose(hom, polar)
    u, v = pixel_grid((POLAR_H, POLAR_W))
    r_max = polar.max_radius
    det_polar = 2 * math.pi * r_max**2 * u / (POLAR_W**2 * POLAR_H)
    x = polar.inverse().map(np.column_stack([u.ravel(), v.ravel()]))
    m = np.linalg.inv(hom.matrix)
    w = (x @ m[2, :2] + m[2, 2]).reshape(u.shape)
    expected = det_polar * abs(np.linalg.det(m)) / np.abs(w) ** 3
    np.testing.assert_allclose(jacobian_determinant(chain, (POLAR_H, POLAR_W)), expected, rtol=1e-12, atol=0)


def test_det_map_float32_on_request():
    det = jacobian_determinant(catalogue(H, W)["homography"], (H, W), dtype=np.float32)
    assert det.dtype == np.float32 and det.shape == (H, W)
