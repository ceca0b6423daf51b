"""Every ``warpsvc.v1`` message <-> the library's values, both directions, for server and client.

=====================  =====================================  =====================================
message                to the wire                            from the wire
=====================  =====================================  =====================================
``Tensor``             :func:`tensor_parts`, :func:`fill_tensor`  :func:`array`
``Image``              :func:`image_parts`, :func:`image_field`,  :func:`image_value` (tensor -> array,
                       :func:`image_message`                  encoded -> file bytes)
``ImageSize``          :func:`size`                           :func:`shape`
``Transform`` (list)   :func:`transforms`                     :func:`transform`
``WarpRequest``        :func:`warp_request`                   :func:`warp_options`
``AlignRequest``       :func:`align_request`                  :func:`align_options`
``AlignResponse``      :func:`align_response`                 :func:`align_result`
=====================  =====================================  =====================================

Decoding raises the library's own errors (:mod:`warpsvc.core.errors`) naming the *request* field
(``transforms[1].polar.max_radius``); validation of values is the library's (the transform
constructors, ``warp``, ``AlignOptions.checked``), not repeated here. Encoded images (PNG, JPEG,
TIFF) are decoded by the server (:mod:`warpsvc.server.codecs`: OpenCV and size limits).

Only numpy, protobuf and the numpy-only geometry (:mod:`warpsvc.core.transforms`) are imported;
``AlignResult`` is looked up when a response is converted.
"""

from __future__ import annotations

import numpy as np

from warpsvc.core.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidTransformError,
    ResourceExhaustedError,
    WarpsvcError,
)
from warpsvc.core.transforms import AffineTransform, ComposedTransform, HomographyTransform, PolarTransform, compose

from . import vocab, wire
from .v1 import warp_pb2 as pb

# Dtype enum <-> little-endian numpy dtype, from the vocabulary ("uint8" ... "float64").
DTYPES = {value: np.dtype(name).newbyteorder("<") for name, value in vocab.DTYPE.values.items()}
_DTYPE_ENUMS = {dt: enum for enum, dt in DTYPES.items()}
# Library argument name -> request field, where they differ (applied to errors by the servicer).
REQUEST_FIELDS = {"transform": "transforms", "time_budget": "time_budget_seconds"}


# -- tensors -----------------------------------------------------------------------------------
def little_endian(arr: np.ndarray, field: str = "image") -> tuple[np.ndarray, int]:
    """``arr`` as a C-contiguous little-endian array (no copy when it already is) and its enum."""
    enum = _DTYPE_ENUMS.get(arr.dtype.newbyteorder("<"))
    if enum is None:
        names = ", ".join(vocab.DTYPE)
        raise InvalidImageError(f"{field} dtype {arr.dtype} is not supported (use {names})", field=field)
    return np.ascontiguousarray(arr, dtype=DTYPES[enum]), enum


def tensor_parts(arr: np.ndarray, field: str = "image") -> wire.Parts:
    """``arr`` as a serialised ``Tensor``: one copy of the payload, when joined."""
    le, enum = little_endian(np.asarray(arr), field)
    return wire.tensor_parts(pb.Tensor(shape=le.shape, dtype=enum), le)


def fill_tensor(out: pb.Tensor, arr, field: str = "tensor") -> pb.Tensor:
    """Write a (small) array into ``out`` in place (assigning a nested message copies it)."""
    le, enum = little_endian(np.asarray(arr), field)
    out.shape[:] = le.shape
    out.dtype = enum
    out.data = le.tobytes()
    return out


def array(msg: pb.Tensor, data=None, field: str = "tensor", ndims: tuple[int, ...] | None = None) -> np.ndarray:
    """The tensor as a read-only array viewing ``data`` (its payload seen in place, see
    :class:`wire.Received`) or, when ``None``, ``msg.data`` (read once: each access copies)."""
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise InvalidImageError(f"must be one of {', '.join(pb.Dtype.keys()[1:])}, got "
                                f"{_enum_name(pb.Dtype, msg.dtype)}", field=f"{field}.dtype")
    dims = tuple(msg.shape)
    if (ndims is not None and len(dims) not in ndims) or any(s <= 0 for s in dims):
        want = " or ".join(f"{n}" for n in ndims) if ndims else "any number of"
        raise InvalidImageError(f"must have {want} positive dimensions, got {list(dims)}", field=f"{field}.shape")
    data = msg.data if data is None else data
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if expected != len(data):
        raise InvalidImageError(f"shape {list(dims)} of {dtype.name} needs {expected} bytes, got {len(data)}",
                                field=f"{field}.data")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _enum_name(enum_type, value) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


