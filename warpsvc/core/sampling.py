"""The one resampler: ``out(y) = in(S(y))`` for a source-from-destination map ``S``.

Every warp comes here as ``S = T^{-1}`` (a :class:`Transform`). Matrix maps go to
``cv2.warpAffine`` / ``cv2.warpPerspective`` (which compute the same coordinates in double
precision internally); every other map is evaluated on the output grid, tile by tile, and
handed to ``cv2.remap``.

What this module adds to OpenCV:

* **any size**: ``remap`` refuses sides >= 32767 px; larger images are processed in output
  tiles, each reading only the source crop its coordinates need (a tile whose crop is
  still too large is split again);
* **any number of channels**: OpenCV's cubic/Lanczos stop at 4; channels go in groups of 4;
* **float64 without quantisation**: OpenCV interpolates 64-bit images on a 1/32-px grid and
  float32 ones at float32 coordinates (~1e-6 px error at x ~ 50). ``linear`` on float64 is
  done here in float64 throughout (coordinates, weights, sums); ``cubic``/``lanczos`` split
  the image into ``hi = float32(img)`` and ``lo = float32(img - hi)``, each warped in float32,
  so the values keep float64 precision (the 1/32-px position grid of those kernels stays);
* **deterministic borders**: coordinates are folded into the source range according to the
  border rule before sampling (``wrap`` mod W, ``reflect`` about 0 and W-1, ``symmetric``
  about -1/2 and W-1/2, ``constant``/``replicate`` clipped just outside), so huge or
  non-finite coordinates (a homography's horizon) give the border value, never garbage;
* **periodic rows** for polar images (``Transform.source_row_period``): rows wrap whatever
  the column border rule is, as ``cv2.warpPolar`` does for its inverse map;
* **cooperative cancellation**: ``poll()`` (if given) runs after every sub-block of a tile's
  coordinate map (:mod:`.grids`: at most ``GRID_WORK`` pixel-steps each, so a chain of 16 polar
  steps is polled 16 times as often as one step), after every group of 4 channels of a tile
  and after every tile; matrix warps with a ``poll`` and more than :data:`POLL_BAND_PIXELS`
  output pixel-channel-groups run in row bands (the band's matrix is
  ``M @ [[1, 0, 0], [0, 1, r0], [0, 0, 1]]``, so coordinates may differ from the single call
  by float64 round-off). The blocking never changes a value (pointwise maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .budget import transform_steps
from .grids import coordinate_grid, sub_blocks
from .transforms import Transform

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}
# Half-width (pixels) of each interpolation kernel's support, plus one for safety.
KERNEL_RADIUS = {"nearest": 1, "linear": 2, "cubic": 3, "lanczos": 5}
BORDERS = {
    "constant": cv2.BORDER_CONSTANT,
    "replicate": cv2.BORDER_REPLICATE,
    "reflect": cv2.BORDER_REFLECT_101,
    "symmetric": cv2.BORDER_REFLECT,
    "wrap": cv2.BORDER_WRAP,
}
CV_MAX_SIDE = 32766  # remap / warpAffine / warpPolar refuse sides >= 32767
TILE_PIXELS = 1 << 20  # output pixels per remap tile (bounds the float64 coordinate arrays)
CHANNEL_GROUP = 4
POLL_BAND_PIXELS = 1 << 22  # matrix warps with a poll: output pixels x channel groups per band


@dataclass(frozen=True)
class SampleOptions:
    """How to sample: interpolation name, border rule name and constant fill value."""

    interpolation: str = "linear"
    border: str = "constant"
    border_value: float = 0.0


def fold_coordinates(c: np.ndarray, size: int, border: str, radius: int) -> np.ndarray:
    """Map coordinates ``c`` (float64) on an axis of ``size`` pixels into a bounded range.

    The result samples the same value under the border rule and lies in
    ``[-radius - 1, size + radius]``. Non-finite coordinates are sent outside (constant)
    or to the first pixel.
    """
    c = np.where(np.isfinite(c), c, -radius - 1.0)
    if border in ("constant", "replicate"):
        return np.clip(c, -radius - 1.0, size + radius)
    if border == "wrap":
        return np.mod(c, size)
    if border == "reflect":  # mirror about 0 and size - 1 (OpenCV REFLECT_101)
        if size == 1:
            return np.zeros_like(c)
        period = 2.0 * (size - 1)
        c = np.mod(c, period)
        return np.where(c > size - 1, period - c, c)
    period = 2.0 * size  # symmetric: mirror about -1/2 and size - 1/2 (OpenCV REFLECT)
    c = np.mod(c + 0.5, period) - 0.5
    return np.where(c > size - 0.5, period - 1.0 - c, c)


def border_indices(idx: np.ndarray, size: int, border: str) -> np.ndarray:
    """Integer source indices for ``idx`` under the border rule; ``-1`` means the fill value."""
    if border == "constant":
        return np.where((idx >= 0) & (idx < size), idx, -1)
    if border == "replicate":
        return np.clip(idx, 0, size - 1)
    if border == "wrap":
        return np.mod(idx, size)
    if border == "reflect":
        if size == 1:
            return np.zeros_like(idx)
        p = 2 * (size - 1)
        m = np.mod(idx, p)
        return np.where(m > size - 1, p - m, m)
    m = np.mod(idx, 2 * size)
    return np.where(m >= size, 2 * size - 1 - m, m)


def _cv_value(v: float):
    return (float(v),) * 4


def _channel_groups(image: np.ndarray):
    """Yield ``(start, stop, contiguous 2-D or 3-D chunk)`` of at most 4 channels."""
    c = image.shape[2]
    for start in range(0, c, CHANNEL_GROUP):
        stop = min(c, start + CHANNEL_GROUP)
        chunk = image[:, :, start] if stop - start == 1 else image[:, :, start:stop]
        yield start, stop, np.ascontiguousarray(chunk)


def _store(out, r0, r1, c0, c1, start, stop, res):
    out[r0:r1, c0:c1, start:stop] = res.reshape(r1 - r0, c1 - c0, stop - start)


def _poll(poll) -> None:
    if poll is not None:
        poll()


def resample(image: np.ndarray, src_from_dst: Transform, out_shape, opts: SampleOptions, row_period=None, *,
             poll=None):
    """Sample ``image (H, W, C)`` at ``src_from_dst(y)`` for every pixel ``y`` of ``out_shape``.

    Returns ``(Ho, Wo, C)`` of the image's dtype. ``row_period`` makes source rows periodic;
    ``poll()`` is called after every tile.
    """
    if image.dtype == np.float64 and opts.interpolation == "linear":
        return _warp_bilinear64(image, src_from_dst, out_shape, opts, row_period, poll)
    if image.dtype == np.float64 and opts.interpolation != "nearest":
        hi = image.astype(np.float32)
        with np.errstate(invalid="ignore"):  # inf - inf: an infinite pixel has no low part
            lo = np.where(np.isinf(image), 0.0, image - hi).astype(np.float32)
        bv_hi = float(np.float32(opts.border_value))
        hi_opts = SampleOptions(opts.interpolation, opts.border, bv_hi)
        res = _resample(hi, src_from_dst, out_shape, hi_opts, row_period, poll)
        lo_opts = SampleOptions(opts.interpolation, opts.border, opts.border_value - bv_hi)
        return res.astype(np.float64) + _resample(lo, src_from_dst, out_shape, lo_opts, row_period, poll)
    return _resample(image, src_from_dst, out_shape, opts, row_period, poll)


def _resample(image, src_from_dst, out_shape, opts, row_period, poll=None):
    ho, wo = out_shape
    h, w, c = image.shape
    fits = max(h, w, ho, wo) <= CV_MAX_SIDE
    if src_from_dst.is_matrix() and fits and row_period is None:
        if poll is None or ho * wo <= POLL_BAND_PIXELS:
            out = _warp_matrix(image, src_from_dst.matrix, out_shape, opts)
            _poll(poll)
            return out
        out = np.empty((ho, wo, c), dtype=image.dtype)
        band = max(1, POLL_BAND_PIXELS // (wo * -(-c // CHANNEL_GROUP)))
        for r0 in range(0, ho, band):
            r1 = min(ho, r0 + band)
            shift = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, r0], [0.0, 0.0, 1.0]])
            out[r0:r1] = _warp_matrix(image, src_from_dst.matrix @ shift, (r1 - r0, wo), opts)
            _poll(poll)
        return out
    out = np.empty((ho, wo, c), dtype=image.dtype)
    _warp_remap(image, src_from_dst, out, opts, row_period, poll)
    return out


def _warp_matrix(image, m, out_shape, opts):
    """OpenCV's own warp with the ``dst -> src`` matrix ``m`` (``WARP_INVERSE_MAP``)."""
    ho, wo = out_shape
    is_affine = np.array_equal(m[2], [0.0, 0.0, 1.0])
    flags = INTERPOLATIONS[opts.interpolation] | cv2.WARP_INVERSE_MAP
    kwargs = dict(flags=flags, borderMode=BORDERS[opts.border], borderValue=_cv_value(opts.border_value))
    parts = []
    for _, stop, chunk in _channel_groups(image):
        if is_affine:
            res = cv2.warpAffine(chunk, m[:2], (wo, ho), **kwargs)
        else:
            res = cv2.warpPerspective(chunk, m, (wo, ho), **kwargs)
        parts.append(res.reshape(ho, wo, -1))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def _tiles(ho, wo):
    tw = min(wo, 8192)
    th = max(1, min(ho, TILE_PIXELS // tw))
    for r0 in range(0, ho, th):
        for c0 in range(0, wo, tw):
            yield r0, min(ho, r0 + th), c0, min(wo, c0 + tw)


def _warp_remap(image, src_from_dst, out, opts, row_period, poll=None):
    h, w = image.shape[:2]
    radius = KERNEL_RADIUS[opts.interpolation]
    row_border = "wrap" if row_period is not None else opts.border
    direct = row_period is None and max(h, w) <= CV_MAX_SIDE
    steps = transform_steps(src_from_dst)
    for r0, r1, c0, c1 in _tiles(*out.shape[:2]):
        mx = my = None
        if direct:  # float32 maps, if OpenCV's own borders suffice for them
            mx, my = coordinate_grid(src_from_dst, (r0, r1), (c0, c1), np.float32, poll, steps)
        if not (direct and _moderate(mx) and _moderate(my)):
            mx, my = coordinate_grid(src_from_dst, (r0, r1), (c0, c1), np.float64, poll, steps)  # to fold exactly
            mx = fold_coordinates(mx, w, opts.border, radius)
            my = fold_coordinates(my, h, row_border, radius)
        if direct:
            _remap_into(out, (r0, r1, c0, c1), image, mx, my, opts, BORDERS[opts.border], poll)
        else:
            _remap_cropped(out, (r0, r1, c0, c1), image, mx, my, opts, row_border, radius, poll)
        _poll(poll)


def _moderate(c: np.ndarray) -> bool:
    """All coordinates finite and far from OpenCV's integer-conversion range."""
    lo, hi = c.min(), c.max()  # NaN propagates and fails both comparisons
    return bool(lo > -1e6 and hi < 1e6)


def _remap_into(out, tile, src, mx, my, opts, border_mode, poll=None):
    r0, r1, c0, c1 = tile
    mx32, my32 = mx.astype(np.float32), my.astype(np.float32)
    groups = list(_channel_groups(src))
    whole_rows = c0 == 0 and c1 == out.shape[1]
    for start, stop, chunk in groups:
        kwargs = dict(borderMode=border_mode, borderValue=_cv_value(opts.border_value))
        if len(groups) == 1 and whole_rows and out.shape[2] > 1:
            cv2.remap(chunk, mx32, my32, INTERPOLATIONS[opts.interpolation], dst=out[r0:r1], **kwargs)
            continue
        res = cv2.remap(chunk, mx32, my32, INTERPOLATIONS[opts.interpolation], **kwargs)
        _store(out, r0, r1, c0, c1, start, stop, res)
        if stop < out.shape[2]:  # more groups of channels to go
            _poll(poll)


def _remap_cropped(out, tile, image, mx, my, opts, row_border, radius, poll=None):
    """Remap one tile from the source crop its coordinates need (splitting if still too large)."""
    r0, r1, c0, c1 = tile
    x0, x1 = int(np.floor(mx.min())) - radius, int(np.ceil(mx.max())) + radius + 1
    y0, y1 = int(np.floor(my.min())) - radius, int(np.ceil(my.max())) + radius + 1
    if max(x1 - x0, y1 - y0) > CV_MAX_SIDE:
        if r1 - r0 >= c1 - c0:
            mid = (r0 + r1) // 2
            parts = [((r0, mid, c0, c1), slice(0, mid - r0), slice(None)), ((mid, r1, c0, c1), slice(mid - r0, None), slice(None))]
        else:
            mid = (c0 + c1) // 2
            parts = [((r0, r1, c0, mid), slice(None), slice(0, mid - c0)), ((r0, r1, mid, c1), slice(None), slice(mid - c0, None))]
        for sub, rs, cs in parts:
            _remap_cropped(out, sub, image, mx[rs, cs], my[rs, cs], opts, row_border, radius, poll)
        return
    rows = border_indices(np.arange(y0, y1), image.shape[0], row_border)
    cols = border_indices(np.arange(x0, x1), image.shape[1], opts.border)
    crop = image[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    if (rows < 0).any() or (cols < 0).any():
        crop[rows < 0] = opts.border_value
        crop[:, cols < 0] = opts.border_value
    _remap_into(out, tile, crop, mx - x0, my - y0, opts, cv2.BORDER_REPLICATE, poll)


def _warp_bilinear64(image, src_from_dst, out_shape, opts, row_period, poll=None):
    """Exact float64 bilinear interpolation (no OpenCV): weights and sums in float64, one
    :mod:`.grids` sub-block at a time (pointwise: the blocking changes no value)."""
    ho, wo = out_shape
    c = image.shape[2]
    out = np.empty((ho, wo, c), dtype=np.float64)
    row_border = "wrap" if row_period is not None else opts.border
    steps = transform_steps(src_from_dst)
    for r0, r1, c0, c1 in _tiles(ho, wo):
        for rows, cols in sub_blocks((r0, r1), (c0, c1), steps):
            gx, gy = src_from_dst.sampling_grid(rows, cols)
            res = _bilinear64(image, gx.ravel(), gy.ravel(), opts, row_border)
            out[rows[0]:rows[1], cols[0]:cols[1]] = res.reshape(rows[1] - rows[0], cols[1] - cols[0], c)
            _poll(poll)
    return out


def _bilinear64(image, gx, gy, opts, row_border):
    """``(N, C)`` bilinear samples of ``image (H, W, C) float64`` at ``(gx, gy)`` (``(N,)`` each)."""
    h, w = image.shape[:2]
    x = fold_coordinates(gx, w, opts.border, 1)
    y = fold_coordinates(gy, h, row_border, 1)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    cols = [border_indices(x0 + d, w, opts.border) for d in (0, 1)]
    rows = [border_indices(y0 + d, h, row_border) for d in (0, 1)]

    def at(r, q):
        v = image[np.maximum(r, 0), np.maximum(q, 0)]
        return np.where(((r < 0) | (q < 0))[:, None], opts.border_value, v)

    top = at(rows[0], cols[0]) * (1 - fx) + at(rows[0], cols[1]) * fx
    bottom = at(rows[1], cols[0]) * (1 - fx) + at(rows[1], cols[1]) * fx
    return top * (1 - fy) + bottom * fy
