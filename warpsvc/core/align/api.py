"""``warpsvc.align``: validate, build the pyramid, run Gauss-Newton coarse to fine, report."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from ..errors import InvalidArgumentError, InvalidImageError, InvalidTransformError
from ..transforms import Transform
from ..transforms.matrix import _check_matrix
from ..transforms.models import submodel_columns
from ..validate import check_image
from .features import IMAGE_SCALE, feature_start
from .covariance import final_statistics, template_noise_variance, zncc
from .gauss_newton import Clock, Stopped, solve_level, translation_search, warp_to_template
from .chart import make_chart
from .options import AlignOptions, explicit_keywords, merge_options
from .pyramid import auto_levels, channel_mean, build_level, build_pyramid, prepare
from .tone import fit_tone_curve
from .verify import MAX_BLOCK_MARGIN, MIN_MARGIN, closest_failure, corner_bound, margins, outlier_mask
from .result import (
    AMBIGUOUS,
    CANCELLED,
    CONVERGED,
    DEGENERATE_WARP,
    FLAT_TEMPLATE,
    INSUFFICIENT_OVERLAP,
    LOW_CORRELATION,
    MAX_ITERATIONS,
    NO_PROGRESS,
    TIME_BUDGET,
    UNCERTAIN,
    AlignResult,
    Start,
)

# Relative size of the smallest Hessian eigenvalue below which the template cannot constrain
# the motion (flat, or texture in one direction only).
MIN_RELATIVE_EIGENVALUE = 1e-9
# Alternative schedules tried, in order, when an attempt ends unconverged for a reason a
# different start might fix (measured on the benchmark: with and without a translation warm
# start, and with the fourth level or without, each schedule wins a few of the sigma = 15 trials
# the other loses; trying the cheaper one first keeps the common case fast).
RETRIES = (
    {"warm_start": lambda problem, opts: None if opts.warm_start else "translation"},
    {"levels": lambda problem, opts: max(1, problem.n_levels(opts) - 1) if opts.levels == "auto" else opts.levels},
)
# search="auto": the local solve from the identity gives up when its coarsest level ends with
# a correlation below this (a large motion: go global at once instead of refining a wrong basin).
COARSE_GATE = 0.5
# photometric="auto": "same exposure" when a gain/bias fit is this close to (1, 0) -- gain within
# SAME_GAIN of 1, bias within SAME_BIAS of the template's mean (before the solve: the contrast
# ratio and the mean difference at the coarsest level; after a coarse level: its fit).
SAME_GAIN = 0.03
SAME_BIAS = 0.05
# ``uncertain`` too: a wide covariance is also what a wrong stationary point in a weakly
# determined direction looks like (tuning, noise 0: a rocket patch 17 px off, right after the
# retry with one level fewer); retrying it gained 1 % capture at noise 8 and 16.
RETRYABLE = (LOW_CORRELATION, MAX_ITERATIONS, NO_PROGRESS, DEGENERATE_WARP, AMBIGUOUS, UNCERTAIN)
# A feature start whose refinement failed is refined once more on this many strongest-gradient
# pixels per level (``AlignOptions.max_pixels``): large smooth regions (sky) under an exposure
# curve that gain/bias cannot follow (gamma) pull the solve along their gentle gradient
# (tuning, large motion: a rocket patch refined to 2.3 px from its 12.7 px feature start, and
# 2.3 px from the truth itself, reaches 0.41 px on 2 000 pixels).
SPARSE_PIXELS = 2_000
# The finest level ran out of iterations, but the undamped Gauss-Newton step from its best
# estimate is below this many tolerances: it is at the optimum, oscillating at the noise floor
# (tuning set: such results had steps of 0.003-0.011 px and errors <= 0.5 px), so converged.
NOISE_FLOOR_STEPS = 20
# photometric="auto" with an exposure change: a quadratic tone curve fitted after the level
# above the finest maps the finest level's template when significant (:mod:`.tone`).
TONE_CURVE = True


@explicit_keywords
def align(
    template: np.ndarray,
    image: np.ndarray,
    model: str = "homography",
    init=None,
    *,
    search: str = "auto",
    levels="auto",
    template_mask=None,
    image_mask=None,
    robust=None,
    photometric="auto",
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    time_budget=None,
    should_stop=None,
    max_corner_error: float | None = 1.0,
    options: AlignOptions | None = None,
    _given: frozenset = frozenset(),
) -> AlignResult:
    """Find the warp that brings ``image`` onto ``template`` (Gauss-Newton, coarse to fine).

    Parameters
    ----------
    template, image : ``(H, W)`` or ``(H, W, C)`` arrays (uint8, uint16, float32, float64) with
        the same number of channels; all channels enter the cost. Non-finite pixels are
        treated as missing.
    model : ``translation``, ``euclidean``, ``similarity``, ``affine`` or ``homography``: the
        family of the correction applied to ``init``.
    init : ``None`` (identity), a 2x3/3x3 matrix or a matrix :class:`Transform`, with the
        meaning of the result's ``matrix`` (``template_from_image``), so a previous result's
        ``matrix`` seeds the next call.
    levels : pyramid levels, or ``"auto"``.
    template_mask, image_mask : optional ``(H, W)`` boolean (or 0/non-0) masks of usable pixels.
    robust : ``None``, ``"huber"`` or ``"tukey"`` (iteratively reweighted least squares).
    photometric : ``"auto"`` (default: ``"gain_bias"`` unless a robust loss is asked for, plus
        a tone curve when the exposure change is a curve: :mod:`.tone`), ``"gain_bias"`` (per
        channel ``image ~ gain * template + bias``) or ``None`` (identical exposure assumed).
    search : ``"auto"`` (default), ``"local"`` or ``"global"``: how a start is found when
        ``init`` is ``None`` (see :class:`AlignOptions`); ``result.start`` says which was used.
    max_iterations : per pyramid level.
    tolerance : full-resolution pixels; the finest level stops when an update moves no
        template corner further than this.
    time_budget : seconds, checked between iterations and set-up stages (``reason="time_budget"``).
    should_stop : zero-argument callable polled where ``time_budget`` is checked; true ends the
        call with ``reason="cancelled"`` (for server deadlines and cancellation).
    max_corner_error : image pixels; a converged result must predict a corner RMS error (1
        sigma, from its covariance) at most this, else ``reason="uncertain"``. ``None`` (or
        ``inf``) turns the check off.
    options : an :class:`AlignOptions` with further settings; keyword arguments given with
        non-default values override its fields.

    Returns
    -------
    :class:`AlignResult`. Non-convergence is reported (``converged=False`` and a ``reason``),
    never raised; invalid arguments raise :class:`InvalidArgumentError` subclasses with ``field``.
    """
    opts = merge_options(options, _given, model=model, search=search, levels=levels, robust=robust,
                         photometric=photometric, max_iterations=max_iterations, tolerance=tolerance,
                         time_budget=time_budget, should_stop=should_stop,
                         max_corner_error=max_corner_error).checked()
    clock = Clock(opts.time_budget, opts.should_stop)
    tmpl = prepare(template, template_mask, "template", "template_mask")
    full = check_image(image, "image")
    if image_mask is not None and np.shape(image_mask) != full.shape[:2]:
        raise InvalidImageError(
            f"image_mask must have shape {full.shape[:2]} (the image's H, W), got {np.shape(image_mask)}",
            field="image_mask")
    if tmpl.shape[2] != full.shape[2]:
        raise InvalidImageError(
            f"image has {full.shape[2]} channels but template has {tmpl.shape[2]}", field="image"
        )
    if opts.channels == "mean" and tmpl.shape[2] > 1:
        # One grey channel (the channel mean, NaN where any channel is missing): C-channel
        # steepest-descent images cost C times the grey ones; the mean also averages the
        # channels' independent noise. The image's mask then travels as NaN.
        tmpl = channel_mean(tmpl)
        image = channel_mean(prepare(image, image_mask, "image", "image_mask"))[:, :, 0]
        image_mask = None
    if init is not None:
        if opts.search == "global":
            raise InvalidArgumentError("search='global' finds its own start: pass init=None", field="search")
        return _solve(tmpl, image, image_mask, _initial_warp(init), opts, clock, Start.INIT)
    if opts.search == "global":
        found = _global(tmpl, image, image_mask, opts, clock)
        return found if found is not None else _solve(tmpl, image, image_mask, np.eye(3), opts, clock, Start.IDENTITY)
    auto = opts.search == "auto"
    result = _solve(tmpl, image, image_mask, np.eye(3), opts.replace(retry=False) if auto else opts, clock,
                    Start.IDENTITY, COARSE_GATE if auto else None)
    if result.converged or opts.search == "local" or clock.stop_reason() is not None:
        return result
    # auto: the local solve from the identity failed; a global start, else the local retries
    found = _global(tmpl, image, image_mask, opts, clock)
    if found is not None and found.converged:
        return found
    failures = [result] if found is None else [result, found]
    if opts.retry and clock.stop_reason() is None:
        again = _solve(tmpl, image, image_mask, np.eye(3), opts, clock, Start.IDENTITY)
        if again.converged or again.reason in (TIME_BUDGET, CANCELLED):
            return again
        failures.append(again)
    stopped = [r for r in failures if r.reason in (TIME_BUDGET, CANCELLED)]
    return stopped[-1] if stopped else closest_failure(failures)


def _refine(tmpl, image, image_mask, W0, opts, clock) -> AlignResult:
    """Gauss-Newton from a feature start. Most are within a pixel or two, which two pyramid
    levels refine; a start from a handful of matches can be tens of pixels off, which the
    full pyramid often still brings in (tried when the two levels fail and the levels are
    automatic). Last, when the best of those correlates at least :data:`COARSE_GATE` (near,
    not lost), the full pyramid on the :data:`SPARSE_PIXELS` strongest-gradient pixels of each
    level."""
    if opts.levels != "auto":
        return _solve(tmpl, image, image_mask, W0, opts, clock, Start.FEATURES)
    result = _solve(tmpl, image, image_mask, W0, opts.replace(levels=2, retry=False), clock, Start.FEATURES)
    if result.converged or clock.stop_reason() is not None:
        return result
    again = _solve(tmpl, image, image_mask, W0, opts, clock, Start.FEATURES)
    result = again if again.converged or not result.zncc >= again.zncc else result
    if result.converged or clock.stop_reason() is not None or result.reason not in RETRYABLE \
            or not result.zncc >= COARSE_GATE or not (opts.max_pixels is None or opts.max_pixels > SPARSE_PIXELS):
        return result
    sparse = _solve(tmpl, image, image_mask, W0, opts.replace(max_pixels=SPARSE_PIXELS), clock, Start.FEATURES)
    return sparse if sparse.converged or not result.zncc >= sparse.zncc else result


def _global(tmpl, image, image_mask, opts, clock) -> AlignResult | None:
    """A feature start (:mod:`.features`) refined by Gauss-Newton: the image searched at 3/4
    resolution first, at full resolution when that finds no start or its refinement fails
    (extra cost only on such failures). ``None`` when no start was found."""
    best = None
    for scale in (IMAGE_SCALE, 1.0):
        try:
            found = _feature_start(tmpl, image, image_mask, opts, scale, clock)
        except Stopped:  # the clock stopped the feature search: what was found so far
            break
        if found is not None:
            result = _refine(tmpl, image, image_mask, found, opts, clock)
            if result.converged:
                return result
            best = result if best is None or result.zncc > best.zncc else best
        if clock.stop_reason() is not None:
            break
    return best


def _feature_start(tmpl, image, image_mask, opts, scale, clock):
    """``image_from_template`` from feature matches (:mod:`.features`) or ``None``; raises
    :class:`Stopped` between its stages when the clock says stop."""
    clock.check()
    if image_mask is None and np.asarray(image).dtype == np.uint8 and np.ndim(image) == 2:
        img = image  # already what the detector takes
    else:
        img = prepare(image, image_mask, "image", "image_mask")
    found = feature_start(tmpl, img, opts.model, scale, check=clock.check)
    return None if found is None else found[0]


def _solve(tmpl, image, image_mask, W0, opts, clock, start, coarse_gate=None) -> AlignResult:
    """Coarse-to-fine Gauss-Newton from ``W0`` (level-0 ``image_from_template``), with the
    restarts of ``opts.retry`` (``coarse_gate``: see :func:`_attempt`). The clock is checked
    between the set-up stages too (crop, pyramids, Jacobians): a stop there returns
    :func:`_stopped` at ``W0`` (a stop in a restart's set-up keeps the first attempt)."""
    try:
        clock.check()
        # Work on the part of the image the template can reach (see _region): large images then
        # cost no more than small ones.
        x0, y0, x1, y1 = _region(image.shape, tmpl.shape, W0, 2 ** (_Problem.levels_for(tmpl.shape, opts) - 1))
        img = prepare(image[y0:y1, x0:x1], None if image_mask is None else np.asarray(image_mask)[y0:y1, x0:x1],
                      "image", "image_mask")
        clock.check()
        problem = _Problem(tmpl, img, np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ W0, opts)
        problem.offset = (x0, y0)
        result = _attempt(problem, opts, clock, coarse_gate)
    except Stopped as stop:
        return _stopped(W0, tmpl.shape, opts, clock, stop.reason, start)
    # Restart on a detected failure with the alternative schedules (costs time only when the
    # first attempt failed; `converged` is reliable enough to decide).
    for change in RETRIES if opts.retry else ():
        if result.converged or result.reason not in RETRYABLE or clock.stop_reason() is not None:
            break
        alt = opts.replace(**{k: (v(problem, opts) if callable(v) else v) for k, v in change.items()})
        if alt == opts:
            continue
        try:
            again = _attempt(problem, alt, clock)
        except Stopped:
            break
        if again.converged or (again.zncc_check > result.zncc_check and again.reason not in (TIME_BUDGET, CANCELLED)):
            result = again
    return result.to_result(opts, problem, clock, start)


def _stopped(W0, template_shape, opts, clock, reason, start) -> AlignResult:
    """The result of a call the clock stopped before any iteration: the start ``W0`` (level-0
    ``image_from_template``), nothing measured (``rms_error``, ``zncc``, ``overlap`` NaN)."""
    inverse = W0 / W0[2, 2]
    matrix = np.linalg.inv(inverse)
    matrix = matrix / matrix[2, 2]
    if np.array_equal(inverse[2], [0.0, 0.0, 1.0]):
        matrix[2] = (0.0, 0.0, 1.0)
    c = template_shape[2]
    nan = float("nan")
    return AlignResult(
        matrix=matrix, inverse=inverse, converged=False, reason=reason, iterations=(), rms_error=nan, zncc=nan,
        cost_history=(), covariance=None, corner_covariance=None, overlap=nan, gain=(1.0,) * c, bias=(0.0,) * c,
        model=opts.model, levels=0, elapsed=clock.elapsed(), chart=make_chart(template_shape), start=start,
    )


class _Problem:
    """What every attempt shares: prepared images, chart, corners, pyramids by depth."""

    def __init__(self, tmpl, img, W0, opts):
        self.tmpl, self.img, self.W0 = tmpl, img, W0
        self.chart = make_chart(tmpl.shape)
        self.chart_inv = np.linalg.inv(self.chart)
        h, w = tmpl.shape[:2]
        self.corners0 = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], dtype=np.float64)
        self.affine = opts.model != "homography" and W0[2, 0] == 0.0 and W0[2, 1] == 0.0
        self.sigma_floor = 1e-12
        if opts.robust is not None:  # a floor for the MAD scale, relative to the template's contrast
            finite = tmpl[np.isfinite(tmpl)]
            self.sigma_floor = max(1e-6 * float(finite.std()) if finite.size else 0.0, 1e-12)
        self._pyramids = {}
        self._same_exposure = {}
        self.offset = (0, 0)

    @functools.cached_property
    def image_noise(self) -> float:
        """White-noise variance of the image (Immerkaer), for the final check:
        estimated on a window of about the template's size at the centre of the image part in
        use (the sensor's noise is the same everywhere; the window bounds the cost)."""
        H, W = self.img.shape[:2]
        h, w = min(H, self.tmpl.shape[0] + 2), min(W, self.tmpl.shape[1] + 2)
        y0, x0 = (H - h) // 2, (W - w) // 2
        return template_noise_variance(self.img[y0:y0 + h, x0:x0 + w])

    def same_exposure(self, n_levels) -> bool:
        """The cheap decision of ``photometric="auto"``: at the coarsest level (blurred, so a
        few pixels of misalignment barely matter), template and image under the start warp
        have the same mean and contrast to within :data:`SAME_GAIN` / :data:`SAME_BIAS` --
        identical exposure: the gain/bias model would only cost time."""
        if n_levels not in self._same_exposure:
            t_pyr, i_pyr = self.pyramids(n_levels)
            f = float(2 ** (len(t_pyr) - 1))
            Wl = self.W0.copy()
            Wl[:2, 2] /= f
            Wl[2, :2] *= f
            t = t_pyr[-1]
            warped = warp_to_template(i_pyr[-1], Wl, t.shape, self.affine).reshape(t.shape)
            ok = np.isfinite(t) & np.isfinite(warped)
            same = False
            if np.count_nonzero(ok) >= 16:
                tv, iv = t[ok].astype(np.float64), warped[ok].astype(np.float64)
                st, si = tv.std(), iv.std()
                same = bool(st > 0 and abs(si / st - 1.0) <= SAME_GAIN
                            and abs(iv.mean() - tv.mean()) <= SAME_BIAS * abs(tv.mean()))
            self._same_exposure[n_levels] = same
        return self._same_exposure[n_levels]

    def n_levels(self, opts) -> int:
        return self.levels_for(self.tmpl.shape, opts)

    @staticmethod
    def levels_for(template_shape, opts) -> int:
        if opts.levels != "auto":
            return int(opts.levels)
        # A robust loss needs enough pixels per level to outvote the outliers: coarsest level twice as big.
        min_side = opts.min_level_side * (2 if opts.robust else 1)
        return auto_levels(template_shape, min_side, opts.auto_max_levels)

    def pyramids(self, n_levels, check=None):
        if n_levels not in self._pyramids:
            self._pyramids[n_levels] = (build_pyramid(self.tmpl, n_levels, check),
                                        build_pyramid(self.img, n_levels, check))
        return self._pyramids[n_levels]


