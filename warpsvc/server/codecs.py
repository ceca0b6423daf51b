"""Translation between protobuf messages and numpy arrays / warpsvc transforms.

Every decoder takes the request field path it is reading (``"image"``, ``"transforms[1].polar"``)
and raises core errors (:mod:`warpsvc.core.errors`) whose ``field`` is that full path, so the one
error table in :mod:`.errors` can name the field to the caller.

Images
------
* raw tensors: ``shape`` (H, W) or (H, W, C), ``dtype`` enum, little-endian row-major bytes,
  viewed without copying (``np.frombuffer``);
* encoded files (PNG, JPEG, TIFF): the format comes from the file signature; the pixel count is
  read from the header (PNG ``IHDR``, JPEG ``SOFn``, TIFF first IFD) and checked against the limit
  *before* OpenCV allocates anything (decompression bombs), then ``cv2.imdecode(IMREAD_UNCHANGED)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import struct

import cv2
import numpy as np

from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose
from warpsvc.core.errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError, WarpsvcError
from warpsvc.v1 import warp_pb2 as pb

from . import wire

DTYPES = {
    pb.DTYPE_UINT8: np.dtype("<u1"),
    pb.DTYPE_UINT16: np.dtype("<u2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
}
DTYPE_ENUMS = {dt.newbyteorder("="): enum for enum, dt in DTYPES.items()}
DTYPE_ENUMS.update({dt: enum for enum, dt in DTYPES.items()})

# What each file format can hold: dtypes and channel counts (OpenCV silently converts the rest,
# so the server refuses them instead).
FORMAT_EXT = {pb.IMAGE_FORMAT_PNG: ".png", pb.IMAGE_FORMAT_JPEG: ".jpg", pb.IMAGE_FORMAT_TIFF: ".tiff"}
FORMAT_DTYPES = {
    pb.IMAGE_FORMAT_PNG: (np.uint8, np.uint16),
    pb.IMAGE_FORMAT_JPEG: (np.uint8,),
    pb.IMAGE_FORMAT_TIFF: (np.uint8, np.uint16, np.float32, np.float64),
}
FORMAT_CHANNELS = {pb.IMAGE_FORMAT_PNG: (1, 3, 4), pb.IMAGE_FORMAT_JPEG: (1, 3), pb.IMAGE_FORMAT_TIFF: (1, 3, 4)}
RESPONSE_FORMATS = {
    pb.RESPONSE_FORM_PNG: pb.IMAGE_FORMAT_PNG,
    pb.RESPONSE_FORM_JPEG: pb.IMAGE_FORMAT_JPEG,
    pb.RESPONSE_FORM_TIFF: pb.IMAGE_FORMAT_TIFF,
}
DEFAULT_JPEG_QUALITY = 95


@contextlib.contextmanager
def field_prefix(prefix: str):
    """Re-raise core errors with ``prefix.`` prepended to their field (``matrix`` becomes
    ``transforms[0].affine.matrix``)."""
    try:
        yield
    except WarpsvcError as err:
        field = f"{prefix}.{err.field}" if err.field else prefix
        raise type(err)(f"{field}: {err.message}", field=field) from err


def _enum_name(enum_type, value) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return str(value)


# -- tensors -------------------------------------------------------------------------------------
def decode_tensor(msg: pb.Tensor, field: str, *, ndims=(2, 3)) -> np.ndarray:
    """A read-only array viewing ``msg.data`` (no copy on little-endian hosts)."""
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise InvalidImageError(
            f"{field}.dtype: must be one of {', '.join(pb.Dtype.keys()[1:])}, got {_enum_name(pb.Dtype, msg.dtype)}",
            field=f"{field}.dtype",
        )
    shape = tuple(msg.shape)
    if len(shape) not in ndims or any(s <= 0 for s in shape):
        want = " or ".join(f"{n} positive dimensions" for n in ndims)
        raise InvalidImageError(f"{field}.shape: must have {want}, got {list(shape)}", field=f"{field}.shape")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    data = _raw_payload(field)
    if data is None:
        data = msg.data  # each access copies the payload out of upb: read it once
    if expected != len(data):
        raise InvalidImageError(
            f"{field}.data: shape {list(shape)} of {dtype.name} needs {expected} bytes, got {len(data)}",
            field=f"{field}.data",
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="))


def _little_endian(arr: np.ndarray) -> tuple[np.ndarray, int]:
    enum = DTYPE_ENUMS.get(arr.dtype)
    if enum is None:  # pragma: no cover - the core only returns supported dtypes
        raise TypeError(f"cannot send dtype {arr.dtype}")
    return arr.astype(DTYPES[enum], copy=False), enum


# The serialised request being handled and its descriptor (set by servicer.add_to_server), so
# tensor payloads are viewed in place instead of copied out of the parsed message.
RAW_REQUEST: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("warpsvc_raw_request", default=None)


def _raw_payload(field: str) -> memoryview | None:
    """The bytes of tensor ``field`` (``"image.tensor"``) viewed in the raw request, or ``None``."""
    current = RAW_REQUEST.get()
    if current is None:
        return None
    raw, descriptor = current
    numbers = []
    for name in field.split("."):
        f = descriptor.fields_by_name.get(name)
        if f is None or f.message_type is None:
            return None
        numbers.append(f.number)
        descriptor = f.message_type
    numbers.append(wire.TENSOR_DATA_FIELD)
    return wire.payload_view(raw, tuple(numbers))


def encode_tensor(arr: np.ndarray, out: pb.Tensor) -> pb.Tensor:
    """Write ``arr`` into ``out`` in place (assigning or copying a nested message copies its
    payload in upb). Large payloads go through :func:`tensor_parts` instead."""
    le, enum = _little_endian(arr)
    out.shape[:] = le.shape
    out.dtype = enum
    out.data = np.ascontiguousarray(le).tobytes()
    return out


def tensor_parts(arr: np.ndarray) -> wire.Parts:
    """``arr`` as a serialised ``Tensor`` (one copy of the payload, see :mod:`.wire`)."""
    le, enum = _little_endian(arr)
    return wire.tensor_parts(pb.Tensor(shape=le.shape, dtype=enum), le)


# -- encoded images ------------------------------------------------------------------------------
def sniff_format(data: bytes) -> int:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return pb.IMAGE_FORMAT_PNG
    if data.startswith(b"\xff\xd8\xff"):
        return pb.IMAGE_FORMAT_JPEG
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return pb.IMAGE_FORMAT_TIFF
    return pb.IMAGE_FORMAT_UNSPECIFIED


def _png_size(data: bytes):
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return h, w


def _jpeg_size(data: bytes):
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return h, w
        i += 2 + length
    return None


def _tiff_size(data: bytes):
    end = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (ifd,) = struct.unpack(end + "I", data[4:8])
    if ifd + 2 > len(data):
        return None
    (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
    size = {}
    for k in range(count):
        off = ifd + 2 + 12 * k
        if off + 12 > len(data):
            return None
        tag, typ, _n = struct.unpack(end + "HHI", data[off:off + 8])
        if tag in (256, 257):
            fmt = end + ("H" if typ == 3 else "I")
            (size[tag],) = struct.unpack(fmt, data[off + 8:off + 8 + struct.calcsize(fmt)])
    if 256 not in size or 257 not in size:
        return None
    return size[257], size[256]


HEADER_READERS = {pb.IMAGE_FORMAT_PNG: _png_size, pb.IMAGE_FORMAT_JPEG: _jpeg_size, pb.IMAGE_FORMAT_TIFF: _tiff_size}


def decode_encoded(msg: pb.EncodedImage, field: str, max_pixels: int) -> np.ndarray:
    data = msg.data
    fmt = sniff_format(data)
    if fmt == pb.IMAGE_FORMAT_UNSPECIFIED:
        raise InvalidImageError(
            f"{field}.data: not a PNG, JPEG or TIFF file (unrecognised signature)", field=f"{field}.data"
        )
    if msg.format not in (pb.IMAGE_FORMAT_UNSPECIFIED, fmt):
        raise InvalidImageError(
            f"{field}.format: says {_enum_name(pb.ImageFormat, msg.format)} but the data is "
            f"{pb.ImageFormat.Name(fmt)}",
            field=f"{field}.format",
        )
    size = HEADER_READERS[fmt](data)
    if size is None:
        raise InvalidImageError(f"{field}.data: truncated or malformed {pb.ImageFormat.Name(fmt)} header",
                                field=f"{field}.data")
    check_pixels(size, field, max_pixels, "input")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.shape[:2] != tuple(size):
        raise InvalidImageError(f"{field}.data: the {pb.ImageFormat.Name(fmt)} file could not be decoded",
                                field=f"{field}.data")
    if img.dtype.type not in (np.uint8, np.uint16, np.float32, np.float64):
        raise InvalidImageError(f"{field}.data: decoded pixels are {img.dtype}, not uint8/uint16/float32/float64",
                                field=f"{field}.data")
    return img


def check_pixels(shape, field: str, max_pixels: int, what: str) -> None:
    h, w = int(shape[0]), int(shape[1])
    if h * w > max_pixels:
        raise ImageTooLargeError(
            f"{field}: {what} of {h}x{w} = {h * w} pixels exceeds the server limit of {max_pixels} pixels",
            field=field,
        )


def decode_image(msg: pb.Image, field: str, max_pixels: int, *, required: bool = True) -> np.ndarray | None:
    kind = msg.WhichOneof("kind")
    if kind is None:
        if not required:
            return None
        raise InvalidImageError(f"{field}: required; set {field}.tensor or {field}.encoded", field=field)
    if kind == "tensor":
        arr = decode_tensor(msg.tensor, f"{field}.tensor")
        check_pixels(arr.shape, field, max_pixels, "input")
        return arr
    return decode_encoded(msg.encoded, f"{field}.encoded", max_pixels)


def encode_image(arr: np.ndarray, form: int, *, jpeg_quality: int = 0) -> wire.Parts:
    """``arr`` as a serialised ``Image`` in the form the caller asked for (``form`` validated by
    :func:`check_response_form`)."""
    fmt = RESPONSE_FORMATS.get(form)
    if fmt is None:
        return tensor_parts(arr).nested(pb.Image.DESCRIPTOR.fields_by_name["tensor"].number)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    name = pb.ResponseForm.Name(form)
    if arr.dtype.type not in FORMAT_DTYPES[fmt] or channels not in FORMAT_CHANNELS[fmt]:
        dts = "/".join(np.dtype(d).name for d in FORMAT_DTYPES[fmt])
        raise InvalidArgumentError(
            f"response_form: {name} holds {dts} with {FORMAT_CHANNELS[fmt]} channels; the result is "
            f"{arr.dtype} with {channels} channels (ask for RESPONSE_FORM_TENSOR or TIFF)",
            field="response_form",
        )
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality or DEFAULT_JPEG_QUALITY] if fmt == pb.IMAGE_FORMAT_JPEG else []
    ok, buf = cv2.imencode(FORMAT_EXT[fmt], arr, params)
    if not ok:  # pragma: no cover - dtype and channels were checked above
        raise RuntimeError(f"OpenCV could not encode the result as {name}")
    return wire.Parts([pb.Image(encoded=pb.EncodedImage(format=fmt, data=buf.tobytes())).SerializeToString()])


def check_response_form(form: int, jpeg_quality: int) -> None:
    if form not in pb.ResponseForm.values():
        raise InvalidArgumentError(f"response_form: unknown value {form}", field="response_form")
    if not 0 <= jpeg_quality <= 100:
        raise InvalidArgumentError(f"jpeg_quality: must be 0 (default) or 1..100, got {jpeg_quality}",
                                   field="jpeg_quality")


# -- transforms ----------------------------------------------------------------------------------
def matrix_from_values(values, field: str, sizes=(6, 9)) -> np.ndarray:
    vals = np.asarray(values, dtype=np.float64)
    if vals.size not in sizes:
        raise InvalidArgumentError(
            f"{field}: needs {' or '.join(map(str, sizes))} row-major values, got {vals.size}", field=field
        )
    return vals.reshape(3 if vals.size == 9 else 2, 3)


def _size(msg: pb.ImageSize) -> tuple[int, int]:
    return int(msg.height), int(msg.width)


def decode_transform(msg: pb.Transform, field: str):
    kind = msg.WhichOneof("kind")
    if kind is None:
        raise InvalidArgumentError(f"{field}: set one of affine, homography, polar", field=field)
    path = f"{field}.{kind}"
    if kind == "affine":
        matrix = matrix_from_values(msg.affine.matrix, f"{path}.matrix")
        with field_prefix(path):
            return AffineTransform(matrix)
    if kind == "homography":
        matrix = matrix_from_values(msg.homography.matrix, f"{path}.matrix", (9,))
        with field_prefix(path):
            return HomographyTransform(matrix)
    p = msg.polar
    with field_prefix(path):
        return PolarTransform(
            (p.center.x, p.center.y), p.max_radius, _size(p.polar_shape), log=p.log, inverse=p.inverse,
            cartesian_shape=_size(p.cartesian_shape) if p.HasField("cartesian_shape") else None,
            opencv_sampling=p.opencv_sampling if p.HasField("opencv_sampling") else True,
        )


def decode_transforms(msgs, field: str = "transforms"):
    if len(msgs) == 0:
        raise InvalidArgumentError(f"{field}: at least one transform is required", field=field)
    return compose(*(decode_transform(m, f"{field}[{i}]") for i, m in enumerate(msgs)))


def decode_shape(msg: pb.ImageSize, field: str) -> tuple[int, int]:
    h, w = _size(msg)
    if h <= 0 or w <= 0:
        raise InvalidArgumentError(f"{field}: height and width must be positive, got {h}x{w}", field=field)
    return h, w
