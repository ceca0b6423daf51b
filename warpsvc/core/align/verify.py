r"""Is a converged estimate the optimum, or one of several placements that fit as well?

Gauss-Newton stops at *a* stationary point. On a repeated pattern (a lattice, a brick wall) or a
low-contrast patch under heavy noise, a wrong stationary point can correlate with the template
as well as the right one does, so neither the step size nor the (noise-corrected) correlation
can tell it from the optimum. What can: the correlation of the template with the aligned image
*shifted* by a few pixels. At the optimum the zero-normalised correlation ``rho(s)`` over shifts
``s`` has a single sharp peak at ``s = 0``; at a wrong placement another local maximum within
the search window is about as high, or higher (measured on the benchmark's photographs: see
``docs/alignment.md``).

The margin is counted in standard errors of a sample correlation: with ``n`` pixels and
correlation ``rho`` the standard error is about ``(1 - rho^2) / sqrt(n)`` (Fisher), so::

    margin = (rho(0) - max_{s local max, |s| > 1.5} rho(s)) * sqrt(n) / (1 - rho(0)^2)

(``rho(0)`` the best of the 3x3 shifts around 0). Noise enters through ``1 - rho^2``: the same
difference in correlation is less significant on a noisier pair. Neighbouring pixels of a
photograph are correlated (the effective ``n`` is far below the pixel count), so the threshold
:data:`MIN_MARGIN` is many nominal standard errors. The check runs on the finest pyramid level
whose template side is at most :data:`CHECK_SIDE` pixels (a large template is checked on a
coarser level at the same cost), over shifts of +-:data:`CHECK_RADIUS` level-0 pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .covariance import INLIER_WEIGHT
from .gauss_newton import warp_to_template
from .result import AMBIGUOUS, LOW_CORRELATION, MAX_ITERATIONS, NO_PROGRESS, UNCERTAIN

# Competing correlation peaks closer than this many nominal standard errors make the result
# ambiguous (tuning set: right results >= 44, wrong ones at repeated structure 0-18).
MIN_MARGIN = 20.0
# Largest template side (level pixels) the check runs on. 64 (a 100x100 template checked on
# level 1, radius 4 there) costs 0.26 ms instead of 0.41 ms per converged call (median of 587
# interleaved calls) but was tried and kept out: it cannot judge (no competing peak within
# +-4 level pixels) a tuning bm_noise0 rocket result 15.5 px off that level 0 flags at margin
# 11.2, so that trial became converged-but-wrong (agreement 100 -> 99.5 %).
CHECK_SIDE = 128
_KERNEL = np.ones((3, 3), np.uint8)
CHECK_RADIUS = 8    # level-0 pixels of shift searched on either side
# Standard deviations of the predicted corner RMS error that must fit in
# ``AlignOptions.max_corner_error`` (chosen on the tuning photographs: see corner_bound).
BOUND_SIGMAS = 1.0
# Blocks per side of the block check (:func:`block_margin`) and the largest block margin a
# converged result may have (see docs/alignment.md, "Status hole").
BLOCKS = 3
MAX_BLOCK_MARGIN = 10.0
# Largest template side (level pixels) the block check runs on: full resolution up to 256 px
# (a 240x240 template's shear shows at level 0 -- block margin 12.2 -- not at level 1: 2.5).
BLOCK_SIDE = 256
# Blocks whose standard deviation is below this share of the template's are not checked: a
# flat block (held-out "made" photograph, noise 0: std 1e-4 of float rounding) gives
# matchTemplate's normalised score as garbage (+-1 at arbitrary shifts).
MIN_BLOCK_CONTRAST = 0.01
# Blocks with more than this share of robust-loss outliers are not judged: an occluder (the
# Baker-Matthews occlusion condition, Tukey loss) peaks anywhere, and without this rule 13.5 % of
# the right affine results there were called ambiguous.
MAX_BLOCK_OUTLIERS = 0.1


def peak_margin(t_pyr, i_pyr, W, affine: bool, side: int | None = None) -> float:
    """:data:`margin <MIN_MARGIN>` of the correlation peak at ``W`` (level-0 ``image_from_template``),
    ``inf`` when it cannot be judged (masked template, no shift window, no competing peak).
    ``side``: largest template side of the level used (default :data:`CHECK_SIDE`)."""
    aligned = _aligned(t_pyr, i_pyr, W, affine, _level(t_pyr, CHECK_SIDE if side is None else side))
    return float("inf") if aligned is None else _peak(*aligned)


def margins(t_pyr, i_pyr, W, affine: bool, side: int | None = None, outliers=None) -> tuple[float, float]:
    """``(peak margin, block margin)`` at ``W``: :func:`peak_margin` on the finest level whose
    template side is at most ``side`` (:data:`CHECK_SIDE`), :func:`block_margin` on the finest
    level whose side is at most :data:`BLOCK_SIDE` (the same warp when that is the same level).
    ``inf`` / ``0`` when they cannot be judged. ``outliers``: level-0 ``(h, w)`` bool map of the
    robust loss's outliers (:func:`outlier_mask`); blocks holding more than
    :data:`MAX_BLOCK_OUTLIERS` of them are not judged (an occluder is not a misplacement)."""
    side = CHECK_SIDE if side is None else side
    index = _level(t_pyr, side)
    aligned = _aligned(t_pyr, i_pyr, W, affine, index)
    peak = float("inf") if aligned is None else _peak(*aligned)
    b_index = _level(t_pyr, BLOCK_SIDE)
    if b_index != index:
        aligned = _aligned(t_pyr, i_pyr, W, affine, b_index)
    return peak, (0.0 if aligned is None else block_margin(*aligned, outliers=outliers, factor=2 ** b_index))


def outlier_mask(lv, ev):
    """Level-0 ``(h, w)`` bool map of the pixels a robust loss weighs below
    ``covariance.INLIER_WEIGHT`` at the final evaluation ``ev`` of level ``lv`` (any channel;
    pixels a sampled level did not use count as inliers); ``None`` without a robust loss."""
    if ev is None or ev.weights is None or lv is None:
        return None
    h, w, c = lv.shape
    low = ((ev.weights < INLIER_WEIGHT) & ev.valid).reshape(-1, c).any(axis=1)
    if lv.points is None:
        return low.reshape(h, w)
    mask = np.zeros((h, w), bool)
    xs, ys = lv.points[:, 0].astype(np.intp), lv.points[:, 1].astype(np.intp)
    mask[ys, xs] = low
    return mask


def _level(t_pyr, side: int) -> int:
    return next((i for i, t in enumerate(t_pyr) if max(t.shape[:2]) <= side), len(t_pyr) - 1)


def _aligned(t_pyr, i_pyr, W, affine: bool, index: int):
    """``(template, aligned image extended by r, r, missing)`` on pyramid level ``index``, grey
    (channel means), ``r`` = :data:`CHECK_RADIUS` in level pixels (at least 2); missing pixels
    of the aligned image are filled with its mean and template pixels they cover with the
    template's mean (``missing`` says where). ``None`` when it cannot be judged (masked
    template, under 8 px, nothing or under a quarter of the template seen)."""
    t, img = t_pyr[index], i_pyr[index]
    f = float(2 ** index)
    c = t.shape[2]
    r = max(2, math.ceil(CHECK_RADIUS / f))
    tmpl = t.mean(axis=2) if c > 1 else t[:, :, 0]
    r0 = c0 = 0
    if not math.isfinite(float(tmpl.sum())):
        # a coarse level's template has a NaN border (pyramid.pyr_down): use its finite box
        ok = ~np.isnan(tmpl)
        rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
        if len(rows) < 8 or len(cols) < 8:
            return None
        r0, c0 = rows[0], cols[0]
        tmpl = tmpl[r0:rows[-1] + 1, c0:cols[-1] + 1]
        if np.isnan(tmpl).any():  # masked or missing pixels: matchTemplate cannot skip them
            return None
    if min(tmpl.shape) < 8:
        return None
    Wl = W.copy()
    Wl[:2, 2] /= f
    Wl[2, :2] *= f
    shift = np.array([[1.0, 0, c0 - r], [0, 1.0, r0 - r], [0, 0, 1.0]])
    eh, ew = tmpl.shape[0] + 2 * r, tmpl.shape[1] + 2 * r
    ext = warp_to_template(img, Wl @ shift, (eh, ew, c), affine).reshape(eh, ew, c)
    ext = ext.mean(axis=2) if c > 1 else ext[:, :, 0]
    missing = np.isnan(ext)
    if missing.any():
        if missing.all():
            return None
        ext = ext.copy()
        ext[missing] = ext[~missing].mean()
        # Template pixels whose counterpart at the estimate is missing (the template reaches
        # beyond the image) compare with nothing: set to the template's mean elsewhere they add
        # no variance to either side. Left in, their contrast (a constant-filled corner of a
        # rotated crop, say) lowers rho(0) and the margin (tuning, large motion: a right
        # 0.03 px result was called ambiguous).
        unseen = missing[r:r + tmpl.shape[0], r:r + tmpl.shape[1]]
        if unseen.any():
            if unseen.mean() > 0.75:
                return None
            tmpl = tmpl.copy()
            tmpl[unseen] = tmpl[~unseen].mean()
    return tmpl, ext, r, missing


def _peak(tmpl, ext, r, missing) -> float:
    score = cv2.matchTemplate(np.ascontiguousarray(ext, np.float32), np.ascontiguousarray(tmpl, np.float32),
                              cv2.TM_CCOEFF_NORMED)
    if not math.isfinite(float(score.sum())):
        return float("inf")
    centre = float(score[r - 1:r + 2, r - 1:r + 2].max())
    peaks = score >= cv2.dilate(score, _KERNEL)  # local maxima
    peaks[r - 1:r + 2, r - 1:r + 2] = False          # the estimate's own peak
    if not peaks.any():
        return float("inf")
    other = float(score[peaks].max())
    return (centre - other) * math.sqrt(tmpl.size) / max(1.0 - centre * centre, 1e-6)


def block_margin(tmpl, ext, r: int, missing, outliers=None, factor: int = 1) -> float:
    """How much better some part of the template fits *shifted*: the largest, over the
    :data:`BLOCKS` x :data:`BLOCKS` blocks ``B`` of the template, of::

        (rho_B(s*) - rho_B(0)) * sqrt(n_B) / (1 - rho_B(s*)^2)

    where ``rho_B(s)`` is the block's zero-normalised correlation with the aligned image shifted
    by ``s`` (``|s| <= r`` level pixels, ``ext`` the aligned image extended by ``r``), ``s*`` its
    peak and ``rho_B(0)`` the best of the 3x3 shifts around 0; counted only when the peak is at
    least 2 level pixels away (0 otherwise). Same units as :func:`peak_margin`'s margin.

    At the optimum every block peaks at 0 (up to noise). A wrong stationary point that fits the
    whole template well -- part of it aligned, part sheared away (a homography off in its
    perspective terms) -- has blocks whose own peak is several pixels off, which the whole
    template's peak cannot show (the aligned part holds it at 0). Blocks with a missing or
    unseen pixel, a flat block (:data:`MIN_BLOCK_CONTRAST`), a block with more than
    :data:`MAX_BLOCK_OUTLIERS` of robust-loss outliers (``outliers``: a level-0 map; this level
    is ``factor`` level-0 pixels per pixel) or a non-finite score are skipped."""
    h, w = tmpl.shape
    bh, bw = h // BLOCKS, w // BLOCKS
    if min(bh, bw) < 12:
        return 0.0
    # (BLOCKS, BLOCKS, bh bw): each block's pixels contiguous (a std over axes (1, 3) of the
    # strided view took 1.5x as long)
    grid = tmpl[:BLOCKS * bh, :BLOCKS * bw].reshape(BLOCKS, bh, BLOCKS, bw).transpose(0, 2, 1, 3)
    judged = grid.reshape(BLOCKS, BLOCKS, bh * bw).std(axis=2) > MIN_BLOCK_CONTRAST * float(tmpl.std())
    if missing.any():
        judged &= ~np.array([[missing[i * bh:(i + 1) * bh + 2 * r, j * bw:(j + 1) * bw + 2 * r].any()
                              for j in range(BLOCKS)] for i in range(BLOCKS)])
    if outliers is not None:  # level-0 map: block (i, j) covers rows i bh f .. (i + 1) bh f
        bf, wf = bh * factor, bw * factor
        judged &= np.array([[outliers[i * bf:(i + 1) * bf, j * wf:(j + 1) * wf].mean() <= MAX_BLOCK_OUTLIERS
                             for j in range(BLOCKS)] for i in range(BLOCKS)])
    worst = 0.0
    for i, j in zip(*np.nonzero(judged)):
        y0, x0 = i * bh, j * bw
        score = cv2.matchTemplate(ext[y0:y0 + bh + 2 * r, x0:x0 + bw + 2 * r], tmpl[y0:y0 + bh, x0:x0 + bw],
                                  cv2.TM_CCOEFF_NORMED)
        _, peak, _, (px, py) = cv2.minMaxLoc(score)
        if max(abs(py - r), abs(px - r)) < 2 or not math.isfinite(peak):
            continue
        centre = float(score[r - 1:r + 2, r - 1:r + 2].max())
        worst = max(worst, (peak - centre) * math.sqrt(bh * bw) / max(1.0 - peak * peak, 1e-6))
    return worst


def corner_bound(corner_covariance) -> float:
    """:data:`BOUND_SIGMAS` times the predicted RMS error of the template corners (image
    pixels), ``sqrt(mean_i trace(C_i) / 2)`` for the ``(4, 2, 2)`` corner covariances ``C_i`` --
    the expected value of the benchmarks' corner RMS ``sqrt(mean over corners and axes of
    d^2)``. ``inf`` when there is no covariance (not estimable: some direction of the motion
    is not determined by the data)."""
    if corner_covariance is None:
        return float("inf")
    traces = np.trace(np.asarray(corner_covariance), axis1=1, axis2=2)
    value = float(np.mean(traces)) / 2.0
    return BOUND_SIGMAS * math.sqrt(value) if value >= 0 and math.isfinite(value) else float("inf")


# How far through the checks an unconverged result got (see ``api._Outcome.check`` and the
# margin in ``api._attempt``): one that failed only the margin or the corner bound passed
# overlap and correlation; a solve that ended with too low a correlation or without
# converging still had the overlap and a regular warp.
FAILURE_DEPTH = {AMBIGUOUS: 3, UNCERTAIN: 2, LOW_CORRELATION: 1, MAX_ITERATIONS: 1, NO_PROGRESS: 1}


def closest_failure(failures):
    """The unconverged result to report after ``search="auto"`` tried several starts (in the
    order given): the one that got furthest through the status checks (:data:`FAILURE_DEPTH`:
    ``ambiguous``, then ``uncertain``, then a solve that ended unconverged or correlating too
    little; ties broken by the higher correlation ``zncc``, NaN lowest), else the last one (the
    final fallback). Before, the last was always reported: ``low_correlation`` from the
    identity, 170 px off, when the feature start had refined to 0.05 px and failed only the
    correlation threshold, or only ``max_corner_error``."""
    def key(item):
        i, r = item
        depth = FAILURE_DEPTH.get(r.reason, 0)
        z = r.zncc if depth and np.isfinite(r.zncc) else -np.inf
        return (depth, z, i)

    return max(enumerate(failures), key=key)[1]
