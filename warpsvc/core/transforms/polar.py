"""Polar and log-polar transforms, numerically matching ``cv2.warpPolar``.

A polar image has ``W`` columns of radius and ``H`` rows of angle. With centre ``c``,
maximum radius ``R``, column ``u`` and row ``v`` (OpenCV's conventions)::

    theta(v) = 2 pi v / H
    linear:  r(u) = u R / W                       dr/du = R / W
    log:     r(u) = exp(u K) - 1,  K = ln R / W   dr/du = K exp(u K) = K (r + 1)
    x = c_x + r cos theta,  y = c_y + r sin theta

``PolarTransform(..., inverse=False)`` is the forward warp Cartesian -> polar (its map takes
``(x, y)`` to ``(u, v)``, ``theta`` in ``[0, 2 pi)``); ``inverse=True`` is polar -> Cartesian.

Jacobian of the polar -> Cartesian map ``P(u, v)``::

    J_P = [[dr/du cos theta, -r sin theta 2 pi / H],
           [dr/du sin theta,  r cos theta 2 pi / H]]
    det J_P = (dr/du) r 2 pi / H
            = 2 pi R^2 u / (W^2 H)                (linear)
            = r (r + 1) K 2 pi / H                (log)

and the Cartesian -> polar Jacobian is its inverse (singular at the centre, ``r = 0``).
The determinant map of a forward polar warp is ``|det J_P|`` on the polar grid.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidTransformError
from .base import FrozenTransform, as_points

TWO_PI = 2.0 * math.pi
# Largest radius / centre coordinate accepted (pixels): far beyond any image, still exact in float32.
MAX_COORDINATE = 1e8


# |offsets| within which sqrt(dx^2 + dy^2) neither overflows nor loses precision to underflow
SQUARES_SAFE = (1e-150, 1e150)


def _radius(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``hypot(dx, dy)`` as ``sqrt(dx^2 + dy^2)`` (what the Jacobian uses; ~8x faster than
    numpy's ``hypot``, within an ulp of it), with ``hypot`` itself wherever the squares could
    overflow or underflow or a value is not finite (``r`` outside :data:`SQUARES_SAFE`, NaN)."""
    r = np.sqrt(dx * dx + dy * dy)
    if r.size and r.min() > SQUARES_SAFE[0] and r.max() < SQUARES_SAFE[1]:
        return r  # every r safe (NaN fails both tests): two reductions instead of the masks below
    odd = ~((r > SQUARES_SAFE[0]) & (r < SQUARES_SAFE[1]))
    odd &= (dx != 0.0) | (dy != 0.0)  # the centre itself: exactly 0 either way
    if odd.any():
        r[odd] = np.hypot(dx[odd], dy[odd])
    return r


