"""``--max-pixels``: an input's header checked before it is decoded or sent anywhere.

The check is the server's own header probe (:mod:`warpsvc_api.image_probe`: PNG, JPEG, TIFF read
as libpng/libjpeg/libtiff read them -- duplicate tags, tiles and strips, JPEG scans), with the
pixel limit named ``--max-pixels``; so a file the server would refuse is refused here first, in
the same words, and a small file claiming a huge image costs nothing, local or remote. No OpenCV
(the server-target path decodes nothing).
"""

from __future__ import annotations

import functools

from warpsvc.core.errors import WarpsvcError, describe
from warpsvc_api.image_probe import DEFAULT_MAX_PIXELS, ImageCost, ProbeLimits, probe_image


class ImageHeaderError(ValueError):
    """An input whose header is missing, malformed, or claims too much (pixels, a tile, scans)."""


@functools.lru_cache(maxsize=8)
def limits(max_pixels: int) -> ProbeLimits:
    return ProbeLimits(max_pixels=max_pixels, limit_name="--max-pixels {}")


def cost(data: bytes, max_pixels: int) -> ImageCost:
    """What decoding ``data`` produces and costs (:class:`~warpsvc_api.image_probe.ImageCost`:
    the shape and dtype ``cv2.imdecode(IMREAD_UNCHANGED)`` returns, after any TIFF orientation
    swap), from the header; :class:`ImageHeaderError` (the probe's message, naming ``input``) when
    the file is not a PNG/JPEG/TIFF, is malformed, or costs more than ``max_pixels`` allows."""
    try:
        return probe_image(data, limits(max_pixels), field="input")
    except WarpsvcError as err:
        raise ImageHeaderError(describe(err)) from None


def check(data: bytes, max_pixels: int) -> tuple[int, int]:
    """``(height, width)`` of :func:`cost`."""
    found = cost(data, max_pixels)
    return found.height, found.width


__all__ = ["DEFAULT_MAX_PIXELS", "ImageHeaderError", "check", "cost", "limits", "probe_image"]
