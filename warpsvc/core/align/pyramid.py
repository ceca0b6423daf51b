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
:mod:`.gauss_newton` has the derivation).

Memory. The warp Jacobians are computed for the pixels that take part only: the
``max_pixels`` strongest-gradient pixels of a sampled level (20 000 by default, whatever the
template's size), the whole grid otherwise. Whole-grid Jacobians (they depend on the grid's
shape only) are kept in a :class:`.cache.ByteLRU` of :data:`JACOBIAN_CACHE_BYTES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import cv2
import numpy as np

from ..errors import InvalidImageError
from ..validate import check_image
from ..transforms.models import identity_jacobian
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


@dataclass
class Level:
    """Template-side precomputation for one pyramid level (``K = P + 2C`` with gain/bias)."""

    index: int
    factor: float            # level-0 pixels per level pixel, 2**index
    template: np.ndarray     # (h, w, C) float32, NaN where unusable
    image: np.ndarray        # (H, W, C) float32, NaN where missing
    usable: np.ndarray       # (h*w*C,) bool: template elements that enter the cost
    sd: np.ndarray           # (h*w*C, K) float32 steepest-descent images, zero rows where unusable
    hessian: np.ndarray      # (K, K) float64 = sd^T sd
    n_params: int            # P (motion parameters; the rest are photometric)
    tflat: np.ndarray        # (h*w*C,) float32 template, NaN where not usable
    n_usable: int
    jx: np.ndarray = None    # (n, P) float32 chart Jacobians of the level's pixels (x and y rows)
    jy: np.ndarray = None
    points: np.ndarray = None  # (n, 3) homogeneous level pixels when only a subset is used, else None
    sdT: np.ndarray = None   # (K, h*w*C) float32, the transpose of ``sd`` (fast g = sdT e)
    noise_variance: float | None = None  # the template's white-noise variance, once computed

    def restrict(self, cols) -> Level:
        """The same level for a sub-model whose parameters are the columns ``cols`` of this
        one's (e.g. translation = homography columns 2 and 5 at ``d = 0``); photometric
        columns are kept."""
        keep = list(cols) + list(range(self.n_params, self.sd.shape[1]))
        sd = np.ascontiguousarray(self.sd[:, keep])
        return Level(self.index, self.factor, self.template, self.image, self.usable, sd,
                     self.hessian[np.ix_(keep, keep)], len(cols), self.tflat, self.n_usable,
                     self.jx[:, list(cols)], self.jy[:, list(cols)], self.points, self.sdT[keep])

    def without_photometric(self) -> Level:
        """The same level without the gain/bias columns (the motion columns only)."""
        p = self.n_params
        if self.sd.shape[1] == p:
            return self
        return Level(self.index, self.factor, self.template, self.image, self.usable,
                     np.ascontiguousarray(self.sd[:, :p]), self.hessian[:p, :p].copy(), p, self.tflat,
                     self.n_usable, self.jx, self.jy, self.points, np.ascontiguousarray(self.sdT[:p]))

    @property
    def shape(self):
        return self.template.shape


def central_gradients(t: np.ndarray):
    """``(gx, gy)`` by central differences, NaN on the one-pixel border (H, W, C)."""
    gx = np.full_like(t, NAN)
    gy = np.full_like(t, NAN)
    gx[:, 1:-1] = 0.5 * (t[:, 2:] - t[:, :-2])
    gy[1:-1, :] = 0.5 * (t[2:, :] - t[:-2, :])
    return gx, gy


JACOBIAN_CACHE_BYTES = 16 << 20  # whole-grid Jacobians kept between calls (all shapes together)
_JACOBIANS = ByteLRU(JACOBIAN_CACHE_BYTES)


def _pixel_jacobian(model: str, xs: np.ndarray, ys: np.ndarray, factor: float, chart: np.ndarray):
    """``(jx, jy)``, each ``(n, P) float32``: the warp Jacobian at level pixels ``(xs, ys)``."""
    x0 = np.column_stack([xs, ys]).astype(np.float64) * factor  # (n, 2) level-0 px
    u = x0 @ chart[:2, :2].T + chart[:2, 2]  # (n, 2) chart coordinates
    jx, jy = identity_jacobian(model, u)  # (n, P) each
    return jx.astype(np.float32), jy.astype(np.float32)


def _grid_jacobian(model: str, h: int, w: int, factor: float, chart_key: tuple):
    """Warp Jacobian at every pixel of an ``h x w`` level grid, read-only ``(h*w, P)`` each
    (cached in :data:`_JACOBIANS`: it depends on shapes only)."""

    def make():
        ys, xs = np.mgrid[0:h, 0:w]
        return _pixel_jacobian(model, xs.ravel(), ys.ravel(), factor, np.asarray(chart_key).reshape(3, 3))

    return _JACOBIANS.get(("grid", model, h, w, factor, chart_key), make)


def _grid_jacobian_t(model: str, h: int, w: int, factor: float, chart_key: tuple):
    """The transposes of :func:`_grid_jacobian`, contiguous ``(P, h*w)`` each (cached alike)."""

    def make():
        jx, jy = _grid_jacobian(model, h, w, factor, chart_key)
        return np.ascontiguousarray(jx.T), np.ascontiguousarray(jy.T)

    return _JACOBIANS.get(("grid.T", model, h, w, factor, chart_key), make)


# Pixels sampled (evenly strided) to estimate the gradient threshold: the quantile of ~32k values
# is within a few percent of the exact one, at a tenth of the cost of partitioning a full frame.
THRESHOLD_SAMPLE = 1 << 15


def _strongest_pixels(gx, gy, tz, k):
    """Indices (sorted) of about ``k`` pixels with the largest squared gradient, all channels
    usable; the threshold comes from a strided sample (no full sort of the grid)."""
    score = (gx * gx + gy * gy).sum(axis=1)  # (n,), NaN where a gradient is missing
    score[np.isnan(tz).any(axis=1)] = np.nan
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


def build_level(index: int, template: np.ndarray, image: np.ndarray, model: str, chart: np.ndarray,
                photometric: bool, max_pixels: int | None = None, check=None) -> Level:
    """Steepest-descent images and Hessian of one level.

    ``chart`` is level-0 ``chart_from_template``; the level's pixels are ``x_l = x_0 / 2^l``.
    With more than ``max_pixels`` usable pixels, only the ``max_pixels`` with the strongest
    gradient take part (they carry most of the information; flat pixels add cost, not
    constraint), their Jacobians alone are computed, and the image is sampled at those points
    only (``cv2.remap``). ``check()`` (may raise: the caller's deadline) runs between the stages.
    """
    factor = float(2 ** index)
    h, w, c = template.shape
    gx, gy = central_gradients(template)
    gx, gy, tz = gx.reshape(h * w, c), gy.reshape(h * w, c), template.reshape(h * w, c)
    scale = float(chart_scale(chart) / factor)  # level pixels per chart unit
    points = None
    sel = _strongest_pixels(gx, gy, tz, max_pixels) if max_pixels is not None and h * w > max_pixels else None
    _check(check)
    if sel is not None:
        xs, ys = sel % w, sel // w
        jx, jy = _pixel_jacobian(model, xs, ys, factor, chart)  # (n, P) each, float32
        gx, gy, tz = gx[sel], gy[sel], tz[sel]
        usable = np.ones(len(sel) * c, bool)
        points = np.column_stack([xs, ys, np.ones(len(sel))]).astype(np.float64)
        transposed = lambda: (np.ascontiguousarray(jx.T), np.ascontiguousarray(jy.T))
    else:
        chart_key = tuple(chart.ravel())
        jx, jy = _grid_jacobian(model, h, w, factor, chart_key)  # (h*w, P) each, float32, read-only
        usable = ~(np.isnan(tz) | np.isnan(gx) | np.isnan(gy)).reshape(-1)  # (h*w*C,)
        transposed = lambda: _grid_jacobian_t(model, h, w, factor, chart_key)
    _check(check)
    p = jx.shape[1]
    n = len(jx)
    if c == 1:
        # (P, n) layout: broadcasting a row over contiguous rows is several times faster than
        # an (n, 1) column over (n, P), and the per-iteration g = sdT e is a contiguous gemv.
        u = usable
        jxT, jyT = transposed()
        sdT = jxT * np.where(u, gx[:, 0] * np.float32(scale), np.float32(0)) \
            + jyT * np.where(u, gy[:, 0] * np.float32(scale), np.float32(0))
        if photometric:
            sdT = np.vstack([sdT, np.where(u, tz[:, 0], np.float32(0))[None], u.astype(np.float32)[None]])
        sdT = np.ascontiguousarray(sdT, dtype=np.float32)
        sd = np.ascontiguousarray(sdT.T)
    else:
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
    hessian = (sdT @ sd).astype(np.float64)
    tflat = tz.reshape(-1).copy()
    tflat[~usable] = NAN
    return Level(index, factor, template, image, usable, sd, hessian, p, tflat, int(usable.sum()), jx, jy, points,
                 sdT)
