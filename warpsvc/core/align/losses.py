r"""Robust losses for iteratively reweighted least squares, as small value objects.

For a residual ``e`` and a scale ``sigma`` (from the median absolute deviation), with
``z = |e| / sigma``, a loss gives ``rho(z)`` (the cost) and the IRLS weight
``w(z) = rho'(z) / z`` that turns the robust problem into a weighted least-squares one at each
iteration. Constants give 95 % efficiency under Gaussian noise::

    huber  rho = z^2 / 2                    (z <= k)    k = 1.345
               = k (z - k / 2)              (z >  k)    w = min(1, k / z)
    tukey  rho = c^2 / 6 (1 - (1 - (z/c)^2)^3)  (z <= c)    c = 4.685
               = c^2 / 6                    (z >  c)    w = max(0, 1 - (z/c)^2)^2

The scale is ``sigma = 1.4826 median |e|`` (:func:`mad_sigma`). ``robust=None`` is plain least squares (``rho = z^2 / 2``, ``w = 1``), handled by the solver's
unweighted fast path rather than by an object here.

``weights_and_rho_sum(e, valid, sigma)`` is the solver's fused form: float32 weights (0 where
not valid) and ``sum rho`` over the valid residuals in a few in-place passes, with no boolean
indexing (``e`` is 0 where not valid, and ``rho(0) = 0``). Tukey writes ``q = max(0,
1 - (z/c)^2)``, so ``w = q^2`` and ``rho = c^2/6 (1 - q w)``; Huber writes ``r = min(z, k)``,
so ``rho = r (z - r/2)`` and ``w = min(1, k / z)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import HUBER_K, MAD_TO_SIGMA, TUKEY_C


@dataclass(frozen=True)
class Huber:
    k: float = HUBER_K

    def weights(self, z: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, self.k / np.maximum(z, 1e-12))

    def rho(self, z: np.ndarray) -> np.ndarray:
        return np.where(z <= self.k, 0.5 * z * z, self.k * (z - 0.5 * self.k))

    def weights_and_rho_sum(self, e: np.ndarray, valid: np.ndarray, sigma: float):
        z = np.abs(e)
        z *= np.float32(1.0 / sigma)
        r = np.minimum(z, np.float32(self.k))
        w = np.maximum(z, np.float32(1e-12))
        np.divide(np.float32(self.k), w, out=w)
        np.minimum(w, np.float32(1.0), out=w)
        w *= valid
        r *= z - np.float32(0.5) * r  # rho, 0 where e = 0
        return w, float(r.sum())


@dataclass(frozen=True)
class Tukey:
    c: float = TUKEY_C

    def weights(self, z: np.ndarray) -> np.ndarray:
        return np.square(np.maximum(0.0, 1.0 - np.square(z / self.c)))

    def rho(self, z: np.ndarray) -> np.ndarray:
        c2 = self.c * self.c / 6.0
        return np.where(z <= self.c, c2 * (1.0 - (1.0 - (z / self.c) ** 2) ** 3), c2)

    def weights_and_rho_sum(self, e: np.ndarray, valid: np.ndarray, sigma: float):
        q = e * np.float32(1.0 / (sigma * self.c))
        np.square(q, out=q)
        np.subtract(np.float32(1.0), q, out=q)
        np.maximum(q, np.float32(0.0), out=q)
        w = np.square(q)
        q *= w
        np.subtract(np.float32(1.0), q, out=q)  # 1 - q^3, 0 where e = 0
        w *= valid
        return w, self.c * self.c / 6.0 * float(q.sum())


LOSSES = {"huber": Huber(), "tukey": Tukey()}


def mad_sigma(e: np.ndarray, valid: np.ndarray, floor: float) -> float:
    """``1.4826 median |e|`` over the valid residuals (a strided sample of large levels), at
    least ``floor``. The median is taken by partition, with the invalid residuals moved past
    every valid one (no boolean gather)."""
    step = max(1, len(e) // 20000)  # a strided sample is plenty for a median
    if step > 1:
        e, valid = e[::step], valid[::step]
    m = int(np.count_nonzero(valid))
    if m == 0:
        return floor
    v = np.abs(e)
    if m < len(v):
        v[~valid] = np.inf
    lo, hi = (m - 1) // 2, m // 2
    part = np.partition(v, (lo, hi) if lo != hi else lo)
    med = 0.5 * (float(part[lo]) + float(part[hi]))
    return max(MAD_TO_SIGMA * med, floor)
