"""What the attempts of one ``align`` call share (:class:`Problem`: prepared images, chart,
corners, pyramids by depth, the image's noise) and what one attempt yields (:class:`Outcome`,
with the status checks that turn a finished solve into ``converged`` or a failure reason), and
``photometric="auto"``'s same-exposure decisions. Split from :mod:`.api`, which runs the
attempts."""

from __future__ import annotations

import functools

import numpy as np

from .chart import make_chart
from .denoise import denoised
from .gauss_newton import warp_to_template
from .noise import check_noise_variance, template_noise_variance
from .pyramid import auto_levels, build_pyramid
from .result import CONVERGED, DEGENERATE_WARP, INSUFFICIENT_OVERLAP, LOW_CORRELATION, UNCERTAIN, AlignResult
from .verify import corner_bound

# photometric="auto": "same exposure" when a gain/bias fit is this close to (1, 0) -- gain within
# SAME_GAIN of 1, bias within SAME_BIAS of the template's mean (before the solve: the contrast
# ratio and the mean difference at the coarsest level; after a coarse level: its fit).
SAME_GAIN = 0.03
SAME_BIAS = 0.05


class Problem:
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
        self._denoised = {}
        self._same_exposure = {}
        self.offset = (0, 0)

    @functools.cached_property
    def template_std(self) -> float:
        """Standard deviation of the template's usable values (0.0 when none)."""
        finite = self.tmpl[np.isfinite(self.tmpl)]
        return float(finite.std()) if finite.size else 0.0

    @functools.cached_property
    def image_noise(self) -> float:
        """White-noise variance of the image (Immerkaer), for the final check:
        estimated on a window of about the template's size at the centre of the image part in
        use (the sensor's noise is the same everywhere; the window bounds the cost)."""
        return template_noise_variance(self._noise_window())

    @functools.cached_property
    def check_noise(self) -> float:
        """The image's noise variance as the final check subtracts it (:mod:`.noise`): the white
        estimate, or the half-resolution one on a JPEG-decoded image when that is larger."""
        return check_noise_variance(self._noise_window(), self.image_noise)

    def _noise_window(self):
        H, W = self.img.shape[:2]
        h, w = min(H, self.tmpl.shape[0] + 2), min(W, self.tmpl.shape[1] + 2)
        y0, x0 = (H - h) // 2, (W - w) // 2
        return self.img[y0:y0 + h, x0:x0 + w]

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

    def denoised_pyramid(self, n_levels, variance, check=None):
        """The pyramid of the template denoised for a white noise of ``variance``
        (:func:`.denoise.denoised`, run once per problem: the restarts that change the depth
        reuse it), computed once per depth."""
        if "template" not in self._denoised:
            self._denoised["template"] = denoised(self.tmpl, variance)
        if n_levels not in self._denoised:
            self._denoised[n_levels] = build_pyramid(self._denoised["template"], n_levels, check)
        return self._denoised[n_levels]


class Outcome:
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
        matrix = template_from_image(inverse)
        converged, reason = self.converged, self.reason
        if not np.all(np.isfinite(matrix)):  # a singular warp (e.g. a degenerate start): nothing to invert
            converged, reason = False, DEGENERATE_WARP
        return AlignResult(
            matrix=matrix, inverse=inverse, converged=converged, reason=reason,
            iterations=tuple(self.iterations), rms_error=stats.rms, zncc=stats.zncc,
            cost_history=tuple(self.histories), covariance=stats.covariance,
            corner_covariance=stats.corner_covariance, overlap=stats.overlap, gain=tuple(stats.gain),
            bias=tuple(stats.bias), model=opts.model, levels=self.n_levels, elapsed=clock.elapsed(),
            chart=problem.chart, start=start,
        )


def constant_template(tmpl: np.ndarray) -> bool:
    """Every usable (finite) template value the same, or none: ``flat_template`` whatever the
    start. :func:`.api.align` checks it before any search: the coarse-gated solve of
    ``search="auto"`` stopped at its gate (NaN correlation) before the finest level's flatness
    check, and the global search then reported ``low_correlation`` with a spurious shift (found
    by a hostile-client test)."""
    finite = tmpl[np.isfinite(tmpl)]
    return finite.size == 0 or bool(finite.min() == finite.max())


def template_from_image(inverse: np.ndarray) -> np.ndarray:
    """The inverse of ``image_from_template`` ``inverse`` (3, 3), normalised so that its ``[2, 2]`` is 1
    (bottom row exactly ``(0, 0, 1)`` for an affine ``inverse``); all NaN when ``inverse`` is singular."""
    try:
        matrix = np.linalg.inv(inverse)
    except np.linalg.LinAlgError:
        return np.full((3, 3), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = matrix / matrix[2, 2]
    if np.array_equal(inverse[2], [0.0, 0.0, 1.0]):
        matrix[2] = (0.0, 0.0, 1.0)
    return matrix


def same_exposure_fit(ev, lv) -> bool:
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
