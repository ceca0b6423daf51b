"""Per-frame outcome of a sequence registration: :class:`FrameResult` and how it was obtained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..transforms import AffineTransform, HomographyTransform
from .geometry import corner_chart_point_covariance, corners_of

# How a frame's transform to the reference was obtained.
REFERENCE = "reference"        # the frame is the reference (identity, zero covariance)
ANCHORED = "anchored"          # aligned directly to the reference (init: the chained estimate)
KEYFRAME = "keyframe"          # aligned directly to a keyframe, composed with its registration
CHAINED = "chained"            # previous frame's registration o frame-to-frame step
UNREGISTERED = "unregistered"  # every alignment failed; ``matrix`` is the prediction only
METHODS = (REFERENCE, ANCHORED, KEYFRAME, CHAINED, UNREGISTERED)


@dataclass(frozen=True)
class FrameResult:
    """Registration of one frame of a sequence to the reference (never raised: failure is a value).

    index : position of the frame in the sequence.
    matrix : ``(3, 3)`` float64 ``reference_from_frame``: ``warp(frame, result.transform,
        reference_shape)`` brings the frame onto the reference (as ``AlignResult.matrix`` with
        the reference as template).
    inverse : ``(3, 3)`` ``frame_from_reference``.
    registered : the transform comes from converged alignments (``method`` is not
        ``"unregistered"``).
    method : one of :data:`METHODS`.
    reason : ``"converged"`` when registered (``"reference"`` for the reference), else the
        reason of the last failed alignment (``AlignResult.reason`` values).
    hops : alignments composed between the frame and the reference (0 for the reference, 1
        when anchored, a keyframe's hops + 1, the previous frame's hops + 1 when chained): the
        error grows with ``hops``, not with ``index``.
    anchor : index of the keyframe aligned to (``method == "keyframe"``), else ``None``.
    previous : index of the frame the frame-to-frame step aligned to (``None`` for the first
        frame after an image reference, and for the reference).
    step : ``(3, 3)`` ``previous_from_frame`` of the frame-to-frame alignment, ``None`` if it did
        not converge: the per-frame motion (a trajectory), chained products of which are the pure
        chain estimate.
    covariance : ``(8, 8)`` joint covariance of where the reference corners (TL, TR, BR, BL)
        land in the frame, ``(TL.x, TL.y, TR.x, ...)``, px^2, propagated through the chain
        (derivation in :mod:`warpsvc.core.sequence.geometry`); ``None`` when not estimable.
    zncc, rms_error : of the alignment that decided the result (nan when none converged).
    alignments : number of pairwise alignments run for this frame.
    elapsed : seconds spent on this frame.
    reference_shape : ``(H, W)`` of the reference.
    """

    index: int
    matrix: np.ndarray
    inverse: np.ndarray
    registered: bool
    method: str
    reason: str
    hops: int
    anchor: int | None
    previous: int | None
    step: np.ndarray | None
    covariance: np.ndarray | None
    zncc: float
    rms_error: float
    alignments: int
    elapsed: float
    reference_shape: tuple

    @property
    def transform(self):
        """``matrix`` as a transform (:class:`AffineTransform` when it is affine)."""
        return _as_transform(self.matrix)

    @property
    def inverse_transform(self):
        return _as_transform(self.inverse)

    @property
    def corner_covariance(self) -> np.ndarray | None:
        """``(4, 2, 2)`` diagonal blocks of ``covariance`` (``AlignResult.corner_covariance``'s
        meaning, the reference being the template)."""
        if self.covariance is None:
            return None
        c = self.covariance
        return np.stack([c[2 * i:2 * i + 2, 2 * i:2 * i + 2] for i in range(4)])

    def point_covariance(self, xy) -> np.ndarray:
        """``(N, 2, 2)`` covariance of ``inverse.map(xy)``: where reference points land in the frame
        (through the four-corner chart of the homography, see the geometry module)."""
        if self.covariance is None:
            raise ValueError("this result carries no covariance")
        return corner_chart_point_covariance(self.inverse, corners_of(self.reference_shape), self.covariance, xy)

    def to_dict(self) -> dict:
        """JSON-ready summary (a trajectory row): matrices as nested lists, corner standard
        deviations (px, the square root of the larger eigenvalue of each corner block)."""
        cc = self.corner_covariance
        sd = None if cc is None else [float(np.sqrt(max(np.linalg.eigvalsh(b)[-1], 0.0))) for b in cc]
        return {
            "index": self.index, "registered": self.registered, "method": self.method, "reason": self.reason,
            "hops": self.hops, "anchor": self.anchor, "previous": self.previous,
            "matrix": self.matrix.tolist(), "step": None if self.step is None else self.step.tolist(),
            "corner_sd": sd, "zncc": self.zncc, "rms_error": self.rms_error,
            "alignments": self.alignments, "elapsed": self.elapsed,
        }


def _as_transform(matrix):
    m = np.asarray(matrix, dtype=np.float64)
    if np.array_equal(m[2], [0.0, 0.0, 1.0]):
        return AffineTransform(m)
    return HomographyTransform(m)