class _Outcome:
    """One attempt's estimate and statistics (turned into an AlignResult at the end)."""

    def __init__(self, W, reason, iterations, histories, stats, n_levels):
        self.W, self.iterations, self.histories, self.stats, self.n_levels = W, iterations, histories, stats, n_levels
        self.converged = reason == CONVERGED
        self.reason = reason
        self.zncc_check = stats.zncc_check if np.isfinite(stats.zncc_check) else -np.inf

    def check(self, opts):
        if self.converged and self.stats.overlap < opts.min_overlap:
            self.converged, self.reason = False, INSUFFICIENT_OVERLAP
        if self.converged and not self.stats.zncc_check >= opts.min_zncc:
            self.converged, self.reason = False, LOW_CORRELATION
        if self.converged and opts.max_corner_error is not None \
                and not corner_bound(self.stats.corner_covariance) <= opts.max_corner_error:
            self.converged, self.reason = False, UNCERTAIN
        return self

    def to_result(self, opts, problem, clock, start) -> AlignResult:
        stats = self.stats
        x0, y0 = problem.offset
        W = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]]) @ self.W  # back to full-image pixels
        inverse = W / W[2, 2]
        matrix = np.linalg.inv(inverse)
        matrix = matrix / matrix[2, 2]
        if np.array_equal(inverse[2], [0.0, 0.0, 1.0]):
            matrix[2] = (0.0, 0.0, 1.0)
        return AlignResult(
            matrix=matrix, inverse=inverse, converged=self.converged, reason=self.reason,
            iterations=tuple(self.iterations), rms_error=stats.rms, zncc=stats.zncc,
            cost_history=tuple(self.histories), covariance=stats.covariance,
            corner_covariance=stats.corner_covariance, overlap=stats.overlap, gain=tuple(stats.gain),
            bias=tuple(stats.bias), model=opts.model, levels=self.n_levels, elapsed=clock.elapsed(),
            chart=problem.chart, start=start,
        )


