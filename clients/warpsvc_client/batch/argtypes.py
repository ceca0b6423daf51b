"""Command-line value types shared by the ``warpsvc-batch`` sub-commands (argparse ``type=``)."""

from __future__ import annotations

import argparse
import math


def correlation(text: str) -> float:
    """A correlation threshold in ``[-1, 1]`` (``--min-zncc``); NaN and words are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a correlation in [-1, 1]") from None
    if not -1.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a correlation in [-1, 1], got {text}")
    return value


MAX_LEVELS = 12  # the library's (warpsvc.core.align.options.MAX_LEVELS; not imported: no OpenCV needed)


def levels(text: str) -> str | int:
    """``--levels``: ``auto`` or an integer in ``[1, 12]``, checked before any image (``0`` was
    refused per image by the local engine and taken as ``auto`` by a server: the wire's unset)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer in [1, {MAX_LEVELS}], got {text!r}") from None
    if not 1 <= value <= MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer in [1, {MAX_LEVELS}], got {value}")
    return value


def jpeg_quality(text: str) -> int:
    """``--jpeg-quality``: an integer in ``[1, 100]`` (200 used to be clamped by the local engine's
    OpenCV with a warning and refused for every image, PNG and TIFF too, by a server)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 100], got {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected an integer in [1, 100], got {value}")
    return value


def finite(text: str) -> float:
    """A finite number (``--border-value``: NaN or inf failed every image)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value
