"""Final statistics of an alignment: overlap, RMS residual, ZNCC and the parameter covariance.

Gauss-Newton covariance. Near the optimum the cost is ``sum_x w(x) (e(x) - SD(x) d)^2`` and the
estimate of ``d`` has covariance ``sigma^2 H^-1`` with ``H = SD^T W SD`` and the residual
variance ``sigma^2 = sum_x w e^2 / (n - K)`` (``K`` unknowns, gain/bias included; the motion
block of ``H^-1`` is the inverse of the Schur complement, so the photometric unknowns are
marginalised).

Bilinear resampling mixes the image noise of neighbouring pixels, so neighbouring residuals
are positively correlated and ``sigma^2 H^-1`` is too optimistic. We use the sandwich
``H^-1 B H^-1`` with ``B = sum_k sum_x SD(x)^T w(x) e(x) e(x+k) w(x+k) SD(x+k)`` restricted to
the 3x3 neighbourhood ``k`` and averaged over pixels as ``B = sum_k gamma(k) G(k)`` where
``gamma(k)`` is the residual autocorrelation at lag ``k`` times ``sigma^2`` and
``G(k) = sum_x SD(x)^T w(x) w(x+k) SD(x+k)`` (a Newey-West style estimate with a 3x3 window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .gauss_newton import evaluate, normal_equations
from .jacobians import point_covariance
from .pyramid import Level

LAGS = ((0, 1), (1, -1), (1, 0), (1, 1))  # half of the 3x3 neighbourhood (the rest by symmetry)


@dataclass
class FinalStats:
    rms: float
    zncc: float
    overlap: float
    gain: np.ndarray
    bias: np.ndarray
    covariance: np.ndarray | None
    corner_covariance: np.ndarray | None


def final_statistics(lv: Level, W, opts, affine: bool, chart, corners0, sigma_floor, last=None) -> FinalStats:
    """Statistics at ``W``; ``last`` (the residuals of the finest level's last accepted estimate,
    which a converged level leaves within ``tolerance`` of ``W``) saves one more warp."""
    photometric = opts.photometric == "gain_bias"
    ev = last
    if ev is None:
        ev = evaluate(lv, W, affine, opts.robust, photometric, None, None, sigma_floor)
        if opts.robust is not None and ev.n_valid > 0:
            ev = evaluate(lv, W, affine, opts.robust, photometric, ev.weights, None, sigma_floor)
    n_usable = lv.n_usable
    overlap = ev.n_valid / n_usable if n_usable else 0.0
    if ev.n_valid == 0:
        return FinalStats(float("nan"), float("nan"), overlap, ev.gain, ev.bias, None, None)
    e = ev.e.astype(np.float64)
    rms = float(np.sqrt(np.dot(e, e) / ev.n_valid))
    zncc = _zncc(lv, ev)
    cov = corner_cov = None
    k = lv.sd.shape[1]
    if ev.n_valid > k:
        H, _ = normal_equations(lv, ev)
        cov_full = _sandwich(lv, ev, H, k)
        if cov_full is not None:
            cov = cov_full[:lv.n_params, :lv.n_params]
            corner_cov = point_covariance(W, chart, opts.model, cov, corners0[:, :2])
    return FinalStats(rms, zncc, overlap, ev.gain, ev.bias, cov, corner_cov)


def _zncc(lv: Level, ev) -> float:
    """Zero-normalised correlation of template and aligned image over the valid elements, with
    per-channel means removed (from the residuals: the aligned image is ``T + e`` there, up to
    the gain/bias map, which the correlation ignores)."""
    c = lv.shape[2]
    t0 = np.where(ev.valid, lv.tflat, np.float32(0)).reshape(-1, c).astype(np.float64)
    i0 = t0 + ev.e.reshape(-1, c)
    n = ev.valid.reshape(-1, c).sum(0)
    st, si = t0.sum(0), i0.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mt, mi = np.where(n > 0, st / np.maximum(n, 1), 0.0), np.where(n > 0, si / np.maximum(n, 1), 0.0)
    num = float((t0 * i0).sum() - (n * mt * mi).sum())
    vt = float((t0 * t0).sum() - (n * mt * mt).sum())
    vi = float((i0 * i0).sum() - (n * mi * mi).sum())
    den = np.sqrt(max(vt, 0.0) * max(vi, 0.0))
    return float(num / den) if den > 0 else float("nan")


def _sandwich(lv: Level, ev, H, k):
    """``H^-1 B H^-1`` with the 3x3-window autocovariance ``B`` (module docstring)."""
    try:
        h_inv = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(h_inv)):
        return None
    h, w, c = lv.shape
    valid = ev.valid
    psi = ev.e if ev.weights is None else ev.weights * ev.e  # (n,) zero where not valid
    sdv = lv.sd * valid[:, None].astype(np.float32)  # (n, K) rows of valid residuals
    inflate = ev.n_valid / max(ev.n_valid - k, 1)  # degrees of freedom
    gamma0 = float(np.dot(psi, psi)) / max(ev.n_valid, 1) * inflate
    meat = gamma0 * (sdv.T @ sdv).astype(np.float64)
    if gamma0 > 0:
        for dy, dx in LAGS:
            s = (dy * w + dx) * c
            if s <= 0 or s >= len(psi):
                continue
            pairs = int(np.count_nonzero(valid[:-s] & valid[s:]))
            if pairs == 0:
                continue
            gamma = float(np.dot(psi[:-s], psi[s:])) / pairs * inflate
            if gamma <= 0:
                continue
            cross = (sdv[:-s].T @ sdv[s:]).astype(np.float64)
            meat += gamma * (cross + cross.T)
    cov = h_inv @ meat @ h_inv
    return 0.5 * (cov + cov.T)
