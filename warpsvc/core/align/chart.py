"""The normalised template chart of alignment, and covariance propagation to points.

The chart ``C`` (``chart_from_template``) maps level-0 template pixels to coordinates centred on
the template with its corners at about +-1: ``u = (x - c) / s``. Motion updates ``M(d)`` act in
this chart, so their parameters are of comparable size (a shift of 1 means half the template,
a shear of 1 means 45 degrees), which keeps the Gauss-Newton normal equations well conditioned.

The motion models themselves (``M(d)``, ``dM/dd``, the Jacobian at ``d = 0``, sub-model
columns) live in one place, :mod:`warpsvc.core.transforms.models`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import InvalidTransformError
from ..transforms.matrix import HomographyTransform
from ..transforms.models import identity_jacobian


def make_chart(template_shape) -> np.ndarray:
    """``chart_from_template`` (3, 3): centre the template and scale its half-extent to 1."""
    h, w = template_shape[:2]
    s = max(max(w, h) - 1, 1) / 2.0
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return np.array([[1 / s, 0, -cx / s], [0, 1 / s, -cy / s], [0, 0, 1.0]])


def chart_scale(chart: np.ndarray) -> float:
    """Template pixels per chart unit."""
    return float(1.0 / chart[0, 0])


@lru_cache(maxsize=64)
def _chart_jacobian(model, chart_key, pts_key):
    """``(N, 2, P)`` chart Jacobian at template points (cached: the corners recur every call)."""
    chart = np.asarray(chart_key).reshape(3, 3)
    pts = np.asarray(pts_key).reshape(-1, 2)
    u = pts @ chart[:2, :2].T + chart[:2, 2]
    jx, jy = identity_jacobian(model, u)
    j = np.stack([jx, jy], axis=1)
    j.setflags(write=False)
    return j


def point_covariance(image_from_template, chart, model, covariance, xy) -> np.ndarray | None:
    """``(N, 2, 2)`` covariance of ``W(xy)`` for ``W = image_from_template`` (see AlignResult);
    ``None`` when ``W`` is not a usable matrix (the transforms' guard refuses it)."""
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    try:
        dwdx = HomographyTransform(image_from_template).jacobian(pts)  # (N, 2, 2) d W(x) / d x
    except InvalidTransformError:
        return None
    j = _chart_jacobian(model, tuple(chart.ravel()), tuple(pts.ravel()))  # (N, 2, P)
    g = chart_scale(chart) * np.matmul(dwdx, j)  # (N, 2, P)
    return np.matmul(np.matmul(g, covariance), np.swapaxes(g, 1, 2))  # (N, 2, 2)