def _attempt(problem: _Problem, opts: AlignOptions, clock: Clock, coarse_gate: float | None = None) -> _Outcome:
    """Coarse to fine from ``problem.W0`` with the schedule of ``opts``. ``coarse_gate``: give
    up (``low_correlation``) when the coarsest level ends correlating less than this -- the
    cheap decision of ``search="auto"`` that the motion is not local. With a gate the finest
    level (the costliest set-up: strongest-pixel selection, Jacobians) is built only when the
    gate is passed, and an attempt given up above it reports the statistics of the last level
    solved (large motion, tuning: ~5 ms of a 16 ms gated attempt)."""
    n_levels = problem.n_levels(opts)
    t_pyr, i_pyr = problem.pyramids(n_levels, clock.check)
    chart, chart_inv, corners0, affine = problem.chart, problem.chart_inv, problem.corners0, problem.affine
    photometric_on = opts.gain_bias and not (opts.photometric == "auto" and problem.same_exposure(n_levels))
    W = problem.W0
    iterations, histories = [], []
    reason = CONVERGED
    last = None
    newton_step = float("inf")
    finest = lv = curve = None
    if coarse_gate is None or n_levels == 1:
        finest = build_level(0, t_pyr[0], i_pyr[0], opts.model, chart, photometric_on, opts.max_pixels, clock.check)
        if not _well_posed(finest):
            n_levels = 0  # nothing to solve: report the start
            reason = FLAT_TEMPLATE
            iterations, histories = [0] * len(t_pyr), [()] * len(t_pyr)
    for index in range(n_levels - 1, -1, -1):
        if index == 0 and finest is None:  # the gate was passed: build it now
            finest = build_level(0, t_pyr[0], i_pyr[0], opts.model, chart, photometric_on, opts.max_pixels,
                                 clock.check)
            if not _well_posed(finest):
                W, reason = problem.W0, FLAT_TEMPLATE
                iterations.append(0)
                histories.append(())
                break
        lv = finest if index == 0 else build_level(index, t_pyr[index], i_pyr[index], opts.model, chart,
                                                   photometric_on, opts.max_pixels, clock.check)
        if lv.n_usable < 4 * lv.sd.shape[1]:
            iterations.append(0)
            histories.append(())
            continue
        tol = opts.tolerance if index == 0 else opts.coarse_tolerance
        out = None
        level_its, level_costs = 0, []
        if index == n_levels - 1 and n_levels > 1 and opts.search_radius:
            W = translation_search(lv, W, opts.search_radius, affine)
        for step_model in _level_models(opts, index, n_levels):
            lm = lv if step_model == opts.model else lv.restrict(submodel_columns(opts.model, step_model))
            out = solve_level(lm, W, model=step_model, chart=chart, chart_inv=chart_inv, corners0=corners0,
                              affine=affine, robust=opts.robust, photometric=photometric_on,
                              max_iterations=opts.max_iterations, tolerance=tol, clock=clock,
                              sigma_floor=problem.sigma_floor, coarse=index > 0)
            W = out.W
            level_its += out.iterations
            level_costs += out.costs
            if out.reason in (TIME_BUDGET, CANCELLED):
                break
        if out is None:
            iterations.append(0)
            histories.append(())
            continue
        iterations.append(level_its)
        histories.append(tuple(level_costs))
        if out.reason in (TIME_BUDGET, CANCELLED):
            reason = out.reason
            iterations.extend([0] * index)
            histories.extend([()] * index)
            break
        if coarse_gate is not None and index == n_levels - 1 and index > 0 and out.last is not None \
                and not zncc(lv, out.last) >= coarse_gate:
            reason = LOW_CORRELATION
            iterations.extend([0] * index)
            histories.extend([()] * index)
            break
        if index == 0:
            reason = out.reason
            last = out.last
            newton_step = out.newton_step
            if reason == MAX_ITERATIONS and newton_step <= NOISE_FLOOR_STEPS * opts.tolerance:
                reason = CONVERGED
        elif photometric_on and opts.photometric == "auto" and _same_exposure(out.last, lv):
            photometric_on = False  # the cheap decision: finer levels without the gain/bias columns
            finest = None if finest is None else finest.without_photometric()
        elif index == 1 and photometric_on and opts.photometric == "auto" and TONE_CURVE and lv.shape[2] == 1:
            curve = None if out.last is None else fit_tone_curve(lv.tflat, out.last.warped, t_pyr[0])
            if curve is not None:  # the finest level on the template mapped through it (.tone)
                finest = build_level(0, curve(t_pyr[0]), i_pyr[0], opts.model, chart, True, opts.max_pixels,
                                     clock.check)
    stats = final_statistics(finest if finest is not None else lv, W, opts, affine, chart, corners0, problem.sigma_floor,
                             image_noise=problem.image_noise, last=last if reason == CONVERGED else None,
                             photometric=photometric_on)
    if curve is not None:  # report I ~ a f(T) + b as its tangent line at the template's mean
        stats.gain, stats.bias = curve.line(stats.gain, stats.bias)
    outcome = _Outcome(W, reason, iterations, histories, stats, len(t_pyr))
    outcome.newton_step = newton_step
    outcome.check(opts)
    if outcome.converged:
        # The one check that can tell a wrong stationary point from the optimum (see .verify)
        outcome.margin, outcome.block_margin = margins(t_pyr, i_pyr, W, affine, outliers=outlier_mask(finest, last))
        if not (outcome.margin >= MIN_MARGIN and outcome.block_margin <= MAX_BLOCK_MARGIN):
            outcome.converged, outcome.reason = False, AMBIGUOUS
    return outcome


