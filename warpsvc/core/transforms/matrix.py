"""Affine and projective (homography) transforms, one 3x3 matrix each.

The matrix is ``dst_from_src`` in homogeneous pixel coordinates (OpenCV's forward meaning):
``y = (M[:2] x~) / w``, ``x~ = (x, y, 1)``, ``w = M[2] x~`` (``w = 1`` for affine).

Jacobian with respect to position, from the quotient rule::

    J_ij(x) = (M_ij - y_i M_2j) / w        i, j in {0, 1}

so for an affine map ``J = M[:2, :2]`` everywhere, and for a homography
``det J(x) = det M / w^3`` (the closed form the determinant map uses).

Each transform carries a motion ``model`` (translation ... homography, see
:mod:`.models`) that fixes how ``params`` and ``jacobian_params`` read the matrix.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidArgumentError, InvalidTransformError
from .base import FrozenTransform, as_points
from .models import MotionModel, check_model

# Matrices with a condition number above this are treated as singular.
MAX_CONDITION = 1e12
# Largest unit change used when balancing a matrix's translation against its linear part.
MAX_BALANCE = 1e12


def _condition_bound(b: np.ndarray) -> float:
    """An upper bound of the 2-norm condition number of the 3x3 ``b``:
    ``cond_2(B) = s_max / s_min <= ||B||_F ||B^-1||_F = ||B||_F ||adj B||_F / |det B|`` (Python
    floats, ~3 us against ~10 us for numpy's SVD); ``inf`` when ``det B`` is 0 or not finite.
    Used only to skip the SVD when the bound is far below the threshold, so the decision is
    the exact one (rounding in the bound is ~1e-15 relative; the threshold is halved)."""
    (a, b_, c), (d, e, f), (g, h, i) = b.tolist()
    c00, c01, c02 = e * i - f * h, f * g - d * i, d * h - e * g
    c10, c11, c12 = c * h - b_ * i, a * i - c * g, b_ * g - a * h
    c20, c21, c22 = b_ * f - c * e, c * d - a * f, a * e - b_ * d
    det = a * c00 + b_ * c01 + c * c02
    if not (det != 0.0 and math.isfinite(det)):
        return math.inf
    norm = a * a + b_ * b_ + c * c + d * d + e * e + f * f + g * g + h * h + i * i
    adj = (c00 * c00 + c01 * c01 + c02 * c02 + c10 * c10 + c11 * c11 + c12 * c12
           + c20 * c20 + c21 * c21 + c22 * c22)
    bound = math.sqrt(norm * adj) / abs(det)
    return bound if math.isfinite(bound) else math.inf


def _check_finite_points(src: np.ndarray, dst: np.ndarray) -> None:
    """``InvalidArgumentError`` naming ``src`` / ``dst`` for a non-finite coordinate (the fits'
    SVD / least squares raised a bare ``LinAlgError``, LAPACK writing to stderr)."""
    for name, pts in (("src", src), ("dst", dst)):
        if not np.isfinite(pts).all():
            raise InvalidArgumentError(f"{name} has non-finite coordinates", field=name)


def _check_matrix(matrix, field: str) -> np.ndarray:
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):  # text, ragged rows, None: a bare numpy error named no field
        raise InvalidTransformError(f"{field} must be a 2x3 or 3x3 array of numbers, got {type(matrix).__name__}",
                                    field=field) from None
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise InvalidTransformError(f"{field} must be 2x3 or 3x3, got shape {m.shape}", field=field)
    if not np.all(np.isfinite(m)):
        raise InvalidTransformError(f"{field} has non-finite entries", field=field)
    if not np.any(m):
        raise InvalidTransformError(f"{field} is all zeros", field=field)
    # Conditioning in balanced units: D M D^-1 with D = diag(1, 1, s), s the translation's size,
    # is the same map in pixels of size s (similar matrix, same invertibility), so a large but
    # harmless translation does not read as singular.
    s = min(max(1.0, abs(m[0, 2]), abs(m[1, 2])), MAX_BALANCE)
    with np.errstate(over="ignore", invalid="ignore"):
        balanced = m * np.array([[1.0, 1.0, 1.0 / s], [1.0, 1.0, 1.0 / s], [s, s, 1.0]])
        balanced = balanced / np.abs(balanced).max()
    if _condition_bound(balanced) <= 0.5 * MAX_CONDITION:
        cond = 0.0  # certainly well conditioned: the SVD is not needed
    else:
        try:
            cond = np.linalg.cond(balanced) if np.all(np.isfinite(balanced)) else np.inf
        except np.linalg.LinAlgError:  # SVD did not converge: extreme entries
            cond = np.inf
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        raise InvalidTransformError(
            f"{field} is singular or too ill-conditioned (condition number {cond:.3g})", field=field
        )
    m = m.copy()
    m.setflags(write=False)
    return m


class _MatrixTransform(FrozenTransform):
    """Shared machinery of :class:`AffineTransform` and :class:`HomographyTransform`."""

    _default_model = "homography"

    def __init__(self, matrix, *, model: str | None = None, _checked: bool = False):
        self._freeze(_matrix=matrix if _checked else _check_matrix(matrix, "matrix"),
                     _model=check_model(model or self._default_model))

    # -- construction ---------------------------------------------------------------
    @classmethod
    def identity(cls, model: str | None = None):
        return cls(np.eye(3), model=model)

    @classmethod
    def from_matrix(cls, matrix, model: str | None = None):
        return cls(matrix, model=model)

    @classmethod
    def from_params(cls, params, model: str | None = None):
        """Build from motion-model parameters (``M(0) = I``, see :mod:`.models`)."""
        model = check_model(model or cls._default_model)
        return cls(MotionModel(model).matrix(params), model=model)

    # -- value semantics --------------------------------------------------------------
    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 ``dst_from_src`` matrix (read-only ``float64``)."""
        return self._matrix

    @property
    def model(self) -> str:
        return self._model

    def with_model(self, model: str):
        return type(self)(self._matrix, model=model, _checked=True)

    def _key(self) -> tuple:
        """Entries as floats (``-0.0 == 0.0`` in ``==`` and ``hash`` alike) and the model."""
        return (tuple(float(v) for v in self._matrix.ravel()), self._model)

    def __repr__(self):
        rows = ", ".join(np.array2string(r, precision=6, separator=", ") for r in self._matrix)
        return f"{type(self).__name__}([{rows}], model={self._model!r})"

    def is_matrix(self) -> bool:
        return True

    # -- the map and its derivatives ---------------------------------------------------
    def map(self, xy) -> np.ndarray:
        pts = as_points(xy)
        m = self._matrix
        w = pts @ m[2, :2] + m[2, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (pts @ m[:2, :2].T + m[:2, 2]) / w[:, None]

    def jacobian(self, xy) -> np.ndarray:
        """``(N, 2, 2)``: ``J_ij = (M_ij - y_i M_2j) / w``."""
        pts = as_points(xy)
        m = self._matrix
        w = pts @ m[2, :2] + m[2, 2]
        y = self.map(pts)
        jac = m[None, :2, :2] - y[:, :, None] * m[None, None, 2, :2]
        return jac / w[:, None, None]

    def jacobian_determinant(self, xy) -> np.ndarray:
        """Closed form ``det M / w^3`` (signed), ``(N,)``."""
        pts = as_points(xy)
        m = self._matrix
        w = pts @ m[2, :2] + m[2, 2]
        return np.linalg.det(m) / w**3

    def determinant_grid(self, rows, cols) -> np.ndarray:
        """``|det M| / |w|^3`` by broadcasting ``w = M20 x + M21 y + M22`` over the block."""
        m = self._matrix
        xs, ys = np.arange(*cols, dtype=np.float64), np.arange(*rows, dtype=np.float64)
        w = (m[2, 0] * xs)[None, :] + (m[2, 1] * ys + m[2, 2])[:, None]
        with np.errstate(divide="ignore"):
            return abs(np.linalg.det(m)) / np.abs(w) ** 3

    @property
    def params(self) -> np.ndarray:
        """Parameters of this matrix in its motion model (raises if it is not a member)."""
        return MotionModel(self._model).params(self._matrix)

    def jacobian_params(self, xy) -> np.ndarray:
        """``d map(xy) / d params`` at the current parameters, ``(N, 2, P)``."""
        return MotionModel(self._model).jacobian_params(self.params, as_points(xy))


class AffineTransform(_MatrixTransform):
    """``y = A x + t``: a 3x3 matrix with last row ``(0, 0, 1)`` (or the 2x3 top)."""

    _default_model = "affine"

    def __init__(self, matrix, *, model: str | None = None, _checked: bool = False):
        super().__init__(matrix, model=model, _checked=_checked)
        if not np.array_equal(self._matrix[2], [0.0, 0.0, 1.0]):
            raise InvalidTransformError("an affine matrix must have last row (0, 0, 1)", field="matrix")
        if self._model == "homography":
            raise InvalidArgumentError("AffineTransform cannot use model 'homography'", field="model")

    @classmethod
    def from_points(cls, src, dst, model: str | None = None):
        """Least-squares affine ``dst_from_src`` through >= 3 point pairs (exact for 3)."""
        s, d = as_points(src, "src"), as_points(dst, "dst")
        _check_finite_points(s, d)
        if s.shape != d.shape or s.shape[0] < 3:
            raise InvalidArgumentError("src and dst need the same >= 3 points", field="src")
        design = np.column_stack([s, np.ones(len(s))])
        sol, *_ = np.linalg.lstsq(design, d, rcond=None)  # (3, 2)
        return cls(np.vstack([sol.T, [0.0, 0.0, 1.0]]), model=model)

    @classmethod
    def from_components(cls, *, scale=(1.0, 1.0), rotation=0.0, shear=0.0, translation=(0.0, 0.0)):
        """``T R Sh S``: scale (one number: the same on both axes), then shear (x += shear*y),
        rotate (radians, CCW in x-right/y-down pixels appears clockwise), translate."""
        try:
            scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), (2,))
            rotation, shear = float(rotation), float(shear)
            translation = np.broadcast_to(np.asarray(translation, dtype=np.float64), (2,))
        except (TypeError, ValueError):
            raise InvalidArgumentError("scale and translation take one or two numbers, rotation and shear one",
                                       field="scale") from None
        c, s = np.cos(rotation), np.sin(rotation)
        rot = np.array([[c, -s], [s, c]])
        shr = np.array([[1.0, shear], [0.0, 1.0]])
        lin = rot @ shr @ np.diag(scale)
        return cls(np.vstack([np.column_stack([lin, translation]), [0.0, 0.0, 1.0]]))

    def inverse(self) -> "AffineTransform":
        lin_inv = np.linalg.inv(self._matrix[:2, :2])
        top = np.column_stack([lin_inv, -lin_inv @ self._matrix[:2, 2]])
        return AffineTransform(np.vstack([top, [0.0, 0.0, 1.0]]), model=self._model)


