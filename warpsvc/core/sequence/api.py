"""``align_sequence``: register every frame of an iterable to a reference frame or image."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import InvalidArgumentError
from .aligner import SequenceAligner
from .options import SequenceOptions
from .result import FrameResult


def align_sequence(frames: Iterable[np.ndarray], model: str = "homography", *, reference=0,
                   options: SequenceOptions | None = None, should_stop=None) -> Iterator[FrameResult]:
    """Register every frame to the reference by chaining frame-to-frame steps and re-anchoring.

    Parameters
    ----------
    frames : any iterable of ``(H, W)`` / ``(H, W, C)`` images (a generator is fine: frames are
        consumed one at a time and only the reference, the previous frame and the keyframes
        are kept; with an index ``reference`` the frames before it are held until it arrives).
    model : motion model (``translation`` ... ``homography``).
    reference : the index of the reference frame in ``frames`` (default 0), or an image (then
        every frame, index 0 included, is registered to it).
    options : :class:`SequenceOptions`.
    should_stop : zero-argument callable polled by every alignment (cancellation).

    Yields
    ------
    One :class:`FrameResult` per frame, in index order, as soon as it is known. Frames before an
    index reference are buffered (memory: ``reference`` frames) and, once the reference arrives,
    registered backwards from it (``reference - 1`` chains on ``reference``, ``reference - 2``
    on ``reference - 1``, ... with re-anchoring as for the frames after it), so both sides of
    the reference are one chain step apart from their neighbours; their results are yielded
    then, followed by the reference's own (identity) and the frames after it.
    """
    if options is not None and not isinstance(options, SequenceOptions):
        raise InvalidArgumentError(f"options must be a SequenceOptions, got {type(options).__name__}", field="options")
    (options or SequenceOptions()).checked().align_options(model).checked()  # bad settings fail here, not mid-stream
    if isinstance(reference, np.ndarray):
        return _against_image(frames, reference, model, options, should_stop)
    if isinstance(reference, bool) or not isinstance(reference, numbers.Integral) or reference < 0:
        raise InvalidArgumentError(
            f"reference must be a non-negative frame index or an image, got {reference!r}", field="reference")
    return _against_index(frames, int(reference), model, options, should_stop)


def _against_image(frames, reference, model, options, should_stop):
    aligner = SequenceAligner(reference, model, options)
    for frame in frames:
        yield aligner.push(frame, should_stop=should_stop)


def _against_index(frames, r, model, options, should_stop):
    it = iter(frames)
    before = []
    for frame in it:
        if len(before) == r:
            ref = frame
            break
        before.append(frame)
    else:
        raise InvalidArgumentError(f"reference index {r} is beyond the sequence ({len(before)} frames)",
                                   field="reference")
    if before:
        backward = SequenceAligner(ref, model, options, reference_index=r, step=-1)
        results = []
        while before:
            results.append(backward.push(before.pop(), should_stop=should_stop))
        del backward
        yield from reversed(results)
    forward = SequenceAligner(ref, model, options, reference_index=r)
    del ref
    yield forward.reference_result()
    for frame in it:
        yield forward.push(frame, should_stop=should_stop)
