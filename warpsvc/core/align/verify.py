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

from .gauss_newton import warp_to_template

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


def peak_margin(t_pyr, i_pyr, W, affine: bool, side: int | None = None) -> float:
    """:data:`margin <MIN_MARGIN>` of the correlation peak at ``W`` (level-0 ``image_from_template``),
    ``inf`` when it cannot be judged (masked template, no shift window, no competing peak).
    ``side``: largest template side of the level used (default :data:`CHECK_SIDE`)."""
    side = CHECK_SIDE if side is None else side
    index = next((i for i, t in enumerate(t_pyr) if max(t.shape[:2]) <= side), len(t_pyr) - 1)
    t, img = t_pyr[index], i_pyr[index]
    f = float(2 ** index)
    h, w, c = t.shape
    r = max(2, int(math.ceil(CHECK_RADIUS / f)))
    tmpl = t.mean(axis=2) if c > 1 else t[:, :, 0]
    r0 = c0 = 0
    if not math.isfinite(float(tmpl.sum())):
        # a coarse level's template has a NaN border (pyramid.pyr_down): use its finite box
        ok = ~np.isnan(tmpl)
        rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
        if len(rows) < 8 or len(cols) < 8:
            return float("inf")
        r0, c0 = rows[0], cols[0]
        tmpl = tmpl[r0:rows[-1] + 1, c0:cols[-1] + 1]
        if np.isnan(tmpl).any():  # masked or missing pixels: matchTemplate cannot skip them
            return float("inf")
    if min(tmpl.shape) < 8:
        return float("inf")
    Wl = W.copy()
    Wl[:2, 2] /= f
    Wl[2, :2] *= f
    shift = np.array([[1.0, 0, c0 - r], [0, 1.0, r0 - r], [0, 0, 1.0]])
    eh, ew = tmpl.shape[0] + 2 * r, tmpl.shape[1] + 2 * r
    ext = warp_to_template(img, Wl @ shift, (eh, ew, c), affine).reshape(eh, ew, c)
    ext = ext.mean(axis=2) if c > 1 else ext[:, :, 0]
    if not math.isfinite(float(ext.sum())):
        missing = np.isnan(ext)
        if missing.all():
            return float("inf")
        ext = ext.copy()
        fill = ext[~missing].mean()
        ext[missing] = fill
        # Template pixels whose counterpart at the estimate is missing (the template reaches
        # beyond the image) compare with nothing: set to the template's mean elsewhere they add
        # no variance to either side. Left in, their contrast (a constant-filled corner of a
        # rotated crop, say) lowers rho(0) and the margin (tuning, large motion: a right
        # 0.03 px result was called ambiguous).
        unseen = missing[r:r + tmpl.shape[0], r:r + tmpl.shape[1]]
        if unseen.any():
            if unseen.mean() > 0.75:
                return float("inf")
            tmpl = tmpl.copy()
            tmpl[unseen] = tmpl[~unseen].mean()
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
