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

Template and image in *different* units (the same scene as an 8-bit reference and a 16-bit file:
a gain of 257, beyond the gain model's clamp at 20): the template alone is multiplied by a
power of two ``t`` (:func:`template_factor`, when the containers say the units differ; else
:func:`solve_in_units` retries a fit whose gain came out at the clamp), and the gain is reported
times ``t``; bias, residuals and costs stay in the image's units.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LOW, HIGH = 2.0 ** -8, 2.0 ** 20  # template peaks in this range are left as they are


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


# Containers whose values have a nominal unit (their full scale): 8- and 16-bit counts, and
# floats whose values lie within [0, 1] (normalised images). Other floats (counts stored as
# float, physical units) and other integer types have none.
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
# Peak ratios within this factor (either way) are left to the gain model (GAIN_RANGE [0.05, 20]).
UNIT_RATIO = 8.0
# The robust peak: this quantile of the finite |values|, over at most PEAK_SAMPLE of them.
PEAK_QUANTILE = 0.999
PEAK_SAMPLE = 1 << 16


def robust_peak(a: np.ndarray) -> float:
    """The :data:`PEAK_QUANTILE` quantile of ``a``'s finite ``|values|`` (0 when none), over an
    even stride of at most :data:`PEAK_SAMPLE` of them: a few hot pixels (a cosmic ray, a
    saturated star) do not make it."""
    flat = np.asarray(a).reshape(-1)
    step = max(1, flat.size // PEAK_SAMPLE)
    v = np.abs(flat[::step].astype(np.float64))
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    k = min(v.size - 1, math.ceil(PEAK_QUANTILE * (v.size - 1)))  # (of 2 values: the larger)
    return float(np.partition(v, k)[k])


def _full_scale(a: np.ndarray, peak: float) -> float | None:
    """The container's nominal unit (:data:`FULL_SCALE`; 1 for a float array whose robust peak
    is at most 1), or ``None``."""
    if a.dtype in FULL_SCALE:
        return FULL_SCALE[a.dtype]
    return 1.0 if a.dtype.kind == "f" and 0.0 < peak <= 1.0 else None


def template_factor(template, image) -> float:
    """1, or the power of two ``t`` by which to multiply the template so that template and image
    are in the same units: the same scene in another container -- an 8-bit reference for a
    16-bit file (gain ~257), a [0, 1] float template for 8-bit frames (255). The gain/bias
    model's gain is bounded (``GAIN_RANGE``, [0.05, 20]: a free gain lets a flat fit absorb
    anything), so such a pair came out ``uncertain`` with the gain clamped at 20 (found by a
    batch run over a folder of mixed bit depths).

    Only a difference of *containers* says the units differ (:func:`_full_scale`: uint8,
    uint16, [0, 1] floats); pairs of one kind, or with a container of unknown unit, are never
    rescaled (a dark patch cut from a bright image has its own peak far below the image's, and
    needs a gain of 1). Then ``t`` is the power of two nearest the ratio of the robust peaks
    (:func:`robust_peak`) when that ratio is beyond :data:`UNIT_RATIO`, clipped to the ratio of
    the full scales (a 12-bit camera in a 16-bit file against an 8-bit template: 16, not 256; a
    dark 8-bit template of a 16-bit scene: 256, not more)."""
    t, i = np.asarray(template), np.asarray(image)
    if t.dtype == i.dtype:
        return 1.0
    pt, pi = robust_peak(t), robust_peak(i)
    ut, ui = _full_scale(t, pt), _full_scale(i, pi)
    if ut is None or ui is None or ut == ui:
        return 1.0
    return _nearest_power(pt, pi, ui / ut)


def _gain_clamped(gain) -> bool:
    """Whether a fitted gain (any channel) sits at a bound of ``gauss_newton.GAIN_RANGE``."""
    from .gauss_newton import GAIN_RANGE

    lo, hi = GAIN_RANGE
    return any(not (lo * (1 + 1e-9) < float(g) < hi * (1 - 1e-9)) for g in gain)


def peak_factor(template, image) -> float:
    """1, or the power of two nearest the ratio of the robust peaks (:func:`robust_peak`) of
    image and template when it is beyond :data:`UNIT_RATIO` (no container rule: the retry of
    :func:`solve_in_units`)."""
    return _nearest_power(robust_peak(np.asarray(template)), robust_peak(np.asarray(image)))


def _nearest_power(pt: float, pi: float, units: float | None = None) -> float:
    """1, or the power of two nearest the peak ratio ``pi / pt`` when it is beyond
    :data:`UNIT_RATIO` either way, the ratio first clipped between 1 and ``units`` (the full
    scales' ratio) when given."""
    if not (pt > 0 and pi > 0) or 1.0 / UNIT_RATIO <= pi / pt <= UNIT_RATIO:
        return 1.0
    ratio = pi / pt if units is None else min(max(pi / pt, min(1.0, units)), max(1.0, units))
    return 2.0 ** min(1000, max(-1000, round(math.log2(ratio))))


def solve_in_units(solve, template, image, scale: float, unit: float, photometric):
    """``solve(template)`` (an :class:`~.result.AlignResult`, back in the caller's units), and once
    more with the template times :func:`peak_factor` when the first fit's gain came out clamped
    at a bound of the gain model while no unit factor was applied (floats of unknown unit: an
    8-bit-unit template against the same scene in 16-bit units, both float, gave ``converged``
    with the gain stuck at 20 and a wrong bias; found by a helper's test). The retry's result is
    kept when it converged or the first did not; a fit inside the gain range is never retried
    (no cost, the same bits)."""
    result = unscaled(solve(template), scale, unit)
    if photometric is None or unit != 1.0 or not _gain_clamped(result.gain):
        return result
    t = peak_factor(template, image)
    if t == 1.0:
        return result
    again = unscaled(solve(scaled(template, t)), scale, t)
    return again if again.converged or not result.converged else result


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
