r"""Robust losses for iteratively reweighted least squares, as small value objects.

For a residual ``e`` and a scale ``sigma`` (from the median absolute deviation), with
``z = |e| / sigma``, a loss gives ``rho(z)`` (the cost) and the IRLS weight
``w(z) = rho'(z) / z`` that turns the robust problem into a weighted least-squares one at each
iteration. Constants give 95 % efficiency under Gaussian noise::

    huber  rho = z^2 / 2                    (z <= k)    k = 1.345
               = k (z - k / 2)              (z >  k)    w = min(1, k / z)
    tukey  rho = c^2 / 6 (1 - (1 - (z/c)^2)^3)  (z <= c)    c = 4.685
               = c^2 / 6                    (z >  c)    w = max(0, 1 - (z/c)^2)^2

``robust=None`` is plain least squares (``rho = z^2 / 2``, ``w = 1``), handled by the solver's
unweighted fast path rather than by an object here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .options import HUBER_K, TUKEY_C


@dataclass(frozen=True)
class Huber:
    k: float = HUBER_K

    def weights(self, z: np.ndarray) -> np.ndarray:
        return np.minimum(1.0, self.k / np.maximum(z, 1e-12))

    def rho(self, z: np.ndarray) -> np.ndarray:
        return np.where(z <= self.k, 0.5 * z * z, self.k * (z - 0.5 * self.k))


@dataclass(frozen=True)
class Tukey:
    c: float = TUKEY_C

    def weights(self, z: np.ndarray) -> np.ndarray:
        return np.square(np.maximum(0.0, 1.0 - np.square(z / self.c)))

    def rho(self, z: np.ndarray) -> np.ndarray:
        c2 = self.c * self.c / 6.0
        return np.where(z <= self.c, c2 * (1.0 - (1.0 - (z / self.c) ** 2) ** 3), c2)


LOSSES = {"huber": Huber(), "tukey": Tukey()}

