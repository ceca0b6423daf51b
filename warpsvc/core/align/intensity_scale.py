"""Alignment of float images in any intensity unit: a power-of-two rescaling of out-of-range values.

Gauss-Newton alignment is invariant to a common intensity scale ``s`` of template and image (the
motion minimising ``sum (s I(W x) - s T(x))^2`` is the one minimising the unscaled sum), but its
floating-point arithmetic is not: the Hessian ``J^T J`` of template gradients squares the values,
so float32 products overflowed for pixel values from ~1e18 (the level became "flat"; from 1e20 the
noise-share eigensolver failed and the server answered INTERNAL) and lost the problem for values of
~1e-10 and below (found by a hostile-client test, float images in physical units). Both are now
multiplied by ``s = 2^k`` that brings the template's largest finite ``|value|`` into [128, 256) when
it lies outside ``[2^-8, 2^20]`` (``|k| <= 1000``, taken from the caller's array before the float32
conversion, so float64 images of 1e+-300 align too); a power of two is exact in binary floating point, so the geometry
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
# Template and image peaks further apart than this (either way) are brought together first
# (:func:`template_factor`): well inside the gain model's range (``gauss_newton.GAIN_RANGE``).
UNIT_RATIO = 8.0


def scale_for(template) -> float:
    """1, or the power of two putting the template's largest finite ``|value|`` into [128, 256).
    Taken from the caller's array, before its conversion to float32 (a float64 template of
    1e300 or 1e-300 would become inf or 0 there); integer templates are never scaled. One
    ``max(|x|)`` pass when every value is finite and in range (the usual case)."""
    a = np.asarray(template)
    if a.dtype.kind != "f" or a.size == 0:
        return 1.0
    with np.errstate(invalid="ignore"):
        peak = float(np.max(np.abs(a)))
    if LOW <= peak <= HIGH or peak == 0.0:
        return 1.0
    finite = np.abs(a[np.isfinite(a)])  # a NaN / inf somewhere, or out of range
    peak = float(finite.max()) if finite.size else 0.0
    if peak == 0.0 or LOW <= peak <= HIGH:
        return 1.0
    return 2.0 ** min(1000, max(-1000, 7 - math.floor(math.log2(peak))))  # s and 1 / s stay finite


def _peak(a: np.ndarray) -> float:
    """Largest finite ``|value|`` of ``a`` (0 when none); two reductions, no temporary, when
    every value is finite."""
    if a.size == 0:
        return 0.0
    with np.errstate(invalid="ignore"):
        peak = max(float(a.max()), -float(a.min()))
    if math.isfinite(peak):
        return peak
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max()) if finite.size else 0.0


def template_factor(template, image) -> float:
    """1, or the power of two ``t`` that brings the template's largest finite ``|value|`` within
    a factor ``sqrt(2)`` of the image's, when the two differ by more than :data:`UNIT_RATIO`:
    the same scene in other units -- an 8-bit reference for a 16-bit file (gain ~257), a
    [0, 1] float template for 8-bit frames. The gain/bias model's gain is bounded
    (``GAIN_RANGE``, [0.05, 20]: a free gain lets a flat fit absorb anything), so such a pair
    came out ``uncertain`` with the gain clamped at 20 (found by a batch run over a folder of
    mixed bit depths). Used only when a gain is modelled (``photometric`` not ``None``); the
    template is scaled, exactly, so the image, the residuals and the bias keep their units and
    only the gain is reported times ``t`` (:func:`unscaled`)."""
    pt, pi = _peak(np.asarray(template)), _peak(np.asarray(image))
    if not (pt > 0 and pi > 0) or 1.0 / UNIT_RATIO <= pi / pt <= UNIT_RATIO:
        return 1.0
    return 2.0 ** min(1000, max(-1000, round(math.log2(pi / pt))))


def in_image_units(template, image, photometric):
    """``(template, t)``: the template times :func:`template_factor` when a gain is modelled
    (``photometric`` not ``None``; identical exposure asked for: as given, ``t = 1``)."""
    t = template_factor(template, image) if photometric is not None else 1.0
    return (template if t == 1.0 else scaled(template, t)), t


def scaled(image, s: float) -> np.ndarray:
    """``image * s`` in its own float dtype (an integer image, with a float template, in
    float32); exact, a power of two. Values beyond the dtype's range after scaling become inf,
    like any non-finite input value (treated as missing)."""
    a = np.asarray(image)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    with np.errstate(over="ignore"):
        return a * a.dtype.type(s)


def unscaled(result, s: float, t: float = 1.0):
    """``result`` (an :class:`~.result.AlignResult`) with its intensity-valued fields back in the
    caller's units: ``s`` the common scale (:func:`scale_for`), ``t`` the template's own
    (:func:`template_factor`; the fit was ``image ~ a (t T) + b``, so the gain is ``a t``)."""
    if t != 1.0:
        result = dataclasses.replace(result, gain=tuple(float(g * t) for g in result.gain))
    if s == 1.0:
        return result
    with np.errstate(over="ignore"):  # a statistic beyond float64 in the caller's unit: inf
        back = np.float64(1.0 / s)  # exact (a power of two); s s may underflow, so twice, not once
        return dataclasses.replace(
            result, rms_error=float(result.rms_error * back), bias=tuple(float(b * back) for b in result.bias),
            cost_history=tuple(tuple(float(c * back * back) for c in level) for level in result.cost_history))
