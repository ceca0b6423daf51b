"""A stateful sequence registrar: ``SequenceAligner(reference, model).push(frame) -> FrameResult``.

One frame at a time (a stream handler or a batch job drives it), keeping only the reference,
the previous registered frame and at most ``max_keyframes`` keyframes.

Per frame ``k`` (``p`` the previous registered frame, ``ref_from_p`` its registration)::

    step     = align(template=p, image=k, init=prior)          # p_from_k, small motion
    chained  = ref_from_p @ step                                # the chain rule
    for anchor in [reference, keyframes] by predicted overlap:  # re-anchoring
        if overlap(anchor, k | chained) >= anchor_min_overlap:
            direct = align(template=anchor crop, image=k, init=anchor_from_ref @ chained)
    ref_from_k = ref_from_anchor @ direct  # the reference at once when it sees most of k; else
                                           # the converged ones fused by covariance (homography)
                                           # or the one of least propagated covariance

so the chained estimate only seeds a direct alignment whose error does not depend on how many
frames came before; it is the result only when no anchor can be reached (``method="chained"``).
Covariances follow the chain rule of :mod:`.geometry`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..align import align
from ..errors import InvalidArgumentError, InvalidImageError
from ..validate import check_image
from .geometry import (
    apply, chain_covariance, fuse, corners_of, footprint_box, joint_point_covariance, normalised,
    predicted_overlap, translation,
)
from .options import SequenceOptions
from .result import ANCHORED, CHAINED, KEYFRAME, REFERENCE, UNREGISTERED, FrameResult

# AlignResult.reason values used here (public vocabulary, warpsvc.core.align.REASONS).
CONVERGED, CANCELLED = "converged", "cancelled"
# Crop the anchor to the frame's footprint only when that saves at least this fraction of it.
MIN_CROP_SAVING = 0.1


@dataclass(eq=False)  # compared by identity
class _Node:
    """A registered frame the chain can continue from (the reference, a keyframe, the previous)."""

    image: np.ndarray
    index: int | None
    ref_from: np.ndarray      # reference_from_this (3, 3)
    from_ref: np.ndarray      # this_from_reference (3, 3)
    covariance: np.ndarray | None  # (8, 8) of from_ref(X_ref)
    hops: int
    is_reference: bool = False


@dataclass
class _Registration:
    anchor_from_frame: np.ndarray
    converged: bool
    reason: str
    zncc: float
    rms_error: float
    cov_at: object  # callable: anchor points (N, 2) -> (2N, 2N) covariance or None


class SequenceAligner:
    """Register frames one at a time to a fixed reference (see the module docstring).

    reference : ``(H, W)`` or ``(H, W, C)`` image (a frame of the sequence or any image).
    model : motion model of every pairwise alignment (``warpsvc.align``'s ``model``).
    options : :class:`SequenceOptions`.
    reference_index : the reference's index in the sequence when it is one of its frames
        (results then number frames consistently and :meth:`reference_result` describes it).
    step : +1 (frames after the reference, default) or -1 (frames before it, pushed in
        reverse order); only the automatic numbering depends on it.

    ``push(frame, index=None, should_stop=None) -> FrameResult``. ``should_stop`` is polled by
    every alignment (a stream's deadline or cancellation); an interrupted frame is returned
    unregistered with ``reason="cancelled"`` and leaves the state as it was.
    """

    def __init__(self, reference, model: str = "homography", options: SequenceOptions | None = None, *,
                 reference_index: int | None = None, step: int = 1):
        if options is not None and not isinstance(options, SequenceOptions):
            raise InvalidArgumentError(f"options must be a SequenceOptions, got {type(options).__name__}",
                                       field="options")
        self.options = (options or SequenceOptions()).checked()
        self._align_options = self.options.align_options(model).checked()
        self.model = self._align_options.model
        ref = check_image(reference, "reference")
        self._channels = ref.shape[2]
        self._ndim = np.ndim(reference)
        if step not in (1, -1):
            raise InvalidArgumentError(f"step must be 1 or -1, got {step!r}", field="step")
        self._step = step
        self.reference_shape = tuple(ref.shape[:2])
        self._ref_corners = corners_of(self.reference_shape)
        self._reference = _Node(np.array(reference, copy=True), reference_index, np.eye(3), np.eye(3),
                                np.zeros((8, 8)), 0, is_reference=True)
        self._previous = self._reference
        self._last_step = np.eye(3)
        self.keyframes: list[_Node] = []
        self.reference_index = reference_index
        self._next_index = (reference_index + step) if reference_index is not None else 0

    # -- public -------------------------------------------------------------------------
    def reference_result(self) -> FrameResult:
        """The reference frame's own result (identity, zero covariance)."""
        return FrameResult(index=self.reference_index if self.reference_index is not None else -1,
                           matrix=np.eye(3), inverse=np.eye(3), registered=True, method=REFERENCE,
                           reason=REFERENCE, hops=0, anchor=None, previous=None, step=None,
                           covariance=np.zeros((8, 8)), zncc=1.0, rms_error=0.0, alignments=0, elapsed=0.0,
                           reference_shape=self.reference_shape)

    def push(self, frame, *, index: int | None = None, should_stop=None) -> FrameResult:
        """Register ``frame`` (same channel count as the reference) and return its result."""
        start = time.perf_counter()
        img = check_image(frame, "frame")
        if img.shape[2] != self._channels:
            raise InvalidImageError(f"frame has {img.shape[2]} channels but the reference has {self._channels}",
                                    field="frame")
        if index is None:
            index = self._next_index
        self._next_index = index + self._step
        opts = self._align_options if should_stop is None else self._align_options.replace(should_stop=should_stop)
        prev = self._previous
        prior = self._last_step if self.options.motion_prior == "constant_velocity" else np.eye(3)
        n_align = 1
        step = self._register(prev.image, frame, prior, opts)
        if step.converged:
            chained = normalised(prev.ref_from @ step.anchor_from_frame)
            chained_cov = self._through(prev, step)
        else:
            chained = normalised(prev.ref_from @ prior)
            chained_cov = None
        method, chosen, anchor_node = (CHAINED, step, prev) if step.converged else (UNREGISTERED, step, None)
        cancelled = step.reason == CANCELLED
        found = []  # converged direct alignments: (trace, registration, node, covariance)
        if prev.is_reference and step.converged:
            method = ANCHORED  # the step was a direct alignment to the reference
        elif prev in self.keyframes and step.converged:
            method = KEYFRAME
        elif self.options.reanchor and not cancelled:
            found, cancelled, tried = self._anchor(frame, img.shape, chained, prev, opts)
            n_align += tried
            if found:
                chosen, anchor_node = found[0][1], found[0][2]
                method = ANCHORED if anchor_node.is_reference else KEYFRAME
        if cancelled:  # an interrupted frame leaves the state untouched
            method, chosen = UNREGISTERED, _Registration(np.eye(3), False, CANCELLED, np.nan, np.nan, None)
            found = []
        registered = method != UNREGISTERED
        if registered:
            ref_from = normalised(anchor_node.ref_from @ chosen.anchor_from_frame)
            cov = chained_cov if method == CHAINED else self._through(anchor_node, chosen)
            hops = anchor_node.hops + 1
            if method in (ANCHORED, KEYFRAME) and len(found) > 1 and self.options.fuse and self.model == "homography":
                ref_from, cov = fuse(self._ref_corners, [(normalised(n.ref_from @ r.anchor_from_frame), c)
                                                         for _, r, n, c in found])
        else:
            ref_from, cov, hops = chained, None, prev.hops + 1
        from_ref = normalised(np.linalg.inv(ref_from))
        result = FrameResult(
            index=index, matrix=ref_from, inverse=from_ref, registered=registered, method=method,
            reason=CONVERGED if registered else chosen.reason, hops=hops,
            anchor=anchor_node.index if method == KEYFRAME else None,
            previous=prev.index,
            step=normalised(step.anchor_from_frame) if step.converged else None, covariance=cov,
            zncc=chosen.zncc if registered else float("nan"),
            rms_error=chosen.rms_error if registered else float("nan"),
            alignments=n_align, elapsed=time.perf_counter() - start, reference_shape=self.reference_shape)
        if registered:
            self._advance(frame, result, step)
        return result

    # -- internals ----------------------------------------------------------------------
    def _through(self, node: _Node, reg: _Registration):
        """Covariance of frame_from_ref(X_ref) for ``frame_from_ref = reg^-1 o node.from_ref``."""
        c_node = apply(node.from_ref, self._ref_corners)  # reference corners in the node's frame
        k_from_node = np.linalg.inv(reg.anchor_from_frame)
        return chain_covariance(c_node, node.covariance, k_from_node, reg.cov_at(c_node))

    def _register(self, anchor: np.ndarray, frame: np.ndarray, anchor_from_frame: np.ndarray, opts) -> _Registration:
        """``align(anchor, frame)`` from ``anchor_from_frame``, the anchor cut to the frame's
        predicted footprint (plus ``anchor_margin``) when that saves enough of it."""
        box = footprint_box(anchor_from_frame, frame.shape, anchor.shape, self.options.anchor_margin)
        x0 = y0 = 0
        template = anchor
        if box is not None:
            bx0, by0, bx1, by1 = box
            if (bx1 - bx0) * (by1 - by0) < (1 - MIN_CROP_SAVING) * anchor.shape[0] * anchor.shape[1]:
                x0, y0 = bx0, by0
                template = anchor[by0:by1, bx0:bx1]
        init = translation(-x0, -y0) @ anchor_from_frame
        result = align(template, frame, opts.model, init, options=opts)
        offset = (float(x0), float(y0))
        return _Registration(
            anchor_from_frame=normalised(translation(x0, y0) @ result.matrix), converged=result.converged,
            reason=result.reason, zncc=float(result.zncc), rms_error=float(result.rms_error),
            cov_at=lambda pts: joint_point_covariance(result, pts, offset))

    def _anchor(self, frame, frame_shape, chained, prev, opts):
        """Direct alignments to the anchor candidates from the chained estimate: ``(found,
        cancelled, tried)``, ``found`` the converged ones as ``(trace, registration, node,
        covariance)``, least covariance first."""
        found, tried = [], 0
        for node, preferred in self._anchor_candidates(chained, frame_shape):
            if node is prev:  # already tried: it was the step
                continue
            tried += 1
            direct = self._register(node.image, frame, normalised(node.from_ref @ chained), opts)
            if direct.reason == CANCELLED:
                return [], True, tried
            if not direct.converged:
                continue
            cov = self._through(node, direct)
            found.append((np.inf if cov is None else float(np.trace(cov)), direct, node, cov))
            if preferred:  # the reference sees most of the frame: take it
                break
        found.sort(key=lambda t: t[0])
        return found, False, tried

    def _anchor_candidates(self, ref_from_frame: np.ndarray, frame_shape) -> list[tuple[_Node, bool]]:
        """Anchors worth a direct alignment (predicted overlap >= ``anchor_min_overlap``), best
        first, each with whether it is *preferred*: the reference when it sees at least
        ``trust_overlap`` of the frame (no hop error; its result is taken at once). Otherwise
        the anchors by predicted overlap, all tried, and the converged result with the smallest
        propagated covariance wins (a small overlap makes a less accurate alignment, sometimes
        more than a keyframe hop costs)."""
        scored = []
        for node in [self._reference] + self.keyframes:
            overlap = predicted_overlap(node.from_ref @ ref_from_frame, frame_shape, node.image.shape)
            if overlap >= self.options.anchor_min_overlap:
                preferred = node.is_reference and overlap >= self.options.trust_overlap
                scored.append((0 if preferred else 1, -overlap, len(scored), node, preferred))
        scored.sort(key=lambda t: t[:3])
        return [(t[3], t[4]) for t in scored[:self.options.max_anchor_attempts]]

    def _advance(self, frame, result: FrameResult, step: _Registration) -> None:
        """The registered frame becomes the previous one; a keyframe when no anchor sees enough."""
        node = _Node(np.array(frame, copy=True), result.index, result.matrix, result.inverse, result.covariance,
                     result.hops)
        if step.converged:
            self._last_step = step.anchor_from_frame
        self._previous = node
        if self.options.reanchor and self.options.max_keyframes > 0:
            best = max(predicted_overlap(a.from_ref @ result.matrix, frame.shape, a.image.shape)
                       for a in [self._reference] + self.keyframes)
            if best < self.options.keyframe_overlap:
                self.keyframes.append(node)
                if len(self.keyframes) > self.options.max_keyframes:
                    # drop the keyframe this frame overlaps least (it is the least likely anchor next)
                    scores = [predicted_overlap(k.from_ref @ result.matrix, frame.shape, k.image.shape)
                              for k in self.keyframes[:-1]]
                    del self.keyframes[int(np.argmin(scores))]
