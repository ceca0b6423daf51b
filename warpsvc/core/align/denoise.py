r"""Noise-dominated templates: solve on a denoised copy, then polish on the template itself.

Why. Under noise the cost ``sum_x (I(W x) - a T(x) - b)^2`` holds the cross term
``-2 a sum_x n_I(W x) n_T(x)`` of the two images' noises. As ``W`` moves, the image noise slides
past the template noise, so that term is a random function of the warp with a correlation length
of about a pixel: a ripple on the cost. Where the data constrain the warp strongly the ripple is
negligible; along a *weakly determined* direction -- a template that is half flat sky, whose
far corners only the sky's faint signal places -- the ripple's curvature beats the signal's, the
cost has local minima every pixel or so, and Gauss-Newton stops in one of them, a few pixels
from the truth, with a covariance that cannot know it. Measured on issue 11's tuning photographs
(``bm_noise8``, the rocket: a bar on flat sky): the Cramer-Rao bound of the corner RMS error,
computed from the noise-free images, is 0.42-0.74 px, while the solve ended 5-10 px away, started
at the truth as well as from the benchmark's start; with the noise-free template the same solve
captured 29 of 33 trials instead of 13.

What. The cross term needs noise on both sides: remove most of the template's and the ripple
flattens. When the template's gradient noise dominates its Hessian in some direction
(:func:`.covariance.template_noise_share` above :data:`NOISE_DOMINATED`) the attempt is solved,
coarse to fine, on a denoised template (:func:`denoised`: OpenCV's non-local means, edge
preserving, so the aligned structure still matches the image), and the finest level then
continues from that estimate on the template itself: the estimate lands in the right basin, the
polish removes the bias of the denoiser's smoothing, and the statistics and status are those of
the original template. Measured on the tuning photographs (noise 8): capture 89.0 -> 94.5 %,
converged-but-wrong 8 -> 2 (prototype numbers; the benchmark's are in docs/alignment.md).

Cost: ~3.5 ms for a 100x100 template (the denoiser, both cores) plus the polish's iterations,
only on noise-dominated templates. Levels that sample a pixel subset (``max_pixels``) are not
denoised: their covariance does not use the noise-sensitive cross Hessian either, and a large
template's weak directions are rarely noise-dominated.

Gaussian blur instead (template only) was tried and lost captures (14 and 5 of 33 at sigma 1 and
1.5): it changes the template's edges so that they no longer match the image's.
"""

from __future__ import annotations

import cv2
import numpy as np

# Share of the Hessian the template's gradient noise takes in its weakest direction from which
# the template counts as noise-dominated (1 would be "all of it"). Tuning photographs, noise 8:
# every trial the denoised solve rescued had 1.00-1.14; noise 0: 17 of 200 trials above it.
NOISE_DOMINATED = 0.9
# ... and whose noise sigma is at least this share of its contrast (standard deviation): a nearly
# clean template can have a direction so weak that even its quantisation noise dominates it
# (tuning, noise 0: rocket templates at sigma 0.46 of a std of ~40), where the ripple is
# negligible and the denoised solve only perturbs the path (one noise-0 trial lost).
MIN_NOISE_RATIO = 0.05
# Non-local means filter strength, in units of the template's noise sigma (OpenCV's L1 norm).
STRENGTH = 0.8
PATCH = 5    # templateWindowSize
SEARCH = 11  # searchWindowSize


def denoised(template: np.ndarray, variance: float) -> np.ndarray:
    """Non-local means of ``template`` ``(h, w, C)`` float32 (NaN where unusable, kept NaN) for a
    white noise of ``variance``, per channel. The filter takes uint16: each channel is mapped
    onto the full 0..65535 range (quantisation error <= 1/131070 of the channel's range, far
    below any noise that passes the gate, whatever the data's scale: 8-bit, float in [0, 1],
    16-bit), filtered with a strength scaled alike, and mapped back; NaN pixels are filled with
    the channel mean for the filter only."""
    sigma = float(np.sqrt(max(variance, 0.0)))
    out = np.array(template, dtype=np.float32, copy=True)
    if sigma <= 0:
        return out
    for ch in range(out.shape[2]):
        t = out[:, :, ch]
        bad = ~np.isfinite(t)
        if bad.all():
            continue
        lo, hi = float(np.min(t[~bad])), float(np.max(t[~bad]))
        if not hi > lo:
            continue
        q = 65535.0 / (hi - lo)
        u = np.where(bad, float(np.mean(t[~bad])), t)
        u16 = np.clip(np.rint((u - lo) * q), 0, 65535).astype(np.uint16)
        d = cv2.fastNlMeansDenoising(u16, h=[STRENGTH * sigma * q], templateWindowSize=PATCH,
                                     searchWindowSize=SEARCH, normType=cv2.NORM_L1)
        t[:] = d.astype(np.float32) / np.float32(q) + np.float32(lo)
        t[bad] = np.nan
    return out
