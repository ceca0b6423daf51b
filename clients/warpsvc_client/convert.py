"""numpy arrays, warpsvc transforms and results <-> ``warpsvc.v1`` messages (client side).

The client reuses the library's *public value classes* (``warpsvc.AffineTransform``,
``HomographyTransform``, ``PolarTransform``, compositions, and the public error classes) so code
moves between in-process and remote by changing one line: the same transform objects go to
``warpsvc.warp`` or ``WarpClient.warp``, and the same exceptions come back. It only reads their
parameters (``matrix``, ``center``, ``steps``, ...); it never calls the core's computations, and it
imports nothing below the top-level ``warpsvc`` namespace (a test checks this).
"""

from __future__ import annotations

import numpy as np

import warpsvc
from warpsvc.v1 import warp_pb2 as pb

from . import wire

DTYPES = {
    np.dtype(np.uint8): pb.DTYPE_UINT8,
    np.dtype(np.uint16): pb.DTYPE_UINT16,
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.float64): pb.DTYPE_FLOAT64,
}
NUMPY_DTYPES = {enum: dt.newbyteorder("<") for dt, enum in DTYPES.items()}
FORMATS = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG, "tiff": pb.IMAGE_FORMAT_TIFF}
RESPONSE_FORMS = {"tensor": pb.RESPONSE_FORM_TENSOR, "png": pb.RESPONSE_FORM_PNG,
                  "jpeg": pb.RESPONSE_FORM_JPEG, "tiff": pb.RESPONSE_FORM_TIFF}
INTERPOLATIONS = {"nearest": pb.INTERPOLATION_NEAREST, "linear": pb.INTERPOLATION_LINEAR,
                  "cubic": pb.INTERPOLATION_CUBIC, "lanczos": pb.INTERPOLATION_LANCZOS}
BORDERS = {"constant": pb.BORDER_CONSTANT, "replicate": pb.BORDER_REPLICATE, "reflect": pb.BORDER_REFLECT,
           "symmetric": pb.BORDER_SYMMETRIC, "wrap": pb.BORDER_WRAP}
INTENSITIES = {"plain": pb.INTENSITY_PLAIN, "conserve": pb.INTENSITY_CONSERVE}
MODELS = {"translation": pb.MOTION_MODEL_TRANSLATION, "euclidean": pb.MOTION_MODEL_EUCLIDEAN,
          "similarity": pb.MOTION_MODEL_SIMILARITY, "affine": pb.MOTION_MODEL_AFFINE,
          "homography": pb.MOTION_MODEL_HOMOGRAPHY}
ROBUST = {None: pb.ROBUST_LOSS_NONE, "huber": pb.ROBUST_LOSS_HUBER, "tukey": pb.ROBUST_LOSS_TUKEY}
PHOTOMETRIC = {None: pb.PHOTOMETRIC_NONE, "gain_bias": pb.PHOTOMETRIC_GAIN_BIAS}


def choice(table: dict, value, field: str):
    """``table[value]``, or the library's own error for a bad option name."""
    try:
        return table[value]
    except (KeyError, TypeError):
        raise warpsvc.InvalidArgumentError(
            f"{field} must be one of {tuple(table)}, got {value!r}", field=field) from None