# -- images ------------------------------------------------------------------------------------
def image_parts(arr: np.ndarray, field: str = "image") -> wire.Parts:
    """``arr`` as a serialised ``Image`` holding a raw tensor."""
    return tensor_parts(arr, field).nested(wire.IMAGE_TENSOR)


def image_message(value, field: str = "image", out: pb.Image | None = None) -> pb.Image:
    """A ``pb.Image`` (written into ``out`` when given): a numpy array as a raw tensor, ``bytes``
    (a PNG/JPEG/TIFF file) as an encoded image."""
    out = pb.Image() if out is None else out
    if isinstance(value, pb.Image):
        out.CopyFrom(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.encoded.data = bytes(value)
    elif isinstance(value, np.ndarray):
        fill_tensor(out.tensor, value, field)
    else:
        raise InvalidImageError(f"{field} must be a numpy array or encoded file bytes, got {type(value).__name__}",
                                field=field)
    return out


def image_field(value, field_number: int, field: str = "image") -> wire.Parts:
    """Request field ``field_number`` holding an image, as parts (an array's bytes are copied
    once, when the request is joined)."""
    if isinstance(value, np.ndarray):
        return image_parts(value, field).nested(field_number)
    return wire.Parts.of(image_message(value, field)).nested(field_number)


def mask_message(value, field: str, out: pb.Image) -> pb.Image:
    """A 0/non-0 (or boolean) mask as a uint8 tensor of 0 and 1."""
    return image_message((np.asarray(value) != 0).astype(np.uint8), field, out)


def image_value(msg: pb.Image, data=None):
    """An ``Image`` as the library sees it: a tensor as an array, an encoded file as its bytes."""
    if msg.WhichOneof("kind") == "tensor":
        return array(msg.tensor, data, "image.tensor")
    return msg.encoded.data


def size(shape) -> pb.ImageSize:
    h, w = shape
    return pb.ImageSize(height=int(h), width=int(w))


def shape(msg: pb.ImageSize, field: str = "output_shape") -> tuple[int, int]:
    """``(H, W)``; both must be positive."""
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise InvalidArgumentError(f"height and width must be positive, got {h}x{w}", field=field)
    return h, w


# -- transforms ----------------------------------------------------------------------------------
def transforms(t) -> list[pb.Transform]:
    """The chain of ``pb.Transform`` for a library transform (compositions flattened)."""
    if isinstance(t, pb.Transform):
        return [t]
    if isinstance(t, ComposedTransform):
        return [m for step in t.steps for m in transforms(step)]
    if isinstance(t, AffineTransform):
        return [pb.Transform(affine=pb.AffineTransform(matrix=_values(t.matrix)))]
    if isinstance(t, HomographyTransform):
        return [pb.Transform(homography=pb.HomographyTransform(matrix=_values(t.matrix)))]
    if isinstance(t, PolarTransform):
        polar = pb.PolarTransform(
            center=pb.Point(x=t.center[0], y=t.center[1]), max_radius=t.max_radius, polar_shape=size(t.polar_shape),
            log=t.log, inverse=t.is_inverse, opencv_sampling=t.opencv_sampling)
        if t.cartesian_shape is not None:
            polar.cartesian_shape.CopyFrom(size(t.cartesian_shape))
        return [pb.Transform(polar=polar)]
    raise InvalidTransformError(f"transform must be a warpsvc Transform, got {type(t).__name__}", field="transform")


def _values(matrix) -> list[float]:
    return [float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(-1)]


def _matrix(values, field: str, sizes: tuple[int, ...]) -> np.ndarray:
    vals = np.asarray(values, dtype=np.float64)
    if vals.size not in sizes:
        raise InvalidTransformError(f"needs {' or '.join(map(str, sizes))} row-major values, got {vals.size}",
                                    field=field)
    return vals.reshape(-1, 3)


def _one_transform(msg: pb.Transform):
    kind = msg.WhichOneof("kind")
    if kind == "affine":
        return AffineTransform(_matrix(msg.affine.matrix, "matrix", (6, 9)))
    if kind == "homography":
        return HomographyTransform(_matrix(msg.homography.matrix, "matrix", (9,)))
    p = msg.polar
    return PolarTransform(
        (p.center.x, p.center.y), p.max_radius, (p.polar_shape.height, p.polar_shape.width), log=p.log,
        inverse=p.inverse, opencv_sampling=p.opencv_sampling if p.HasField("opencv_sampling") else True,
        cartesian_shape=(p.cartesian_shape.height, p.cartesian_shape.width) if p.HasField("cartesian_shape") else None)


# Elements of one ``repeated Transform``. The library's chain limit (``max_transform_steps``)
# counts runs of adjacent matrices as one step, so without this a 4 MB request of 50 000
# matrices took 3.3 s of composing, deadline and cancellation unheeded (found by a
# hostile-client test; ~66 us per element, so this cap bounds it near 70 ms).
MAX_TRANSFORM_MESSAGES = 1024


def transform(msgs, field: str = "transforms"):
    """The library transform of a ``repeated Transform`` (composed, first applied first). An
    error of step ``i`` names ``transforms[i].<kind>.<its field>``; more than
    :data:`MAX_TRANSFORM_MESSAGES` elements are refused (``ResourceExhaustedError``)."""
    if len(msgs) == 0:
        raise InvalidArgumentError("at least one transform is required", field=field)
    if len(msgs) > MAX_TRANSFORM_MESSAGES:
        raise ResourceExhaustedError(f"{len(msgs)} transforms; at most {MAX_TRANSFORM_MESSAGES} per request "
                                     "(compose adjacent matrices into one)", field=field)
    steps = []
    for i, msg in enumerate(msgs):
        kind = msg.WhichOneof("kind")
        if kind is None:
            raise InvalidArgumentError("set one of affine, homography, polar", field=f"{field}[{i}]")
        try:
            steps.append(_one_transform(msg))
        except WarpsvcError as err:
            raise err.relabelled(f"{field}[{i}].{kind}" + (f".{err.field}" if err.field else "")) from err
    return compose(*steps)


# -- Warp ------------------------------------------------------------------------------------------
def warp_options(req: pb.WarpRequest) -> dict:
    """``warpsvc.warp`` keyword arguments of a request (unset enums: the library's defaults)."""
    options = {"border_value": req.border_value, "antialias": req.antialias}
    for name, words in (("interpolation", vocab.INTERPOLATION), ("border", vocab.BORDER),
                        ("intensity", vocab.INTENSITY)):
        value = words.from_wire(getattr(req, name))
        if value is not vocab.DEFAULT:
            options[name] = value
    return options


def warp_request(t, output_shape=None, *, interpolation: str = "linear", border: str = "constant",
                 border_value: float = 0.0, intensity: str = "plain", antialias: bool = False,
                 response_form: str = "tensor", jpeg_quality: int = 0) -> pb.WarpRequest:
    """A ``WarpRequest`` without its image (the client appends it with :func:`image_field`)."""
    req = pb.WarpRequest(
        transforms=transforms(t), interpolation=vocab.INTERPOLATION.to_wire(interpolation),
        border=vocab.BORDER.to_wire(border), border_value=float(border_value),
        intensity=vocab.INTENSITY.to_wire(intensity), antialias=bool(antialias),
        response_form=vocab.RESPONSE_FORM.to_wire(response_form), jpeg_quality=int(jpeg_quality))
    if output_shape is not None:
        req.output_shape.CopyFrom(size(output_shape))
    return req


# -- Align -----------------------------------------------------------------------------------------
def align_options(req: pb.AlignRequest) -> dict:
    """``warpsvc.align`` keyword arguments of a request, images and masks aside. Zero means the
    library default and is left out; anything else goes to the library, which checks it."""
    options = {}
    for name, words in (("model", vocab.MOTION_MODEL), ("robust", vocab.ROBUST_LOSS),
                        ("photometric", vocab.PHOTOMETRIC), ("search", vocab.SEARCH), ("denoise", vocab.DENOISE)):
        value = words.from_wire(getattr(req, name))
        if value is not vocab.DEFAULT:
            options[name] = value
    for option, value in (("levels", req.levels), ("max_iterations", req.max_iterations),
                          ("tolerance", req.tolerance), ("time_budget", req.time_budget_seconds),
                          ("max_corner_error", req.max_corner_error)):
        if value != 0:
            options[option] = value
    if req.HasField("min_zncc"):  # presence, not zero, means "given": 0 is a valid threshold
        options["min_zncc"] = req.min_zncc
    if len(req.init):
        init = np.asarray(req.init, dtype=np.float64)
        options["init"] = init.reshape(-1, 3) if init.size in (6, 9) else init
    return options


def align_request(model: str = "homography", init=None, *, search="auto", levels="auto", robust=None,
                  photometric="auto", max_iterations=None, tolerance=None, time_budget=None, template_mask=None,
                  image_mask=None, max_corner_error=1.0, denoise="auto", min_zncc=0.97) -> pb.AlignRequest:
    """An ``AlignRequest`` without its two images (the client appends them). Every option is
    sent explicitly (``"auto"`` as ``*_AUTO``), so the server applies exactly the caller's;
    ``max_corner_error=None`` (the library's "off") travels as ``+inf``, and zero, which the
    wire reads as "default", is refused here as the library refuses it. ``min_zncc=None``
    leaves the field absent (the server's library default)."""
    if max_corner_error == 0:
        raise InvalidArgumentError("max_corner_error must be positive, got 0", field="max_corner_error")
    req = pb.AlignRequest(
        model=vocab.MOTION_MODEL.to_wire(model), robust=vocab.ROBUST_LOSS.to_wire(robust),
        photometric=vocab.PHOTOMETRIC.to_wire(photometric), search=vocab.SEARCH.to_wire(search), levels=0 if levels == "auto" else int(levels),
        max_iterations=int(max_iterations or 0), tolerance=float(tolerance or 0.0),
        time_budget_seconds=float(time_budget or 0.0), max_corner_error=float("inf") if max_corner_error is None else float(max_corner_error),
        denoise=vocab.DENOISE.to_wire(denoise))
    if min_zncc is not None:
        req.min_zncc = float(min_zncc)
    if init is not None:
        req.init.extend(_values(getattr(init, "matrix", init)))
    if template_mask is not None:
        mask_message(template_mask, "template_mask", req.template_mask)
    if image_mask is not None:
        mask_message(image_mask, "image_mask", req.image_mask)
    return req


def align_response(result) -> pb.AlignResponse:
    """``AlignResult`` -> ``AlignResponse``, field for field."""
    resp = pb.AlignResponse(
        matrix=_values(result.matrix), inverse=_values(result.inverse), converged=bool(result.converged),
        reason=str(result.reason), iterations=[int(i) for i in result.iterations],
        rms_error=float(result.rms_error), zncc=float(result.zncc),
        cost_history=[pb.LevelCosts(costs=_values(level)) for level in result.cost_history],
        overlap=float(result.overlap), gain=_values(result.gain), bias=_values(result.bias),
        model=vocab.MOTION_MODEL.to_wire(result.model), levels=int(result.levels),
        elapsed_seconds=float(result.elapsed), chart=_values(result.chart) if result.chart is not None else [],
        start=str(result.start))
    for name in ("covariance", "corner_covariance"):
        value = getattr(result, name)
        if value is not None:
            fill_tensor(getattr(resp, name), np.asarray(value, dtype=np.float64), name)
    return resp


def align_result(resp: pb.AlignResponse):
    """The library's own ``warpsvc.AlignResult``, rebuilt field for field."""
    from warpsvc.core.align import AlignResult, Start  # value types only (no OpenCV), looked up late

    def optional(name):
        return array(getattr(resp, name), field=name) if resp.HasField(name) else None

    model = vocab.MOTION_MODEL.from_wire(resp.model)
    return AlignResult(
        matrix=np.asarray(resp.matrix, dtype=np.float64).reshape(3, 3),
        inverse=np.asarray(resp.inverse, dtype=np.float64).reshape(3, 3),
        converged=resp.converged, reason=resp.reason, iterations=tuple(resp.iterations), rms_error=resp.rms_error,
        zncc=resp.zncc, cost_history=tuple(tuple(level.costs) for level in resp.cost_history),
        covariance=optional("covariance"), corner_covariance=optional("corner_covariance"), overlap=resp.overlap,
        gain=tuple(resp.gain), bias=tuple(resp.bias), model="homography" if model is vocab.DEFAULT else model,
        levels=resp.levels, elapsed=resp.elapsed_seconds,
        chart=np.asarray(resp.chart, dtype=np.float64).reshape(3, 3) if len(resp.chart) else None,
        start=Start(resp.start) if resp.start else Start.IDENTITY)
