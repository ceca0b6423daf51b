"""Images as the server reads and writes them: raw tensors (via :mod:`warpsvc_api.convert`) and
encoded files (PNG, JPEG, TIFF via OpenCV), under the server's size limits.

* raw tensors: viewed without copying (the payload seen in place in the received request);
* encoded files: the format comes from the file signature; :mod:`.image_probe` reads what the
  decoder will produce and cost (pixels, channels, tile/strip buffers, JPEG scans) the way
  libpng/libjpeg/libtiff read the headers, and refuses it over the limits *before* OpenCV
  allocates anything (decompression bombs), then ``cv2.imdecode(IMREAD_UNCHANGED)``; a
  ``cv2.error`` becomes INVALID_ARGUMENT. Workers also set ``OPENCV_IO_MAX_IMAGE_PIXELS`` to the
  pixel limit before importing cv2 (:mod:`.runner`).

Errors are the library's (:mod:`warpsvc.core.errors`), naming the request field.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from warpsvc.core.errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError
from warpsvc.core.validate import SUPPORTED_DTYPES
from warpsvc_api import convert, vocab, wire
from warpsvc_api.tiff_alpha import declare_alpha
from warpsvc_api.v1 import warp_pb2 as pb

from . import image_probe

# What each file format can hold: dtypes and channel counts (OpenCV silently converts the rest,
# so the server refuses them instead).
FORMAT_EXT = {"png": ".png", "jpeg": ".jpg", "tiff": ".tiff"}
FORMAT_DTYPES = {"png": (np.uint8, np.uint16), "jpeg": (np.uint8,), "tiff": SUPPORTED_DTYPES}
FORMAT_CHANNELS = {"png": (1, 3, 4), "jpeg": (1, 3), "tiff": (1, 3, 4)}
DEFAULT_JPEG_QUALITY = 95


def sniff_format(data: bytes) -> str | None:
    """``"png"``, ``"jpeg"``, ``"tiff"`` from the file signature, else ``None`` (the shared probe's
    signature table, BigTIFF included)."""
    return image_probe.sniff(data)


def decode_encoded(msg: pb.EncodedImage, field: str, max_pixels: int) -> np.ndarray:
    data = msg.data
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(image_probe.unrecognised(data), field=f"{field}.data")
    said = vocab.IMAGE_FORMAT.from_wire(msg.format, f"{field}.format")
    if said not in (vocab.DEFAULT, fmt):
        raise InvalidImageError(f"says {said} but the data is {fmt}", field=f"{field}.format")
    # What the decoder will produce and cost, parsed as libpng/libjpeg/libtiff parse it (tiles,
    # strips, scans, duplicate tags), refused over the limits before OpenCV allocates anything.
    cost = image_probe.probe_image(data, probe_limits(max_pixels), field)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:  # OpenCV's own checks (OPENCV_IO_MAX_IMAGE_PIXELS, ...): a bad file
        raise InvalidImageError(f"the {fmt} file could not be decoded ({err.err or 'OpenCV error'})",
                                field=f"{field}.data") from None
    if img is None or img.shape[:2] != (cost.height, cost.width):
        raise InvalidImageError(f"the {fmt} file could not be decoded", field=f"{field}.data")
    if img.dtype.type not in SUPPORTED_DTYPES:
        raise InvalidImageError(f"decoded pixels are {img.dtype}, not uint8/uint16/float32/float64",
                                field=f"{field}.data")
    return img


@functools.lru_cache(maxsize=8)
def probe_limits(max_pixels: int) -> image_probe.ProbeLimits:
    """The header probe's limits for an input of at most ``max_pixels`` (cached: one per setting)."""
    return image_probe.ProbeLimits(max_pixels=max_pixels)


def check_pixels(shape, field: str, max_pixels: int, what: str) -> None:
    h, w = int(shape[0]), int(shape[1])
    if h * w > max_pixels:
        raise ImageTooLargeError(f"{what} of {h}x{w} = {h * w} pixels exceeds the server limit of {max_pixels} pixels",
                                 field=field)


# What a response message holds around its pixel bytes (tags, lengths, shape, dtype, format): a
# result of exactly the limit's size failed in gRPC's send ("67108888 vs. 67108864") after the
# work was done, so the checks keep this much room.
RESPONSE_FRAMING_BYTES = 4096
# An encoded response's raw result may exceed the message limit by this factor before computing
# (PNG / JPEG / TIFF-LZW compress); the encoded file itself is checked once made (check_encoded).
ENCODED_RAW_FACTOR = 4


