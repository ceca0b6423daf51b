"""Command-line value types shared by the ``warpsvc-batch`` sub-commands (argparse ``type=``)."""

from __future__ import annotations

import argparse


def correlation(text: str) -> float:
    """A correlation threshold in ``[-1, 1]`` (``--min-zncc``); NaN and words are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a correlation in [-1, 1]") from None
    if not -1.0 <= value <= 1.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a correlation in [-1, 1], got {text}")
    return value
