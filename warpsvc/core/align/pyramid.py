"""Input preparation and the per-level data of the coarse-to-fine solver.

Missing data is NaN throughout: pixels outside a mask, non-finite input pixels and the border
the pyramid cannot compute all become NaN in float32 copies of the images. Every later step
lets NaN spread (``pyrDown``, central differences, bilinear warps with a NaN border), so "is
this residual usable" is a single ``isnan`` test at the end instead of mask bookkeeping.

Levels. Level ``l`` halves level ``l - 1`` with ``cv2.pyrDown`` (5x5 binomial blur, keep even
pixels), so a level-``l`` pixel ``x_l`` sits at level-0 position ``2^l x_l`` in both images and
``W_l = S_l W_0 S_l^-1`` with ``S_l = diag(2^-l, 2^-l, 1)``. Images are padded with two NaN
pixels before each ``pyrDown`` so a coarse pixel whose blur footprint leaves the image is NaN
(OpenCV would reflect the border, inventing content the other image does not have).

Per level we precompute the inverse-compositional quantities that depend on the template
only: gradients, steepest-descent images, and their Gauss-Newton Hessian (module
:mod:`.gauss_newton` has the derivation). The samplers of the image on a level's template
grid or points (:func:`warp_to_template`, :func:`sample_points`) live here too.

Memory. The warp Jacobians enter through the six monomials ``(u, v, 1, u^2, u v, v^2)`` of the
chart coordinates of the pixels that take part only (:class:`Level`): the ``max_pixels``
strongest-gradient pixels of a sampled level (20 000 by default, whatever the template's size),
the whole grid otherwise. Whole-grid monomials (they depend on the grid's shape only, not on
the model) are kept in a :class:`.cache.ByteLRU` of :data:`JACOBIAN_CACHE_BYTES`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidImageError
from ..transforms.models import N_PARAMS, dmatrix_dparams
from ..validate import check_image
from .cache import ByteLRU
from .chart import chart_scale

NAN = float("nan")


def prepare(image, mask, field: str, mask_field: str) -> np.ndarray:
    """``(H, W, C) float32`` copy of ``image`` with NaN where ``mask`` is false or not finite."""
    img = check_image(image, field)
    out = img.astype(np.float32)  # always a copy: we write NaNs into it
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != img.shape[:2]:
            raise InvalidImageError(
                f"{mask_field} must have shape {img.shape[:2]} (the {field}'s H, W), got {m.shape}", field=mask_field
            )
        if m.dtype != np.bool_:
            if not np.issubdtype(m.dtype, np.number):
                raise InvalidImageError(f"{mask_field} must be boolean or numeric, got {m.dtype}", field=mask_field)
            m = m != 0
        out[~m] = NAN
    if img.dtype.kind == "f":
        out[~np.isfinite(out)] = NAN
    return out


def channel_mean(img: np.ndarray) -> np.ndarray:
    """``(H, W, 1) float32`` mean of the channels of an ``(H, W, C) float32`` image (NaN where
    any channel is NaN); ``cv2.transform`` for up to 4 channels (one pass, no temporaries)."""
    c = img.shape[2]
    if c <= 4:
        return cv2.transform(img, np.full((1, c), 1.0 / c, np.float32))[:, :, None]
    return img.mean(axis=2, keepdims=True, dtype=np.float32)


def auto_levels(template_shape, min_side: int, max_levels: int) -> int:
    side = min(template_shape[:2])
    if side < 2 * min_side:
        return 1
    return int(min(max_levels, 1 + math.floor(math.log2(side / min_side))))


def pyr_down(img: np.ndarray) -> np.ndarray:
    """``cv2.pyrDown`` that treats everything beyond the border as missing (NaN)."""
    h, w, c = img.shape
    if c > 4:
        return np.concatenate([pyr_down(img[:, :, i:i + 4]) for i in range(0, c, 4)], axis=2)
    padded = cv2.copyMakeBorder(img, 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(NAN,) * 4)
    down = cv2.pyrDown(padded)
    if down.ndim == 2:
        down = down[:, :, None]
    return down[1:1 + (h + 1) // 2, 1:1 + (w + 1) // 2]


def build_pyramid(img: np.ndarray, levels: int, check=None) -> list:
    """``levels`` images, each ``pyr_down`` of the previous; ``check()`` (may raise) after each."""
    pyr = [img]
    for _ in range(1, levels):
        pyr.append(pyr[-1] if min(pyr[-1].shape[:2]) < 2 else pyr_down(pyr[-1]))
        _check(check)
    return pyr


def _check(check) -> None:
    if check is not None:
        check()


@functools.cache
def level_scale(f: float) -> np.ndarray:
    """``S W S^-1`` as an elementwise product: ``W_l = W_0 * level_scale(f)`` with
    ``S = diag(1/f, 1/f, 1)`` (exact: ``f`` is a power of two)."""
    m = np.array([[1.0, 1.0, 1.0 / f], [1.0, 1.0, 1.0 / f], [f, f, 1.0]])
    m.setflags(write=False)
    return m


def warp_to_template(image: np.ndarray, W: np.ndarray, shape, affine: bool) -> np.ndarray:
    """``I(W x)`` on the template grid (h, w, C), NaN where the sample needs a missing pixel."""
    h, w, c = shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if c == 1:  # the common case, without the channel bookkeeping
        src = image[:, :, 0]
        if affine:
            return cv2.warpAffine(src, W[:2], (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=NAN)
        return cv2.warpPerspective(src, W, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=NAN)
    chans = [image] if c <= 4 else [image[:, :, i:i + 4] for i in range(0, c, 4)]
    outs = []
    for ch in chans:
        src = ch if ch.shape[2] > 1 else ch[:, :, 0]
        if affine:
            o = cv2.warpAffine(src, W[:2], (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(NAN,) * 4)
        else:
            o = cv2.warpPerspective(src, W, (w, h), flags=flags, borderMode=cv2.BORDER_CONSTANT,
                                    borderValue=(NAN,) * 4)
        outs.append(o.reshape(h, w, -1))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)


REMAP_ROW = 4096  # cv2.remap maps stay far below its 32767-pixel side limit


def sample_points(image: np.ndarray, W: np.ndarray, points: np.ndarray, pts=None) -> np.ndarray:
    """``I(W x)`` at homogeneous points ``(n, 3)``: ``(n, C)`` float32, NaN where missing.

    ``pts``: the same points as :func:`point_maps` gives them; then, when ``W``'s denominator
    stays above 1e-3 on their bounding box (it is linear, so its corners bound it), the remap
    coordinates come from one ``cv2.perspectiveTransform`` (float32 out, no float64
    temporaries)."""
    n = len(points)
    rows = -(-n // REMAP_ROW)
    mx = my = None
    if pts is not None:
        xy, box = pts
        g, h, i = W[2].tolist()
        if min(g * x + h * y + i for x, y in box) > 1e-3:
            mx = cv2.perspectiveTransform(xy, W)  # (rows, REMAP_ROW, 2)
            if rows * REMAP_ROW > n:
                mx.reshape(-1, 2)[n:] = -1e6  # the padding: outside every image
    if mx is None:
        q = points @ W.T  # (n, 3)
        mx = np.full(rows * REMAP_ROW, -1e6, np.float32)
        my = np.full(rows * REMAP_ROW, -1e6, np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            mx[:n] = q[:, 0] / q[:, 2]
            my[:n] = q[:, 1] / q[:, 2]
        mx, my = mx.reshape(rows, REMAP_ROW), my.reshape(rows, REMAP_ROW)
    c = image.shape[2]
    outs = []
    for i in range(0, c, 4):
        ch = image[:, :, i:i + 4]
        src = ch if ch.shape[2] > 1 else ch[:, :, 0]
        o = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(NAN,) * 4)
        outs.append(o.reshape(rows * REMAP_ROW, -1)[:n])
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)


def point_maps(points: np.ndarray):
    """``(xy, box)`` for :func:`sample_points`: the points' ``(x, y)`` as a float32
    ``(rows, REMAP_ROW, 2)`` array (zero padded) and the four corners of their bounding box."""
    n = len(points)
    rows = -(-n // REMAP_ROW)
    xy = np.zeros((rows * REMAP_ROW, 2), np.float32)
    xy[:n] = points[:, :2]
    # Per column (1-D reductions): ``points[:, :2].min(axis=0)`` on the strided (n, 2) view
    # costs ~0.45 ms for 2e4 points, 30x this; four of them were ~20 % of a 640x480 align.
    px, py = points[:, 0], points[:, 1]
    x0, y0, x1, y1 = float(px.min()), float(py.min()), float(px.max()), float(py.max())
    return xy.reshape(rows, REMAP_ROW, 2), ((x0, y0), (x1, y0), (x1, y1), (x0, y1))


@dataclass
class Level:
    """Template-side precomputation for one pyramid level (``K = P + 2C`` with gain/bias).

    The warp Jacobians are kept in factored form: at ``d = 0`` they are quadratic polynomials of
    the chart coordinates ``u = (u, v)`` of each pixel (:func:`_jacobian_coefficients`), so
    ``jx = phi^T Ax`` and ``jy = phi^T Ay`` with ``phi`` the ``(6, n)`` monomials
    ``(u, v, 1, u^2, u v, v^2)`` and ``Ax, Ay`` ``(6, P)``. :attr:`jx` / :attr:`jy` are formed on
    first use (only the covariance of a sampled level asks for them)."""

    index: int
    factor: float            # level-0 pixels per level pixel, 2**index
    template: np.ndarray     # (h, w, C) float32, NaN where unusable
    image: np.ndarray        # (H, W, C) float32, NaN where missing
    usable: np.ndarray       # (h*w*C,) bool: template elements that enter the cost
    sdT: np.ndarray          # (K, h*w*C) float32 steepest-descent images (transposed), 0 where unusable
    hessian: np.ndarray      # (K, K) float64 = sdT sdT^T
    n_params: int            # P (motion parameters; the rest are photometric)
    tflat: np.ndarray        # (h*w*C,) float32 template, NaN where not usable
    n_usable: int
    phi: np.ndarray = None   # (6, n) float32 monomials of the level's pixels (see above)
    jcoef: tuple = None      # (Ax, Ay), each (6, P) float32
    points: np.ndarray = None  # (n, 3) homogeneous level pixels when only a subset is used, else None
    noise_variance: float | None = None  # the template's white-noise variance, once computed
    _jac: tuple | None = None
    grid_key: tuple | None = None  # (model, h, w, factor, chart_key, cols) of a whole-grid level
    tsums: tuple | None = None  # one channel: template rows and sums (gauss_newton.template_sums)
    unusable_index: np.ndarray | None = None  # flat indices of the unusable elements, once computed
    box: tuple | None = None  # the template's usable bounding box (gauss_newton._template_box), once computed
    pts: tuple | None = None  # point_maps(points) of a sampled level, once computed

    @property
    def sd(self) -> np.ndarray:
        """``(h*w*C, K)`` steepest-descent images: the transposed view of :attr:`sdT`."""
        return self.sdT.T

    def _jacobians(self):
        if self._jac is None and self.grid_key is not None:  # the cached grid Jacobians
            *key, cols = self.grid_key
            jx, jy = _grid_jacobian(*key)
            self._jac = (jx, jy) if cols is None else (jx[:, cols], jy[:, cols])
        if self._jac is None:
            ax, ay = self.jcoef
            self._jac = (np.ascontiguousarray((ax.T @ self.phi).T), np.ascontiguousarray((ay.T @ self.phi).T))
        return self._jac

    @property
    def jx(self) -> np.ndarray:
        """``(n, P)`` float32 chart Jacobians of the level's pixels, x rows."""
        return self._jacobians()[0]

    @property
    def jy(self) -> np.ndarray:
        return self._jacobians()[1]

    def restrict(self, cols) -> Level:
        """The same level for a sub-model whose parameters are the columns ``cols`` of this
        one's (e.g. translation = homography columns 2 and 5 at ``d = 0``); photometric
        columns are kept."""
        cols = list(cols)
        keep = cols + list(range(self.n_params, self.sdT.shape[0]))
        ax, ay = self.jcoef
        return Level(self.index, self.factor, self.template, self.image, self.usable, self.sdT[keep],
                     self.hessian[np.ix_(keep, keep)], len(cols), self.tflat, self.n_usable, self.phi,
                     (ax[:, cols], ay[:, cols]), self.points, self.noise_variance, None,
                     None if self.grid_key is None or self.grid_key[-1] is not None else self.grid_key[:-1] + (cols,),
                     self.tsums, self.unusable_index, self.box)

    def without_photometric(self) -> Level:
        """The same level without the gain/bias columns (the motion columns only)."""
        p = self.n_params
        if self.sdT.shape[0] == p:
            return self
        return Level(self.index, self.factor, self.template, self.image, self.usable, self.sdT[:p],
                     self.hessian[:p, :p].copy(), p, self.tflat, self.n_usable, self.phi, self.jcoef,
                     self.points, self.noise_variance, self._jac, self.grid_key, self.tsums, self.unusable_index, self.box)

    @property
    def shape(self):
        return self.template.shape


