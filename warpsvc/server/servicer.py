"""``warpsvc.v1.WarpService``: decode the request, call the library, encode the result.

Nothing here computes: every RPC is the library function of the same name between a decoder and
an encoder (:mod:`.codecs`). Limits the library cannot know (pixels a server accepts, bytes a
response may carry) are checked before the library allocates anything. Exceptions become statuses
in one place (:mod:`.errors`).
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

import warpsvc
from warpsvc.core.errors import ImageTooLargeError, InvalidArgumentError, WarpsvcError
from warpsvc.v1 import warp_pb2 as pb
from warpsvc.v1 import warp_pb2_grpc

from . import codecs, wire
from .errors import DeadlineExceededError, UnimplementedError, abort
from .interceptors import record_pixels
from .settings import Settings

INTERPOLATIONS = {pb.INTERPOLATION_UNSPECIFIED: "linear", pb.INTERPOLATION_NEAREST: "nearest",
                  pb.INTERPOLATION_LINEAR: "linear", pb.INTERPOLATION_CUBIC: "cubic",
                  pb.INTERPOLATION_LANCZOS: "lanczos"}
BORDERS = {pb.BORDER_UNSPECIFIED: "constant", pb.BORDER_CONSTANT: "constant", pb.BORDER_REPLICATE: "replicate",
           pb.BORDER_REFLECT: "reflect", pb.BORDER_SYMMETRIC: "symmetric", pb.BORDER_WRAP: "wrap"}
INTENSITIES = {pb.INTENSITY_UNSPECIFIED: "plain", pb.INTENSITY_PLAIN: "plain", pb.INTENSITY_CONSERVE: "conserve"}
MODELS = {pb.MOTION_MODEL_UNSPECIFIED: "homography", pb.MOTION_MODEL_TRANSLATION: "translation",
          pb.MOTION_MODEL_EUCLIDEAN: "euclidean", pb.MOTION_MODEL_SIMILARITY: "similarity",
          pb.MOTION_MODEL_AFFINE: "affine", pb.MOTION_MODEL_HOMOGRAPHY: "homography"}
ROBUST = {pb.ROBUST_LOSS_UNSPECIFIED: None, pb.ROBUST_LOSS_NONE: None, pb.ROBUST_LOSS_HUBER: "huber",
          pb.ROBUST_LOSS_TUKEY: "tukey"}
PHOTOMETRIC = {pb.PHOTOMETRIC_UNSPECIFIED: None, pb.PHOTOMETRIC_NONE: None,
               pb.PHOTOMETRIC_GAIN_BIAS: "gain_bias"}
MODEL_ENUMS = {name: enum for enum, name in MODELS.items() if enum != pb.MOTION_MODEL_UNSPECIFIED}
DET_DTYPES = {pb.DTYPE_UNSPECIFIED: np.float64, pb.DTYPE_FLOAT64: np.float64, pb.DTYPE_FLOAT32: np.float32}
# Library argument name -> request field, where they differ.
WARP_FIELDS = {"transform": "transforms"}
ALIGN_FIELDS = {"time_budget": "time_budget_seconds"}
WARP_RESPONSE_IMAGE = pb.WarpResponse.DESCRIPTOR.fields_by_name["image"].number
DET_RESPONSE_TENSOR = pb.JacobianDeterminantResponse.DESCRIPTOR.fields_by_name["determinant"].number
# Stop the alignment this long before the deadline, so the answer can still be sent.
DEADLINE_MARGIN_S = 0.05


def _enum(table: dict, value: int, field: str, enum_type):
    if value not in table:
        raise InvalidArgumentError(f"{field}: unknown value {value} for {enum_type.DESCRIPTOR.name}", field=field)
    return table[value]


def _renamed(err: WarpsvcError, fields: dict) -> WarpsvcError:
    """A library error re-labelled with the request's field name."""
    if err.field in fields:
        field = fields[err.field]
        return type(err)(f"{field}: {err.message}", field=field)
    return err


def _pixels(shape) -> int:
    return int(shape[0]) * int(shape[1])


def _align_function():
    """``warpsvc.align`` once the alignment module exists, else ``None``."""
    return getattr(warpsvc, "align", None)


