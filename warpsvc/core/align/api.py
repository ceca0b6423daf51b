"""``warpsvc.align``: validate, build the pyramid, run Gauss-Newton coarse to fine, report."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from ..errors import InvalidArgumentError, InvalidImageError, InvalidTransformError
from ..transforms import Transform
from ..transforms.matrix import _check_matrix
from ..transforms.models import submodel_columns
from ..validate import check_image
from . import intensity_scale
from .chart import make_chart
from .clock import Clock, Stopped
from .covariance import final_statistics, level_noise_variance, template_noise_share, zncc
from .denoise import MIN_NOISE_RATIO, NOISE_DOMINATED
from .features import IMAGE_SCALE, TemplateFeatures, detection_factor, feature_start, reduced
from .gauss_newton import solve_level, translation_search
from .options import AlignOptions, explicit_keywords, merge_options
from .problem import Outcome, Problem, constant_template, same_exposure_fit, template_from_image
from .pyramid import build_level, channel_mean, prepare
from .result import (
    AMBIGUOUS,
    CANCELLED,
    CONVERGED,
    DEGENERATE_WARP,
    FLAT_TEMPLATE,
    LOW_CORRELATION,
    MAX_ITERATIONS,
    NO_PROGRESS,
    TIME_BUDGET,
    UNCERTAIN,
    AlignResult,
    Start,
)
from .second_look import SECOND_LOOK_ZNCC, take_second_look  # noqa: F401 - the constant for tests
from .tone import fit_tone_curve
from .verify import MAX_BLOCK_MARGIN, MIN_MARGIN, closest_failure, margins, outlier_mask

# Smallest relative Hessian eigenvalue that constrains the motion (below: flat, or 1-D texture).
MIN_RELATIVE_EIGENVALUE = 1e-9
# Alternative schedules tried, in order, when an attempt ends unconverged for a reason a different
# start might fix (measured on the benchmark: with and without a translation warm start, and with
# the fourth level or without, each wins a few sigma = 15 trials the other loses; cheaper first).
RETRIES = (
    {"warm_start": lambda problem, opts: None if opts.warm_start else "translation"},
    {"levels": lambda problem, opts: max(1, problem.n_levels(opts) - 1) if opts.levels == "auto" else opts.levels},
)
# search="auto": the local solve from the identity gives up when its coarsest level ends with
# a correlation below this (a large motion: go global at once instead of refining a wrong basin).
COARSE_GATE = 0.5
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
    denoise="auto",
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    time_budget=None,
    should_stop=None,
    max_corner_error: float | None = 1.0,
    min_zncc: float = 0.97,
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
    denoise : ``"auto"`` (default) or ``None``: solve a noise-dominated template on a denoised
        copy, then polish on itself (:class:`AlignOptions`, :mod:`.denoise`).
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
    min_zncc : a converged result's noise-corrected correlation must reach this (in
        ``[-1, 1]``), else ``reason="low_correlation"`` (:class:`AlignOptions`).
    options : an :class:`AlignOptions` with further settings; keyword arguments given with
        non-default values override its fields.

    Returns
    -------
    :class:`AlignResult`. Non-convergence is reported (``converged=False`` and a ``reason``),
    never raised; invalid arguments raise :class:`InvalidArgumentError` subclasses with ``field``.
    """
    opts = merge_options(options, _given, model=model, search=search, levels=levels, robust=robust,
                         photometric=photometric, denoise=denoise, max_iterations=max_iterations,
                         tolerance=tolerance,
                         time_budget=time_budget, should_stop=should_stop,
                         max_corner_error=max_corner_error, min_zncc=min_zncc).checked()
    clock = Clock(opts.time_budget, opts.should_stop)
    template, unit = intensity_scale.in_image_units(template, image, opts.photometric)  # 8 vs 16 bits
    scale = intensity_scale.scale_for(template)  # 1 for the usual ranges (.intensity_scale)
    if scale != 1.0:
        template, image = intensity_scale.scaled(template, scale), intensity_scale.scaled(image, scale)
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
    return intensity_scale.solve_in_units(lambda t: _search(t, image, image_mask, init, opts, clock), tmpl, image,
                                          scale, unit, opts.photometric)


