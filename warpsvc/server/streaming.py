"""``WarpService.AlignStream``: a bidirectional stream of frames registered to one reference.

One :class:`warpsvc.core.sequence.SequenceAligner` per call. The first request carries the
setup (reference image, model, options: :mod:`warpsvc_api.stream`), every later request a
frame; each frame is decoded (the server's pixel limit), pushed, and its result yielded before
the next request is read. So at most one frame per call is held besides the aligner's state,
and back-pressure is gRPC's flow control: a client sending faster than the server registers
blocks once the transport windows are full.

Errors: a bad message (setup missing or repeated, an undecodable or oversized frame, a channel
mismatch) ends the call with the status of :mod:`warpsvc_api.status` (INVALID_ARGUMENT /
RESOURCE_EXHAUSTED) naming the field, ``frame[i].image...`` with ``i`` the frame's sequence
index (the index its result would have carried); the results already sent stay valid. More
than ``settings.max_stream_frames`` frames (``--max-stream-frames``): RESOURCE_EXHAUSTED on
``frame``. The call's deadline and cancellation are polled by every alignment
(``should_stop``): an interrupted frame ends the call with DEADLINE_EXCEEDED (or CANCELLED)
instead of sending an unregistered result.

A reference or frame sent as a file whose header says it has alpha is registered on its colour
channels with its transparent pixels missing (:func:`warpsvc_api.alpha_warp.alpha_as_nan`), so
an RGBA frame matches an RGB reference; tensors keep the library's meaning (every channel an
intensity).

Access log, admission and drain: :mod:`.stream_gate` (one log line per stream, the stream counted
open for graceful shutdown). A stream still open when the drain grace ends is cancelled there:
the handler's next read (or its alignment in progress) ends the call UNAVAILABLE with a message
naming the frames registered.
"""

from __future__ import annotations

from warpsvc.core.errors import (
    CancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    WarpsvcError,
)
from warpsvc_api import status, stream, wire
from warpsvc_api.alpha_warp import alpha_as_nan
from warpsvc_api.v1 import warp_pb2 as pb

from . import codecs, stream_gate
from .servicer import _DeadlineStop, _has_alpha

FRAME_PAYLOAD = (stream.REQUEST_FRAME, stream.FRAME_IMAGE, wire.IMAGE_TENSOR)
SETUP_PAYLOAD = (stream.REQUEST_SETUP, stream.SETUP_REFERENCE, wire.IMAGE_TENSOR)


def _message(call: wire.Received, position: str):
    if isinstance(call.message, Exception):
        raise InvalidArgumentError(f"not a valid AlignStreamRequest message ({call.message})", field=position)
    return call.message


def _aligner(call: wire.Received, settings):
    """``(aligner, reference_index, reference)``: the call's ``SequenceAligner`` from its setup
    message, the reference's index (or ``None``) and the reference as registered."""
    from warpsvc.core.sequence import SequenceAligner, SequenceOptions
    from warpsvc.core.sequence.options import default_align_options

    req = _message(call, "setup")
    if req.WhichOneof("kind") != "setup":
        raise InvalidArgumentError("the first message of AlignStream must carry the setup", field="setup")
    setup = req.setup
    reference = codecs.decode_image(setup.reference, call.payload(*SETUP_PAYLOAD), "setup.reference",
                                    settings.max_input_pixels)
    stream_gate.record_pixels(_pixels(reference.shape))
    reference = alpha_as_nan(reference, _has_alpha(setup.reference, reference, settings.max_input_pixels))
    sequence, pairwise = stream.setup_options(setup)
    model = sequence.pop("model", "homography")
    try:
        align = default_align_options().replace(**pairwise) if pairwise else None
        options = SequenceOptions(align=align, **sequence)
        ref_index = setup.reference_index if setup.HasField("reference_index") else None
        aligner = SequenceAligner(reference, model, options, reference_index=ref_index)
    except WarpsvcError as err:
        name = err.field or ""
        prefix = "setup" if name in ("model", "reference", "reference_index") else "setup.options"
        raise err.relabelled(f"{prefix}.{name}" if name else "setup") from err
    return aligner, ref_index, reference


class _StreamStop(_DeadlineStop):
    """``should_stop`` of a stream's alignments: the call's deadline or cancellation, or the
    stream cancelled at the end of the drain grace."""

    def __init__(self, context, stream):
        super().__init__(context)
        self._stream = stream

    def __call__(self) -> bool:
        if self._stream is not None and self._stream.cancelled:
            self.fired = True
        return super().__call__()