def _same_exposure(ev, lv) -> bool:
    """Whether a level's gain/bias fit says the exposures agree (``photometric="auto"`` then
    drops the model for the finer levels, which cost most: identical-exposure pairs keep the
    plain least-squares speed). Tolerances: gain within :data:`SAME_GAIN` of 1, bias within
    :data:`SAME_BIAS` of the template's mean intensity."""
    if ev is None:
        return False
    scale = _template_mean(lv)
    return bool(np.all(np.abs(ev.gain - 1.0) <= SAME_GAIN) and np.all(np.abs(ev.bias) <= SAME_BIAS * scale))


def _template_mean(lv) -> float:
    """``|sum T| / n`` over a level's usable template elements (all channels), read off its
    Hessian when the gain/bias columns ``[T_c, 1]`` are in it (entries ``(T_c, 1)`` and
    ``(1, 1)`` of ``sd^T sd`` are ``sum T_c`` and ``n_c``): no pass over the pixels. The
    mean absolute intensity otherwise (the same for non-negative images)."""
    if not lv.n_usable:
        return 0.0
    p, k = lv.n_params, lv.hessian.shape[0]
    if k > p:
        ch = np.arange(p, k, 2)
        return float(np.abs(lv.hessian[ch, ch + 1]).sum() / max(lv.hessian[ch + 1, ch + 1].sum(), 1.0))
    return float(np.nanmean(np.abs(lv.tflat)))


