r"""The noise variance the final correlation check subtracts, on JPEG-compressed images too.

The check (:func:`.covariance.zncc`) corrects the correlation of template and aligned image for
each side's noise: white noise of variance ``n`` adds ``n`` to a side's variance and nothing to
the covariance. Immerkaer's estimate (:func:`template_noise_variance`, here beside the JPEG-aware one) measures the
noise through a kernel that sees only the highest frequencies (its response is
``(2 - 2 cos w_x)(2 - 2 cos w_y)``, zero along both frequency axes), which is right for white
noise and wrong after JPEG: JPEG quantises each 8x8 block's DCT coefficients, and at the usual
qualities (~85) a sensor noise of a few counts survives only in the low and middle frequencies.
Measured on issue 11's large-motion trials (noise 4, JPEG quality 85; the noisy JPEG minus the
clean, unquantised frame): a true noise variance of 4.9-5.8 where Immerkaer reads 0.4-0.6, so the
check left ~4 % of noise per side uncorrected on flat (night-sky) templates and called right
alignments ``low_correlation``.

What is done here, only on images that carry JPEG's block grid:

* **grid** (:func:`block_grid_ratio`): the mean absolute difference between neighbouring pixels,
  averaged along each row (column) and folded into the 8 phases of the column (row) index;
  the ratio of the largest phase to the mean of the other seven. A JPEG-decoded image has
  steps at its block boundaries, strongest where the image is flat (measured on the trials:
  1.38-1.72 on every flat template, from 1.04 on textured ones); an image without that history
  sits near 1 (Baker-Matthews templates, resampled: >= 1.25 in 1 % of them, the maximum of 8
  noisy phase means). The image counts as gridded at :data:`JPEG_GRID` (1.25) in *both*
  directions; the phase is free, so a crop at any offset is recognised.
* **half-resolution noise** (:func:`half_resolution_noise`): the image binned 2x2 keeps the middle
  frequencies JPEG leaves, and white noise binned 2x2 is still white with a quarter of the
  variance, so ``4 x`` Immerkaer's estimate on the binned image would measure white noise exactly
  and sees most of the JPEG noise. Texture reads as noise at that resolution, so the estimate is
  taken on the flattest tiles: tiles of 16x16 binned pixels, the :data:`TILE_QUANTILE` (10 %)
  quantile of their mean absolute responses. The quantile errs low, on the safe side (too little
  noise subtracted): ~0.83 of a white noise's variance. Measured on the trials above: 4.5-4.9
  against the true 4.9-5.8
  (4.1-4.9 on the benchmark's final run).

:func:`check_noise_variance` returns the larger of Immerkaer's estimate and the half-resolution
one on gridded images, Immerkaer's alone otherwise (so the check is unchanged on every image
without a JPEG grid). Shapes: ``(H, W, C)`` float arrays, NaN where unusable (those tiles are
skipped); a window of :data:`WINDOW` pixels at the centre bounds the cost (~0.3 ms).
"""

from __future__ import annotations

import cv2
import numpy as np

JPEG_GRID = 1.25  # block-boundary step ratio (both directions) from which an image counts as JPEG-decoded
BLOCK = 8  # JPEG's block side
TILE = 16  # side of a tile of binned pixels (32 pixels of the image)
TILE_QUANTILE = 0.1  # the flattest tiles' share
MIN_TILES = 4
WINDOW = 258  # centred window the estimates are measured on (cost bound)
_LAPLACE_DIFFERENCE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_MEAN_ABS_TO_SIGMA = np.sqrt(np.pi / 2) / 6.0  # Immerkaer: sigma = sqrt(pi / 2) / 6 mean |a * N|
# Side of the centred window on which a large template's white noise is estimated
# (:func:`template_noise_variance`): 65 536 samples, a relative standard error of the
# estimate well under 1 %.
NOISE_WINDOW = 256


