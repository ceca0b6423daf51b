"""Public warping functions: :func:`warp` and :func:`jacobian_determinant`.

Conventions (``docs/conventions.md``): ``transform`` maps input-image coordinates to output
coordinates; the output is sampled through its inverse, ``out(y) = in(T^{-1}(y))``.

Intensity preservation. A density ``p`` pushed through ``T`` becomes
``q(y) = p(T^{-1}(y)) |det J_{T^{-1}}(y)|`` (change of variables, as in normalising flows), so
``sum_y q(y) = sum_x p(x)`` for content inside the frame. ``intensity="conserve"`` returns
``q``; ``intensity="plain"`` returns ``p(T^{-1}(y))``. ``antialias=True`` integrates the source
over each output pixel's preimage instead of sampling one point (see :mod:`.antialias`), so the
flux is conserved locally too.

Cost control. Both functions take keyword-only ``limits`` (:class:`~.budget.WarpLimits`: chain
length, antialias nodes and memory; refusals raise ``ResourceExhaustedError`` naming the field,
before anything large is allocated) and ``poll``, a callable invoked between pieces of work
of bounded cost whatever the chain length and the image size: sub-blocks of the coordinate
and determinant maps (:mod:`.grids`: at most ``GRID_WORK`` pixel-steps, ~3-12 ms), remap tiles
and channel groups, OpenCV row bands, scaling bands, antialias layout runs, scatter bands
and chunks, tent-sum groups and post-processing strips. It aborts the call by raising (a
server's deadline or cancellation), and the exception propagates unchanged; the blocking
never changes a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from . import _scale_kernels as _scale
from .budget import check_antialias_cost, check_limits, check_transform_steps
from .errors import InvalidArgumentError, InvalidTransformError
from .grids import determinant_grid, finite_determinant_grid
from .grids import GRID_WORK
from .sampling import BORDERS, CV_MAX_SIDE, INTERPOLATIONS, SampleOptions, border_indices, resample
from .transforms import AffineTransform, PolarTransform, Transform, compose
from .validate import check_choice, check_image, check_shape

INTENSITIES = ("plain", "conserve")
# Antialiased output pixels whose preimage is >= 99 % inside the source count as fully inside
# (the node lattice's coverage ripple is < 0.3 %, so interiors are not blended with the border).
FULL_COVERAGE_SLACK = 0.01
SCALE_BAND_ELEMENTS = 1 << 22  # values per determinant-scaling launch (then a poll)
POST_BAND_ELEMENTS = 1 << 16  # values per antialias post-processing strip (then a poll)
POST_BYTES_PER_ELEMENT = 40  # a strip's float64 temporaries (determinant, inside, mean, blend, ...)


def _check_transform(transform) -> Transform:
    if not isinstance(transform, Transform):
        raise InvalidTransformError(
            f"transform must be a warpsvc Transform, got {type(transform).__name__}", field="transform"
        )
    return transform


def _check_poll(poll):
    if poll is not None and not callable(poll):
        raise InvalidArgumentError(f"poll must be a callable or None, got {type(poll).__name__}", field="poll")
    return poll


def _poll(poll) -> None:
    if poll is not None:
        poll()


def _check_border_value(border_value) -> float:
    try:
        bv = float(border_value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"border_value must be a number, got {border_value!r}", field="border_value") from None
    if not math.isfinite(bv):
        raise InvalidArgumentError("border_value must be finite", field="border_value")
    return bv


def _float_dtype(dtype) -> np.dtype:
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def jacobian_determinant(transform: Transform, output_shape, *, dtype=np.float64, limits=None,
                         poll=None) -> np.ndarray:
    """``|det J_{T^{-1}}(y)|`` at every pixel ``y`` of the output grid, shape ``(H, W)``.

    It is the source area that lands in output pixel ``y`` (analytic, closed forms for matrix
    and polar transforms, chain rule for compositions). ``dtype`` is float64 or float32.
    ``limits`` / ``poll``: see the module docstring (``poll`` runs after every sub-block of at
    most ``grids.GRID_WORK`` pixel-steps: ~10 ms of work whatever the chain length).
    """
    _check_transform(transform)
    shape = check_shape(output_shape)
    if np.dtype(dtype) not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidArgumentError(f"dtype must be float64 or float32, got {dtype!r}", field="dtype")
    check_transform_steps(transform, check_limits(limits))
    return np.ascontiguousarray(_det_map(transform.inverse(), shape, _check_poll(poll)), dtype=dtype)


def _det_map(src_from_dst: Transform, shape, poll=None) -> np.ndarray:
    """``|det J|`` of ``src_from_dst`` on the grid (may be a read-only broadcast view), in
    :mod:`.grids` sub-blocks with a poll after each."""
    return determinant_grid(src_from_dst, (0, shape[0]), (0, shape[1]), poll)


def _finite_det_map(src_from_dst: Transform, shape, poll=None) -> np.ndarray:
    """The determinant map with singular points (a polar centre) replaced by the mean over
    four points at +-1/4 px: the pixel average of an integrable singularity."""
    return finite_determinant_grid(src_from_dst, (0, shape[0]), (0, shape[1]), poll)


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
    limits=None,
    poll=None,
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
    limits : :class:`~.budget.WarpLimits` (default ``WarpLimits()``): chain length, antialias
        nodes and working memory; over budget raises ``ResourceExhaustedError`` (``field``
        ``transform`` or ``antialias``) before the work starts.
    poll : ``None`` or a callable taking no argument, called between pieces of bounded work
        (~10 ms each, whatever the chain length; see the module docstring); raise from it to
        abort the call.

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
    bv = _check_border_value(border_value)
    if output_shape is None:
        output_shape = transform.default_output_shape(img.shape[:2])
    shape = check_shape(output_shape)
    lim = check_limits(limits)
    check_transform_steps(transform, lim)
    _check_poll(poll)
    src_from_dst = transform.inverse()
    opts = SampleOptions(interpolation, border, bv)
    period = transform.source_row_period()

    if antialias:
        out = _warp_antialiased(img, transform, src_from_dst, shape, opts, intensity, period, lim, poll)
    elif _is_direct_polar(img, src_from_dst, shape, opts):
        out = _warp_polar(img, src_from_dst, shape, opts, intensity, poll)
    elif intensity == "plain":
        out = resample(img, src_from_dst, shape, opts, period, poll=poll)
    else:
        out = _conserve(resample(img, src_from_dst, shape, opts, period, poll=poll), src_from_dst, poll)
    return out if image.ndim == 3 else out[:, :, 0]


POLAR_BAND_PIXELS = GRID_WORK  # output pixels per band of a forward polar warp (then a poll)
POLAR_MAX_COORDINATE = 1e6  # |x|, |y| of every map value below this: OpenCV's own borders apply


def _is_direct_polar(img, src_from_dst, shape, opts) -> bool:
    """A forward (Cartesian -> polar) warp that one OpenCV ``remap`` per band does exactly as the
    general resampler would: float32 maps (the source is not float64), <= 4 channels, sides
    OpenCV accepts, and map values bounded (``|centre| + max radius``) far from OpenCV's
    integer-conversion range."""
    if not (isinstance(src_from_dst, PolarTransform) and src_from_dst.is_inverse):
        return False
    if img.dtype == np.float64 or img.shape[2] > 4 or max(*img.shape[:2], *shape) > CV_MAX_SIDE:
        return False
    reach = float(src_from_dst._radius(np.float64(shape[1]))) + max(abs(c) for c in src_from_dst.center)
    return reach < POLAR_MAX_COORDINATE and opts.interpolation in INTERPOLATIONS


def _warp_polar(img, polar, shape, opts, intensity, poll=None) -> np.ndarray:
    """Forward polar warp in row bands of about :data:`POLAR_BAND_PIXELS` output pixels: the
    band's separable maps (``polar.sampling_grid``: strip-parallel, exactly the maps
    ``cv2.warpPolar`` builds), one ``cv2.remap`` with OpenCV's own border rule (parallel in
    OpenCV), then for ``conserve`` the band's scaling by the per-column ``|det J|`` while the
    band is still in cache; a poll after each band. Pointwise: the banding changes no value
    (the same maps and remap as :func:`.sampling.resample`'s direct path, bit for bit)."""
    ho, wo = shape
    c = img.shape[2]
    sampled = np.empty((ho, wo, c), dtype=img.dtype)
    src = np.ascontiguousarray(img if c > 1 else img[:, :, 0])
    kwargs = dict(borderMode=BORDERS[opts.border], borderValue=(float(opts.border_value),) * 4)
    out = cols = None
    if intensity == "conserve":
        dtype = _float_dtype(img.dtype)
        out = np.empty((ho, wo, c), dtype=dtype)
        cols = np.repeat(_finite_det_map(polar, (1, wo))[0].astype(dtype), c)
    stream = out is not None and _scale.large_result(img.dtype, out)  # streaming stores (._stream_kernels)
    if (poll is None and polar.opencv_sampling and tuple(shape) == polar.polar_shape and opts.border == "constant"
            and opts.border_value == 0):
        # Nothing to poll between: OpenCV's own warpPolar builds the same maps (its angle and radius
        # steps come from dsize = the polar shape; serial C loop, faster than numpy's two passes)
        # and remaps once; WARP_FILL_OUTLIERS = constant 0.
        flags = INTERPOLATIONS[opts.interpolation] | cv2.WARP_FILL_OUTLIERS
        flags |= cv2.WARP_POLAR_LOG if polar.log else cv2.WARP_POLAR_LINEAR
        res = cv2.warpPolar(src, (wo, ho), polar.center, polar.max_radius, flags)
        sampled = res.reshape(ho, wo, c)
        if out is not None:
            _scale.scale_by_columns(sampled, cols, out, stream)
        return sampled if out is None else out
    band = max(1, POLAR_BAND_PIXELS // max(1, wo))
    for r0 in range(0, ho, band):
        r1 = min(ho, r0 + band)
        mx, my = polar.sampling_grid((r0, r1), (0, wo), np.float32)
        if c > 1:
            cv2.remap(src, mx, my, INTERPOLATIONS[opts.interpolation], dst=sampled[r0:r1], **kwargs)
        else:
            sampled[r0:r1, :, 0] = cv2.remap(src, mx, my, INTERPOLATIONS[opts.interpolation], **kwargs)
        if out is not None:
            _scale.scale_by_columns(sampled[r0:r1], cols, out[r0:r1], stream)
        _poll(poll)
    return sampled if out is None else out


def _conserve(sampled: np.ndarray, src_from_dst: Transform, poll=None) -> np.ndarray:
    """``sampled * |det J_{T^{-1}}|`` as float32 (float64 for float64 input), one fused
    parallel pass (convert and scale, :mod:`._scale_kernels`) per band of rows.

    The interpolation itself ran in the image's dtype, as OpenCV does (integer images: values
    rounded to whole counts, <= 1/2 count before scaling); pass float32 for unrounded values.
    """
    dtype = _float_dtype(sampled.dtype)
    sampled = np.ascontiguousarray(sampled)
    out = np.empty(sampled.shape, dtype=dtype)
    stream = _scale.large_result(sampled.dtype, out)  # streaming stores (._stream_kernels)
    if src_from_dst.is_matrix():
        m = np.ascontiguousarray(src_from_dst.matrix, dtype=np.float64)
        if np.array_equal(m[2], [0.0, 0.0, 1.0]):
            factor = dtype.type(abs(np.linalg.det(m[:2, :2])))
            kernel = lambda r0, r1: _scale.scale_by_constant(sampled[r0:r1], factor, out[r0:r1], stream)  # noqa: E731
        else:
            det_m = abs(float(np.linalg.det(m)))
            kernel = lambda r0, r1: _scale.scale_by_projective_det(sampled[r0:r1], m, det_m, r0, out[r0:r1], stream)  # noqa: E731
    else:
        det = _finite_det_map(src_from_dst, sampled.shape[:2], poll)
        if det.strides[0] == 0:  # one row broadcast down the columns (polar)
            cols = np.repeat(det[0].astype(dtype), sampled.shape[2])
            kernel = lambda r0, r1: _scale.scale_by_columns(sampled[r0:r1], cols, out[r0:r1], stream)  # noqa: E731
        else:
            factor = np.ascontiguousarray(det, dtype=dtype)
            kernel = lambda r0, r1: _scale.scale_by_map(sampled[r0:r1], factor[r0:r1], out[r0:r1])  # noqa: E731
    h = sampled.shape[0]
    # bands only to poll between them: without a poll one launch (each launch costs its strips'
    # hand-off; a second band of a 1080p RGB result cost ~0.3 ms of a ~0.8 ms scaling, measured)
    band = h if poll is None else max(1, SCALE_BAND_ELEMENTS // max(1, sampled.shape[1] * sampled.shape[2]))
    for r0 in range(0, h, band):
        kernel(r0, min(h, r0 + band))
        _poll(poll)
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


@dataclass(frozen=True)
class AntialiasCost:
    """What an antialiased warp will cost, known before it allocates (see :mod:`.budget`):
    footprint ``nodes``, ``working_bytes``, ``pixels`` (the larger of input and output pixel
    counts) and ``extension_pixels`` (pixels of the border-extended source, 0 if none)."""

    nodes: int
    working_bytes: int
    pixels: int
    channels: int
    extension_pixels: int


def antialias_cost(image, transform, output_shape=None, *, border: str = "constant", border_value: float = 0.0,
                   intensity: str = "plain") -> AntialiasCost:
    """The :class:`AntialiasCost` of ``warp(image, transform, output_shape, antialias=True, ...)``
    (only ``image.shape`` and ``image.dtype`` are read)."""
    img = check_image(image)
    _check_transform(transform)
    check_choice(border, BORDERS, "border")
    check_choice(intensity, INTENSITIES, "intensity")
    shape = check_shape(transform.default_output_shape(img.shape[:2]) if output_shape is None else output_shape)
    opts = SampleOptions("linear", border, _check_border_value(border_value))
    return _antialias_setup(img, transform, transform.inverse(), shape, opts, intensity,
                            transform.source_row_period())[-1]


def _antialias_setup(img, transform, src_from_dst, shape, opts, intensity, period, poll=None):
    """The scatter's plan and cost: ``(plan, source, dst_from_src, need_coverage, cost)``; the
    ``source`` (:class:`.antialias.SourceRows`) reads the image through the border rule's
    indices over the output's preimage when the border is not constant or rows are periodic."""
    from . import antialias as _aa  # imports numba: only antialiased warps need the scatter kernels

    dst_from_src = transform
    c = img.shape[2]
    rows = cols = None
    if opts.border != "constant" or period is not None:
        # Extend the source by the border rule over the region the output can see.
        x0, x1, y0, y1 = _preimage_box(src_from_dst, shape, img.shape[:2])
        if period is not None and period == img.shape[0]:
            # Exactly one period of rows, each scattered once: the tents of the first and last
            # rows reach beyond it by half a pixel each, and those halves land on the same output
            # pixels (theta and theta + 2 pi map alike), so together they are the wrapped
            # interpolant across the seam. Wrapped copies beyond the period were scattered as
            # well and counted their flux twice (an inverse polar warp of a ones image: +3 rows).
            y0, y1 = 0, img.shape[0]
        row_rule = "wrap" if period is not None else opts.border
        rows = border_indices(np.arange(y0, y1), img.shape[0], row_rule)
        cols = border_indices(np.arange(x0, x1), img.shape[1], opts.border)
        dst_from_src = compose(AffineTransform([[1.0, 0.0, x0], [0.0, 1.0, y0]]), transform)
    need_coverage = intensity == "plain" or (opts.border == "constant" and opts.border_value != 0)
    source = _aa.SourceRows(img, need_coverage, rows, cols, opts.border_value)
    plan = _aa.plan(dst_from_src, (source.h, source.w), shape, c, need_coverage, poll)
    ho, wo = shape
    window = min(source.h, _aa.window_rows(source.w, source.channels)) * source.w
    out_itemsize = _float_dtype(img.dtype).itemsize
    # + output, the gathered rows of a window, the post-processing strips
    working = plan.working_bytes + ho * wo * c * out_itemsize + window * c * img.dtype.itemsize
    if need_coverage:
        working += POST_BAND_ELEMENTS * POST_BYTES_PER_ELEMENT
    extension = 0 if rows is None else source.h * source.w
    cost = AntialiasCost(plan.nodes, int(working), max(img.shape[0] * img.shape[1], ho * wo), c, extension)
    return plan, source, dst_from_src, need_coverage, cost


def _warp_antialiased(img, transform, src_from_dst, shape, opts, intensity, period, limits, poll):
    from . import antialias as _aa

    plan, source, dst_from_src, need_coverage, cost = _antialias_setup(
        img, transform, src_from_dst, shape, opts, intensity, period, poll)
    check_antialias_cost(cost, limits)
    acc = _aa.scatter(source, plan, dst_from_src, shape, row_period=transform.output_row_period(), poll=poll)
    return _finish_antialiased(acc, img.shape[2], need_coverage, src_from_dst, shape, opts, intensity,
                               _float_dtype(img.dtype), poll)


def _finish_antialiased(acc, c, need_coverage, src_from_dst, shape, opts, intensity, dtype, poll):
    """Flux and coverage -> the output, in row strips of about :data:`POST_BAND_ELEMENTS` values
    (elementwise: the same values as one pass; a poll after each strip).

    ``conserve``: ``flux + border_value |det J| (1 - inside)``; ``plain``: ``flux / coverage``
    (the mean over the preimage's part inside the source) times ``inside``, plus
    ``border_value (1 - inside)``; ``inside = clip(coverage / (|det J| (1 - slack)), 0, 1)``."""
    flux, coverage = acc[:, :, :c], (acc[:, :, c] if need_coverage else None)
    if intensity == "conserve" and not need_coverage:
        return flux.astype(dtype)
    ho, wo = shape
    out = np.empty((ho, wo, c), dtype=dtype)
    band = max(1, POST_BAND_ELEMENTS // (wo * (c + 1)))
    for r0 in range(0, ho, band):
        r1 = min(ho, r0 + band)
        det = finite_determinant_grid(src_from_dst, (r0, r1), (0, wo), poll)
        fl, cov = flux[r0:r1], coverage[r0:r1]
        with np.errstate(invalid="ignore", divide="ignore"):
            inside = np.clip(cov / (det * (1.0 - FULL_COVERAGE_SLACK)), 0.0, 1.0)
            inside[~np.isfinite(inside)] = 0.0
            if intensity == "conserve":
                res = fl + (opts.border_value * det * (1.0 - inside))[:, :, None]
            else:
                mean = fl / cov[:, :, None]
                res = np.where(inside[:, :, None] > 0, mean * inside[:, :, None], 0.0)
                res += (opts.border_value * (1.0 - inside))[:, :, None]
        out[r0:r1] = res
        _poll(poll)
    return out