def _region(image_shape, template_shape, W, align: int):
    """``(x0, y0, x1, y1)``: the image part that can matter, the template's footprint under ``W``
    grown by the template's size on every side (the coarse search and the steps never reach
    further), with ``x0, y0`` multiples of ``align`` so the pyramid keeps the full image's pixel
    grid. The whole image when the footprint is not finite or the saving would be small."""
    H, Wd = image_shape[:2]
    everything = (0, 0, Wd, H)
    h, w = template_shape[:2]
    (a, b, c), (d, e, f), (g, k, m) = W.tolist()
    xs, ys = [], []
    for x, y in ((0.0, 0.0), (w - 1.0, 0.0), (w - 1.0, h - 1.0), (0.0, h - 1.0)):
        q = g * x + k * y + m
        if not q > 0:
            return everything
        xs.append((a * x + b * y + c) / q)
        ys.append((d * x + e * y + f) / q)
    if not all(math.isfinite(v) for v in xs + ys):
        return everything
    margin = max(h, w) + 8
    x0 = int(min(max(math.floor(min(xs)) - margin, 0), Wd)) // align * align
    y0 = int(min(max(math.floor(min(ys)) - margin, 0), H)) // align * align
    x1 = int(min(max(math.ceil(max(xs)) + margin + 1, 0), Wd))
    y1 = int(min(max(math.ceil(max(ys)) + margin + 1, 0), H))
    if x1 - x0 < 2 or y1 - y0 < 2 or (x1 - x0) * (y1 - y0) > 0.7 * H * Wd:
        return everything
    return x0, y0, x1, y1