class HomographyTransform(_MatrixTransform):
    """A general projective map of the plane (3x3, non-singular, defined up to scale)."""

    _default_model = "homography"

    @classmethod
    def from_points(cls, src, dst, model: str | None = None):
        """Normalised DLT through >= 4 point pairs (exact for 4 in general position).

        Hartley normalisation: points are shifted to their centroid and scaled to mean
        distance sqrt(2) before the SVD, then the matrix is de-normalised.
        """
        s, d = as_points(src, "src"), as_points(dst, "dst")
        if s.shape != d.shape or s.shape[0] < 4:
            raise InvalidArgumentError("src and dst need the same >= 4 points", field="src")
        _check_finite_points(s, d)

        def normaliser(p):
            c = p.mean(axis=0)
            dist = np.sqrt(((p - c) ** 2).sum(axis=1)).mean()
            k = np.sqrt(2) / dist if dist > 0 else 1.0
            return np.array([[k, 0, -k * c[0]], [0, k, -k * c[1]], [0, 0, 1.0]])

        ns, nd = normaliser(s), normaliser(d)
        sh = s @ ns[:2, :2].T + ns[:2, 2]
        dh = d @ nd[:2, :2].T + nd[:2, 2]
        rows = []
        for (x, y), (u, v) in zip(sh, dh):
            rows.append([-x, -y, -1, 0, 0, 0, u * x, u * y, u])
            rows.append([0, 0, 0, -x, -y, -1, v * x, v * y, v])
        _, _, vt = np.linalg.svd(np.asarray(rows))
        h = vt[-1].reshape(3, 3)
        m = np.linalg.inv(nd) @ h @ ns
        return cls(m / m[2, 2] if abs(m[2, 2]) > 1e-300 else m, model=model)

    def inverse(self) -> "HomographyTransform":
        inv = np.linalg.inv(self._matrix)
        if abs(inv[2, 2]) > 1e-12 * np.abs(inv).max():
            inv = inv / inv[2, 2]
        return HomographyTransform(inv, model=self._model)