def _search(tmpl, image, image_mask, init, opts, clock) -> AlignResult:
    """:func:`align` after validation: the start (``init``, or the search) and the solve."""
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
    if constant_template(tmpl):  # no start can constrain it: the local solve reports flat_template
        return _solve(tmpl, image, image_mask, np.eye(3), opts, clock, Start.IDENTITY)
    if opts.search == "global":
        found, complete = _global(tmpl, image, image_mask, opts, clock)
        if found is None:
            return _solve(tmpl, image, image_mask, np.eye(3), opts, clock, Start.IDENTITY)
        return found if complete else _cut_short(found, clock)
    auto = opts.search == "auto"
    result = _solve(tmpl, image, image_mask, np.eye(3), opts.replace(retry=False) if auto else opts, clock,
                    Start.IDENTITY, COARSE_GATE if auto else None)
    if result.converged or opts.search == "local":
        return result
    if clock.stop_reason() is not None:  # no time left for the global search
        return _cut_short(result, clock)
    # auto: the local solve from the identity failed; a global start, else the local retries
    found, complete = _global(tmpl, image, image_mask, opts, clock)
    if found is not None and found.converged:
        return found
    failures = [result] if found is None else [result, found]
    complete = complete and not (opts.retry and clock.stop_reason() is not None)  # a skipped retry
    if opts.retry and clock.stop_reason() is None:
        again = _solve(tmpl, image, image_mask, np.eye(3), opts, clock, Start.IDENTITY)
        if again.converged or again.reason in (TIME_BUDGET, CANCELLED):
            return again
        failures.append(again)
    stopped = [r for r in failures if r.reason in (TIME_BUDGET, CANCELLED)]
    if stopped:
        return stopped[-1]
    best = closest_failure(failures)
    return best if complete else _cut_short(best, clock)


def _cut_short(result: AlignResult, clock: Clock) -> AlignResult:
    """A failed search result, relabelled ``time_budget`` / ``cancelled`` when the clock
    stopped the search before it had tried every start (the caller knows whether it did; SIFT
    cannot be interrupted, so the clock is often found expired only after a stage). The matrix
    and statistics are those of the best failure so far; ``reason`` then says that more time
    might find the motion, not why that failure failed. ``elapsed`` becomes the whole call's."""
    stop = clock.stop_reason()
    if result.converged or stop is None or result.reason in (TIME_BUDGET, CANCELLED):
        return result
    return dataclasses.replace(result, reason=stop, elapsed=clock.elapsed())


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


def _global(tmpl, image, image_mask, opts, clock) -> tuple[AlignResult | None, bool]:
    """A feature start (:mod:`.features`) refined by Gauss-Newton: the image searched at 3/4
    resolution first, at full resolution when that finds no start or its refinement fails
    (extra cost only on such failures); an image of more than ``features.DETECT_PIXELS`` at 3/4
    is searched, with the template, at the common factor ``features.detection_factor`` of
    those resolutions (the refinement is at full resolution either way). A grey ``uint8``
    image goes to the detector as it is (the template is always stretched to its own 0.5 / 99.5 % percentiles); when both of those
    searches fail, it is searched again stretched like the template, at both resolutions: a
    dark or low-contrast image shows SIFT few keypoints above its contrast threshold (night sky:
    measured on the large-motion benchmark, 800 trials, 5 more successes, none lost; searching
    only the stretched image instead lost starts the raw one had). Returns ``(result,
    complete)``: the converged result, else the best-correlated refinement (``None`` when no
    start was found), and whether every search ran (``False``: the clock cut it short)."""
    best = None
    searches = _feature_searches(image, image_mask)
    # the template's keypoints, detected once for every search; high-resolution pairs are both
    # detected at a common factor f (features.detection_factor), each search's scale times f
    f = detection_factor(np.shape(tmpl), np.shape(image))
    features = TemplateFeatures(tmpl, f)
    inputs: dict = {}  # the detector's image per stretch setting (made once: a 12 MP conversion is slow)
    for n, (scale, stretch) in enumerate(searches, 1):
        try:
            found = _feature_start(features, image, image_mask, opts, scale, clock, stretch, f, inputs)
        except Stopped:  # the clock stopped the feature search: what was found so far
            return best, False
        if found is not None:
            result = _refine(tmpl, image, image_mask, found, opts, clock)
            if result.converged:
                return result, True
            best = result if best is None or result.zncc > best.zncc else best
        if clock.stop_reason() is not None:
            return best, n == len(searches)
    return best, True


def _raw_detector_input(image, image_mask) -> bool:
    """Whether the image is already what the detector takes: grey ``uint8``, no mask."""
    return image_mask is None and np.asarray(image).dtype == np.uint8 and np.ndim(image) == 2


