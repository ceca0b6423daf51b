"""The value :func:`warpsvc.align` returns: :class:`AlignResult`, and the stop reasons."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ..transforms import AffineTransform, HomographyTransform

class Reason(StrEnum):
    """Why a pyramid level (and so the call) stopped. Only CONVERGED gives ``converged=True``.
    A ``str`` enum: ``Reason.CONVERGED == "converged"`` and ``str()`` gives the value."""

    CONVERGED = "converged"                  # the update fell below the tolerance
    MAX_ITERATIONS = "max_iterations"        # iteration limit of the finest level reached
    TIME_BUDGET = "time_budget"              # ``time_budget`` seconds spent
    CANCELLED = "cancelled"                  # ``should_stop()`` returned true
    NO_PROGRESS = "no_progress"              # damping grew without finding a lower cost
    INSUFFICIENT_OVERLAP = "insufficient_overlap"  # too few template pixels land inside the image
    FLAT_TEMPLATE = "flat_template"          # no gradient (or too little) to constrain the motion
    DEGENERATE_WARP = "degenerate_warp"      # the warp folded or became singular
    LOW_CORRELATION = "low_correlation"      # stopped, but the aligned images do not correlate
    AMBIGUOUS = "ambiguous"                  # stopped, but a shifted placement correlates about as well
    UNCERTAIN = "uncertain"                  # stopped, but the covariance puts the corners too far apart


class Start(StrEnum):
    """How the start of the final Gauss-Newton refinement was found (``AlignResult.start``)."""

    IDENTITY = "identity"    # init=None, the local solve from the identity succeeded
    INIT = "init"            # from the caller's ``init``
    FEATURES = "features"    # global search: SIFT matches + cv2.findHomography(USAC_MAGSAC)


CONVERGED, MAX_ITERATIONS, TIME_BUDGET, CANCELLED = (Reason.CONVERGED, Reason.MAX_ITERATIONS, Reason.TIME_BUDGET,
                                                      Reason.CANCELLED)
NO_PROGRESS, INSUFFICIENT_OVERLAP, FLAT_TEMPLATE = Reason.NO_PROGRESS, Reason.INSUFFICIENT_OVERLAP, Reason.FLAT_TEMPLATE
DEGENERATE_WARP, LOW_CORRELATION, AMBIGUOUS = Reason.DEGENERATE_WARP, Reason.LOW_CORRELATION, Reason.AMBIGUOUS
UNCERTAIN = Reason.UNCERTAIN
REASONS = tuple(r.value for r in Reason)


@dataclass(frozen=True)
class AlignResult:
    """Outcome of :func:`warpsvc.align` (never raised: a failure is a result with a reason).

    matrix : ``(3, 3)`` float64, ``template_from_image``. ``warp(image, result.transform,
        template.shape[:2])`` brings the image onto the template.
    inverse : ``(3, 3)`` float64, ``image_from_template`` (where each template pixel lies in the
        image; what OpenCV's ``findTransformECC`` calls the warp matrix).
    converged : the finest level met the tolerance (or ran out of iterations with its undamped
        Gauss-Newton step at the noise floor) and the result passed the sanity checks (overlap,
        correlation, no competing correlation peak within a few pixels: :mod:`.verify`, and a
        predicted corner error within ``AlignOptions.max_corner_error``: :func:`.verify.corner_bound`).
    reason : a :class:`Reason` (one of :data:`REASONS`); ``"converged"`` exactly when ``converged``.
    iterations : Gauss-Newton iterations per pyramid level, coarsest first.
    rms_error : root-mean-square residual over the overlapping template pixels (after the
        gain/bias correction when ``photometric="gain_bias"``), in image intensity units.
    zncc : zero-normalised cross-correlation of template and aligned image over the overlap.
    cost_history : per level (coarsest first), the mean cost at each iteration.
    covariance : ``(P, P)`` covariance of the motion parameters in the normalised template
        chart (see :meth:`point_covariance`); ``None`` when not estimable.
    corner_covariance : ``(4, 2, 2)`` covariance of where the template corners (TL, TR, BR, BL)
        land in the image, in image pixels squared; ``None`` when not estimable.
    overlap : fraction of usable template pixels that land inside the image at the end.
    gain, bias : per-channel photometric fit ``image ~ gain * template + bias`` (1 and 0 when
        ``photometric=None``).
    model : the motion model of the update.
    levels : number of pyramid levels used.
    elapsed : wall-clock seconds spent in the call.
    start : how the final refinement's start was found, a :class:`Start`: ``"init"`` (the
        caller's ``init``), ``"identity"`` (``init=None``, local solve from the identity) or
        ``"features"`` (global search: SIFT + MAGSAC, see :mod:`.features`).
    """

    matrix: np.ndarray
    inverse: np.ndarray
    converged: bool
    reason: str
    iterations: tuple
    rms_error: float
    zncc: float
    cost_history: tuple
    covariance: np.ndarray | None
    corner_covariance: np.ndarray | None
    overlap: float
    gain: tuple
    bias: tuple
    model: str
    levels: int
    elapsed: float
    # Chart of ``covariance``: template pixels -> normalised coordinates, and template shape.
    chart: np.ndarray | None = None
    # How the start of the final refinement was found (see :class:`Start`).
    start: Start = Start.IDENTITY

    @property
    def transform(self):
        """``matrix`` as a transform object (:class:`AffineTransform` when it is affine)."""
        return _as_transform(self.matrix, self.model)

    @property
    def inverse_transform(self):
        """``inverse`` as a transform object."""
        return _as_transform(self.inverse, self.model)

    @property
    def total_iterations(self) -> int:
        return int(sum(self.iterations))

    def point_covariance(self, xy) -> np.ndarray:
        """``(N, 2, 2)`` covariance of ``inverse.map(xy)`` (image positions of template points).

        The estimate is ``W`` (= ``inverse``); the truth is ``W o C^-1 o M(d)^-1 o C`` with ``C``
        the normalising chart (``chart``) and ``d ~ N(0, covariance)``, so to first order the
        image point moves by ``-dW/dx . s . dM(d)x/dd . d`` with ``s`` the chart's pixel scale.
        """
        if self.covariance is None or self.chart is None:
            raise ValueError("this result carries no covariance")
        from .chart import point_covariance
        cov = point_covariance(self.inverse, self.chart, self.model, self.covariance, xy)
        if cov is None:
            raise ValueError("this result's matrix is too ill-conditioned to propagate its covariance")
        return cov


def _as_transform(matrix, model):
    m = np.asarray(matrix, dtype=np.float64)
    if np.array_equal(m[2], [0.0, 0.0, 1.0]):
        return AffineTransform(m, model="affine")
    return HomographyTransform(m, model="homography")
