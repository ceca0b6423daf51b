"""The transform protocol shared by every warp.

A transform ``T`` maps input-image coordinates to output-image coordinates
(``dst_from_src``), points as ``(x, y)`` = (column, row), arrays ``(N, 2)``.
Resampling uses its inverse: ``out(y) = in(T^{-1}(y))``.

Every transform offers

* ``map(xy) -> (N, 2)``: the forward map;
* ``inverse() -> Transform``: exact inverse (analytic, not iterative);
* ``jacobian(xy) -> (N, 2, 2)``: ``J[n, i, j] = d map(xy)_i / d xy_j`` at ``xy[n]``;
* ``then(other)``: the composition ``other ∘ self`` (``self`` applied first), whose
  Jacobian follows the chain rule ``J(G∘H)(x) = J_G(H(x)) · J_H(x)``.

Hooks let the single resampler treat every family alike (and fast where a family has
structure: ``sampling_grid`` / ``determinant_grid`` evaluate the map and ``|det J|`` over a
block of pixels, by outer products where the map is separable):

* ``sampling_map(xy)``: the coordinates the resampler reads (``map`` unless a family
  reproduces OpenCV's own arithmetic, as polar does);
* ``default_output_shape(input_shape)``: the output grid a warp uses when none is given;
* ``source_row_period()`` / ``output_row_period()``: the row period of the input / output
  image when its rows are an angle axis (a polar image: row ``H`` is row ``0`` again).
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgumentError


def as_points(xy, field: str = "xy") -> np.ndarray:
    """Validate and convert points to a C-contiguous ``(N, 2) float64`` array.

    A single point ``(x, y)`` is accepted and returned as shape ``(1, 2)``.
    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.ndim == 1 and pts.shape[0] == 2:
        pts = pts[None, :]
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise InvalidArgumentError(f"{field} must have shape (N, 2), got {pts.shape}", field=field)
    return np.ascontiguousarray(pts)


class Transform:
    """Abstract base: a smooth invertible map of the plane (see module docstring)."""


    def map(self, xy) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self) -> "Transform":  # pragma: no cover - abstract
        raise NotImplementedError

    def jacobian(self, xy) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def jacobian_determinant(self, xy) -> np.ndarray:
        """``det J(xy)`` as ``(N,) float64`` (signed)."""
        jac = self.jacobian(xy)
        return jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]

    def then(self, other: "Transform") -> "Transform":
        """Composition ``other ∘ self``: apply ``self`` first, then ``other``."""
        from .compose import compose

        return compose(self, other)

    def __matmul__(self, other: "Transform") -> "Transform":
        """``g @ h`` is ``g ∘ h`` (``h`` first), as matrices named ``dst_from_src`` multiply."""
        from .compose import compose

        return compose(other, self)

    def sampling_map(self, xy) -> np.ndarray:
        """The coordinates the resampler reads for output points ``xy``: ``map(xy)`` unless a
        family reproduces a reference implementation's arithmetic (see ``PolarTransform``)."""
        return self.map(xy)

    def sampling_grid(self, rows: tuple[int, int], cols: tuple[int, int], dtype=np.float64):
        """``sampling_map`` over the pixel block ``rows x cols`` (half-open ranges) as two
        ``(h, w)`` arrays ``(x, y)`` of ``dtype`` (computed in float64, rounded once);
        families with separable maps override it."""
        xs, ys = np.meshgrid(np.arange(*cols, dtype=np.float64), np.arange(*rows, dtype=np.float64))
        xy = self.sampling_map(np.column_stack([xs.ravel(), ys.ravel()]))
        return (xy[:, 0].reshape(xs.shape).astype(dtype, copy=False),
                xy[:, 1].reshape(xs.shape).astype(dtype, copy=False))

    def determinant_grid(self, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """``|det J(y)|`` over the pixel block ``rows x cols`` as ``(h, w) float64``."""
        xs, ys = np.meshgrid(np.arange(*cols, dtype=np.float64), np.arange(*rows, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            det = self.jacobian_determinant(np.column_stack([xs.ravel(), ys.ravel()]))
        return np.abs(det).reshape(xs.shape)

    def default_output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` used by ``warp`` when none is given: the input's, by default."""
        return (int(input_shape[0]), int(input_shape[1]))

    def source_row_period(self) -> int | None:
        """Row period of the input image if its rows are an angle axis, else ``None``."""
        return None

    def output_row_period(self) -> int | None:
        """Row period of the *output* image if its rows are an angle axis, else ``None``."""
        return None

    def is_matrix(self) -> bool:
        """True when the map is a 3x3 projective matrix (affine or homography)."""
        return False


class FrozenTransform(Transform):
    """A transform that is a value: immutable after ``__init__``, equal (and hashing alike) when
    its :meth:`_key` is, so ``==`` and ``hash`` agree for every family (usable as dict keys).

    Subclasses set their fields once with :meth:`_freeze` and define ``_key()``.
    """


    def _freeze(self, **fields) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable (build a new one instead)")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _key(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def __eq__(self, other):
        return type(other) is type(self) and self._key() == other._key()

    def __hash__(self):
        return hash((type(self).__name__, self._key()))
