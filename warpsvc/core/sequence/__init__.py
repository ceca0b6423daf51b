"""Image sequences: register a stream of frames to a reference, and co-add them with flux conserved.

``align_sequence(frames, model, reference=0)`` yields a :class:`FrameResult` per frame
(:mod:`.api`); :class:`SequenceAligner` is the same one frame at a time (``push``), for stream
handlers; ``stack`` / :class:`Stacker` resample and accumulate registered frames
(:mod:`.stack`). The math (chain rule, covariance propagation, coverage, flux) is in
:mod:`.geometry`, :mod:`.stack` and ``docs/sequences.md``.
"""

from .aligner import SequenceAligner
from .api import align_sequence
from .options import SequenceOptions
from .result import METHODS, FrameResult
from .stack import StackOptions, StackResult, Stacker, stack

__all__ = ["METHODS", "FrameResult", "SequenceAligner", "SequenceOptions", "StackOptions", "StackResult", "Stacker",
           "align_sequence", "stack"]
