r"""Final statistics of an alignment: overlap, RMS residual, ZNCC and the parameter covariance.

Gauss-Newton covariance. Near the optimum the cost is ``sum_x w(x) (e(x) - SD(x) d)^2`` and the
fixed point ``SD^T W e = 0`` has, to first order, the sandwich covariance
``Cov(d) = A^-1 B A^-1`` with ``B = Var(SD^T W e) ~ gamma_0 SD^T W SD`` (``gamma_0`` the residual
variance, ``sum w e^2 / (n - K)``, ``K`` unknowns, gain/bias included; the motion block of the
inverse marginalises the photometric unknowns) and ``A`` the *noise-free* curvature: the
response of the score to a misalignment ``delta``, ``E[SD^T W (SD_0 delta)]``.

The bread ``A``. The steepest-descent images use the noisy template's gradients, so
``H = SD^T W SD`` holds the signal curvature ``A`` *plus* the gradient-noise energy
``N = sigma_T^2 / 2 s^2 sum (Jx^T Jx + Jy^T Jy)`` (central differences). On a smooth or
low-contrast patch under noise ``N`` dominates the weak (perspective) directions and
``gamma_0 H^-1`` claims ~0.06 px where the estimates scatter over 1-16 px (issue 11's
converged-but-wrong results: every one of them had ``H - N`` not positive definite). Subtracting
the *expected* ``N`` (Immerkaer's noise variance) is fragile there: the estimate is biased up by
texture, so ``H - N`` goes indefinite exactly where it matters. Instead (:func:`cross_hessian`)
the bread pairs the template's steepest-descent images with the *aligned image's*
(``SD_I``, built alike from the gradients of ``(I(W x) - b) / a``): template and image noise are
independent, so ``E[SD^T W SD_I] = A`` with no noise model at all; it is symmetrised, and when it
is not positive definite (a direction the data do not determine) the covariance is not
estimable (``None``). When ``N`` is at most :data:`NOISE_SHARE` of ``H`` in every direction the
cheap ``H - N`` is used instead (no image gradients needed). With a fitted gain the residual is
``(I(W x) - b) / a - T`` and the least-squares ``a`` of a noisy template is attenuated
(``kappa a_0``: :func:`gain_attenuation`); the cross product then estimates ``A / kappa``, and
the breads built from the template alone (``H - N``, the denoised one) are divided by ``kappa``. Measured on the tuning photographs (``benchmarks/bench_align_real.py``,
noise 8): true corner error / predicted corner std, median 0.75, 90 % quantile 1.3.
Multi-channel and masked templates work alike; levels that sample a pixel subset
(``max_pixels``) have no image gradients and keep the former estimate ``H - N``
(:func:`_debiased_hessian`).

The meat ``B``. The same template noise correlates the gradient at ``x +- 1`` with the residual
at ``x``; the expected sum of those cross terms is removed (:func:`_debiased_hessian`'s second
value). Bilinear resampling also correlates neighbouring image-noise residuals; a 3x3 Newey-West
term for it over-covered, so it is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .chart import chart_scale, point_covariance
from .gauss_newton import evaluate, normal_equations
from .noise import check_noise_variance, template_noise_variance
from .pyramid import Level, _grid_jacobian, _grid_jacobian_t, central_gradients

# Share of white-noise variance that survives bilinear resampling at uniformly distributed
# sub-pixel offsets: E[(1 - f)^2 + f^2] = 2/3 per axis.
RESAMPLED_NOISE = 4.0 / 9.0


# The bread is the cheap H - N (no image gradients) when the template's gradient noise N is at
# most this share of H in every direction: an error of the noise estimate then moves the bread
# by at most this share of that error, and where the estimate errs most (noise-free photographs:
# Immerkaer's estimator reads texture as noise, shares 0.03-0.6, median 0.13 on the tuning
# patches) it errs towards a larger covariance. Noise 8: shares 0.34-1.07 (10-90 %), so noisy
# pairs take the cross product (:func:`cross_hessian`, ~0.3 ms for 100x100).
NOISE_SHARE = 0.25


# With a robust loss the check correlates the inliers only: residuals whose IRLS weight is at
# least this (|e| <= ~2.6 sigma for both Huber and Tukey).
INLIER_WEIGHT = 0.5


@dataclass
class FinalStats:
    rms: float
    zncc: float
    overlap: float
    gain: np.ndarray
    bias: np.ndarray
    covariance: np.ndarray | None
    corner_covariance: np.ndarray | None
    zncc_check: float


def final_statistics(lv: Level, W, opts, affine: bool, chart, corners0, sigma_floor, last=None,
                     image_noise: float = 0.0, photometric: bool | None = None,
                     denoised: Level | None = None) -> FinalStats:
    """Statistics at ``W``; ``last`` (the residuals of the finest level's last accepted estimate,
    which a converged level leaves within ``tolerance`` of ``W``) saves one more warp.
    ``image_noise``: noise variance of the image (:func:`template_noise_variance` of the
    image, or :func:`.noise.check_noise_variance` on a JPEG), for the noise-corrected correlation
    that decides ``converged``. ``photometric``:
    whether the gain/bias model was solved (default: as ``opts`` says). ``denoised``: the same
    level on a denoised copy of the template (:mod:`.denoise`, a noise-dominated template),
    whose steepest-descent images then give the sandwich's bread: the curvature of the
    noise-free template, which neither ``H - N`` (not positive definite there) nor the cross
    Hessian (its weak directions are noise) estimates well."""
    photometric = opts.gain_bias if photometric is None else photometric
    ev = last
    if ev is None:
        ev = evaluate(lv, W, affine, opts.robust, photometric, None, None, sigma_floor)
        if opts.robust is not None and ev.n_valid > 0:
            ev = evaluate(lv, W, affine, opts.robust, photometric, ev.weights, None, sigma_floor)
    n_usable = lv.n_usable
    overlap = ev.n_valid / n_usable if n_usable else 0.0
    if ev.n_valid == 0:
        return FinalStats(float("nan"), float("nan"), overlap, ev.gain, ev.bias, None, None, float("nan"))
    e = ev.e.astype(np.float64)
    rms = float(np.sqrt(np.dot(e, e) / ev.n_valid))
    raw = zncc(lv, ev)
    # The convergence check looks at the inliers when a robust loss was asked for, and corrects
    # for white noise on both sides: the template's, and the image's as it reaches the aligned
    # image (bilinear resampling keeps on average (2/3)^2 of its variance; divided by the gain^2
    # to template units).
    gain2 = float(np.mean(np.square(ev.gain)))
    # Both noises as the check subtracts them (.noise: the larger half-resolution estimate on a JPEG).
    noise = (check_noise_variance(lv.template, level_noise_variance(lv)),
             RESAMPLED_NOISE * image_noise / max(gain2, 1e-12))
    inliers = None if ev.weights is None else (ev.weights >= INLIER_WEIGHT).astype(np.float32)
    zncc_check = zncc(lv, ev, inliers, noise)
    cov = corner_cov = None
    k = lv.sd.shape[1]
    if ev.n_valid > k:
        H, _ = normal_equations(lv, ev)
        debiased, meat_fix, noise = _debiased_hessian(lv, ev, H, opts.model, chart)
        bread, template_side = debiased, True
        if denoised is not None:
            bread = calibrated_hessian(normal_equations(denoised, ev)[0], H, noise, lv.n_params)
            bread = bread if _positive_definite(bread) else None
        elif lv.points is None and not _noise_share(H, noise) <= NOISE_SHARE:
            bread, template_side = cross_hessian(lv, ev, chart, opts.model), False  # carries the 1 / a itself
        if photometric and template_side and bread is not None:  # see gain_attenuation
            bread = _scaled_motion(bread, lv.n_params, 1.0 / gain_attenuation(lv))
        cov_full = None if bread is None else _sandwich(lv, ev, bread, k, meat_fix)
        if cov_full is not None:
            cov = cov_full[:lv.n_params, :lv.n_params]
            corner_cov = point_covariance(W, chart, opts.model, cov, corners0[:, :2])
    return FinalStats(rms, raw, overlap, ev.gain, ev.bias, cov, corner_cov, zncc_check)


def coarse_check_zncc(lv: Level, W, opts, affine: bool, photometric: bool, sigma_floor, image_level) -> float:
    """The check's noise-corrected correlation (as in :func:`final_statistics`) on a coarser
    level ``lv`` at ``W``: the second look of a result the finest level called
    ``low_correlation`` (see ``api._attempt``). Noise on both sides is estimated on that level
    itself (the template's, and the image's on a template-sized window at the centre of
    ``image_level``, the same level of the image pyramid)."""
    ev = evaluate(lv, W, affine, opts.robust, photometric, None, None, sigma_floor)
    if opts.robust is not None and ev.n_valid > 0:
        ev = evaluate(lv, W, affine, opts.robust, photometric, ev.weights, None, sigma_floor)
    if ev.n_valid == 0:
        return float("nan")
    H, Wi = image_level.shape[:2]
    h, w = min(H, lv.template.shape[0] + 2), min(Wi, lv.template.shape[1] + 2)
    y0, x0 = (H - h) // 2, (Wi - w) // 2
    window = image_level[y0:y0 + h, x0:x0 + w]
    image_noise = check_noise_variance(window, template_noise_variance(window))
    gain2 = float(np.mean(np.square(ev.gain)))
    noise = (check_noise_variance(lv.template, level_noise_variance(lv)),
             RESAMPLED_NOISE * image_noise / max(gain2, 1e-12))
    inliers = None if ev.weights is None else (ev.weights >= INLIER_WEIGHT).astype(np.float32)
    return zncc(lv, ev, inliers, noise)


def level_noise_variance(lv: Level) -> float:
    """:func:`template_noise_variance` of a level's template, computed once per level."""
    if lv.noise_variance is None:
        lv.noise_variance = template_noise_variance(lv.template)
    return lv.noise_variance