HALF_DIFFERENCE = np.array([[-0.5, 0.0, 0.5]], np.float32)  # central difference as a correlation kernel


def central_gradients(t: np.ndarray):
    """``(gx, gy)`` by central differences, NaN on the one-pixel border (H, W, C).

    One channel: ``cv2.filter2D`` with the kernel ``(-1/2, 0, 1/2)`` (half the cost of
    ``cv2.Sobel``'s separable engine at these sizes), which computes ``0.5 (t[x+1] - t[x-1])``
    bit for bit like the slice expression (the halvings are exact and OpenCV skips the zero
    centre tap, so one rounding remains). Like the slices, ``gx`` at a pixel does not see the
    pixel itself: a NaN ``t`` makes its neighbours' gradients NaN, not its own (the usable mask
    and the pixel selection test ``t`` separately)."""
    h, w, c = t.shape
    if c == 1 and h >= 3 and w >= 3:
        t2 = t[:, :, 0]
        gx = cv2.filter2D(t2, cv2.CV_32F, HALF_DIFFERENCE, borderType=cv2.BORDER_REPLICATE)
        gy = cv2.filter2D(t2, cv2.CV_32F, HALF_DIFFERENCE.T, borderType=cv2.BORDER_REPLICATE)
        gx[:, 0] = gx[:, -1] = NAN
        gy[0] = gy[-1] = NAN
        return gx[:, :, None], gy[:, :, None]
    gx = np.full_like(t, NAN)
    gy = np.full_like(t, NAN)
    gx[:, 1:-1] = 0.5 * (t[:, 2:] - t[:, :-2])
    gy[1:-1, :] = 0.5 * (t[2:, :] - t[:-2, :])
    return gx, gy


