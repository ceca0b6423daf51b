"""Image files <-> arrays for the batch client, in OpenCV's layout, without needing OpenCV.

The layout is ``cv2.imdecode(data, IMREAD_UNCHANGED)``'s, the server's: ``(H, W)`` grey or
``(H, W, C)`` with channels in **BGR(A)** order, samples at their stored depth (uint8, uint16,
float32, float64). :func:`decode` uses OpenCV when it is installed (the library's own decoder:
``--target local`` and the server must agree to the bit), else Pillow (PNG, JPEG, TIFF through
its libtiff) and tifffile (the float TIFFs Pillow cannot open). Either way the result is checked
against the header probe (:mod:`warpsvc_api.image_probe`: the shape and dtype OpenCV produces);
lossless formats then hold the same samples, and Pillow's JPEG decoder (libjpeg-turbo, islow IDCT,
fancy upsampling) was measured equal to OpenCV's (``tests/test_batch_pixels.py`` checks both).

What Pillow/tifffile cannot read as OpenCV does -- 16-bit colour PNG/TIFF (Pillow keeps 8 bits),
CMYK JPEG (another colour conversion), LZW-compressed float TIFF (tifffile needs imagecodecs),
TIFF orientations other than top-left -- raises :class:`~warpsvc.core.errors.InvalidImageError`
with ``exact=True``; ``exact=False`` (pictures for the report) accepts Pillow's 8-bit
approximation instead.

Writing: :func:`encode_map` writes float32 maps (Jacobian determinants) as an uncompressed
single-strip TIFF (tifffile) or ``.npy``, the same bytes whichever engine computed them;
:func:`png` writes the report's RGB pictures (Pillow).
"""

from __future__ import annotations

import io

import numpy as np

from warpsvc.core.errors import InvalidArgumentError, InvalidImageError
from warpsvc_api.image_probe import ImageCost

BGR = (2, 1, 0)


def opencv():
    """The ``cv2`` module, or ``None`` when OpenCV is not installed (client-only installs)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def decode(data: bytes, cost: ImageCost, *, exact: bool = True) -> np.ndarray:
    """The pixels of the PNG/JPEG/TIFF file ``data`` whose header probe is ``cost``, in OpenCV's
    layout (module docstring)."""
    cv2 = opencv()
    if cv2 is not None:
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error as err:  # OpenCV's own checks: a bad file
            raise InvalidImageError(f"input: the {cost.format} file could not be decoded ({err.err or 'OpenCV error'}; "
                                    "truncated or corrupt?)", field="image") from None
        if img is None or img.shape[:2] != cost.shape[:2]:
            # the header passed the probe, so it is a PNG/JPEG/TIFF: its data is what fails
            raise InvalidImageError(f"input: the {cost.format} file could not be decoded (truncated or corrupt?)",
                                    field="image")
        return img
    return decode_without_opencv(data, cost, exact=exact)


def decode_without_opencv(data: bytes, cost: ImageCost, *, exact: bool = True) -> np.ndarray:
    """:func:`decode` by Pillow/tifffile (what it does where OpenCV is not installed)."""
    img, why = _pillow_or_tifffile(data, cost)
    if why is not None and (exact or img is None):
        raise InvalidImageError(f"input: {why}; without OpenCV this {cost.format.upper()} cannot be decoded as "
                                "OpenCV decodes it (send it to a server, or pip install 'warpsvc[compute]')",
                                field="image")
    return img


def _pillow_or_tifffile(data: bytes, cost: ImageCost) -> tuple[np.ndarray | None, str | None]:
    """(pixels, None) decoded exactly as OpenCV would, or (best effort or None, the reason not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(data))
        if cost.format == "jpeg" and im.mode == "CMYK":
            return _pillow_array(im.convert("RGB"), 3), "a CMYK JPEG (another colour conversion)"
        if cost.format == "tiff" and im.getexif().get(0x0112, 1) != 1:
            return None, "a TIFF with an orientation other than top-left"
        arr = _pillow_array(im, cost.channels)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        if cost.format != "tiff":
            return None, f"Pillow could not decode it ({err})"
        arr = None
    if arr is not None and arr.shape == cost.shape and arr.dtype == cost.dtype:
        return arr, None
    if cost.format == "tiff":
        alt, why = _tifffile_array(data)
        if alt is not None and alt.shape == cost.shape and alt.dtype == cost.dtype:
            return alt, None
        if arr is None:
            return None, why or "tifffile could not decode it"
    got = "nothing" if arr is None else f"{arr.dtype} {arr.shape}"
    return arr, f"Pillow reads {got} where OpenCV reads {cost.dtype} {cost.shape}"


def _pillow_array(im, channels: int) -> np.ndarray:
    """A Pillow image as an array with ``channels`` channels (BGR(A) order), its depth kept."""
    if channels > 1:
        mode = "RGBA" if channels == 4 else "RGB"
        im = im if im.mode == mode else im.convert(mode)
    elif im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        im = im.convert("L")  # bilevel, palette, grey+alpha read as grey
    arr = np.asarray(im)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)  # "I;16B" -> native uint16
    if arr.ndim == 3:
        arr = arr[:, :, BGR + tuple(range(3, arr.shape[2]))]
    return np.ascontiguousarray(arr)


def _tifffile_array(data: bytes) -> tuple[np.ndarray | None, str | None]:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            if int(getattr(page, "orientation", 1) or 1) != 1:
                return None, "a TIFF with an orientation other than top-left"
            arr = page.asarray()
    except Exception as err:  # noqa: BLE001 - tifffile raises many kinds (codec missing, corrupt)
        return None, f"tifffile could not decode it ({err})"
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[:, :, BGR + tuple(range(3, arr.shape[2]))]
    return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("="), copy=False)), None


def encode_map(values: np.ndarray, fmt: str) -> bytes:
    """A float32 map or image as a ``.npy`` or an uncompressed float32 TIFF (one strip). An
    ``(H, W)`` map is grey; an ``(H, W, 3|4)`` image is in OpenCV's channel order (BGR[A], as
    :func:`decode` returns it) and is written RGB[A], as ``cv2.imencode`` writes it, so any TIFF
    reader sees its colours and :func:`decode` gives back the same array."""
    values = np.ascontiguousarray(values, np.float32)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, values, allow_pickle=False)
    elif fmt == "tiff":
        import tifffile

        if values.ndim == 3 and values.shape[2] in (3, 4):
            rgb = np.ascontiguousarray(values[:, :, [2, 1, 0, 3][: values.shape[2]]])
            tifffile.imwrite(buf, rgb, photometric="rgb", planarconfig="contig", compression=None,
                             rowsperstrip=values.shape[0], extrasamples=("unassalpha",) if values.shape[2] == 4 else None)
        elif values.ndim == 2:
            tifffile.imwrite(buf, values, photometric="minisblack", compression=None, rowsperstrip=values.shape[0])
        else:
            raise InvalidArgumentError(f"a TIFF holds 1, 3 or 4 channels, not shape {values.shape}", field="output")
    else:
        raise InvalidArgumentError(f"a map is written as .tif or .npy, not {fmt}", field="output")
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 RGB picture (or an ``(H, W)`` grey one) as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    rgb = np.ascontiguousarray(rgb, np.uint8)
    Image.fromarray(rgb, "L" if rgb.ndim == 2 else "RGB").save(buf, "PNG")
    return buf.getvalue()
