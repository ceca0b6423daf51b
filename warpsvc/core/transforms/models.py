"""Parameterisations of the matrix families used by alignment.

Each motion model is a smooth map ``p -> M(p)`` from ``P`` parameters to a 3x3
``dst_from_src`` matrix, with ``M(0) = I``. Its derivative ``dM/dp`` is a fixed
``(3, 3, P)`` tensor (linear models) or depends on ``p`` (euclidean: the angle).

============  ==  ==========================================================
model          P  matrix ``M(p)``
============  ==  ==========================================================
translation    2  ``[[1, 0, tx], [0, 1, ty], [0, 0, 1]]``
euclidean      3  ``[[cos t, -sin t, tx], [sin t, cos t, ty], [0, 0, 1]]``
similarity     4  ``[[1+a, -b, tx], [b, 1+a, ty], [0, 0, 1]]``
affine         6  ``[[1+p0, p1, p2], [p3, 1+p4, p5], [0, 0, 1]]``
homography     8  ``I + [[p0, p1, p2], [p3, p4, p5], [p6, p7, 0]]`` (``M22 = 1``)
============  ==  ==========================================================

The point map is ``y = (M[:2] x~) / w`` with ``x~ = (x, y, 1)`` and ``w = M[2] x~``. Its
derivative with respect to the matrix entries is::

    dy_i / dM_ij = x~_j / w            (i = 0, 1)
    dy_i / dM_2j = -y_i x~_j / w

and the chain rule gives ``d y / d p = sum_rc (d y / d M_rc)(d M_rc / d p)``, an ``(N, 2, P)``
array (``jacobian_params``).

At the identity (``p = 0``, where alignment's inverse-compositional updates are linearised)
this is three small matrix products per point set instead of an einsum::

    d y_i / d p = x~ . dM_i/dp - y_i (x~ . dM_2/dp)        (i = 0, 1; y = x at p = 0)

(:func:`identity_jacobian`). A *sub-model* (translation inside affine, affine inside
homography) is a set of parameters whose ``dM/dp`` columns at ``p = 0`` are exactly the
sub-model's own: :func:`submodel_columns` finds them from the tensors above, so no parameter
order is written out twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from ..errors import InvalidArgumentError, InvalidTransformError

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")
N_PARAMS = {"translation": 2, "euclidean": 3, "similarity": 4, "affine": 6, "homography": 8}
# How far (relative) a matrix may sit from a family and still count as a member.
MEMBERSHIP_TOLERANCE = 1e-9


def check_model(model: str, field: str = "model") -> str:
    if model not in MODELS:
        raise InvalidArgumentError(f"{field} must be one of {MODELS}, got {model!r}", field=field)
    return model


def _unit(r: int, c: int) -> np.ndarray:
    e = np.zeros((3, 3))
    e[r, c] = 1.0
    return e


def matrix_from_params(model: str, params) -> np.ndarray:
    """``M(p)`` as a ``(3, 3) float64`` matrix."""
    p = np.asarray(params, dtype=np.float64).ravel()
    if p.shape != (N_PARAMS[check_model(model)],):
        raise InvalidArgumentError(
            f"params for model {model!r} must have {N_PARAMS[model]} values, got {p.size}",
            field="params",
        )
    return unchecked_matrix(model, p)


def unchecked_matrix(model: str, params) -> np.ndarray:
    """``M(p)`` without the argument checks of :func:`matrix_from_params` (hot loops: the
    caller guarantees a known ``model`` and ``P`` finite values)."""
    p = [float(v) for v in params]
    if model == "translation":
        return np.array([[1.0, 0.0, p[0]], [0.0, 1.0, p[1]], [0.0, 0.0, 1.0]])
    if model == "euclidean":
        c, s = math.cos(p[0]), math.sin(p[0])
        return np.array([[c, -s, p[1]], [s, c, p[2]], [0.0, 0.0, 1.0]])
    if model == "similarity":
        return np.array([[1 + p[0], -p[1], p[2]], [p[1], 1 + p[0], p[3]], [0.0, 0.0, 1.0]])
    if model == "affine":
        return np.array([[1 + p[0], p[1], p[2]], [p[3], 1 + p[4], p[5]], [0.0, 0.0, 1.0]])
    return np.array([[1 + p[0], p[1], p[2]], [p[3], 1 + p[4], p[5]], [p[6], p[7], 1.0]])


def params_from_matrix(model: str, matrix: np.ndarray) -> np.ndarray:
    """Inverse of :func:`matrix_from_params`; raises if ``matrix`` is not in the family."""
    m = np.asarray(matrix, dtype=np.float64)
    check_model(model)
    if model == "homography":
        m = m / m[2, 2]
        d = m - np.eye(3)
        return np.array([d[0, 0], d[0, 1], d[0, 2], d[1, 0], d[1, 1], d[1, 2], d[2, 0], d[2, 1]])
    m = m / m[2, 2]
    if model == "translation":
        p = np.array([m[0, 2], m[1, 2]])
    elif model == "euclidean":
        p = np.array([np.arctan2(m[1, 0], m[0, 0]), m[0, 2], m[1, 2]])
    elif model == "similarity":
        p = np.array([(m[0, 0] + m[1, 1]) / 2 - 1, (m[1, 0] - m[0, 1]) / 2, m[0, 2], m[1, 2]])
    else:
        p = np.array([m[0, 0] - 1, m[0, 1], m[0, 2], m[1, 0], m[1, 1] - 1, m[1, 2]])
    back = matrix_from_params(model, p)
    scale = max(1.0, float(np.abs(m).max()))
    if not np.allclose(back, m, rtol=0, atol=MEMBERSHIP_TOLERANCE * scale):
        raise InvalidTransformError(f"matrix is not a {model} transform", field="model")
    return p


def dmatrix_dparams(model: str, params) -> np.ndarray:
    """``dM/dp`` as a ``(3, 3, P) float64`` tensor at ``params``."""
    p = np.asarray(params, dtype=np.float64).ravel()
    check_model(model)
    if model == "translation":
        units = [_unit(0, 2), _unit(1, 2)]
    elif model == "euclidean":
        c, s = np.cos(p[0]), np.sin(p[0])
        dtheta = np.array([[-s, -c, 0], [c, -s, 0], [0, 0, 0.0]])
        units = [dtheta, _unit(0, 2), _unit(1, 2)]
    elif model == "similarity":
        units = [_unit(0, 0) + _unit(1, 1), _unit(1, 0) - _unit(0, 1), _unit(0, 2), _unit(1, 2)]
    elif model == "affine":
        units = [_unit(r, c) for r in (0, 1) for c in (0, 1, 2)]
    else:
        units = [_unit(r, c) for r in (0, 1) for c in (0, 1, 2)] + [_unit(2, 0), _unit(2, 1)]
    return np.stack(units, axis=-1)


@cache
def _dm_at_identity(model: str) -> np.ndarray:
    dm = dmatrix_dparams(model, np.zeros(N_PARAMS[check_model(model)]))
    dm.setflags(write=False)
    return dm


def identity_jacobian(model: str, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Jx, Jy)``, each ``(N, P) float64``: ``d map(xy) / d p`` at ``p = 0`` split by output
    coordinate (equals ``MotionModel(model).jacobian_params(0, xy)[:, 0]`` and ``[:, 1]``)."""
    dm = _dm_at_identity(model)  # (3, 3, P)
    xt = np.column_stack([xy, np.ones(len(xy))])  # (N, 3)
    a0, a1, a2 = xt @ dm[0], xt @ dm[1], xt @ dm[2]  # (N, P) each
    return a0 - xy[:, :1] * a2, a1 - xy[:, 1:2] * a2