def _feature_searches(image, image_mask) -> list[tuple[float, bool]]:
    """``(image_scale, stretch)`` of each feature search, in order (see :func:`_global`)."""
    searches = [(IMAGE_SCALE, False), (1.0, False)]
    if _raw_detector_input(image, image_mask):
        searches += [(IMAGE_SCALE, True), (1.0, True)]
    return searches


def _feature_start(features, image, image_mask, opts, scale, clock, stretch=False, factor=1.0, inputs=None):
    """``image_from_template`` from feature matches (:mod:`.features`) or ``None``; raises
    :class:`Stopped` between its stages when the clock says stop. ``stretch``: map a grey
    ``uint8`` image to 8 bits by its percentiles too (other images always are). ``factor``: the
    detection factor (``features.detection_factor``); below 1 the image is first reduced to it
    (``cv2.INTER_AREA``; a missing pixel makes its area missing), and the search runs at ``scale``
    of that. ``inputs``: a dict that keeps the detector's image between the searches of a call."""
    clock.check()
    img = None if inputs is None else inputs.get(stretch)
    if img is None:
        if not stretch and _raw_detector_input(image, image_mask):
            img = image  # already what the detector takes
        else:
            img = prepare(image, image_mask, "image", "image_mask")
        if factor != 1.0:
            img = reduced(img, factor)
        if inputs is not None:
            inputs[stretch] = img
    found = feature_start(features, img, opts.model, scale, check=clock, image_factor=factor)
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
        x0, y0, x1, y1 = _region(image.shape, tmpl.shape, W0, 2 ** (Problem.levels_for(tmpl.shape, opts) - 1))
        img = prepare(image[y0:y1, x0:x1], None if image_mask is None else np.asarray(image_mask)[y0:y1, x0:x1],
                      "image", "image_mask")
        clock.check()
        problem = Problem(tmpl, img, np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]]) @ W0, opts)
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
    matrix = template_from_image(inverse)
    c = template_shape[2]
    nan = float("nan")
    return AlignResult(
        matrix=matrix, inverse=inverse, converged=False, reason=reason, iterations=(), rms_error=nan, zncc=nan,
        cost_history=(), covariance=None, corner_covariance=None, overlap=nan, gain=(1.0,) * c, bias=(0.0,) * c,
        model=opts.model, levels=0, elapsed=clock.elapsed(), chart=make_chart(template_shape), start=start,
    )


