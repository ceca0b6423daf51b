"""``warpsvc.v1.WarpService``: decode the request, call the library, encode the result.

Nothing here computes or validates values: every RPC is the library function of the same name
between :mod:`warpsvc_api.convert` (messages <-> values) and :mod:`.codecs` (encoded images and
the server's size limits, checked before the library allocates anything). Each RPC receives its
request as a :class:`warpsvc_api.wire.Received` (parsed message + raw bytes, so image payloads
are read in place) and runs under :func:`rpc`, the one place exceptions become statuses.
"""

from __future__ import annotations

import functools

import numpy as np

import warpsvc
from warpsvc.core.budget import WarpLimits
from warpsvc.core.errors import CancelledError, DeadlineExceededError, InvalidArgumentError, WarpsvcError
from warpsvc.core.validate import output_dtype
from warpsvc_api import convert, image_probe, status, vocab, wire
from warpsvc_api.alpha_warp import align_inputs, warp_keeping_alpha
from warpsvc_api.v1 import warp_pb2 as pb

from . import codecs
from .interceptors import record_pixels
from .observe import OBSERVER_OFF, Observer
from .settings import Settings

WARP_RESPONSE_IMAGE = wire.number(pb.WarpResponse, "image")
DET_RESPONSE_TENSOR = wire.number(pb.JacobianDeterminantResponse, "determinant")
# Stop the alignment this long before the deadline, so the answer can still be sent.
DEADLINE_MARGIN_S = 0.05


def rpc(method):
    """Run one RPC: an undecodable request, a library error (its field renamed to the request's,
    :data:`convert.REQUEST_FIELDS`) or any other exception is answered by :mod:`warpsvc_api.status`."""

    @functools.wraps(method)
    def handler(self, call: wire.Received, context):
        try:
            if isinstance(call.message, Exception):
                raise InvalidArgumentError(f"not a valid {method.__name__}Request message ({call.message})",
                                           field="request")
            try:
                return method(self, call, context)
            except WarpsvcError as err:
                if err.field not in convert.REQUEST_FIELDS:
                    raise
                raise err.relabelled(convert.REQUEST_FIELDS[err.field]) from err
        except Exception as exc:  # noqa: BLE001 - every failure becomes the call's status
            context.abort_with_status(status.to_status(exc))

    return handler


class WarpServicer:
    """The three RPCs of ``warpsvc.v1.WarpService`` (see ``protos/warpsvc/v1/warp.proto``);
    register with :func:`add_to_server`."""

    def __init__(self, settings: Settings, observer: Observer = OBSERVER_OFF):
        self.settings = settings
        self.stage = observer.stage  # with self.stage("decode" | "compute" | "encode"): metrics + traces
        self.observer = observer
        self.limits = WarpLimits(max_transform_steps=settings.max_transform_steps,
                                 max_nodes_per_pixel=settings.max_antialias_nodes_per_pixel)

    def _image(self, call: wire.Received, name: str, required: bool = True):
        """Request image field ``name``, its tensor payload read in place (field numbers
        ``name -> Image.tensor -> Tensor.data``)."""
        payload = call.payload(wire.number(type(call.message), name), wire.IMAGE_TENSOR)
        return codecs.decode_image(getattr(call.message, name), payload, name, self.settings.max_input_pixels,
                                   required=required)

    @rpc
    def Warp(self, call: wire.Received, context) -> wire.Parts:
        req = call.message
        with self.stage("decode"):
            image, transform = self._image(call, "image"), convert.transform(req.transforms)
            options = convert.warp_options(req)
            form = codecs.response_format(req.response_form, req.jpeg_quality)
            shape = convert.shape(req.output_shape) if req.HasField("output_shape") else \
                transform.default_output_shape(image.shape[:2])
            self._check_output(shape, image, output_dtype(image.dtype, **_dtype_options(options)), form)
        record_pixels(inp=_pixels(image.shape))
        alpha = _file_alpha(req.image, image, options, self.settings.max_input_pixels)
        with self.stage("compute"):
            out = warp_keeping_alpha(image, transform, shape, alpha=alpha, **options, limits=self.limits,
                                     poll=DeadlinePoll(context))
        record_pixels(out=_pixels(out.shape))
        with self.stage("encode"):
            return codecs.encode_image(out, form, jpeg_quality=req.jpeg_quality,
                                       max_bytes=self.settings.max_message_bytes).nested(WARP_RESPONSE_IMAGE)

    @rpc
    def JacobianDeterminant(self, call: wire.Received, context) -> wire.Parts:
        req = call.message
        with self.stage("decode"):
            transform = convert.transform(req.transforms)
            if not req.HasField("output_shape"):
                raise InvalidArgumentError("required", field="output_shape")
            shape = convert.shape(req.output_shape)
            codecs.check_pixels(shape, "output_shape", self.settings.max_output_pixels, "output")
            dtype = vocab.DTYPE.from_wire(req.dtype)
            itemsize = np.dtype(np.float64 if dtype is vocab.DEFAULT else dtype).itemsize
            codecs.check_bytes(_pixels(shape) * itemsize, "output_shape", self.settings.max_message_bytes,
                               f"a {shape[0]}x{shape[1]} map", hint="ask for dtype float32 or a smaller output_shape")
        with self.stage("compute"):
            det = warpsvc.jacobian_determinant(transform, shape, limits=self.limits, poll=DeadlinePoll(context),
                                               **({} if dtype is vocab.DEFAULT else {"dtype": dtype}))
        codecs.check_bytes(det.nbytes, "output_shape", self.settings.max_message_bytes, "the map",
                           hint="ask for dtype float32 or a smaller output_shape")
        record_pixels(out=_pixels(det.shape))
        with self.stage("encode"):
            return convert.tensor_parts(det).nested(DET_RESPONSE_TENSOR)

    @rpc
    def Align(self, call: wire.Received, context) -> pb.AlignResponse:
        with self.stage("decode"):
            template, image = self._image(call, "template"), self._image(call, "image")
            masks = {name: self._image(call, name, required=False) for name in ("template_mask", "image_mask")}
            options = convert.align_options(call.message)
            limit = self.settings.max_input_pixels  # an encoded file's alpha is a mask (align_inputs)
            template, masks["template_mask"], image, masks["image_mask"] = align_inputs(
                template, _has_alpha(call.message.template, template, limit), masks["template_mask"],
                image, _has_alpha(call.message.image, image, limit), masks["image_mask"])
        stop = _DeadlineStop(context)
        record_pixels(inp=_pixels(template.shape) + _pixels(image.shape))
        with self.stage("compute"):
            result = warpsvc.align(template, image, **masks, **options, should_stop=stop)
        remaining = context.time_remaining()
        if stop.fired or (remaining is not None and remaining <= 0):
            raise DeadlineExceededError("the call's deadline (or cancellation) stopped the alignment")
        self.observer.align_outcome(result.reason)
        with self.stage("encode"):
            return convert.align_response(result)

    def _check_output(self, shape, image, dtype, form: str) -> None:
        """Refuse, before the library allocates anything: an output grid over the pixel limit; a
        tensor response over the message limit; an encoded form that cannot hold the result's
        dtype or channel count (so the output array of an encoded response is at most
        ``max_output_pixels`` x 4 channels x the dtype's size)."""
        codecs.check_pixels(shape, "output_shape", self.settings.max_output_pixels, "output")
        channels = 1 if image.ndim == 2 else image.shape[2]
        if form == "tensor":
            codecs.check_bytes(_pixels(shape) * channels * dtype.itemsize, "output_shape",
                               self.settings.max_message_bytes, f"a {shape[0]}x{shape[1]}x{channels} {dtype} tensor")
        else:
            codecs.check_encodable(form, dtype, channels)
            codecs.check_encoded_raw(_pixels(shape) * channels * dtype.itemsize, form, self.settings.max_message_bytes,
                                     f"a {shape[0]}x{shape[1]}x{channels} {dtype} result")


