"""Guards shared by the public functions: images, shapes and option names."""

from __future__ import annotations

import numpy as np

from .errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError

SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
# Largest output grid the library will allocate (pixels); a service sets tighter limits.
MAX_OUTPUT_PIXELS = 1 << 30
MAX_SIDE = 1 << 20


def check_image(image, field: str = "image") -> np.ndarray:
    """Return ``image`` as an ``(H, W, C)`` view (C >= 1) after checking dtype and shape."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"{field} must be a numpy array, got {type(image).__name__}", field=field)
    if image.dtype.type not in SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(d).name for d in SUPPORTED_DTYPES)
        raise InvalidImageError(f"{field} dtype {image.dtype} is not supported (use {names})", field=field)
    if image.ndim not in (2, 3):
        raise InvalidImageError(f"{field} must be (H, W) or (H, W, C), got {image.ndim} dimensions", field=field)
    if image.size == 0:
        raise InvalidImageError(f"{field} is empty (shape {image.shape})", field=field)
    return image if image.ndim == 3 else image[:, :, None]


def check_shape(shape, field: str = "output_shape") -> tuple[int, int]:
    """Validate an ``(H, W)`` grid shape: two positive integers within the size limits."""
    try:
        if len(shape) != 2:
            raise TypeError
        h, w = shape
        if isinstance(h, (bool, np.bool_)) or isinstance(w, (bool, np.bool_)):
            raise TypeError
        hi, wi = int(h), int(w)
        if hi != h or wi != w:
            raise TypeError
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgumentError(f"{field} must be two integers (H, W), got {shape!r}", field=field) from None
    if hi <= 0 or wi <= 0:
        raise InvalidArgumentError(f"{field} must be positive, got {(hi, wi)}", field=field)
    if hi > MAX_SIDE or wi > MAX_SIDE:  # each message names the limit that was hit (a server's is lower)
        raise ImageTooLargeError(f"{field} {(hi, wi)} exceeds the limit of {MAX_SIDE} pixels per side", field=field)
    if hi * wi > MAX_OUTPUT_PIXELS:
        raise ImageTooLargeError(f"{field} {(hi, wi)} = {hi * wi} pixels exceeds the limit of {MAX_OUTPUT_PIXELS} "
                                 f"pixels", field=field)
    return hi, wi


def check_choice(value, choices, field: str):
    if value not in choices:
        raise InvalidArgumentError(f"{field} must be one of {tuple(choices)}, got {value!r}", field=field)
    return value


def output_dtype(input_dtype, *, intensity: str = "plain", antialias: bool = False) -> np.dtype:
    """The dtype :func:`warpsvc.warp` returns for an image of ``input_dtype`` (a server sizes its
    response with it before warping): plain point samples keep the input dtype; conserved or
    antialiased values are float32, float64 for float64 input. Same defaults as ``warp``
    (tests/test_service_wire.py checks it against ``warp`` itself)."""
    dtype = np.dtype(input_dtype)
    if intensity == "plain" and not antialias:
        return dtype
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)