def _angle(dx: np.ndarray, dy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.mod(np.arctan2(dy, dx), 2 pi)`` in ``[0, 2 pi)``, bit for bit, without numpy's scalar
    ``mod`` loop (~10x slower): ``arctan2`` lies in ``[-pi, pi]``, where ``mod`` returns ``a``
    for ``a > 0``, ``a + 2 pi`` for ``a < 0`` (one rounding, as here) and ``+0`` for ``a = -0``
    (``+ 0.0`` turns ``-0`` into ``+0`` and changes nothing else); NaN stays NaN."""
    a = np.arctan2(dy, dx, out=out)
    np.add(a, TWO_PI, out=a, where=a < 0.0)
    a += 0.0
    return a


def _positive_shape(shape, field: str) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InvalidTransformError(f"{field} must be (H, W), got {shape!r}", field=field) from None
    if h <= 0 or w <= 0 or (h, w) != tuple(shape):
        raise InvalidTransformError(f"{field} must be two positive integers, got {shape!r}", field=field)
    return h, w


class PolarTransform(FrozenTransform):
    """Cartesian <-> (log-)polar; see the module docstring for the formulas.

    Parameters
    ----------
    center : (x, y) of the pole in the Cartesian image.
    max_radius : radius ``R`` (pixels) that maps to column ``W`` of the polar image.
    polar_shape : ``(H, W)`` of the polar image: ``H`` angle rows, ``W`` radius columns.
    log : log-polar radius axis ``r = exp(u ln R / W) - 1`` (``R`` must exceed 1).
    inverse : ``False`` maps Cartesian -> polar, ``True`` maps polar -> Cartesian.
    cartesian_shape : optional ``(H, W)`` of the Cartesian image, the default output of an
        inverse warp (else the smallest image holding the whole disk).
    opencv_sampling : when resampling polar -> Cartesian, compute the polar coordinates of each
        output pixel in float32 with ``cv2.cartToPolar`` exactly as ``cv2.warpPolar`` does, so
        the result matches OpenCV bit for bit (its angles err by up to ~7e-5 rad). ``False``
        uses float64 ``atan2``. ``map``/``jacobian`` are always float64-exact.
    """

    def __init__(self, center, max_radius, polar_shape, *, log=False, inverse=False, cartesian_shape=None,
                 opencv_sampling=True):
        try:
            c = np.asarray(center, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise InvalidTransformError(f"center must be two finite numbers, got {center!r}", field="center") from None
        if c.shape != (2,) or not np.all(np.isfinite(c)):
            raise InvalidTransformError(f"center must be two finite numbers, got {center!r}", field="center")
        try:
            r = float(max_radius)
        except (TypeError, ValueError):
            raise InvalidTransformError(f"max_radius must be a number, got {max_radius!r}", field="max_radius") from None
        if not math.isfinite(r) or r <= 0 or r > MAX_COORDINATE:
            raise InvalidTransformError(f"max_radius must be in (0, {MAX_COORDINATE:g}], got {max_radius!r}",
                                        field="max_radius")
        if np.abs(c).max() > MAX_COORDINATE:
            raise InvalidTransformError(f"center must lie within +-{MAX_COORDINATE:g} px, got {center!r}", field="center")
        if log and r <= 1.0:
            raise InvalidTransformError("log-polar needs max_radius > 1 (K = ln R / W)", field="max_radius")
        self._freeze(
            center=(float(c[0]), float(c[1])), max_radius=r, polar_shape=_positive_shape(polar_shape, "polar_shape"),
            log=bool(log), is_inverse=bool(inverse),
            cartesian_shape=None if cartesian_shape is None else _positive_shape(cartesian_shape, "cartesian_shape"),
            opencv_sampling=bool(opencv_sampling),
        )

    # -- value semantics ---------------------------------------------------------------
    def _key(self):
        return (self.center, self.max_radius, self.polar_shape, self.log, self.is_inverse, self.cartesian_shape,
                self.opencv_sampling)

    def __repr__(self):
        return (
            f"PolarTransform(center={self.center}, max_radius={self.max_radius}, polar_shape={self.polar_shape}, "
            f"log={self.log}, inverse={self.is_inverse}, cartesian_shape={self.cartesian_shape}, "
            f"opencv_sampling={self.opencv_sampling})"
        )

    def inverse(self) -> "PolarTransform":
        return PolarTransform(
            self.center, self.max_radius, self.polar_shape, log=self.log,
            inverse=not self.is_inverse, cartesian_shape=self.cartesian_shape, opencv_sampling=self.opencv_sampling,
        )

    # -- radius axis -------------------------------------------------------------------
    @property
    def _k(self) -> float:
        """Column scale: ``R / W`` (linear) or ``K = ln R / W`` (log)."""
        w = self.polar_shape[1]
        return math.log(self.max_radius) / w if self.log else self.max_radius / w

    def _radius(self, u):
        return np.expm1(u * self._k) if self.log else u * self._k

    def _dradius(self, r):
        return self._k * (r + 1.0) if self.log else np.full_like(r, self._k)

    def _column(self, r):
        return np.log1p(r) / self._k if self.log else r / self._k

    # -- maps --------------------------------------------------------------------------
    def _to_cartesian(self, uv):
        r = self._radius(uv[:, 0])
        theta = uv[:, 1] * (TWO_PI / self.polar_shape[0])
        return np.column_stack([self.center[0] + r * np.cos(theta), self.center[1] + r * np.sin(theta)])

    def _to_polar(self, xy):
        dx, dy = xy[:, 0] - self.center[0], xy[:, 1] - self.center[1]
        r = _radius(dx, dy)
        theta = _angle(dx, dy)
        return np.column_stack([self._column(r), theta * (self.polar_shape[0] / TWO_PI)])

    def _jacobian_to_cartesian(self, uv):
        r = self._radius(uv[:, 0])
        k_angle = TWO_PI / self.polar_shape[0]
        theta = uv[:, 1] * k_angle
        c, s, dr = np.cos(theta), np.sin(theta), self._dradius(r)
        return np.stack([np.stack([dr * c, -r * s * k_angle], -1), np.stack([dr * s, r * c * k_angle], -1)], -2)

    def _jacobian_to_polar(self, xy):
        dx, dy = xy[:, 0] - self.center[0], xy[:, 1] - self.center[1]
        r2 = dx * dx + dy * dy
        r = np.sqrt(r2)
        dudr = 1.0 / self._dradius(r)
        k = self.polar_shape[0] / TWO_PI
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack(
                [np.stack([dudr * dx / r, dudr * dy / r], -1), np.stack([-k * dy / r2, k * dx / r2], -1)], -2
            )

    def map(self, xy) -> np.ndarray:
        pts = as_points(xy)
        return self._to_cartesian(pts) if self.is_inverse else self._to_polar(pts)

    def sampling_map(self, xy) -> np.ndarray:
        """``map``, or with ``opencv_sampling`` OpenCV's own arithmetic: polar -> Cartesian rounds
        the radius and centre to float32 before ``r cos + c`` in double; Cartesian -> polar runs
        ``cartToPolar`` on float32 offsets, ``log(mag + 1)`` in float32, then ``/ K``."""
        pts = as_points(xy)
        if not self.opencv_sampling:
            return self.map(pts)
        if self.is_inverse:  # OpenCV: radius table in float32, the point in double
            k = self._k
            rho = np.expm1(pts[:, 0] * k) if self.log else pts[:, 0] * k
            r = rho.astype(np.float32).astype(np.float64)
            theta = pts[:, 1] * (TWO_PI / self.polar_shape[0])
            cx, cy = (float(np.float32(c)) for c in self.center)  # OpenCV's centre is a Point2f
            return np.column_stack([r * np.cos(theta) + cx, r * np.sin(theta) + cy])
        import cv2  # resampling only: the geometry imports numpy alone

        dx = (pts[:, 0].astype(np.float32) - np.float32(self.center[0]))[None, :]
        dy = (pts[:, 1].astype(np.float32) - np.float32(self.center[1]))[None, :]
        mag, ang = cv2.cartToPolar(dx, dy)
        if self.log:
            mag = np.log(mag + np.float32(1.0))
        u = mag.astype(np.float64).ravel() / self._k
        v = ang.astype(np.float64).ravel() * (self.polar_shape[0] / TWO_PI)
        return np.column_stack([u, v])

    def sampling_grid(self, rows, cols, dtype=np.float64):
        """Polar -> Cartesian is separable: ``x = c_x + r(u) cos theta(v)`` (one fused pass)."""
        if not self.is_inverse:
            return super().sampling_grid(rows, cols, dtype)
        u = np.arange(*cols, dtype=np.float64)
        theta = np.arange(*rows, dtype=np.float64) * (TWO_PI / self.polar_shape[0])
        r = self._radius(u)
        cx, cy = self.center
        if self.opencv_sampling:
            r = r.astype(np.float32).astype(np.float64)
            cx, cy = float(np.float32(cx)), float(np.float32(cy))
        from .._scale_kernels import outer_maps  # strip-parallel numpy: resampling only

        shape = (rows[1] - rows[0], cols[1] - cols[0])
        mx, my = np.empty(shape, dtype), np.empty(shape, dtype)
        outer_maps(np.cos(theta), np.sin(theta), r, cx, cy, mx, my)
        return mx, my

    def determinant_grid(self, rows, cols):
        """Polar -> Cartesian: ``|det|`` depends on the column only, ``(dr/du) r 2 pi / H``."""
        if not self.is_inverse:
            return super().determinant_grid(rows, cols)
        r = self._radius(np.arange(*cols, dtype=np.float64))
        det = np.abs(self._dradius(r) * r * (TWO_PI / self.polar_shape[0]))
        return np.broadcast_to(det[None, :], (rows[1] - rows[0], cols[1] - cols[0]))

    def jacobian(self, xy) -> np.ndarray:
        pts = as_points(xy)
        return self._jacobian_to_cartesian(pts) if self.is_inverse else self._jacobian_to_polar(pts)

    def map_and_row_norms(self, xy) -> tuple[np.ndarray, np.ndarray]:
        """``(map(xy), n)`` with ``n[:, i] = |row i of J(xy)|`` (Euclidean norm), both ``(n, 2)``
        float64: what the antialias scatter needs per node (its footprint along each output axis).

        Cartesian -> polar in closed form, sharing ``dx, dy, r`` with the map: the rows of
        ``J = [[u_r dx / r, u_r dy / r], [-k dy / r^2, k dx / r^2]]`` (``u_r = 1 / (dr/du)``,
        ``k = H / 2 pi``) have norms ``u_r`` and ``k / r``; equal to the norms of
        :meth:`jacobian`'s rows to rounding (a few ulps), NaN at the pole (``r = 0``) as there,
        and ~4x cheaper than the full Jacobian and its norms (no ``(n, 2, 2)`` array). Polar ->
        Cartesian: from :meth:`jacobian`."""
        pts = as_points(xy)
        if self.is_inverse:
            jac = self._jacobian_to_cartesian(pts)
            return self._to_cartesian(pts), np.column_stack([np.hypot(jac[:, 0, 0], jac[:, 0, 1]),
                                                            np.hypot(jac[:, 1, 0], jac[:, 1, 1])])
        dx, dy = pts[:, 0] - self.center[0], pts[:, 1] - self.center[1]
        r = _radius(dx, dy)
        k = self.polar_shape[0] / TWO_PI
        pos, norms = np.empty((len(pts), 2)), np.empty((len(pts), 2))
        if self.log:
            pos[:, 0] = self._column(r)
        else:
            np.divide(r, self._k, out=pos[:, 0])  # _column(r), written in place
        _angle(dx, dy, out=pos[:, 1])
        pos[:, 1] *= k
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.log:
                np.divide(1.0, self._dradius(r), out=norms[:, 0])
            else:  # dr/du = R / W everywhere: one division (the same IEEE quotient as per element)
                norms[:, 0] = 1.0 / self._k
            np.divide(k, r, out=norms[:, 1])
        if not (len(r) and r.min() > 0.0):  # (r >= 0, or NaN: then the mask finds what it must)
            norms[r == 0.0] = np.nan  # the pole: the Jacobian is 0/0 there
        return pos, norms

    def image_boxes(self, lo_xy, hi_xy):
        """Exact bounding boxes ``(lo, hi)``, each ``(n, 2)`` output ``(u, v)``, of the images of
        the closed source rectangles ``[lo_xy[i], hi_xy[i]]`` (``(n, 2)`` ``(x, y)`` corners)
        under Cartesian -> polar; ``None`` for polar -> Cartesian (not provided). The antialias
        scatter uses them to skip source blocks whose whole image misses the output
        (:func:`warpsvc.core.antialias.block_layout`).

        Radius: ``r`` over a rectangle ranges from the distance of the centre to it (0 inside)
        to its farthest corner, and ``u(r)`` increases, so ``u`` spans ``[u(r_min), u(r_max)]``.
        Angle: a rectangle that meets the cut ``theta = 0`` (the ray ``y = c_y``, ``x > c_x``)
        or holds the centre spans every row ``[0, H]``; any other lies in a sector of less than
        ``pi`` seen from the centre, so its angles range between those of its corners (the
        extreme directions of a convex polygon not containing the origin are at vertices)."""
        if self.is_inverse:
            return None
        lo_xy, hi_xy = np.asarray(lo_xy, dtype=np.float64), np.asarray(hi_xy, dtype=np.float64)
        cx, cy = self.center
        x0, y0, x1, y1 = lo_xy[:, 0] - cx, lo_xy[:, 1] - cy, hi_xy[:, 0] - cx, hi_xy[:, 1] - cy
        near_x = np.maximum(np.maximum(x0, -x1), 0.0)  # distance to the rectangle along each axis
        near_y = np.maximum(np.maximum(y0, -y1), 0.0)
        far_x, far_y = np.maximum(np.abs(x0), np.abs(x1)), np.maximum(np.abs(y0), np.abs(y1))
        lo, hi = np.empty((len(x0), 2)), np.empty((len(x0), 2))
        lo[:, 0] = self._column(np.hypot(near_x, near_y))
        hi[:, 0] = self._column(np.hypot(far_x, far_y))
        k = self.polar_shape[0] / TWO_PI
        corners = np.stack([_angle(dx, dy) for dx, dy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]) * k
        lo[:, 1], hi[:, 1] = corners.min(axis=0), corners.max(axis=0)
        full = (y0 <= 0.0) & (y1 >= 0.0) & (x1 >= 0.0)  # meets the cut, or holds the centre
        lo[full, 1], hi[full, 1] = 0.0, float(self.polar_shape[0])
        return lo, hi

    def jacobian_determinant(self, xy) -> np.ndarray:
        """Closed forms: ``(dr/du) r 2 pi / H`` polar->Cartesian, its reciprocal the other way."""
        pts = as_points(xy)
        k_angle = TWO_PI / self.polar_shape[0]
        if self.is_inverse:
            r = self._radius(pts[:, 0])
            return self._dradius(r) * r * k_angle
        r = _radius(pts[:, 0] - self.center[0], pts[:, 1] - self.center[1])
        with np.errstate(divide="ignore"):
            return 1.0 / (self._dradius(r) * r * k_angle)

    # -- resampler hooks ---------------------------------------------------------------
    def default_output_shape(self, input_shape):
        if not self.is_inverse:
            return self.polar_shape
        if self.cartesian_shape is not None:
            return self.cartesian_shape
        return (int(math.ceil(self.center[1] + self.max_radius)) + 1, int(math.ceil(self.center[0] + self.max_radius)) + 1)

    def source_row_period(self):
        return self.polar_shape[0] if self.is_inverse else None

    def output_row_period(self):
        return None if self.is_inverse else self.polar_shape[0]
