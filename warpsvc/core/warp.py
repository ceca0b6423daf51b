"""Public warping functions: :func:`warp` and :func:`jacobian_determinant`.

Conventions (``docs/conventions.md``): ``transform`` maps input-image coordinates to output
coordinates; the output is sampled through its inverse, ``out(y) = in(T^{-1}(y))``.

Intensity preservation. A density ``p`` pushed through ``T`` becomes
``q(y) = p(T^{-1}(y)) |det J_{T^{-1}}(y)|`` (change of variables, as in normalising flows), so
``sum_y q(y) = sum_x p(x)`` for content inside the frame. ``intensity="conserve"`` returns
``q``; ``intensity="plain"`` returns ``p(T^{-1}(y))``. ``antialias=True`` integrates the source
over each output pixel's preimage instead of sampling one point (see :mod:`.antialias`), so the
flux is conserved locally too.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from . import _scale_kernels as _scale
from . import antialias as _aa
from .errors import InvalidArgumentError, InvalidTransformError
from .sampling import BORDERS, INTERPOLATIONS, SampleOptions, border_indices, resample
from .transforms import AffineTransform, Transform, compose
from .validate import check_choice, check_image, check_shape

INTENSITIES = ("plain", "conserve")
# Antialiased output pixels whose preimage is >= 99 % inside the source count as fully inside
# (the node lattice's coverage ripple is < 0.3 %, so interiors are not blended with the border).
FULL_COVERAGE_SLACK = 0.01
DET_TILE_ROWS = 256


def _check_transform(transform) -> Transform:
    if not isinstance(transform, Transform):
        raise InvalidTransformError(
            f"transform must be a warpsvc Transform, got {type(transform).__name__}", field="transform"
        )
    return transform


def _float_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def jacobian_determinant(transform: Transform, output_shape, *, dtype=np.float64) -> np.ndarray:
    """``|det J_{T^{-1}}(y)|`` at every pixel ``y`` of the output grid, shape ``(H, W)``.

    It is the source area that lands in output pixel ``y`` (analytic, closed forms for matrix
    and polar transforms, chain rule for compositions). ``dtype`` is float64 or float32.
    """
    _check_transform(transform)
    shape = check_shape(output_shape)
    if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidArgumentError(f"dtype must be float64 or float32, got {dtype!r}", field="dtype")
    return np.ascontiguousarray(_det_map(transform.inverse(), shape), dtype=dtype)


def _det_map(src_from_dst: Transform, shape) -> np.ndarray:
    """``|det J|`` of ``src_from_dst`` on the grid (may be a read-only broadcast view)."""
    h, w = shape
    step = max(1, (1 << 22) // w)
    if step >= h:
        return src_from_dst.determinant_grid((0, h), (0, w))
    out = np.empty(shape, dtype=np.float64)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        out[r0:r1] = src_from_dst.determinant_grid((r0, r1), (0, w))
    return out


def _finite_det_map(src_from_dst: Transform, shape) -> np.ndarray:
    """The determinant map with singular points (a polar centre) replaced by the mean over
    four points at +-1/4 px: the pixel average of an integrable singularity."""
    det = _det_map(src_from_dst, shape)
    bad = ~np.isfinite(det)
    if bad.any():
        det = np.array(det)
        ys, xs = np.nonzero(bad)
        acc = np.zeros(len(ys))
        for ox in (-0.25, 0.25):
            for oy in (-0.25, 0.25):
                acc += np.abs(src_from_dst.jacobian_determinant(np.column_stack([xs + ox, ys + oy])))
        det[bad] = acc / 4
        det[~np.isfinite(det)] = 0.0
    return det


def _scale_by_map(out: np.ndarray, factor: np.ndarray) -> None:
    """``out[..., c] *= factor`` in place for every channel (``out (H, W, C)``, ``factor (H, W)``)."""
    c = out.shape[2]
    if factor.strides[0] == 0:  # one row broadcast down the columns (polar): contiguous rows
        row = np.repeat(factor[0].astype(out.dtype), c)
        out.reshape(out.shape[0], -1)[...] *= row[None, :]
        return
    factor = factor.astype(out.dtype, copy=False)
    if c == 1:
        out[:, :, 0] *= factor
    elif c <= 4:
        cv2.multiply(out, cv2.merge([factor] * c), dst=out)
    else:
        out *= factor[:, :, None]


def warp(
    image: np.ndarray,
    transform: Transform,
    output_shape=None,
    *,
    interpolation: str = "linear",
    border: str = "constant",
    border_value: float = 0.0,
    intensity: str = "plain",
    antialias: bool = False,
) -> np.ndarray:
    """Warp ``image`` by ``transform`` (input coordinates -> output coordinates).

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)``, uint8, uint16, float32 or float64, any ``C >= 1``.
    transform : any :class:`Transform` (affine, homography, polar, or a composition).
    output_shape : ``(H, W)`` of the output; default ``transform.default_output_shape``
        (the input's shape, or the polar image's shape for a forward polar warp).
    interpolation : ``nearest``, ``linear``, ``cubic`` or ``lanczos``.
    border : ``constant`` (``border_value``), ``replicate``, ``reflect`` (mirror about the edge
        pixel, OpenCV ``REFLECT_101``), ``symmetric`` (edge pixel repeated, OpenCV
        ``REFLECT``) or ``wrap``.
    intensity : ``plain`` samples values; ``conserve`` multiplies by ``|det J_{T^{-1}}|``.
    antialias : integrate each output pixel's preimage (Jacobian footprint) instead of
        sampling its centre; flux is then conserved locally. Uses the linear source model.

    Returns
    -------
    ``plain`` without antialias keeps the input dtype; otherwise float32 (float64 for float64
    input). The shape is ``output_shape`` (plus the channel axis if the input had one).
    """
    img = check_image(image)
    _check_transform(transform)
    check_choice(interpolation, INTERPOLATIONS, "interpolation")
    check_choice(border, BORDERS, "border")
    check_choice(intensity, INTENSITIES, "intensity")
    if not isinstance(antialias, (bool, np.bool_)):
        raise InvalidArgumentError(f"antialias must be a bool, got {antialias!r}", field="antialias")
    if antialias and interpolation != "linear":
        raise InvalidArgumentError(
            f"antialias integrates the linear (tent) source model; interpolation must be 'linear', "
            f"got {interpolation!r}", field="interpolation")
    try:
        bv = float(border_value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"border_value must be a number, got {border_value!r}", field="border_value") from None
    if not math.isfinite(bv):
        raise InvalidArgumentError("border_value must be finite", field="border_value")
    if output_shape is None:
        output_shape = transform.default_output_shape(img.shape[:2])
    shape = check_shape(output_shape)
    src_from_dst = transform.inverse()
    opts = SampleOptions(interpolation, border, bv)
    period = transform.source_row_period()

    if antialias:
        out = _warp_antialiased(img, transform, src_from_dst, shape, opts, intensity, period)
    elif intensity == "plain":
        out = resample(img, src_from_dst, shape, opts, period)
    else:
        out = _conserve(resample(img, src_from_dst, shape, opts, period), src_from_dst)
    return out if image.ndim == 3 else out[:, :, 0]


def _conserve(sampled: np.ndarray, src_from_dst: Transform) -> np.ndarray:
    """``sampled * |det J_{T^{-1}}|`` as float32 (float64 for float64 input).

    The interpolation itself ran in the image's dtype, as OpenCV does (integer images: values
    rounded to whole counts, <= 1/2 count before scaling); pass float32 for unrounded values.
    """
    dtype = _float_dtype(sampled.dtype)
    if src_from_dst.is_matrix():
        m = src_from_dst.matrix
        if np.array_equal(m[2], [0.0, 0.0, 1.0]):
            out = sampled.astype(dtype)
            out *= dtype.type(abs(np.linalg.det(m[:2, :2])))
            return out
        out = np.empty(sampled.shape, dtype=dtype)
        _scale.scale_by_projective_det(sampled, np.ascontiguousarray(m), abs(np.linalg.det(m)), out)
        return out
    out = sampled.astype(dtype)
    _scale_by_map(out, _finite_det_map(src_from_dst, sampled.shape[:2]))
    return out


def _preimage_box(src_from_dst: Transform, shape, src_shape):
    """Integer bounding box ``(x0, x1, y0, y1)`` of the output grid's preimage, limited to one
    source size beyond each side."""
    h, w = shape
    t = np.linspace(0.0, 1.0, 65)
    xs, ys = np.meshgrid(t * (w - 1), t * (h - 1))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        p = src_from_dst.map(np.column_stack([xs.ravel(), ys.ravel()]))
    p = p[np.isfinite(p).all(1)]
    sh, sw = src_shape
    if len(p) == 0:
        return 0, sw, 0, sh
    x0 = int(np.clip(np.floor(p[:, 0].min()) - 4, -sw, 0))
    x1 = int(np.clip(np.ceil(p[:, 0].max()) + 5, sw, 2 * sw))
    y0 = int(np.clip(np.floor(p[:, 1].min()) - 4, -sh, 0))
    y1 = int(np.clip(np.ceil(p[:, 1].max()) + 5, sh, 2 * sh))
    return x0, x1, y0, y1


def _warp_antialiased(img, transform, src_from_dst, shape, opts, intensity, period):
    src = img.astype(np.float64, copy=False)
    dst_from_src = transform
    if opts.border != "constant" or period is not None:
        # Extend the source by the border rule over the region the output can see.
        x0, x1, y0, y1 = _preimage_box(src_from_dst, shape, img.shape[:2])
        row_rule = "wrap" if period is not None else opts.border
        rows = border_indices(np.arange(y0, y1), img.shape[0], row_rule)
        cols = border_indices(np.arange(x0, x1), img.shape[1], opts.border)
        src = src[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
        if opts.border == "constant":
            src[:, cols < 0] = opts.border_value
        dst_from_src = compose(AffineTransform([[1.0, 0.0, x0], [0.0, 1.0, y0]]), transform)
    need_coverage = intensity == "plain" or (opts.border == "constant" and opts.border_value != 0)
    flux, coverage = _aa.scatter(src, dst_from_src, shape, with_coverage=need_coverage,
                                 row_period=transform.output_row_period())
    if intensity == "conserve" and not need_coverage:
        return flux.astype(_float_dtype(img.dtype), copy=False)
    det = _finite_det_map(src_from_dst, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = np.clip(coverage / (det * (1.0 - FULL_COVERAGE_SLACK)), 0.0, 1.0)
        inside[~np.isfinite(inside)] = 0.0
        if intensity == "conserve":
            out = flux + (opts.border_value * det * (1.0 - inside))[:, :, None]
        else:
            mean = flux / coverage[:, :, None]
            out = np.where(inside[:, :, None] > 0, mean * inside[:, :, None], 0.0)
            out += (opts.border_value * (1.0 - inside))[:, :, None]
    return out.astype(_float_dtype(img.dtype), copy=False)