def _debiased_hessian(lv: Level, ev, H, model, chart):
    """Remove the template-noise energy from the Gauss-Newton Hessian.

    The steepest-descent images use the *noisy* template's gradients, so
    ``E[H] = H_true + var(grad n) s^2 sum_x (Jx^T Jx + Jy^T Jy)`` with ``var(grad n) = sigma_T^2 / 2``
    for central differences; left in, it makes the covariance too optimistic under noise.
    Returns ``(H - N, fix, N)``; ``H - N`` is ``None`` when it is not positive definite (all
    three are ``(H, None, None)`` when the template shows no noise).

    The same noise correlates the gradient at ``x +- 1`` with the residual at ``x`` (central
    differences), which makes neighbouring score terms anti-correlated: their expected sum is
    ``-sigma_T^2`` times the noise energy above, returned as the correction of the sandwich's
    middle (so only the image's share of the residual noise multiplies the gradient noise).
    """
    var_t = level_noise_variance(lv)
    if var_t <= 0:
        return H, None, None
    h, w, c = lv.shape
    p = lv.n_params
    scale = chart_scale(chart) / lv.factor
    interior = (h - 2) * (w - 2) * c
    if lv.points is None and ev.n_valid == lv.n_usable == interior and p == lv.jx.shape[1]:
        # the usual case (everything but the gradient-less border): cached per grid
        energy = c * _interior_energy(model, h, w, lv.factor, tuple(chart.ravel()))
    else:
        jx, jy = lv.jx, lv.jy
        pix = ev.valid.reshape(-1, c).sum(axis=1).astype(np.float32)  # valid channels per pixel
        energy = (jx.T @ (jx * pix[:, None]) + jy.T @ (jy * pix[:, None])).astype(np.float64)
    noise = np.zeros_like(H)
    noise[:p, :p] = 0.5 * var_t * scale * scale * energy
    corrected = H - noise
    return (corrected if _positive_definite(corrected) else None), var_t * noise, noise