def template_noise_variance(template: np.ndarray) -> float:
    """Immerkaer's (1996) estimate of white-noise variance: the mean absolute response to the
    Laplacian-difference kernel, ``sigma = sqrt(pi / 2) / 6 * mean |T * N|``, over pixels whose
    3x3 neighbourhood is usable (texture biases it slightly upwards). A template larger than
    :data:`NOISE_WINDOW` pixels on a side is measured on its centred ``NOISE_WINDOW``-square
    window (white noise is the same everywhere; a 640x480 template then costs ~0.3 ms, not
    ~3 ms)."""
    h, w = template.shape[:2]
    if h > NOISE_WINDOW + 2 or w > NOISE_WINDOW + 2:
        y0, x0 = max((h - NOISE_WINDOW - 2) // 2, 0), max((w - NOISE_WINDOW - 2) // 2, 0)
        template = template[y0:y0 + NOISE_WINDOW + 2, x0:x0 + NOISE_WINDOW + 2]
    total, count = 0.0, 0
    for ch in range(template.shape[2]):
        r = cv2.filter2D(template[:, :, ch], cv2.CV_32F, _LAPLACE_DIFFERENCE,
                         borderType=cv2.BORDER_REPLICATE)[1:-1, 1:-1]
        r = np.abs(r[np.isfinite(r)])
        total += float(r.sum())
        count += r.size
    if count == 0:
        return 0.0
    sigma = _MEAN_ABS_TO_SIGMA * total / count
    return float(sigma * sigma)


def _centre(a: np.ndarray, side: int = WINDOW) -> np.ndarray:
    h, w = a.shape[:2]
    y0, x0 = max((h - side) // 2, 0), max((w - side) // 2, 0)
    return a[y0:y0 + side, x0:x0 + side]


def _phase_ratio(sums: np.ndarray, counts: np.ndarray) -> float:
    """Largest of the 8 phase means (``sums / counts`` pooled over positions ``j = p mod 8``)
    over the mean of the other seven; 1.0 (no grid) with fewer than 4 blocks of data."""
    n = sums.size // BLOCK * BLOCK
    if n < 4 * BLOCK:
        return 1.0
    s, c = sums[:n].reshape(-1, BLOCK).sum(0), counts[:n].reshape(-1, BLOCK).sum(0)
    if np.any(c < 4 * BLOCK):
        return 1.0
    phases = s / c
    top = int(np.argmax(phases))
    rest = (phases.sum() - phases[top]) / (BLOCK - 1)
    return float(phases[top] / rest) if rest > 0 else 1.0


def block_grid_ratio(a: np.ndarray) -> float:
    """The weaker direction's block-boundary step ratio of ``a`` ``(H, W)``, NaN pixels left
    out (see the module)."""
    a = np.asarray(a, np.float32)
    ratios = []
    for axis in (1, 0):  # steps between columns j, j + 1 (pooled over rows), then between rows
        d = np.abs(np.diff(a, axis=axis))
        other = 1 - axis
        sums = d.sum(axis=other, dtype=np.float64)
        if np.isfinite(sums).all():  # no step was NaN or inf: the masked sums below, unmasked
            counts = np.full(d.shape[axis], d.shape[other])
        else:
            ok = np.isfinite(d)
            sums, counts = np.where(ok, d, 0.0).sum(axis=other, dtype=np.float64), ok.sum(axis=other)
        ratios.append(_phase_ratio(sums, counts))
    return min(ratios)


def half_resolution_noise(a: np.ndarray) -> float:
    """``4 x`` Immerkaer's variance on ``a`` ``(H, W)`` binned 2x2, over its flattest tiles
    (the :data:`TILE_QUANTILE` quantile of the tiles' mean absolute responses); 0.0 when fewer
    than :data:`MIN_TILES` tiles are wholly finite."""
    a = np.asarray(a, np.float32)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    binned = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    r = np.abs(cv2.filter2D(binned, cv2.CV_32F, _LAPLACE_DIFFERENCE, borderType=cv2.BORDER_REPLICATE))[1:-1, 1:-1]
    th, tw = r.shape[0] // TILE, r.shape[1] // TILE
    if th * tw < MIN_TILES:
        return 0.0
    tiles = r[:th * TILE, :tw * TILE].reshape(th, TILE, tw, TILE).mean((1, 3)).ravel()
    tiles = tiles[np.isfinite(tiles)]
    if tiles.size < MIN_TILES:
        return 0.0
    sigma = _MEAN_ABS_TO_SIGMA * float(np.quantile(tiles, TILE_QUANTILE))
    return 4.0 * sigma * sigma


def check_noise_variance(image: np.ndarray, white: float) -> float:
    """The noise variance the correlation check subtracts for ``image`` ``(H, W, C)``:
    ``white`` (Immerkaer's estimate, the caller's) or, if the image carries a JPEG grid in its
    channel mean, the larger of ``white`` and the channels' mean half-resolution estimate."""
    window = _centre(image)
    if window.shape[0] < 4 * BLOCK or window.shape[1] < 4 * BLOCK:
        return white
    mean = window.mean(axis=2) if window.shape[2] > 1 else window[:, :, 0]
    if not block_grid_ratio(mean) >= JPEG_GRID:
        return white
    jpeg = float(np.mean([half_resolution_noise(window[:, :, ch]) for ch in range(window.shape[2])]))
    return max(white, jpeg)