JACOBIAN_CACHE_BYTES = 16 << 20  # whole-grid monomials and Jacobians kept between calls (all shapes together)
_JACOBIANS = ByteLRU(JACOBIAN_CACHE_BYTES)


@functools.cache
def _jacobian_coefficients(model: str):
    """``(Ax, Ay)``, each ``(6, P) float32``: the warp Jacobian at ``d = 0`` in the monomial
    basis ``(u, v, 1, u^2, u v, v^2)`` of the chart point ``u = (u, v)``.

    With ``m = dM/dp`` at ``p = 0`` (``(3, 3, P)``, :func:`dmatrix_dparams`) the map
    ``u' = (M u~)_{xy} / (M u~)_z`` (``u~ = (u, v, 1)``) has ::

        du'/dp = m[0] . u~ - u (m[2] . u~)        dv'/dp = m[1] . u~ - v (m[2] . u~)

    so ``Ax = (m00 - m22, m01, m02, -m20, -m21, 0)`` and
    ``Ay = (m10, m11 - m22, m12, 0, -m20, -m21)`` (rows). For every model the entries are
    0 or +-1, so ``phi^T Ax`` reproduces the direct evaluation bit for bit."""
    m = dmatrix_dparams(model, np.zeros(N_PARAMS[model]))
    z = np.zeros(m.shape[2])
    ax = np.stack([m[0, 0] - m[2, 2], m[0, 1], m[0, 2], -m[2, 0], -m[2, 1], z])
    ay = np.stack([m[1, 0], m[1, 1] - m[2, 2], m[1, 2], z, -m[2, 0], -m[2, 1]])
    ax, ay = ax.astype(np.float32), ay.astype(np.float32)
    ax.setflags(write=False)
    ay.setflags(write=False)
    return ax, ay