def cross_hessian(lv: Level, ev, chart, model: str) -> np.ndarray | None:
    """``A = sym(SD^T W SD_I)`` (``(K, K)`` float64), the noise-free curvature (module doc), or
    ``None`` when it is not positive definite. ``lv``: a whole-grid level of ``model``
    (``lv.points is None``).

    ``SD_I`` are the steepest-descent images of the aligned image ``(I(W x) - b_c) / a_c``
    (per channel, the photometric fit of ``ev``): its central gradients times the same warp
    Jacobians and chart scale as the template's, and, with gain/bias, the columns
    ``[(I(W x) - b_c) / a_c, 1]`` in place of ``[T_c, 1]``. Rows where either side is missing
    (the image's gradient border included) are left out. One ``(K, n) x (n, K)`` product
    (~0.1 ms for a 100x100 grey template)."""
    h, w, c = lv.shape
    p, k = lv.n_params, lv.sd.shape[1]
    n = h * w
    norm = (ev.warped.reshape(h, w, c) - ev.bias.astype(np.float32)) * (1.0 / ev.gain).astype(np.float32)
    gx, gy = central_gradients(np.ascontiguousarray(norm, dtype=np.float32))
    scale = np.float32(chart_scale(chart) / lv.factor)
    gx, gy, flat = gx.reshape(n * c), gy.reshape(n * c), norm.reshape(n * c)
    ok = ev.valid & np.isfinite(gx) & np.isfinite(gy)
    if np.count_nonzero(ok) <= k:
        return None
    zero = np.float32(0)
    gx, gy = np.where(ok, gx * scale, zero), np.where(ok, gy * scale, zero)
    if c == 1:  # (K, n) layout: rows broadcast over contiguous rows (as pyramid.build_level)
        jx_t, jy_t = _grid_jacobian_t(model, h, w, lv.factor, tuple(chart.ravel()))  # cached, as build_level's
        sdi_t = jx_t * gx + jy_t * gy
        if k > p:
            sdi_t = np.vstack([sdi_t, np.where(ok, flat, zero)[None], ok.astype(np.float32)[None]])
    else:
        sdi = gx.reshape(n, c, 1) * lv.jx[:, None, :] + gy.reshape(n, c, 1) * lv.jy[:, None, :]  # (n, C, P)
        if k > p:  # gain/bias columns, per channel: [I_c, 1] at columns (2c, 2c + 1)
            photo = np.zeros((n, c, k - p), np.float32)
            ch = np.arange(c)
            photo[:, ch, 2 * ch] = np.where(ok, flat, zero).reshape(n, c)
            photo[:, ch, 2 * ch + 1] = ok.reshape(n, c)
            sdi = np.concatenate([sdi, photo], axis=2)
        sdi_t = np.ascontiguousarray(sdi.reshape(n * c, k).T)
    left = lv.sdT if ev.weights is None else lv.sdT * ev.weights
    a = (left @ sdi_t.T).astype(np.float64)
    a = 0.5 * (a + a.T)
    return a if _positive_definite(a) else None