class WarpServicer(warp_pb2_grpc.WarpServiceServicer):
    """The three RPCs of ``warpsvc.v1.WarpService`` (see ``protos/warpsvc/v1/warp.proto``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._align = _align_function()

    # -- Warp -------------------------------------------------------------------------------------
    def Warp(self, request: pb.WarpRequest, context) -> wire.Parts:
        """Returns the response already serialised (:mod:`.wire`: one copy of the image instead
        of four); register with :func:`add_to_server`, whose serializer joins it."""
        try:
            image = codecs.decode_image(request.image, "image", self.settings.max_input_pixels)
            transform = codecs.decode_transforms(request.transforms)
            kwargs = dict(
                interpolation=_enum(INTERPOLATIONS, request.interpolation, "interpolation", pb.Interpolation),
                border=_enum(BORDERS, request.border, "border", pb.Border),
                border_value=request.border_value,
                intensity=_enum(INTENSITIES, request.intensity, "intensity", pb.Intensity),
                antialias=request.antialias,
            )
            codecs.check_response_form(request.response_form, request.jpeg_quality)
            if request.HasField("output_shape"):
                shape = codecs.decode_shape(request.output_shape, "output_shape")
            else:
                shape = transform.default_output_shape(image.shape[:2])
            self._check_output(shape, image, kwargs, request.response_form)
            record_pixels(inp=_pixels(image.shape))
            try:
                out = warpsvc.warp(image, transform, shape, **kwargs)
            except WarpsvcError as err:
                raise _renamed(err, WARP_FIELDS) from err
            record_pixels(out=_pixels(out.shape))
            image = codecs.encode_image(out, request.response_form, jpeg_quality=request.jpeg_quality)
            return image.nested(WARP_RESPONSE_IMAGE)
        except Exception as exc:  # noqa: BLE001 - every failure goes through the one table
            abort(context, exc)

    def _check_output(self, shape, image, kwargs, form) -> None:
        """Refuse an output grid over the pixel limit, or a tensor response over the message limit,
        before the library allocates it."""
        codecs.check_pixels(shape, "output_shape", self.settings.max_output_pixels, "output")
        if form not in (pb.RESPONSE_FORM_UNSPECIFIED, pb.RESPONSE_FORM_TENSOR):
            return
        plain = kwargs["intensity"] == "plain" and not kwargs["antialias"]
        itemsize = image.dtype.itemsize if plain else (8 if image.dtype == np.float64 else 4)
        channels = 1 if image.ndim == 2 else image.shape[2]
        nbytes = _pixels(shape) * channels * itemsize
        if nbytes > self.settings.max_message_bytes:
            raise ImageTooLargeError(
                f"output_shape: a {shape[0]}x{shape[1]}x{channels} tensor of {nbytes} bytes exceeds the "
                f"{self.settings.max_message_bytes}-byte message limit (ask for an encoded response_form)",
                field="output_shape",
            )

    # -- JacobianDeterminant ----------------------------------------------------------------------
    def JacobianDeterminant(self, request: pb.JacobianDeterminantRequest, context) -> wire.Parts:
        try:
            transform = codecs.decode_transforms(request.transforms)
            if not request.HasField("output_shape"):
                raise InvalidArgumentError("output_shape: required", field="output_shape")
            shape = codecs.decode_shape(request.output_shape, "output_shape")
            if request.dtype not in DET_DTYPES:
                raise InvalidArgumentError(
                    f"dtype: must be DTYPE_FLOAT64 (default) or DTYPE_FLOAT32, got "
                    f"{codecs._enum_name(pb.Dtype, request.dtype)}", field="dtype")
            dtype = DET_DTYPES[request.dtype]
            codecs.check_pixels(shape, "output_shape", self.settings.max_output_pixels, "output")
            nbytes = _pixels(shape) * np.dtype(dtype).itemsize
            if nbytes > self.settings.max_message_bytes:
                raise ImageTooLargeError(f"output_shape: the {nbytes}-byte map exceeds the message limit",
                                         field="output_shape")
            try:
                det = warpsvc.jacobian_determinant(transform, shape, dtype=dtype)
            except WarpsvcError as err:
                raise _renamed(err, WARP_FIELDS) from err
            record_pixels(out=_pixels(det.shape))
            return codecs.tensor_parts(det).nested(DET_RESPONSE_TENSOR)
        except Exception as exc:  # noqa: BLE001
            abort(context, exc)

    # -- Align ------------------------------------------------------------------------------------
    def Align(self, request: pb.AlignRequest, context) -> pb.AlignResponse:
        try:
            if self._align is None:
                raise UnimplementedError(
                    "Align is not available in this server build: warpsvc.align (the alignment module, "
                    "issue 3) is not installed yet")
            limit = self.settings.max_input_pixels
            template = codecs.decode_image(request.template, "template", limit)
            image = codecs.decode_image(request.image, "image", limit)
            tmask = codecs.decode_image(request.template_mask, "template_mask", limit, required=False)
            imask = codecs.decode_image(request.image_mask, "image_mask", limit, required=False)
            init = codecs.matrix_from_values(request.init, "init") if len(request.init) else None
            if init is not None and init.shape == (2, 3):
                init = np.vstack([init, [0.0, 0.0, 1.0]])
            kwargs = dict(
                model=_enum(MODELS, request.model, "model", pb.MotionModel),
                init=init,
                template_mask=tmask,
                image_mask=imask,
                robust=_enum(ROBUST, request.robust, "robust", pb.RobustLoss),
                photometric=_enum(PHOTOMETRIC, request.photometric, "photometric", pb.Photometric),
            )
            if request.levels < 0:
                raise InvalidArgumentError("levels: must be >= 0 (0 = automatic)", field="levels")
            if request.levels:
                kwargs["levels"] = int(request.levels)
            if request.max_iterations < 0:
                raise InvalidArgumentError("max_iterations: must be >= 0 (0 = default)", field="max_iterations")
            if request.max_iterations:
                kwargs["max_iterations"] = int(request.max_iterations)
            if request.tolerance < 0 or not np.isfinite(request.tolerance):
                raise InvalidArgumentError("tolerance: must be finite and >= 0 (0 = default)", field="tolerance")
            if request.tolerance:
                kwargs["tolerance"] = float(request.tolerance)
            if request.time_budget_seconds < 0 or not np.isfinite(request.time_budget_seconds):
                raise InvalidArgumentError("time_budget_seconds: must be finite and >= 0 (0 = none)",
                                           field="time_budget_seconds")
            if request.time_budget_seconds:
                kwargs["time_budget"] = float(request.time_budget_seconds)
            stop = _DeadlineStop(context)
            kwargs["should_stop"] = stop
            record_pixels(inp=_pixels(template.shape) + _pixels(image.shape))
            try:
                result = self._align(template, image, **kwargs)
            except WarpsvcError as err:
                raise _renamed(err, ALIGN_FIELDS) from err
            remaining = context.time_remaining()
            if stop.fired or (remaining is not None and remaining <= 0):
                raise DeadlineExceededError("the call's deadline (or cancellation) stopped the alignment")
            return _align_response(result)
        except Exception as exc:  # noqa: BLE001
            abort(context, exc)


def add_to_server(servicer: WarpServicer, server) -> None:
    """Register ``servicer`` like the generated ``add_WarpServiceServicer_to_server``, with a
    response serializer that also takes pre-serialised :class:`wire.Parts`."""
    import grpc

    handlers = {}
    for method in pb.DESCRIPTOR.services_by_name["WarpService"].methods:
        behavior, deserialize = _with_raw_request(getattr(servicer, method.name), getattr(pb, method.input_type.name))
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=deserialize, response_serializer=wire.serialize)
    name = pb.DESCRIPTOR.services_by_name["WarpService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


def _with_raw_request(method, message_type):
    """Deserialize to ``(message, raw bytes)`` and run ``method(message, context)`` with the raw
    bytes in :data:`codecs.RAW_REQUEST`, so image payloads are read in place (zero copies)."""

    def deserialize(raw: bytes):
        try:
            return message_type.FromString(raw), raw
        except DecodeError as err:  # answered INVALID_ARGUMENT by ``behavior``, not INTERNAL by gRPC
            return err, raw

    def behavior(request_and_raw, context):
        message, raw = request_and_raw
        if isinstance(message, DecodeError):
            abort(context, InvalidArgumentError(
                f"request: not a valid {message_type.DESCRIPTOR.full_name} message ({message})", field="request"))
        token = codecs.RAW_REQUEST.set((raw, message_type.DESCRIPTOR))
        try:
            return method(message, context)
        finally:
            codecs.RAW_REQUEST.reset(token)

    return behavior, deserialize


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


def _values(m) -> list[float]:
    return [float(v) for v in np.asarray(m, dtype=np.float64).reshape(-1)]


def _align_response(result) -> pb.AlignResponse:
    """``AlignResult`` -> ``AlignResponse``, field for field."""
    resp = pb.AlignResponse(
        matrix=_values(result.matrix),
        inverse=_values(result.inverse),
        converged=bool(result.converged),
        reason=str(result.reason),
        iterations=[int(i) for i in result.iterations],
        rms_error=float(result.rms_error),
        zncc=float(result.zncc),
        cost_history=[pb.LevelCosts(costs=_values(level)) for level in result.cost_history],
        overlap=float(result.overlap),
        gain=_values(result.gain),
        bias=_values(result.bias),
        model=MODEL_ENUMS[result.model],
        levels=int(result.levels),
        elapsed_seconds=float(result.elapsed),
        chart=_values(result.chart) if result.chart is not None else [],
    )
    if result.covariance is not None:
        codecs.encode_tensor(np.asarray(result.covariance, dtype=np.float64), resp.covariance)
    if result.corner_covariance is not None:
        codecs.encode_tensor(np.asarray(result.corner_covariance, np.float64), resp.corner_covariance)
    return resp