def _monomials(xs, ys, factor: float, chart: np.ndarray) -> np.ndarray:
    """``(6, n) float32`` rows ``(u, v, 1, u^2, u v, v^2)`` at level pixels ``(xs, ys)``, with
    ``u = chart(factor * x)`` (products formed in float64, then rounded once)."""
    (c00, c01, c02), (c10, c11, c12) = chart[:2].tolist()
    u = np.multiply(xs, factor, dtype=np.float64)
    v = np.multiply(ys, factor, dtype=np.float64)
    if c01 == 0.0 and c10 == 0.0:  # the usual chart (scale and shift): in place, the same roundings
        u *= c00
        u += c02
        v *= c11
        v += c12
    else:
        u, v = u * c00 + v * c01 + c02, u * c10 + v * c11 + c12
    out = np.empty((6, len(u)), np.float32)
    out[0], out[1], out[2] = u, v, 1.0
    tmp = np.multiply(u, u)
    out[3] = tmp
    out[4] = np.multiply(u, v, out=tmp)
    out[5] = np.multiply(v, v, out=tmp)
    return out


def _pixel_jacobian(model: str, xs: np.ndarray, ys: np.ndarray, factor: float, chart: np.ndarray):
    """``(jx, jy)``, each ``(n, P) float32``: the warp Jacobian at level pixels ``(xs, ys)``."""
    phi = _monomials(xs, ys, factor, chart)
    ax, ay = _jacobian_coefficients(model)
    return np.ascontiguousarray((ax.T @ phi).T), np.ascontiguousarray((ay.T @ phi).T)