# -- images --------------------------------------------------------------------------------------
def tensor(arr: np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    """``arr`` as a raw tensor, written into ``out`` in place when given (assigning or copying a
    nested message copies its payload in upb: ~6 ms for a 6 MB image)."""
    a = np.asarray(arr)
    enum = DTYPES.get(a.dtype.newbyteorder("="))
    if enum is None:
        raise warpsvc.InvalidImageError(f"image dtype {a.dtype} is not supported (uint8, uint16, float32, float64)",
                                        field="image")
    le = np.ascontiguousarray(a, dtype=NUMPY_DTYPES[enum])
    out = pb.Tensor() if out is None else out
    out.shape[:] = le.shape
    out.dtype = enum
    out.data = le.tobytes()
    return out


def image_field(value, number: int, field: str = "image"):
    """Field ``number`` of a request holding an image, as serialised chunks (:mod:`.wire`); a
    numpy array's bytes are copied once, when the request is joined."""
    if isinstance(value, np.ndarray):
        a = value
        enum = DTYPES.get(a.dtype.newbyteorder("="))
        if enum is None:
            raise warpsvc.InvalidImageError(
                f"{field} dtype {a.dtype} is not supported (uint8, uint16, float32, float64)", field=field)
        le = np.ascontiguousarray(a, dtype=NUMPY_DTYPES[enum])
        tensor_number = pb.Image.DESCRIPTOR.fields_by_name["tensor"].number
        return wire.tensor(pb.Tensor(shape=le.shape, dtype=enum), le).nested(tensor_number).nested(number)
    return wire.Message([field_header_for(number, fill_image(pb.Image(), value, field))])


def field_header_for(number: int, msg: pb.Image) -> bytes:
    body = msg.SerializeToString()
    return wire.field_header(number, len(body)) + body


def fill_image(out: pb.Image, value, field: str = "image") -> pb.Image:
    """Write an image into ``out``: a numpy array as a raw tensor, ``bytes`` (a PNG/JPEG/TIFF
    file) as an encoded image."""
    if isinstance(value, pb.Image):
        out.CopyFrom(value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.encoded.data = bytes(value)
    elif isinstance(value, np.ndarray):
        tensor(value, out.tensor)
    else:
        raise warpsvc.InvalidImageError(
            f"{field} must be a numpy array or encoded file bytes, got {type(value).__name__}", field=field)
    return out


def image(value, field: str = "image") -> pb.Image:
    """A new ``pb.Image`` holding ``value`` (see :func:`fill_image`)."""
    return fill_image(pb.Image(), value, field)


def fill_mask(out: pb.Image, value, field: str) -> pb.Image:
    """A 0/non-0 (or boolean) mask as a uint8 tensor of 0 and 1."""
    tensor((np.asarray(value) != 0).astype(np.uint8), out.tensor)
    return out


def array(msg: pb.Tensor, data=None) -> np.ndarray:
    """The tensor as a read-only array over ``data`` (its payload viewed in the raw response,
    see :mod:`.wire`) or, when ``None``, over a copy of ``msg.data``."""
    arr = np.frombuffer(msg.data if data is None else data, dtype=NUMPY_DTYPES[msg.dtype])
    arr = arr.reshape(tuple(msg.shape))
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def from_image(msg: pb.Image, data=None):
    """A tensor response as a numpy array; an encoded response as the file's bytes."""
    if msg.WhichOneof("kind") == "tensor":
        return array(msg.tensor, data)
    return msg.encoded.data


def size(shape) -> pb.ImageSize:
    h, w = shape
    return pb.ImageSize(height=int(h), width=int(w))


# -- transforms ----------------------------------------------------------------------------------
def transforms(transform) -> list[pb.Transform]:
    """The chain of ``pb.Transform`` for a warpsvc transform (compositions are flattened)."""
    if isinstance(transform, pb.Transform):
        return [transform]
    if isinstance(transform, warpsvc.ComposedTransform):
        return [t for step in transform.steps for t in transforms(step)]
    if isinstance(transform, warpsvc.AffineTransform):
        return [pb.Transform(affine=pb.AffineTransform(matrix=_values(transform.matrix)))]
    if isinstance(transform, warpsvc.HomographyTransform):
        return [pb.Transform(homography=pb.HomographyTransform(matrix=_values(transform.matrix)))]
    if isinstance(transform, warpsvc.PolarTransform):
        polar = pb.PolarTransform(
            center=pb.Point(x=transform.center[0], y=transform.center[1]), max_radius=transform.max_radius,
            polar_shape=size(transform.polar_shape), log=transform.log, inverse=transform.is_inverse,
            opencv_sampling=transform.opencv_sampling,
        )
        if transform.cartesian_shape is not None:
            polar.cartesian_shape.CopyFrom(size(transform.cartesian_shape))
        return [pb.Transform(polar=polar)]
    raise warpsvc.InvalidTransformError(
        f"transform must be a warpsvc Transform, got {type(transform).__name__}", field="transform")


def _values(matrix) -> list[float]:
    return [float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(-1)]


# -- alignment results ---------------------------------------------------------------------------
MODEL_NAMES = {enum: name for name, enum in MODELS.items()}


def _optional(resp, name: str):
    return array(getattr(resp, name)) if resp.HasField(name) else None


def align_result(resp: pb.AlignResponse):
    """The library's own ``warpsvc.AlignResult``, rebuilt field for field from the response."""
    return warpsvc.AlignResult(
        matrix=np.asarray(resp.matrix, dtype=np.float64).reshape(3, 3),
        inverse=np.asarray(resp.inverse, dtype=np.float64).reshape(3, 3),
        converged=resp.converged,
        reason=resp.reason,
        iterations=tuple(resp.iterations),
        rms_error=resp.rms_error,
        zncc=resp.zncc,
        cost_history=tuple(tuple(level.costs) for level in resp.cost_history),
        covariance=_optional(resp, "covariance"),
        corner_covariance=_optional(resp, "corner_covariance"),
        overlap=resp.overlap,
        gain=tuple(resp.gain),
        bias=tuple(resp.bias),
        model=MODEL_NAMES.get(resp.model, "homography"),
        levels=resp.levels,
        elapsed=resp.elapsed_seconds,
        chart=np.asarray(resp.chart, dtype=np.float64).reshape(3, 3) if len(resp.chart) else None,
    )