@lru_cache(maxsize=16)
def _interior_energy(model, h, w, factor, chart_key):
    """``sum_x (Jx^T Jx + Jy^T Jy)`` over the grid without its one-pixel border."""
    jx, jy = _grid_jacobian(model, h, w, factor, chart_key)
    inner = np.zeros((h, w), np.float32)
    inner[1:-1, 1:-1] = 1.0
    inner = inner.reshape(-1, 1)
    return (jx.T @ (jx * inner) + jy.T @ (jy * inner)).astype(np.float64)


# Smallest attenuation of the fitted gain that gain_attenuation reports (a template whose
# noise is over 3/4 of its variance: the bread is then scaled by at most 4).
MIN_GAIN_ATTENUATION = 0.25


def gain_attenuation(lv: Level) -> float:
    """``kappa = 1 - sigma_T^2 / var(T)`` (in [:data:`MIN_GAIN_ATTENUATION`, 1]): how much the
    least-squares gain of ``I(W x) ~ a T + b`` understates the true one because ``T`` is noisy
    (regression dilution, errors in variables: ``cov(T, I) / var(T)`` with ``var(T) =
    var(T_0) + sigma_T^2``), ``sigma_T^2`` the template's white-noise variance
    (:func:`level_noise_variance`) and ``var(T)`` over its usable elements.

    Why the sandwich needs it. With gain/bias the residual is ``e = (I(W x) - b) / a - T``, so
    the bread of the estimating equation ``sum_x SD_T^T e = 0`` is ``sum_x SD_T^T SD_I`` with
    ``SD_I`` the steepest-descent images of ``(I(W x) - b) / a`` (:func:`cross_hessian` is
    exactly that). Its expectation is ``(a_0 / a) A`` with ``A`` the noise-free template's
    curvature and ``a_0`` the true gain, i.e. ``A / kappa``. The breads built from the template
    alone -- ``H - N`` and the denoised template's (:func:`calibrated_hessian`) -- estimate
    ``A``, so their motion block is divided by ``kappa`` when the gain was fitted (the
    motion-photometric coupling is left as it is: an approximation where motion and gain are
    strongly coupled). Multi-channel templates use the mean of the channels' own variances.
    Left out, a low-contrast noisy template's covariance was several times too wide:
    held-out ``hubble_deep_field`` patches at noise 16, corner errors 0.15-0.36 px, predicted
    1.05-1.7 px (``uncertain``); with it 0.57-0.82 px (``converged``)."""
    c = lv.shape[2]
    t, usable = lv.tflat.reshape(-1, c), lv.usable.reshape(-1, c)
    # each channel's own variance (the channels' different means are no signal), averaged
    per_channel = [float(np.var(t[usable[:, j], j], dtype=np.float64)) for j in range(c) if usable[:, j].sum() > 1]
    var = float(np.mean(per_channel)) if per_channel else 0.0
    noise = level_noise_variance(lv)
    if not (var > 0 and noise > 0):
        return 1.0
    return float(min(1.0, max(1.0 - noise / var, MIN_GAIN_ATTENUATION)))