def _grid_monomials(h: int, w: int, factor: float, chart_key: tuple) -> np.ndarray:
    """:func:`_monomials` of every pixel of an ``h x w`` level grid, read-only ``(6, h*w)``
    (cached in :data:`_JACOBIANS`: it depends on shapes only, not on the model)."""

    def make():
        ys, xs = np.divmod(np.arange(h * w), w)
        return (_monomials(xs, ys, factor, np.asarray(chart_key).reshape(3, 3)),)

    return _JACOBIANS.get(("phi", h, w, factor, chart_key), make)[0]


def _grid_jacobian(model: str, h: int, w: int, factor: float, chart_key: tuple):
    """Warp Jacobian at every pixel of an ``h x w`` level grid, read-only ``(h*w, P)`` each
    (cached in :data:`_JACOBIANS`: it depends on shapes only)."""

    def make():
        phi = _grid_monomials(h, w, factor, chart_key)
        ax, ay = _jacobian_coefficients(model)
        return np.ascontiguousarray((ax.T @ phi).T), np.ascontiguousarray((ay.T @ phi).T)

    return _JACOBIANS.get(("grid", model, h, w, factor, chart_key), make)


def _grid_jacobian_t(model: str, h: int, w: int, factor: float, chart_key: tuple):
    """The transposes of :func:`_grid_jacobian`, contiguous ``(P, h*w)`` each (cached alike; the
    covariance's cross Hessian builds the aligned image's steepest descent with them)."""

    def make():
        phi = _grid_monomials(h, w, factor, chart_key)
        ax, ay = _jacobian_coefficients(model)
        return np.ascontiguousarray(ax.T @ phi), np.ascontiguousarray(ay.T @ phi)

    return _JACOBIANS.get(("grid.T", model, h, w, factor, chart_key), make)


# Pixels sampled (evenly strided) to estimate the gradient threshold: the quantile of ~32k values
# is within a few percent of the exact one, at a tenth of the cost of partitioning a full frame.
THRESHOLD_SAMPLE = 1 << 15


def _strongest_pixels(gx, gy, tz, k):
    """Indices (sorted) of about ``k`` pixels with the largest squared gradient, all channels
    usable (:func:`_select_strongest`), from ``(n, C)`` gradients and template."""
    if gx.shape[1] == 1:
        score = np.multiply(gx[:, 0], gx[:, 0])
        score += np.square(gy[:, 0])  # (n,), NaN where a gradient is missing
        score[np.isnan(tz[:, 0])] = np.nan
    else:
        score = (gx * gx + gy * gy).sum(axis=1)
        score[np.isnan(tz).any(axis=1)] = np.nan
    return _select_strongest(score, k)


SCORE_ROWS = 32  # rows per block of _gradient_score: its temporaries stay small (no page faults)


def _gradient_score(t2: np.ndarray) -> np.ndarray:
    """``(h*w,)`` float32 squared central-difference gradient ``gx^2 + gy^2`` of a one-channel
    ``(h, w)`` level (``h, w >= 3``), NaN on the one-pixel border and where ``T`` or a
    neighbour is NaN: bit for bit the score of :func:`_strongest_pixels` on
    :func:`central_gradients`, but formed in blocks of :data:`SCORE_ROWS` rows, so a large
    level allocates no full-size gradient images (whose first touch, page by page, costs more
    than the arithmetic)."""
    h, w = t2.shape
    score = np.empty((h, w), np.float32)
    score[0] = score[-1] = NAN
    score[:, 0] = score[:, -1] = NAN
    half = np.float32(0.5)
    for r0 in range(1, h - 1, SCORE_ROWS):
        r1 = min(r0 + SCORE_ROWS, h - 1)
        gx = np.subtract(t2[r0:r1, 2:], t2[r0:r1, :-2])
        gx *= half
        np.multiply(gx, gx, out=gx)
        gy = np.subtract(t2[r0 + 1:r1 + 1, 1:-1], t2[r0 - 1:r1 - 1, 1:-1])
        gy *= half
        np.multiply(gy, gy, out=gy)
        np.add(gx, gy, out=score[r0:r1, 1:-1])
    if not math.isfinite(float(t2.sum())):
        score[np.isnan(t2)] = NAN
    return score.reshape(-1)


