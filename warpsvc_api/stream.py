"""``AlignStream`` messages <-> the library's sequence values, both directions.

=========================  ======================================  =================================
message                    to the wire                             from the wire
=========================  ======================================  =================================
``AlignStreamSetup``       :func:`setup_request` (client)          :func:`setup_options` (server)
``AlignStreamFrame``       :func:`frame_request` (client)          the server's image decoder
``AlignStreamResponse``    :func:`frame_response` (server)         :func:`frame_result` (client)
=========================  ======================================  =================================

Like :mod:`.convert`, nothing here imports the compute library: the server builds
``SequenceOptions`` / ``AlignOptions`` from the plain keyword dictionaries of
:func:`setup_options`, and the client gets :class:`StreamFrameResult`, a numpy-only twin of
``warpsvc.core.sequence.FrameResult`` (same fields, ``transform``, ``corner_covariance``,
``to_dict``), since importing the sequence package loads OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import convert, vocab, wire
from .v1 import warp_pb2 as pb

REQUEST_SETUP = wire.number(pb.AlignStreamRequest, "setup")
REQUEST_FRAME = wire.number(pb.AlignStreamRequest, "frame")
FRAME_IMAGE = wire.number(pb.AlignStreamFrame, "image")
SETUP_REFERENCE = wire.number(pb.AlignStreamSetup, "reference")
CHANNELS = vocab.Vocabulary(pb.Channels, "channels")
MOTION_PRIOR = vocab.Vocabulary(pb.MotionPrior, "motion_prior")
# SequenceOptions fields with presence (unset = the library default).
SEQUENCE_FIELDS = ("reanchor", "anchor_min_overlap", "keyframe_overlap", "trust_overlap", "max_keyframes",
                   "max_anchor_attempts", "anchor_margin", "fuse")
ALIGN_ENUMS = (("robust", vocab.ROBUST_LOSS), ("photometric", vocab.PHOTOMETRIC), ("channels", CHANNELS))
ALIGN_NUMBERS = ("levels", "max_iterations", "tolerance")  # 0 = the library default
ALIGN_PRESENT = ("min_zncc",)  # AlignOptions fields with presence (0 is a valid value; unset = default)


# -- client -> server --------------------------------------------------------------------------
def setup_request(reference, model: str = "homography", *, reference_index: int | None = None,
                  **options) -> wire.Parts:
    """The first ``AlignStreamRequest``: ``reference`` (array or file bytes), ``model`` and the
    sequence / pairwise options given as keywords (names of ``SequenceOptions`` and
    ``AlignOptions``; absent = the library default). ``None`` is the library's ``None`` for the
    options whose vocabulary has one (``robust=None``, ``photometric=None``: the ``*_NONE`` enum
    value, as :func:`warpsvc_api.convert.align_request` sends it); for the others it means unset."""
    opts = pb.SequenceOptions()
    enums = dict(ALIGN_ENUMS)
    for name, value in options.items():
        if value is None and not (name in enums and None in enums[name].values):
            continue
        if name in SEQUENCE_FIELDS:
            setattr(opts, name, value)
        elif name == "motion_prior":
            opts.motion_prior = MOTION_PRIOR.to_wire(value)
        elif name in enums:
            setattr(opts, name, enums[name].to_wire(value))
        elif name in ALIGN_NUMBERS:
            setattr(opts, name, 0 if value == "auto" else value)
        elif name in ALIGN_PRESENT:
            try:
                setattr(opts, name, float(value))
            except (TypeError, ValueError):
                raise convert.InvalidArgumentError(f"{name} must be a number, got {value!r}", field=name) from None
        else:
            raise convert.InvalidArgumentError(f"unknown sequence option {name!r}", field=name)
    setup = pb.AlignStreamSetup(model=vocab.MOTION_MODEL.to_wire(model), options=opts)
    if reference_index is not None:
        setup.reference_index = int(reference_index)
    fields = wire.Parts.of(setup).then(convert.image_field(reference, SETUP_REFERENCE, "reference"))
    return fields.nested(REQUEST_SETUP)


def frame_request(frame) -> wire.Parts:
    """An ``AlignStreamRequest`` carrying one frame (array: raw, one copy when joined; bytes:
    an encoded file)."""
    return convert.image_field(frame, FRAME_IMAGE, "frame").nested(REQUEST_FRAME)


def setup_options(setup: pb.AlignStreamSetup) -> tuple[dict, dict]:
    """``(sequence, pairwise)`` keyword dictionaries: ``SequenceOptions`` fields (``model``
    included) and ``AlignOptions`` fields; unset values are left out (library defaults)."""
    o = setup.options
    sequence = {name: getattr(o, name) for name in SEQUENCE_FIELDS if o.HasField(name)}
    model = vocab.MOTION_MODEL.from_wire(setup.model, "setup.model")
    if model is not vocab.DEFAULT:
        sequence["model"] = model
    prior = MOTION_PRIOR.from_wire(o.motion_prior, "setup.options.motion_prior")
    if prior is not vocab.DEFAULT:
        sequence["motion_prior"] = prior
    pairwise = {}
    for name, words in ALIGN_ENUMS:
        value = words.from_wire(getattr(o, name), f"setup.options.{name}")
        if value is not vocab.DEFAULT:
            pairwise[name] = value
    pairwise.update({name: getattr(o, name) for name in ALIGN_NUMBERS if getattr(o, name) != 0})
    pairwise.update({name: getattr(o, name) for name in ALIGN_PRESENT if o.HasField(name)})
    return sequence, pairwise


# -- server -> client --------------------------------------------------------------------------
def _values(m) -> list[float]:
    return [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def corner_sd(covariance) -> list[float]:
    """Per corner, sqrt of the larger eigenvalue of its 2x2 block of the (8, 8) covariance."""
    if covariance is None:
        return []
    c = np.asarray(covariance, dtype=np.float64)
    return [float(np.sqrt(max(np.linalg.eigvalsh(c[2 * i:2 * i + 2, 2 * i:2 * i + 2])[-1], 0.0))) for i in range(4)]


def frame_response(r) -> pb.AlignStreamResponse:
    """A ``FrameResult`` (or :class:`StreamFrameResult`) as an ``AlignStreamResponse``."""
    resp = pb.AlignStreamResponse(
        index=int(r.index), matrix=_values(r.matrix), inverse=_values(r.inverse), registered=bool(r.registered),
        method=str(r.method), reason=str(r.reason), hops=int(r.hops),
        step=[] if r.step is None else _values(r.step), corner_sd=corner_sd(r.covariance),
        zncc=float(r.zncc), rms_error=float(r.rms_error), alignments=int(r.alignments),
        elapsed_seconds=float(r.elapsed), reference_shape=convert.size(r.reference_shape))
    for name in ("anchor", "previous"):
        if getattr(r, name) is not None:
            setattr(resp, name, int(getattr(r, name)))
    if r.covariance is not None:
        convert.fill_tensor(resp.covariance, np.asarray(r.covariance, dtype=np.float64), "covariance")
    return resp


@dataclass(frozen=True)
class StreamFrameResult:
    """One frame's registration received from ``AlignStream``: the fields of
    ``warpsvc.core.sequence.FrameResult`` (see there), plus ``corner_sd`` (px per corner)."""

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
    corner_sd: tuple = ()

    @property
    def transform(self):
        """``matrix`` as a transform (:class:`AffineTransform` when it is affine)."""
        m = self.matrix
        return convert.AffineTransform(m) if np.array_equal(m[2], [0.0, 0.0, 1.0]) else convert.HomographyTransform(m)

    @property
    def corner_covariance(self) -> np.ndarray | None:
        """``(4, 2, 2)`` diagonal blocks of ``covariance``."""
        c = self.covariance
        return None if c is None else np.stack([c[2 * i:2 * i + 2, 2 * i:2 * i + 2] for i in range(4)])

    def to_dict(self) -> dict:
        """The same JSON-ready row as ``FrameResult.to_dict``."""
        return {
            "index": self.index, "registered": self.registered, "method": self.method, "reason": self.reason,
            "hops": self.hops, "anchor": self.anchor, "previous": self.previous,
            "matrix": self.matrix.tolist(), "step": None if self.step is None else self.step.tolist(),
            "corner_sd": list(self.corner_sd) or None, "zncc": self.zncc, "rms_error": self.rms_error,
            "alignments": self.alignments, "elapsed": self.elapsed,
        }


def frame_result(resp: pb.AlignStreamResponse) -> StreamFrameResult:
    def matrix(values):
        return np.asarray(values, dtype=np.float64).reshape(3, 3)

    return StreamFrameResult(
        index=resp.index, matrix=matrix(resp.matrix), inverse=matrix(resp.inverse), registered=resp.registered,
        method=resp.method, reason=resp.reason, hops=resp.hops,
        anchor=resp.anchor if resp.HasField("anchor") else None,
        previous=resp.previous if resp.HasField("previous") else None,
        step=matrix(resp.step) if len(resp.step) else None,
        covariance=convert.array(resp.covariance, field="covariance") if resp.HasField("covariance") else None,
        zncc=resp.zncc, rms_error=resp.rms_error, alignments=resp.alignments, elapsed=resp.elapsed_seconds,
        reference_shape=convert.shape(resp.reference_shape, "reference_shape"), corner_sd=tuple(resp.corner_sd))