def check_bytes(nbytes: int, field: str, max_bytes: int, what: str,
                hint: str = "ask for an encoded response_form") -> None:
    """Refuse (``field``, RESOURCE_EXHAUSTED) a response payload of ``nbytes`` that, with its
    framing, would not fit in a ``max_bytes`` message."""
    if nbytes + RESPONSE_FRAMING_BYTES > max_bytes:
        raise ImageTooLargeError(f"{what} of {nbytes} bytes exceeds the {max_bytes}-byte message limit "
                                 f"({hint})", field=field)


def check_encoded_raw(raw_bytes: int, form: str, max_bytes: int, what: str) -> None:
    """Before computing an encoded response: its raw result over ``ENCODED_RAW_FACTOR`` message
    limits is refused (``output_shape``), since no encoding would bring it under the limit for
    ordinary content, and computing and encoding it cost seconds and gigabytes (a 2x2 float64
    input asking for a 5792x5792 TIFF took 35 s and 2.5 GB, then failed in gRPC's send)."""
    if raw_bytes > ENCODED_RAW_FACTOR * max_bytes:
        raise ImageTooLargeError(f"{what}: {raw_bytes} bytes before {form} encoding, over "
                                 f"{ENCODED_RAW_FACTOR}x the {max_bytes}-byte message limit (ask for a smaller "
                                 "output_shape)", field="output_shape")


def check_encoded(nbytes: int, form: str, max_bytes: int) -> None:
    """The encoded response file, once made: over the message limit it is refused naming
    ``response_form`` instead of failing in gRPC's send with no field."""
    if nbytes + RESPONSE_FRAMING_BYTES > max_bytes:
        raise ImageTooLargeError(f"the {form} result is {nbytes} bytes, over the {max_bytes}-byte message limit "
                                 "(ask for a smaller output_shape or a more compact response_form)",
                                 field="response_form")


def decode_image(msg: pb.Image, payload, field: str, max_pixels: int, *, required: bool = True):
    """The request image ``msg`` (``payload``: its tensor bytes seen in place, or ``None``) as an
    array; ``None`` when absent and not ``required``."""
    kind = msg.WhichOneof("kind")
    if kind is None:
        if not required:
            return None
        raise InvalidImageError(f"required; set {field}.tensor or {field}.encoded", field=field)
    if kind == "tensor":
        arr = convert.array(msg.tensor, payload, f"{field}.tensor", ndims=(2, 3))
        check_pixels(arr.shape, field, max_pixels, "input")
        return arr
    return decode_encoded(msg.encoded, f"{field}.encoded", max_pixels)


def response_format(form: int, jpeg_quality: int) -> str:
    """The requested response form (``"tensor"``, ``"png"``, ...), checked before any work."""
    name = vocab.RESPONSE_FORM.from_wire(form)
    if not 0 <= jpeg_quality <= 100:
        raise InvalidArgumentError(f"must be 0 (default) or 1..100, got {jpeg_quality}", field="jpeg_quality")
    return "tensor" if name is vocab.DEFAULT else name


def check_encodable(form: str, dtype, channels: int) -> None:
    """Refuse (``response_form``) a result of ``dtype`` with ``channels`` that ``form`` cannot hold."""
    if np.dtype(dtype).type not in FORMAT_DTYPES[form] or channels not in FORMAT_CHANNELS[form]:
        dts = "/".join(np.dtype(d).name for d in FORMAT_DTYPES[form])
        raise InvalidArgumentError(
            f"{form} holds {dts} with {FORMAT_CHANNELS[form]} channels; the result is {np.dtype(dtype)} with "
            f"{channels} channels (ask for RESPONSE_FORM_TENSOR or TIFF)", field="response_form")


def encode_image(arr: np.ndarray, form: str, *, jpeg_quality: int = 0, max_bytes: int | None = None) -> wire.Parts:
    """``arr`` as a serialised ``Image`` in ``form`` (from :func:`response_format`); with
    ``max_bytes``, an encoded file over that message limit is refused (:func:`check_encoded`)."""
    if form == "tensor":
        return convert.image_parts(arr)
    check_encodable(form, arr.dtype, 1 if arr.ndim == 2 else arr.shape[2])
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality or DEFAULT_JPEG_QUALITY] if form == "jpeg" else []
    ok, buf = cv2.imencode(FORMAT_EXT[form], arr, params)
    if not ok:  # pragma: no cover - dtype and channels were checked above
        raise RuntimeError(f"OpenCV could not encode the result as {form}")
    if max_bytes is not None:
        check_encoded(buf.size, form, max_bytes)
    data = declare_alpha(buf.tobytes()) if form == "tiff" else buf.tobytes()  # 4-channel: ExtraSamples
    encoded = pb.EncodedImage(format=vocab.IMAGE_FORMAT.to_wire(form), data=data)
    return wire.Parts.of(pb.Image(encoded=encoded))