@cache
def submodel_columns(model: str, sub: str) -> tuple[int, ...] | None:
    """Indices of ``model``'s parameters that form ``sub`` at ``p = 0`` (``dM/dp`` columns equal
    to ``sub``'s, in ``sub``'s parameter order), or ``None`` if ``sub`` is not such a subset
    (euclidean's rotation is not a column of affine's)."""
    big, small = _dm_at_identity(model), _dm_at_identity(check_model(sub, "sub"))
    cols = []
    for k in range(small.shape[2]):
        hits = [j for j in range(big.shape[2]) if np.array_equal(big[:, :, j], small[:, :, k])]
        if not hits:
            return None
        cols.append(hits[0])
    return tuple(cols)


def point_map_dmatrix(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``d y / d M`` of the projective point map, ``(N, 2, 3, 3)``, at points ``xy (N, 2)``."""
    n = xy.shape[0]
    xt = np.column_stack([xy, np.ones(n)])  # (N, 3)
    w = xt @ matrix[2]  # (N,)
    y = (xt @ matrix[:2].T) / w[:, None]  # (N, 2)
    d = np.zeros((n, 2, 3, 3))
    d[:, 0, 0, :] = xt / w[:, None]
    d[:, 1, 1, :] = xt / w[:, None]
    d[:, :, 2, :] = -y[:, :, None] * xt[:, None, :] / w[:, None, None]
    return d


@dataclass(frozen=True)
class MotionModel:
    """A named parameterisation: ``MotionModel("affine").matrix(p)``, ``.params(M)``, ..."""

    name: str

    def __post_init__(self):
        check_model(self.name)

    @property
    def n_params(self) -> int:
        return N_PARAMS[self.name]

    def matrix(self, params) -> np.ndarray:
        return matrix_from_params(self.name, params)

    def params(self, matrix) -> np.ndarray:
        return params_from_matrix(self.name, matrix)

    def jacobian_params(self, params, xy) -> np.ndarray:
        """``d map(xy) / d p`` at ``params``: ``(N, 2, P) float64``."""
        m = matrix_from_params(self.name, params)
        dm = dmatrix_dparams(self.name, params)  # (3, 3, P)
        return np.einsum("nirc,rcp->nip", point_map_dmatrix(m, xy), dm)