def _pixels(shape) -> int:
    return int(shape[0]) * int(shape[1])


def align_stream(settings, requests, context):
    """The handler: yields ``AlignStreamResponse`` messages (see the module docstring)."""
    gated = stream_gate.current_stream()
    limit = settings.max_stream_frames
    try:
        requests = iter(requests)
        first = next(requests, None)
        if first is None:
            raise _ended_by_client(context) or InvalidArgumentError("the stream ended before its setup message",
                                                                    field="setup")
        aligner, ref_index, reference = _aligner(first, settings)
        if ref_index is not None:
            yield stream.frame_response(aligner.reference_result())
        next_index = 0 if ref_index is None else ref_index + 1
        stop = _StreamStop(context, gated)
        for count, call in enumerate(requests):
            index = next_index + count
            field = f"frame[{index}]"
            if count >= limit:
                raise ResourceExhaustedError(f"more than {limit} frames in one stream (the server's "
                                             "max_stream_frames)", field="frame")
            req = _message(call, field)
            if req.WhichOneof("kind") != "frame":
                raise InvalidArgumentError("every message after the setup must carry a frame", field=field)
            image = codecs.decode_image(req.frame.image, call.payload(*FRAME_PAYLOAD), f"{field}.image",
                                        settings.max_input_pixels)
            stream_gate.record_pixels(_pixels(image.shape))
            image = alpha_as_nan(image, _has_alpha(req.frame.image, image, settings.max_input_pixels),
                                 like=reference)
            try:
                result = aligner.push(image, index=index, should_stop=stop)
            except WarpsvcError as err:
                raise err.relabelled(f"{field}.image") from err
            if stop.fired:
                if gated is not None and gated.cancelled:
                    raise stream_gate.StreamCancelled(gated.cancel_message)
                if context.is_active():
                    raise DeadlineExceededError(f"the call's deadline stopped the alignment of {field}")
                raise CancelledError(f"the call was cancelled during {field}")
            yield stream.frame_response(result)
        gone = _ended_by_client(context, settle=END_SETTLE_S)  # the requests ended: a half-close, or the client left
        if gone is not None:
            raise gone
    except stream_gate.StreamCancelled as exc:  # the drain grace is over
        import grpc

        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
        import grpc

        if isinstance(exc, grpc.RpcError):  # raised by the request iterator: the call ended under it
            exc = _ended_by_client(context) or exc
        context.abort_with_status(status.to_status(exc))


# After the request stream ended, how long to watch for the call's cancellation: a client's
# cancel (RST_STREAM) can end grpc's request iterator like a half-close, the call turning
# inactive a moment later (seen with @grpc/grpc-js clients: every idle stream they cancelled
# was logged OK). A genuine half-close leaves the call active, so this is the most a normal
# stream's end waits.
END_SETTLE_S = 0.02
# A call that ends this close to its deadline ended by it: the client's deadline reaches the
# server as the transport's cancel, a few ms before the server's own copy of the deadline expires
# (a 1 s stream was logged CANCELLED at 994.65 ms on a loaded CI run).
DEADLINE_SLACK_S = 0.1


def _ended_by_client(context, settle: float = 0.0):
    """The error for a stream whose client ended it while the handler waited for a message --
    ``DeadlineExceededError`` past the deadline, else ``CancelledError`` -- or ``None`` while the
    call stays active (for up to ``settle`` seconds). Without it such streams were logged (and
    counted) ``OK``, or ``INTERNAL`` when the request iterator raised (found by a hostile-client
    test)."""
    import time

    until = time.monotonic() + settle
    while context.is_active():
        if time.monotonic() >= until:
            return None
        time.sleep(0.001)
    remaining = context.time_remaining()
    if remaining is not None and remaining <= DEADLINE_SLACK_S:
        return DeadlineExceededError("the call's deadline passed while the stream waited for a message")
    return CancelledError("the client cancelled the stream while it waited for a message")


def handlers(settings) -> dict:
    """``{"AlignStream": handler}`` for ``WarpService`` (registered by ``servicer.add_to_server``)."""
    import grpc

    def handler(requests, context):
        return align_stream(settings, requests, context)

    return {"AlignStream": grpc.stream_stream_rpc_method_handler(
        handler, request_deserializer=wire.deserializer(pb.AlignStreamRequest, keep_errors=True),
        response_serializer=wire.serialize)}