def _attempt(problem: Problem, opts: AlignOptions, clock: Clock, coarse_gate: float | None = None) -> Outcome:
    """Coarse to fine from ``problem.W0`` with the schedule of ``opts``. ``coarse_gate``: give
    up (``low_correlation``) when the coarsest level ends correlating less than this -- the
    cheap decision of ``search="auto"`` that the motion is not local. With a gate the finest
    level (the costliest set-up: strongest-pixel selection, Jacobians) is built only when the
    gate is passed, and an attempt given up above it reports the statistics of the last level
    solved (large motion, tuning: ~5 ms of a 16 ms gated attempt). A noise-dominated template
    is solved on a denoised copy and polished on itself (:mod:`.denoise`)."""
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
    solve_pyr, solved = t_pyr, None  # what the solve runs on: the template's, or a denoised copy's
    if coarse_gate is None or n_levels == 1:
        finest = build_level(0, t_pyr[0], i_pyr[0], opts.model, chart, photometric_on, opts.max_pixels, clock.check)
        if not _well_posed(finest):
            n_levels = 0  # nothing to solve: report the start
            reason = FLAT_TEMPLATE
            iterations, histories = [0] * len(t_pyr), [()] * len(t_pyr)
        else:
            solve_pyr, solved = _solve_levels(problem, finest, n_levels, t_pyr, i_pyr, opts, photometric_on, clock)
    for index in range(n_levels - 1, -1, -1):
        if index == 0 and finest is None:  # the gate was passed: build it now
            finest = build_level(0, t_pyr[0], i_pyr[0], opts.model, chart, photometric_on, opts.max_pixels,
                                 clock.check)
            if not _well_posed(finest):
                W, reason = problem.W0, FLAT_TEMPLATE
                iterations.append(0)
                histories.append(())
                break
            solved = _solve_levels(problem, finest, n_levels, t_pyr, i_pyr, opts, photometric_on, clock)[1]
        lv = solved if index == 0 else build_level(index, solve_pyr[index], i_pyr[index], opts.model, chart,
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
        if index == 0 and solved is not finest and out is not None and out.reason not in (TIME_BUDGET, CANCELLED):
            # solved on the denoised template: continue on the template itself (.denoise)
            out = solve_level(finest, W, model=opts.model, chart=chart, chart_inv=chart_inv, corners0=corners0,
                              affine=affine, robust=opts.robust, photometric=photometric_on,
                              max_iterations=opts.max_iterations, tolerance=tol, clock=clock,
                              sigma_floor=problem.sigma_floor)
            W = out.W
            level_its += out.iterations
            level_costs += out.costs
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
        elif photometric_on and opts.photometric == "auto" and same_exposure_fit(out.last, lv):
            photometric_on = False  # the cheap decision: finer levels without the gain/bias columns
            denoising = solved is not finest
            finest = None if finest is None else finest.without_photometric()
            solved = solved.without_photometric() if denoising and solved is not None else finest
        elif index == 1 and photometric_on and opts.photometric == "auto" and TONE_CURVE and lv.shape[2] == 1:
            curve = None if out.last is None else fit_tone_curve(lv.tflat, out.last.warped, t_pyr[0])
            if curve is not None:  # the finest level on the template mapped through it (.tone)
                denoising = solved is not finest
                finest = build_level(0, curve(t_pyr[0]), i_pyr[0], opts.model, chart, True, opts.max_pixels,
                                     clock.check)
                solved = finest if not denoising else build_level(0, curve(solve_pyr[0]), i_pyr[0], opts.model,
                                                                  chart, True, opts.max_pixels, clock.check)
    stats = final_statistics(finest if finest is not None else lv, W, opts, affine, chart, corners0, problem.sigma_floor,
                             image_noise=problem.check_noise, last=last if reason == CONVERGED else None,
                             photometric=photometric_on,
                             denoised=solved if solved is not None and solved is not finest else None)
    if curve is not None:  # report I ~ a f(T) + b as its tangent line at the template's mean
        stats.gain, stats.bias = curve.line(stats.gain, stats.bias)
    outcome = Outcome(W, reason, iterations, histories, stats, len(t_pyr))
    outcome.newton_step = newton_step
    outcome.check(opts)
    if SECOND_LOOK and reason == CONVERGED and len(t_pyr) > 1:
        take_second_look(outcome, W, t_pyr, i_pyr, opts, chart, affine, photometric_on, problem.sigma_floor, clock)
    if outcome.converged:
        # The one check that can tell a wrong stationary point from the optimum (see .verify)
        outcome.margin, outcome.block_margin = margins(t_pyr, i_pyr, W, affine, outliers=outlier_mask(finest, last))
        if not (outcome.margin >= MIN_MARGIN and outcome.block_margin <= MAX_BLOCK_MARGIN):
            outcome.converged, outcome.reason = False, AMBIGUOUS
    return outcome


# The second look at level 1 of a converged solve rejected for its correlation (see _attempt).
SECOND_LOOK = True


def _noise_dominated(problem, finest, opts) -> bool:
    """Whether the template's gradient noise dominates its Hessian in some direction
    (:func:`.covariance.template_noise_share` above :data:`.denoise.NOISE_DOMINATED`) and its
    noise is a real share of its contrast (:data:`.denoise.MIN_NOISE_RATIO`)."""
    # the cheap test first: on clean templates it fails and the share (~0.15 ms) is not computed
    return bool(level_noise_variance(finest) >= (MIN_NOISE_RATIO * problem.template_std) ** 2
                and template_noise_share(finest, opts.model, problem.chart) > NOISE_DOMINATED)


def _solve_levels(problem, finest, n_levels, t_pyr, i_pyr, opts, photometric_on, clock):
    """``(template pyramid, finest level)`` the attempt solves on: the template's own, or, for
    a noise-dominated template (:func:`_noise_dominated`), a denoised copy's (the finest level
    is then polished on ``finest``, the template's own: :mod:`.denoise`)."""
    if not (opts.denoise == "auto" and _noise_dominated(problem, finest, opts)):
        return t_pyr, finest
    pyr = problem.denoised_pyramid(n_levels, level_noise_variance(finest), clock.check)
    return pyr, build_level(0, pyr[0], i_pyr[0], opts.model, problem.chart, photometric_on, opts.max_pixels,
                            clock.check)


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