def _pixels(shape) -> int:
    return int(shape[0]) * int(shape[1])


def _file_alpha(msg: pb.Image, image: np.ndarray, options: dict, max_pixels: int) -> bool:
    """Whether a conserving warp must keep the 4th channel as alpha (:mod:`warpsvc_api.alpha_warp`)."""
    return options.get("intensity") == "conserve" and image.ndim == 3 and image.shape[2] == 4 \
        and _has_alpha(msg, image, max_pixels)


def _has_alpha(msg: pb.Image, image: np.ndarray, max_pixels: int) -> bool:
    """Whether a decoded 2- or 4-channel input is an encoded file whose header says its last
    channel is alpha (probed again with the limits it was decoded under: a few chunks)."""
    if image.ndim != 3 or image.shape[2] not in (2, 4) or msg.WhichOneof("kind") != "encoded":
        return False
    return image_probe.probe_image(msg.encoded.data, codecs.probe_limits(max_pixels), "image.encoded").alpha


def _dtype_options(options: dict) -> dict:
    return {k: options[k] for k in ("intensity", "antialias") if k in options}


def add_to_server(servicer: WarpServicer, server) -> None:
    """Register ``servicer`` like the generated ``add_WarpServiceServicer_to_server``, with
    :mod:`warpsvc_api.wire`'s (de)serializers: requests arrive as ``Received``, responses may be
    pre-serialised ``Parts``."""
    import grpc

    service = pb.DESCRIPTOR.services_by_name["WarpService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name), response_serializer=wire.serialize,
            request_deserializer=wire.deserializer(getattr(pb, m.input_type.name), keep_errors=True))
        for m in service.methods if not m.client_streaming
    }
    from . import streaming  # AlignStream: a stream-stream handler

    handlers.update(streaming.handlers(servicer.settings))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


class _DeadlineStop:
    """The alignment's ``should_stop``: true once the call is cancelled or its deadline is within
    :data:`DEADLINE_MARGIN_S`; remembers that it fired."""

    def __init__(self, context):
        self._context = context
        self.fired = False

    def __call__(self) -> bool:
        remaining = self._context.time_remaining()
        if (remaining is not None and remaining < DEADLINE_MARGIN_S) or not self._context.is_active():
            self.fired = True
        return self.fired

    def remaining(self) -> float | None:
        """Seconds until the stop would fire (``None``: no deadline); the alignment's clock asks
        before a stage it cannot interrupt (``align.clock.Clock.fits``)."""
        left = self._context.time_remaining()
        return None if left is None else left - DEADLINE_MARGIN_S

    def expire(self) -> None:
        """The alignment gave up: the next stage would not end before the deadline."""
        self.fired = True


class DeadlinePoll:
    """The ``poll`` of ``warp`` / ``jacobian_determinant`` (called between tiles and strips):
    raises :class:`DeadlineExceededError` once the call's deadline is within
    :data:`DEADLINE_MARGIN_S` (the answer can still be sent), :class:`CancelledError` once the
    client went away; the access log then records that status."""

    def __init__(self, context):
        self._context = context

    def __call__(self) -> None:
        remaining = self._context.time_remaining()
        if remaining is not None and remaining < DEADLINE_MARGIN_S:
            raise DeadlineExceededError("the call's deadline passed during the computation")
        if not self._context.is_active():
            raise CancelledError("the call was cancelled during the computation")
