"""Options of :func:`align_sequence` / :class:`SequenceAligner`, grouped in a frozen dataclass."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace

from ..align import AlignOptions
from ..errors import InvalidArgumentError

MOTION_PRIORS = ("static", "constant_velocity")


def default_align_options() -> AlignOptions:
    """Per-pair alignment settings used when none are given: gain and bias per frame (video
    exposure changes, flicker), everything else as :func:`warpsvc.align`'s defaults."""
    return AlignOptions(photometric="gain_bias")


@dataclass(frozen=True)
class SequenceOptions:
    """How a sequence is registered (every field is checked by :meth:`checked`).

    align : :class:`~warpsvc.core.align.AlignOptions` for every pairwise alignment (its ``model``
        is replaced by the sequence's model); ``None`` = :func:`default_align_options`.
    reanchor : after each frame-to-frame step, align the frame directly to the reference (or a
        keyframe) starting from the chained estimate. Off = pure chaining (the error then grows
        like a random walk with the sequence length).
    anchor_min_overlap : a direct alignment to an anchor (the reference or a keyframe) is tried
        only when the chained estimate puts at least this fraction of the frame inside it.
    keyframe_overlap : a registered frame of which no anchor sees at least this fraction becomes a
        keyframe (a new anchor, its own registration frozen), so frames that drift off the
        reference still anchor within one keyframe hop.
    max_keyframes : keyframes kept (memory: one frame each); beyond it the one the current frame
        overlaps least is dropped.
    trust_overlap : when the reference sees at least this fraction of the frame, a converged
        direct alignment to it is taken at once (one alignment; otherwise see
        ``max_anchor_attempts``).
    max_anchor_attempts : direct alignments tried per frame when the reference alone is not
        trusted: up to this many anchors by predicted overlap; the converged results are fused
        (``fuse``) or the one with the smallest propagated covariance (trace) wins.
    anchor_margin : pixels added around the frame's predicted footprint when the anchor is
        cropped to it (the anchor image is cut to that box before aligning, which keeps the
        strongest-gradient pixels inside the overlap and the cost independent of its size).
    motion_prior : initial guess of a frame-to-frame step: ``"static"`` (identity; a shaky
        camera's increments are independent) or ``"constant_velocity"`` (the previous step; pans).
    fuse : when several anchors converge (the reference sees less than ``trust_overlap`` of
        the frame), combine their estimates weighted by their covariances (homography model;
        :func:`~warpsvc.core.sequence.geometry.fuse`) instead of keeping the best one.
    """

    align: AlignOptions | None = None
    reanchor: bool = True
    anchor_min_overlap: float = 0.3
    keyframe_overlap: float = 0.6
    trust_overlap: float = 0.8
    max_keyframes: int = 4
    max_anchor_attempts: int = 2
    anchor_margin: int = 8
    motion_prior: str = "static"
    fuse: bool = True

    def checked(self) -> SequenceOptions:
        if self.align is not None and not isinstance(self.align, AlignOptions):
            raise InvalidArgumentError(f"align must be an AlignOptions or None, got {type(self.align).__name__}",
                                       field="align")
        if self.align is not None:
            self.align.checked()
        if not isinstance(self.fuse, bool):
            raise InvalidArgumentError(f"fuse must be a bool, got {self.fuse!r}", field="fuse")
        if not isinstance(self.reanchor, bool):
            raise InvalidArgumentError(f"reanchor must be a bool, got {self.reanchor!r}", field="reanchor")
        _fraction(self.anchor_min_overlap, "anchor_min_overlap")
        _fraction(self.keyframe_overlap, "keyframe_overlap")
        _fraction(self.trust_overlap, "trust_overlap")
        _int_in(self.max_keyframes, 0, 1024, "max_keyframes")
        _int_in(self.max_anchor_attempts, 1, 1024, "max_anchor_attempts")
        _int_in(self.anchor_margin, 0, 1 << 16, "anchor_margin")
        if self.motion_prior not in MOTION_PRIORS:
            raise InvalidArgumentError(f"motion_prior must be one of {MOTION_PRIORS}, got {self.motion_prior!r}",
                                       field="motion_prior")
        return self

    def align_options(self, model: str) -> AlignOptions:
        return (self.align or default_align_options()).replace(model=model)

    def replace(self, **changes) -> SequenceOptions:
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise InvalidArgumentError(f"unknown option {name!r}", field=name)
        return replace(self, **changes)


def _int_in(value, lo, hi, field):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise InvalidArgumentError(f"{field} must be an integer in [{lo}, {hi}], got {value!r}", field=field)


def _fraction(value, field):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value))
            or not 0.0 < float(value) <= 1.0):
        raise InvalidArgumentError(f"{field} must be a number in (0, 1], got {value!r}", field=field)