def _gradients_at(t2: np.ndarray, sel: np.ndarray):
    """``(gx, gy)``, each ``(len(sel), 1)`` float32: the central differences of the ``(h, w)``
    level ``t2`` at the interior flat indices ``sel`` (equal to :func:`central_gradients` there)."""
    tf = t2.reshape(-1)
    w = t2.shape[1]
    gx = np.subtract(tf[sel + 1], tf[sel - 1])
    gx *= np.float32(0.5)
    gy = np.subtract(tf[sel + w], tf[sel - w])
    gy *= np.float32(0.5)
    return gx[:, None], gy[:, None]


def _select_strongest(score: np.ndarray, k: int):
    """Indices (sorted) of about ``k`` entries of ``score`` (NaN: unusable) with the largest
    values; the threshold comes from a strided sample (no full sort of the grid). ``None``
    when there are not more than ``k`` usable entries or fewer than 16 are selected."""
    stride = max(1, score.size // THRESHOLD_SAMPLE)
    sample = score[::stride]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    n_usable = sample.size * stride
    if n_usable <= k:
        return None
    q = int(sample.size * (1.0 - k / n_usable))
    thr = np.partition(sample, q)[q]
    with np.errstate(invalid="ignore"):
        sel = np.flatnonzero(score >= thr)
    if len(sel) > 2 * k:  # ties (flat regions): thin evenly
        sel = sel[:: -(-len(sel) // k)]
    return sel if len(sel) >= 16 else None


@functools.cache
def _sd_terms(model: str) -> tuple:
    """Per motion parameter, the nonzero terms ``(axis, monomial, sign)`` of its
    steepest-descent row ``sum sign * phi[monomial] * gs[axis]`` (``axis`` 0: x, 1: y): the
    nonzero entries of :func:`_jacobian_coefficients` (all +-1), one or two per parameter."""
    ax, ay = _jacobian_coefficients(model)
    rows = []
    for k in range(ax.shape[1]):
        terms = [(axis, i, 1.0 if a[i, k] > 0 else -1.0) for axis, a in ((0, ax), (1, ay)) for i in range(6)
                 if a[i, k] != 0]
        rows.append(tuple(terms))
    return tuple(rows)


def _sd_rows(out: np.ndarray, terms: tuple, phi: np.ndarray, gs: tuple) -> None:
    """``out[k] = sum_terms sign * phi[i] * gs[axis]`` in float32, row by row: the sparse
    product ``(Ax^T, Ay^T) (phi gs_x; phi gs_y)`` with the zero terms skipped (the sums of
    one or two rounded products are the dense product's bit for bit). The monomial ``1``
    (index 2) is not multiplied."""
    tmp = None
    for k, row_terms in enumerate(terms):
        row = out[k]
        sign0 = row_terms[0][2]
        for j, (axis, i, sign) in enumerate(row_terms):
            if j == 0:
                dst = row
            else:
                tmp = np.empty_like(row) if tmp is None else tmp
                dst = tmp
            if i == 2:
                np.copyto(dst, gs[axis])
            else:
                np.multiply(phi[i], gs[axis], out=dst)
            if j:
                if sign == sign0:
                    row += dst
                else:
                    row -= dst
        if sign0 < 0:
            np.negative(row, out=row)


def build_level(index: int, template: np.ndarray, image: np.ndarray, model: str, chart: np.ndarray,
                photometric: bool, max_pixels: int | None = None, check=None) -> Level:
    """Steepest-descent images and Hessian of one level.

    ``chart`` is level-0 ``chart_from_template``; the level's pixels are ``x_l = x_0 / 2^l``.
    With more than ``max_pixels`` usable pixels, only the ``max_pixels`` with the strongest
    gradient take part (they carry most of the information; flat pixels add cost, not
    constraint), their monomials alone are computed, and the image is sampled at those points
    only (``cv2.remap``). ``check()`` (may raise: the caller's deadline) runs between the stages.

    One channel (the usual case): with ``gs = s grad T`` (``s`` level pixels per chart unit,
    zero where unusable), ``sd^T = Ax^T (phi * gs_x) + Ay^T (phi * gs_y)`` (:class:`Level`).
    Every entry of ``Ax, Ay`` is 0 or +-1 with one or two nonzeros per parameter, so each
    motion row of the ``(K, n)`` steepest-descent images is one or two float32 products
    ``+-phi_i gs`` (:func:`_sd_rows`; equal bit for bit to the elementwise
    ``jx gs_x + jy gs_y``), followed by the gain/bias rows ``T`` and ``1``: no ``(n, P)``
    Jacobian and no dense product with the zero coefficients.
    """
    factor = float(2 ** index)
    h, w, c = template.shape
    tz = template.reshape(h * w, c)
    scale = float(chart_scale(chart) / factor)  # level pixels per chart unit
    points = sel = gx = gy = None
    if max_pixels is not None and h * w > max_pixels:
        if c == 1 and h >= 3 and w >= 3:  # the score in blocks; gradients at the selection only
            sel = _select_strongest(_gradient_score(template[:, :, 0]), max_pixels)
            if sel is not None:
                gx, gy = _gradients_at(template[:, :, 0], sel)
        else:
            gx, gy = (g.reshape(h * w, c) for g in central_gradients(template))
            sel = _strongest_pixels(gx, gy, tz, max_pixels)
            if sel is not None:
                gx, gy = gx[sel], gy[sel]
    if sel is None and gx is None:
        gx, gy = (g.reshape(h * w, c) for g in central_gradients(template))
    _check(check)
    if sel is not None:
        ys, xs = np.divmod(sel, w)
        phi = _monomials(xs, ys, factor, chart)  # (6, n) float32
        tz = tz[sel]
        usable = np.ones(len(sel) * c, bool)
        points = np.empty((len(sel), 3))
        points[:, 0], points[:, 1], points[:, 2] = xs, ys, 1.0
    else:
        phi = _grid_monomials(h, w, factor, tuple(chart.ravel()))  # (6, h*w) float32, read-only
        if c == 1:
            usable = ~np.isnan(tz[:, 0] + gx[:, 0] + gy[:, 0])  # NaN if any of the three is
        else:
            usable = ~(np.isnan(tz) | np.isnan(gx) | np.isnan(gy)).reshape(-1)  # (h*w*C,)
    _check(check)
    ax, ay = _jacobian_coefficients(model)
    p = ax.shape[1]
    n = phi.shape[1]
    if c == 1:
        zero = np.float32(0)
        gs = (np.where(usable, gx[:, 0] * np.float32(scale), zero), np.where(usable, gy[:, 0] * np.float32(scale), zero))
        sdT = np.empty((p + 2 if photometric else p, n), np.float32)
        _sd_rows(sdT, _sd_terms(model), phi, gs)
        if photometric:
            np.copyto(sdT[p], np.where(usable, tz[:, 0], zero))
            sdT[p + 1] = usable
    else:
        jx, jy = (ax.T @ phi).T, (ay.T @ phi).T  # (n, P)
        # NaN gradients only occur on unusable elements, whose rows are zeroed below.
        sd = (gx[:, :, None] * scale) * jx[:, None, :] + (gy[:, :, None] * scale) * jy[:, None, :]
        if photometric:
            photo = np.zeros((n, c, 2 * c), np.float32)
            ch = np.arange(c)
            photo[:, ch, 2 * ch] = tz
            photo[:, ch, 2 * ch + 1] = 1.0
            sd = np.concatenate([sd, photo], axis=2)
        sd = np.ascontiguousarray(sd.reshape(n * c, -1), dtype=np.float32)
        sd[~usable] = 0.0
        sdT = np.ascontiguousarray(sd.T)
    _check(check)
    hessian = (sdT @ sdT.T).astype(np.float64)
    tflat = tz.reshape(-1).copy()
    tflat[~usable] = NAN
    grid_key = None if points is not None else (model, h, w, factor, tuple(chart.ravel()), None)
    return Level(index, factor, template, image, usable, sdT, hessian, p, tflat, int(np.count_nonzero(usable)),
                 phi, (ax, ay), points, grid_key=grid_key)
