"""The header probe (:mod:`warpsvc_api.image_probe`, shared with ``warpsvc-batch``) and the one
server-only piece beside it: lowering OpenCV's own pixel cap to the server's limit.

``cv::imdecode`` refuses images over ``OPENCV_IO_MAX_IMAGE_PIXELS`` (default 2^30) by raising
``cv2.error``; OpenCV reads the variable once, when ``cv2`` is loaded, so :func:`configure_opencv_io`
runs at worker start (:mod:`.runner`) before anything imports ``cv2`` (defence in depth: the probe
refuses those files first).
"""

from __future__ import annotations

import os
import sys

from warpsvc_api.image_probe import OPENCV_MAX_PIXELS, ImageCost, ProbeLimits, probe_image, sniff, unrecognised

OPENCV_PIXELS_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"  # read once, when the cv2 module is loaded


def opencv_io_environment(max_input_pixels: int) -> dict[str, str]:
    """The environment that makes ``cv2.imdecode`` itself refuse images over ``max_input_pixels``
    (OpenCV reads it once, when ``cv2`` is loaded)."""
    if max_input_pixels < 1:
        raise ValueError(f"max_input_pixels must be >= 1, got {max_input_pixels}")
    return {OPENCV_PIXELS_ENV: str(min(int(max_input_pixels), OPENCV_MAX_PIXELS))}


def configure_opencv_io(max_input_pixels: int, environ=None) -> dict[str, str]:
    """Set :func:`opencv_io_environment` in ``environ`` (default ``os.environ``); call it at server
    start, before anything imports ``cv2``. Raises ``RuntimeError`` when ``cv2`` is already loaded
    with another value (the setting would silently not apply)."""
    environ = os.environ if environ is None else environ
    wanted = opencv_io_environment(max_input_pixels)
    if "cv2" in sys.modules and environ is os.environ and any(environ.get(k) != v for k, v in wanted.items()):
        raise RuntimeError(f"cv2 is already imported: {OPENCV_PIXELS_ENV} must be set before the first "
                           f"`import cv2` (wanted {wanted[OPENCV_PIXELS_ENV]}, have "
                           f"{environ.get(OPENCV_PIXELS_ENV)!r})")
    environ.update(wanted)
    return wanted


__all__ = ["ImageCost", "ProbeLimits", "configure_opencv_io", "opencv_io_environment", "probe_image", "sniff",
           "unrecognised"]