def _level_models(opts, index, n_levels):
    """Models solved at a level, in order. The coarsest level of a pyramid (after the ZNCC
    translation search) solves an affine warp for a homography (its perspective terms are not
    determined by a template a dozen pixels wide and made the coarse steps diverge), optionally
    after a translation (``warm_start``, the first restart's schedule)."""
    if index < n_levels - 1 or n_levels == 1:
        return [opts.model]
    ladder = [opts.warm_start] if opts.warm_start not in (None, opts.model) else []
    top = opts.coarsest_model if opts.model == "homography" else opts.model
    return ladder + [top]


def _initial_warp(init) -> np.ndarray:
    """``image_from_template`` (3x3 float64) from ``init`` (``template_from_image``)."""
    if init is None:
        return np.eye(3)
    if isinstance(init, Transform):
        if not init.is_matrix():
            raise InvalidTransformError("init must be a matrix transform (affine or homography)", field="init")
        m = np.asarray(init.matrix, dtype=np.float64)
    else:
        try:
            m = np.asarray(init, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidTransformError(f"init must be a 2x3 or 3x3 matrix, got {type(init).__name__}",
                                        field="init") from None
    m = _check_matrix(m, "init")  # the transforms' guard: same shapes, finiteness, conditioning
    inv = np.linalg.inv(m)
    if inv[2, 2] == 0:
        raise InvalidTransformError("init maps the template origin to infinity", field="init")
    inv = inv / inv[2, 2]
    if m[2, 0] == 0.0 and m[2, 1] == 0.0:
        inv[2] = (0.0, 0.0, 1.0)
    return inv


def _well_posed(lv, full_check: bool = True) -> bool:
    """Enough usable pixels and a Hessian that constrains every parameter (the eigenvalue test
    only when ``full_check``; coarse levels rely on the damping instead)."""
    k = lv.hessian.shape[0]
    if lv.n_usable < 4 * k:
        return False
    h = lv.hessian
    d = np.sqrt(np.maximum(np.diag(h), 0))
    if np.any(d == 0) or not np.all(np.isfinite(d)):
        return False
    if not full_check:
        return True
    ok, ev, _ = cv2.eigen(h / np.outer(d, d))  # descending eigenvalues of a symmetric matrix
    return bool(ok) and bool(ev[-1, 0] > MIN_RELATIVE_EIGENVALUE * ev[0, 0])
