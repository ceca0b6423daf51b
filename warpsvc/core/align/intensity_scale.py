"""Alignment of float images in any intensity unit: a power-of-two rescaling of out-of-range values.

Gauss-Newton alignment is invariant to a common intensity scale ``s`` of template and image (the
motion minimising ``sum (s I(W x) - s T(x))^2`` is the one minimising the unscaled sum), but its
floating-point arithmetic is not: the Hessian ``J^T J`` of template gradients squares the values,
so float32 products overflowed for pixel values from ~1e18 (the level became "flat"; from 1e20 the
noise-share eigensolver failed and the server answered INTERNAL) and lost the problem for values of
~1e-10 and below (found by a hostile-client test, float images in physical units). Both are now
multiplied by ``s = 2^k`` that brings the template's largest finite ``|value|`` into [128, 256) when
it lies outside ``[2^-8, 2^20]``; a power of two is exact in binary floating point, so the geometry
is that of the unscaled problem, and inputs in the usual ranges (8/16-bit counts, [0, 1] floats)
are not touched at all (bit-identical results). Intensity-valued results are scaled back:
``rms_error`` and ``bias`` by ``1 / s``, the per-iteration costs (mean squared residuals) by
``1 / s^2``; ``gain``, correlations, overlap and the geometric covariances are scale-free.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LOW, HIGH = 2.0 ** -8, 2.0 ** 20  # template peaks in this range are left as they are


def scale_for(tmpl: np.ndarray) -> float:
    """1, or the power of two putting ``tmpl``'s largest finite ``|value|`` into [128, 256)."""
    finite = np.abs(tmpl[np.isfinite(tmpl)])
    peak = float(finite.max()) if finite.size else 0.0
    if peak == 0.0 or LOW <= peak <= HIGH:
        return 1.0
    return 2.0 ** (7 - math.floor(math.log2(peak)))


def scaled(image, s: float) -> np.ndarray:
    """``image * s`` in its own float dtype (integer images are never scaled: see :func:`scale_for`);
    exact, a power of two. Values beyond the dtype's range after scaling become inf, like any
    non-finite input value (treated as missing)."""
    a = np.asarray(image)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    with np.errstate(over="ignore"):
        return a * a.dtype.type(s)


def unscaled(result, s: float):
    """``result`` (an :class:`~.result.AlignResult`) with its intensity-valued fields back in the
    caller's units."""
    if s == 1.0:
        return result
    return dataclasses.replace(
        result, rms_error=result.rms_error / s, bias=tuple(b / s for b in result.bias),
        cost_history=tuple(tuple(c / (s * s) for c in level) for level in result.cost_history))