def _scaled_motion(M, p, s):
    """``D M D`` with ``D = diag(sqrt(s) on the ``p`` motion rows, 1 on the others)``."""
    if s == 1.0:
        return M
    d = np.ones(M.shape[0])
    d[:p] = np.sqrt(s)
    return M * d[:, None] * d[None, :]


def calibrated_hessian(h_d, H, noise, p):
    """The denoised template's Hessian ``h_d`` ``(K, K)`` with its motion gradients rescaled so
    that the motion block's trace equals that of ``H - N`` (``H`` the noisy template's, ``N``
    its gradient-noise energy from :func:`_debiased_hessian`; ``p`` motion parameters).

    Non-local means changes the signal's gradients too: it smooths edges more as its strength
    (a multiple of the noise) grows, and it can leave spurious structure on flat ground, so
    ``h_d`` under- or overstates the curvature. The trace of ``H - N`` is dominated by the
    strongly determined directions, where it is a reliable estimate of the noise-free energy;
    modelling the denoiser as one gain ``1 / sqrt(s)`` on every gradient, ``D h_d D`` with
    ``D = diag(sqrt(s) on the motion rows, 1 on the photometric ones)``,
    ``s = tr(H - N)_pp / tr(h_d)_pp``, restores that energy while keeping the denoised
    template's weak directions. Tuning photographs (bm_noise16): agreement 88.0 -> 90.5 %,
    noise 8 unchanged. ``h_d`` unchanged when ``N`` is unknown or a trace is not positive."""
    if noise is None:
        return h_d
    num = float(np.trace(H[:p, :p] - noise[:p, :p]))
    den = float(np.trace(h_d[:p, :p]))
    if not (num > 0 and den > 0):
        return h_d
    d = np.ones(h_d.shape[0])
    d[:p] = np.sqrt(num / den)
    return h_d * d[:, None] * d[None, :]


def template_noise_share(lv: Level, model: str, chart) -> float:
    """:func:`_noise_share` of a whole-grid level's Hessian before any solve (every usable pixel
    counted, as :func:`_debiased_hessian` counts them when all are valid): how far the
    template's own gradient noise dominates its weakest direction (:mod:`.denoise`). 0.0 for a
    level that samples a pixel subset or shows no noise."""
    var_t = level_noise_variance(lv)
    if lv.points is not None or var_t <= 0:
        return 0.0
    h, w, c = lv.shape
    p = lv.n_params
    scale = chart_scale(chart) / lv.factor
    energy = c * _interior_energy(model, h, w, lv.factor, tuple(chart.ravel()))
    # the motion block (the photometric columns, when present, carry no gradient noise)
    return _noise_share(lv.hessian[:p, :p], 0.5 * var_t * scale * scale * energy)


def _noise_share(H, noise) -> float:
    """Largest share of ``H`` the template's gradient-noise energy ``N`` (``noise``, from
    :func:`_debiased_hessian`) takes in any direction: the top eigenvalue of ``L^-1 N L^-T``
    (``H = L L^T``). 0 without noise, ``inf`` when ``H`` is not positive definite."""
    if noise is None:
        return 0.0
    try:
        chol = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return float("inf")
    m = np.linalg.solve(chol, np.linalg.solve(chol, noise).T)
    if not np.isfinite(m).all():  # values so large that the products overflowed (pixels ~1e20 and up)
        return float("inf")
    try:
        return float(np.linalg.eigvalsh(0.5 * (m + m.T))[-1])
    except np.linalg.LinAlgError:  # LAPACK did not converge: as undecided as a singular H
        return float("inf")


