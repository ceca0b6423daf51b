"""Options of :func:`warpsvc.align`, grouped in one frozen dataclass, and their guards.

``align(template, image, model, init, *, levels=..., robust=..., ...)`` accepts the issue's
keyword arguments and builds an :class:`AlignOptions` from them; callers that align many
pairs with the same settings (the gRPC servicer, a tracker) can build one ``AlignOptions`` and
pass it as ``options=`` instead. Every guard raises :class:`~warpsvc.core.errors.InvalidArgumentError`
with ``field=`` naming the argument.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

from ..errors import InvalidArgumentError
from ..transforms.models import MODELS

ROBUST_LOSSES = (None, "huber", "tukey")
PHOTOMETRIC_MODELS = (None, "gain_bias")  # the appearance models (the proto's Photometric values)
# Accepted ``photometric`` values: a model, or "auto" (the default: decided per call, see
# AlignOptions; on the wire it is the enum's zero value, "the library default").
PHOTOMETRIC_OPTIONS = PHOTOMETRIC_MODELS + ("auto",)
MAX_LEVELS = 12
SEARCHES = ("auto", "local", "global")
# Accepted ``denoise`` values (the proto's Denoise values): "auto" (default) or None (off).
DENOISE_OPTIONS = (None, "auto")
CHANNELS = ("mean", "all")



# Tuning constants (policy, one place). Robust-loss constants give 95 % efficiency under
# Gaussian noise; the scale comes from the median absolute deviation.
HUBER_K = 1.345
TUKEY_C = 4.685
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class AlignOptions:
    """Everything :func:`warpsvc.align` can be told besides the images and ``init``.

    model : motion model of the update: ``translation``, ``euclidean``, ``similarity``,
        ``affine`` or ``homography``.
    levels : pyramid levels (``"auto"``: halve until the template's shorter side would drop
        below ``min_level_side`` pixels, at most ``auto_max_levels``).
    robust : ``None`` (least squares), ``"huber"`` or ``"tukey"`` (IRLS, scale from the MAD).
    photometric : ``"auto"`` (default): ``"gain_bias"`` without a robust loss, ``None`` with
        one (an occluder biases the gain fit: 0.09-0.15 px instead of 0.01 px on the occlusion
        test; ask for both explicitly to get both). ``"gain_bias"``: per-channel
        ``image ~ a * template + b``, refitted every iteration; it also absorbs most of a gamma change, whose curve is close to a
        line over a template's intensity range) or ``None`` (identical exposure assumed: the
        opt-out, ~10 % faster per iteration; on photographs with exposure changes it captures
        half as often, see ``docs/alignment.md``).
    denoise : ``"auto"`` (default): a template whose gradient noise dominates its Hessian in
        some direction (and whose noise is >= 5 % of its contrast) is solved on a denoised copy
        and polished on itself (:mod:`.denoise`: at noise 8 on the tuning photographs, capture
        89.0 -> 95.5 %; ~3.5 ms more per 100x100 template, only on such templates); ``None``:
        never (the solve of earlier versions).
    max_iterations : Gauss-Newton iterations allowed per pyramid level.
    tolerance : stop a level when the update moves no template corner by more than this many
        full-resolution pixels (coarse levels stop at ``coarse_tolerance`` level pixels).
    time_budget : seconds for the whole call, checked between iterations and between the
        set-up stages (crop, pyramid levels, Jacobians, feature search); ``None`` = unlimited.
    should_stop : optional zero-argument callable polled where ``time_budget`` is checked; when
        it returns true the call ends with ``reason="cancelled"`` (the gRPC server passes a check
        of the RPC's deadline / cancellation). A stop before the first iteration returns the
        start with nothing measured (``rms_error``, ``zncc``, ``overlap`` NaN, ``levels`` 0).
    min_zncc : a result is ``converged`` only if the *noise-corrected* correlation of the
        aligned images reaches this (over the inliers, weighted by the robust loss, when
        ``robust`` is set): ``cov / sqrt((var_T - n_T)(var_I - n_I))`` with ``n_T, n_I`` the
        white-noise variances estimated from each image (Immerkaer), which is
        about 1 at the right warp whatever the noise. Measured on photographs: right warps
        0.995+ at noise 0, 8 and 16 and 0.986+ under JPEG + gamma; wrong noise-free minima
        0.83-0.98 (the 0.98 ones slip through: ``docs/alignment.md`` has the rates).
    min_overlap : a result is ``converged`` only if at least this fraction of the usable
        template pixels lands inside the image.
    max_corner_error : a result is ``converged`` only if its covariance is estimable and
        predicts a template-corner RMS error (``image pixels``, :func:`.verify.corner_bound`:
        :data:`.verify.BOUND_SIGMAS` standard deviations) of at most this; otherwise
        ``reason="uncertain"``. ``None`` (or ``inf``, the wire's spelling) turns the check off. The default, 1 px, is the
        benchmarks' success threshold.
    coarse_tolerance : level pixels; coarse levels also stop at the first step that does not
        lower the cost.
    min_level_side, auto_max_levels : how ``levels="auto"`` picks the pyramid depth (the
        minimum side doubles with a robust loss).
    warm_start : ``None`` or ``"translation"``: solve a translation first at the coarsest level
        (after the search). Off by default; the first restart turns it on.
    coarsest_model : for ``model="homography"``, the model solved at the coarsest level
        (``"affine"``: a dozen-pixel template does not determine perspective terms).
    search_radius : coarsest-level pixels of the exhaustive ZNCC translation search that
        starts the pyramid (0 = off).
    max_pixels : per level, use at most this many template pixels (those with the strongest
        gradient) and sample the image only there; ``None`` = every pixel. Large templates
        (a 640x480 frame) then cost about as much as a 140x140 one.
    retry : when an attempt ends unconverged for a reason another schedule might fix
        (``low_correlation``, ``max_iterations``, ``no_progress``, ``degenerate_warp``), try
        again with the translation warm start toggled, then with one level fewer; keep the first
        converged attempt (else the best-correlated one). Costs time only on failures.
    channels : ``"mean"`` (default): colour / multi-channel inputs are aligned on the mean of
        their channels (the cost of one grey pair; the mean also averages the channels'
        independent noise); ``"all"``: every channel enters the cost (C times the work, useful
        when the channels carry different structure, e.g. stacked modalities).
    search : how a start is found when ``init`` is ``None``: ``"local"`` (Gauss-Newton from
        the identity only), ``"global"`` (feature matches -- SIFT + MAGSAC, :mod:`.features` --
        then Gauss-Newton), ``"auto"`` (default: the local solve first, without its restarts;
        if it fails, the global start; if that fails too, the local restarts). With an
        ``init``, always local (``"global"`` is refused).
    """

    model: str = "homography"
    search: str = "auto"
    levels: object = "auto"
    robust: str | None = None
    photometric: str | None = "auto"
    denoise: str | None = "auto"
    max_iterations: int = 50
    tolerance: float = 1e-3
    time_budget: float | None = None
    should_stop: Callable[[], bool] | None = None
    min_zncc: float = 0.97
    min_overlap: float = 0.25
    max_corner_error: float | None = 1.0
    coarse_tolerance: float = 0.1
    min_level_side: int = 12
    auto_max_levels: int = 5
    warm_start: str | None = None
    coarsest_model: str = "affine"
    search_radius: int = 3
    max_pixels: int | None = 20_000
    retry: bool = True
    channels: str = "mean"

    def checked(self) -> AlignOptions:
        """Return ``self`` after validating every field (raises ``InvalidArgumentError``)."""
        if self.model not in MODELS:
            raise InvalidArgumentError(f"model must be one of {MODELS}, got {self.model!r}", field="model")
        if self.search not in SEARCHES:
            raise InvalidArgumentError(f"search must be one of {SEARCHES}, got {self.search!r}", field="search")
        if self.levels != "auto":
            _int_in(self.levels, 1, MAX_LEVELS, "levels", extra=' or "auto"')
        if self.robust not in ROBUST_LOSSES:
            raise InvalidArgumentError(f"robust must be one of {ROBUST_LOSSES}, got {self.robust!r}", field="robust")
        if self.photometric not in PHOTOMETRIC_OPTIONS:
            raise InvalidArgumentError(
                f"photometric must be one of {PHOTOMETRIC_OPTIONS}, got {self.photometric!r}", field="photometric"
            )
        if self.denoise not in DENOISE_OPTIONS:
            raise InvalidArgumentError(f"denoise must be one of {DENOISE_OPTIONS}, got {self.denoise!r}",
                                       field="denoise")
        _int_in(self.max_iterations, 1, 100_000, "max_iterations")
        _positive(self.tolerance, "tolerance")
        _positive(self.coarse_tolerance, "coarse_tolerance")
        if self.time_budget is not None:
            _positive(self.time_budget, "time_budget")
        if self.should_stop is not None and not callable(self.should_stop):
            raise InvalidArgumentError("should_stop must be callable or None", field="should_stop")
        _number_in(self.min_zncc, -1.0, 1.0, "min_zncc")
        _number_in(self.min_overlap, 0.0, 1.0, "min_overlap")
        if self.max_corner_error is not None and self.max_corner_error != math.inf:  # inf: off, like None
            _positive(self.max_corner_error, "max_corner_error")
        _int_in(self.min_level_side, 4, 1 << 20, "min_level_side")
        _int_in(self.auto_max_levels, 1, MAX_LEVELS, "auto_max_levels")
        if self.warm_start not in (None, "translation"):
            raise InvalidArgumentError(f"warm_start must be None or 'translation', got {self.warm_start!r}",
                                       field="warm_start")
        if self.coarsest_model not in ("affine", "homography"):
            raise InvalidArgumentError(
                f"coarsest_model must be 'affine' or 'homography', got {self.coarsest_model!r}", field="coarsest_model")
        _int_in(self.search_radius, 0, 64, "search_radius")
        if not isinstance(self.retry, bool):
            raise InvalidArgumentError(f"retry must be a bool, got {self.retry!r}", field="retry")
        if self.channels not in CHANNELS:
            raise InvalidArgumentError(f"channels must be one of {CHANNELS}, got {self.channels!r}", field="channels")
        if self.max_pixels is not None:
            _int_in(self.max_pixels, 64, 1 << 31, "max_pixels", extra=" or None")
        return self

    @property
    def gain_bias(self) -> bool:
        """Whether the gain/bias appearance model is on (``photometric`` resolved)."""
        if self.photometric == "auto":
            return self.robust is None
        return self.photometric == "gain_bias"

    def replace(self, **changes) -> AlignOptions:
        """A copy with ``changes`` (unknown names raise ``InvalidArgumentError`` naming them)."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise InvalidArgumentError(f"unknown option {name!r}", field=name)
        return replace(self, **changes)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_in(value, lo, hi, field, extra=""):
    if not _is_int(value) or not lo <= value <= hi:
        raise InvalidArgumentError(f"{field} must be an integer in [{lo}, {hi}]{extra}, got {value!r}", field=field)


def _number(value, field) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise InvalidArgumentError(f"{field} must be a finite number, got {value!r}", field=field)
    return float(value)


def _positive(value, field):
    if _number(value, field) <= 0:
        raise InvalidArgumentError(f"{field} must be positive, got {value!r}", field=field)


def _number_in(value, lo, hi, field):
    if not lo <= _number(value, field) <= hi:
        raise InvalidArgumentError(f"{field} must be in [{lo}, {hi}], got {value!r}", field=field)


def explicit_keywords(func):
    """Decorator: call ``func`` with ``_given``, the names of the arguments the caller actually
    passed (so an explicit keyword equal to its default still overrides an ``options``
    object), while ``inspect.signature`` shows the real defaults (``_given`` hidden)."""
    sig = inspect.signature(func)
    public = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "_given"])
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = tuple(p.name for p in public.parameters.values() if p.kind in kinds)
    if any(p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
           for p in public.parameters.values()):
        raise TypeError("explicit_keywords needs a signature without *args / **kwargs")

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        # The names bound, without Signature.bind (~15 us a call): the first len(args)
        # positional parameters and the keywords. Bad arguments raise func's own TypeError
        # (unknown, twice, missing) or the public signature's (too many, a caller's ``_given``).
        if len(args) > len(positional) or "_given" in kwargs:
            public.bind(*args, **kwargs)  # raises the TypeError the public signature gives
        given = frozenset(positional[:len(args)]).union(kwargs)
        return func(*args, _given=given, **kwargs)

    wrapper.__signature__ = public
    return wrapper


def merge_options(options: AlignOptions | None, given, **values) -> AlignOptions:
    """``options`` (or the defaults) with every keyword in ``given`` (the ones the caller
    passed), even when its value equals the dataclass default."""
    explicit = {k: v for k, v in values.items() if k in given}
    if options is None:
        return AlignOptions().replace(**explicit)
    if not isinstance(options, AlignOptions):
        raise InvalidArgumentError(f"options must be an AlignOptions, got {type(options).__name__}", field="options")
    return options.replace(**explicit)
