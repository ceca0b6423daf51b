"""Warp Jacobians in the normalised template chart, and covariance propagation to points.

The chart ``C`` (``chart_from_template``) maps level-0 template pixels to coordinates centred on
the template with its corners at about +-1: ``u = (x - c) / s``. Motion updates ``M(d)`` act in
this chart, so their parameters are of comparable size (a shift of 1 means half the template,
a shear of 1 means 45 degrees), which keeps the Gauss-Newton normal equations well conditioned.

At the identity (``d = 0``) the projective point map ``u -> M(d) u`` has derivative::

    d u'_i / d d = sum_j u~_j dM_ij/dd - u_i sum_j u~_j dM_2j/dd       (i = 0, 1; u~ = (u, v, 1))

which equals ``MotionModel(model).jacobian_params(0, u)`` (tested); here it is three small
matrix products instead of an ``(N, 2, 3, 3)`` einsum, because alignment evaluates it on every
template pixel of every level.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np

from ..transforms.models import N_PARAMS, dmatrix_dparams, matrix_from_params


def make_chart(template_shape) -> np.ndarray:
    """``chart_from_template`` (3, 3): centre the template and scale its half-extent to 1."""
    h, w = template_shape[:2]
    s = max(max(w, h) - 1, 1) / 2.0
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return np.array([[1 / s, 0, -cx / s], [0, 1 / s, -cy / s], [0, 0, 1.0]])


def chart_scale(chart: np.ndarray) -> float:
    """Template pixels per chart unit."""
    return float(1.0 / chart[0, 0])


@cache
def _dm_at_identity(model: str) -> np.ndarray:
    dm = dmatrix_dparams(model, np.zeros(N_PARAMS[model]))
    dm.setflags(write=False)
    return dm


def warp_jacobian(model: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Jx, Jy)``, each ``(N, P)``: derivative of the mapped chart point at ``d = 0``."""
    dm = _dm_at_identity(model)  # (3, 3, P)
    ut = np.column_stack([u, np.ones(len(u))])  # (N, 3)
    a0, a1, a2 = ut @ dm[0], ut @ dm[1], ut @ dm[2]  # (N, P) each
    return a0 - u[:, :1] * a2, a1 - u[:, 1:2] * a2


def update_matrix(model: str, delta) -> np.ndarray:
    """``M(d)`` (3, 3) in the chart: :func:`matrix_from_params` without its guards (hot loop)."""
    d = [float(v) for v in delta]
    if model == "translation":
        return np.array([[1.0, 0.0, d[0]], [0.0, 1.0, d[1]], [0.0, 0.0, 1.0]])
    if model == "euclidean":
        c, s = math.cos(d[0]), math.sin(d[0])
        return np.array([[c, -s, d[1]], [s, c, d[2]], [0.0, 0.0, 1.0]])
    if model == "similarity":
        return np.array([[1 + d[0], -d[1], d[2]], [d[1], 1 + d[0], d[3]], [0.0, 0.0, 1.0]])
    if model == "affine":
        return np.array([[1 + d[0], d[1], d[2]], [d[3], 1 + d[4], d[5]], [0.0, 0.0, 1.0]])
    if model == "homography":
        return np.array([[1 + d[0], d[1], d[2]], [d[3], 1 + d[4], d[5]], [d[6], d[7], 1.0]])
    return matrix_from_params(model, delta)


def inv3(m: np.ndarray) -> np.ndarray:
    """Inverse of a 3x3 matrix by the adjugate (no LAPACK call overhead); caller checks ``det``."""
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    co = [e * i - f * h, f * g - d * i, d * h - e * g]
    det = a * co[0] + b * co[1] + c * co[2]
    return np.array([[co[0], c * h - b * i, b * f - c * e],
                     [co[1], a * i - c * g, c * d - a * f],
                     [co[2], b * g - a * h, a * e - b * d]]) / det


def det3(m: np.ndarray) -> float:
    (a, b, c), (d, e, f), (g, h, i) = m.tolist()
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


@lru_cache(maxsize=64)
def _chart_jacobian(model, chart_key, pts_key):
    """``(N, 2, P)`` chart Jacobian at template points (cached: the corners recur every call)."""
    chart = np.asarray(chart_key).reshape(3, 3)
    pts = np.asarray(pts_key).reshape(-1, 2)
    u = pts @ chart[:2, :2].T + chart[:2, 2]
    jx, jy = warp_jacobian(model, u)
    j = np.stack([jx, jy], axis=1)
    j.setflags(write=False)
    return j


def point_covariance(image_from_template, chart, model, covariance, xy) -> np.ndarray:
    """``(N, 2, 2)`` covariance of ``W(xy)`` for ``W = image_from_template`` (see AlignResult)."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(image_from_template, dtype=np.float64)
    # dW/dx at the template points (quotient rule), (N, 2, 2)
    xt = np.column_stack([pts, np.ones(len(pts))])
    w = xt @ m[2]
    y = (xt @ m[:2].T) / w[:, None]
    dwdx = (m[None, :2, :2] - y[:, :, None] * m[None, None, 2, :2]) / w[:, None, None]
    j = _chart_jacobian(model, tuple(chart.ravel()), tuple(pts.ravel()))  # (N, 2, P)
    g = chart_scale(chart) * np.matmul(dwdx, j)  # (N, 2, P)
    return np.matmul(np.matmul(g, covariance), np.swapaxes(g, 1, 2))  # (N, 2, 2)