def _positive_definite(m) -> bool:
    ok, ev, _ = cv2.eigen(0.5 * (m + m.T))  # descending eigenvalues
    return bool(ok) and bool(ev[-1, 0] > 0)


def _moments(lv: Level, ev, weights=None):
    """``(cov, var_t, var_i)`` per element between template and aligned image over the valid
    elements, per-channel means removed (the aligned image is ``T + e`` there, up to the
    gain/bias map, which the correlation ignores); ``weights`` (robust IRLS weights) restrict
    them to the inliers. ``None`` with fewer than two elements."""
    c = lv.shape[2]
    if weights is None and c == 1:  # fast path: float32 reductions over the masked arrays
        n = ev.n_valid
        if n < 2:
            return None
        t0 = np.where(ev.valid, lv.tflat, np.float32(0))
        i0 = t0 + ev.e
        st, si = float(t0.sum(dtype=np.float64)), float(i0.sum(dtype=np.float64))
        vt = (float(np.dot(t0, t0)) - st * st / n) / n
        vi = (float(np.dot(i0, i0)) - si * si / n) / n
        return (float(np.dot(t0, i0)) - st * si / n) / n, vt, vi
    wt = (ev.valid if weights is None else np.where(ev.valid, weights, 0)).reshape(-1, c).astype(np.float64)
    t0 = np.where(ev.valid, lv.tflat, np.float32(0)).reshape(-1, c).astype(np.float64)
    i0 = t0 + ev.e.reshape(-1, c)
    n = wt.sum(0)
    if n.sum() < 2:
        return None
    safe = np.maximum(n, 1e-300)
    mt, mi = (wt * t0).sum(0) / safe, (wt * i0).sum(0) / safe
    dt, di = t0 - mt, i0 - mi
    total = float(n.sum())
    return (float((wt * dt * di).sum()) / total, float((wt * dt * dt).sum()) / total,
            float((wt * di * di).sum()) / total)


def zncc(lv: Level, ev, weights=None, noise=None) -> float:
    """Zero-normalised correlation of template and aligned image (:func:`_moments`).

    ``noise = (var_t, var_i)``: white-noise variances of the template and of the aligned image
    (in template units). The correlation is then *noise-corrected*: white noise of variance
    ``n`` adds ``n`` to a side's variance and nothing to the covariance, so
    ``cov / sqrt((var_t - n_t) (var_i - n_i))`` estimates the correlation of the noise-free
    images: about 1 at the right warp whatever the noise, while the structural mismatch of a
    wrong one stays visible (each side's signal share is floored at 5 %)."""
    m = _moments(lv, ev, weights)
    if m is None:
        return float("nan")
    cov, vt, vi = m
    if noise is not None:
        vt = max(vt - noise[0], 0.05 * vt)
        vi = max(vi - noise[1], 0.05 * vi)
    den = np.sqrt(max(vt, 0.0) * max(vi, 0.0))
    return float(min(1.0, cov / den)) if den > 0 else float("nan")


def _sandwich(lv: Level, ev, H, k, meat_fix=None):
    """``H^-1 B H^-1`` with ``B = gamma_0 sum_x SD^T SD`` minus the errors-in-variables term."""
    ok, h_inv = cv2.invert(H, flags=cv2.DECOMP_SVD)
    if not ok or not np.all(np.isfinite(h_inv)):
        return None
    psi = ev.e if ev.weights is None else ev.weights * ev.e  # (n,) zero where not valid
    gamma0 = float(np.dot(psi, psi)) / max(ev.n_valid - k, 1)  # residual variance, dof-corrected
    if ev.weights is None and ev.n_valid == lv.n_usable:
        meat = gamma0 * lv.hessian  # every usable row is valid: sd^T sd is the level's Hessian
    else:
        sdv = lv.sd * ev.valid[:, None].astype(np.float32)  # (n, K) rows of valid residuals
        meat = gamma0 * (sdv.T @ sdv).astype(np.float64)
    if meat_fix is not None and _positive_definite(meat - meat_fix):
        meat = meat - meat_fix
    cov = h_inv @ meat @ h_inv
    return 0.5 * (cov + cov.T)
