"""A conserving warp of an image whose file has an alpha channel: colour as densities, alpha as values.

``intensity="conserve"`` multiplies by ``|det J_{T^-1}|``: a pixel's value is a density (flux per
pixel), so a warp that shrinks the image concentrates it and the total is kept. The alpha of
an RGBA file is not a density but each pixel's coverage (opacity, 0 to full scale): a warp
moves it, it does not concentrate it. The library's :func:`warpsvc.warp` cannot tell (a
4-channel array is four intensities); the file can -- PNG with an alpha channel or ``tRNS``,
an RGB TIFF with an alpha ExtraSample (or none declared, as OpenCV writes RGBA), see
:class:`.image_probe.ImageCost` ``alpha`` -- so the server (encoded inputs) and
``warpsvc-batch``'s local engine warp such an image's colour with ``intensity="conserve"`` and
its alpha with ``intensity="plain"`` (same interpolation, border, antialias; cast to the colour
result's float dtype). Found by a new-user test: a conserving warp of RGBA files wrote alpha
values up to 2229 into float TIFFs that declare the 4th channel alpha. Plain warps are one
call, as before (every channel is warped the same way).

Alignment (:func:`alpha_as_mask`): the alpha of such a file says where its colour is defined,
so it is not aligned on as a fourth intensity; it becomes the input's mask (``alpha > 0``,
and-ed with a mask the caller sent) and the colour channels are aligned. An RGBA file then
aligns to an RGB reference (it was refused: "image has 4 channels but template has 3") and
its transparent surround no longer pulls the fit. A grey + alpha PNG (decoded as four channels,
the grey repeated) aligns to a grey file as grey (:func:`grey_like`).

Sequences (:func:`alpha_as_nan`): the sequence API takes no masks, so the server's AlignStream
and ``warpsvc-batch stack`` register such a file's colour channels as float32 with NaN where
``alpha == 0`` -- the library's own encoding of a missing pixel (a masked template pixel is
unusable, a masked image pixel missing). RGBA frames whose transparent part holds undefined
colour (a rendered or rectified frame's border, say) used to be aligned on it as a fourth
intensity: 11 of 11 frames came back ``unregistered``; masked, all within 0.03 px.
"""

from __future__ import annotations

import numpy as np


def warp_keeping_alpha(image: np.ndarray, transform, output_shape=None, *, alpha: bool, **options) -> np.ndarray:
    """:func:`warpsvc.warp` (``options`` its keywords), with ``alpha`` (the file says channel 4
    is alpha) and ``intensity="conserve"`` the 4th channel warped as plain values."""
    import warpsvc

    if not alpha or options.get("intensity", "plain") != "conserve" or image.ndim != 3 or image.shape[2] != 4:
        return warpsvc.warp(image, transform, output_shape, **options)
    colour = warpsvc.warp(np.ascontiguousarray(image[:, :, :3]), transform, output_shape, **options)
    cover = warpsvc.warp(np.ascontiguousarray(image[:, :, 3]), transform, output_shape,
                         **dict(options, intensity="plain"))
    return np.dstack([colour, cover.astype(colour.dtype, copy=False)])


def alpha_as_mask(pixels: np.ndarray, alpha: bool, mask=None):
    """``(colour, mask)`` for :func:`warpsvc.align`: with ``alpha`` (the file says its last channel
    is alpha; 2 or 4 channels as decoded) the colour channels (a 2-D array for grey + alpha) and
    the mask ``alpha > 0``, and-ed with ``mask`` when that has the image's ``(H, W)`` (a mask of
    another shape is passed on untouched, for ``align`` to refuse by its field). Otherwise the
    inputs as given."""
    if not alpha or pixels.ndim != 3 or pixels.shape[2] not in (2, 4):
        return pixels, mask
    colour = np.ascontiguousarray(pixels[:, :, :-1] if pixels.shape[2] == 4 else pixels[:, :, 0])
    seen = pixels[:, :, -1] > 0
    if mask is None:
        return colour, seen
    given = np.asarray(mask)
    if given.shape != seen.shape:
        return colour, mask
    return colour, seen & (given != 0)


def alpha_as_nan(pixels: np.ndarray, alpha: bool, like: np.ndarray | None = None) -> np.ndarray:
    """For registration without masks: with ``alpha`` (2 or 4 channels as decoded, the last
    one alpha) the colour channels (2-D for grey + alpha; made grey by :func:`grey_like` when
    ``like``, the other side, is grey) as a new float32 array holding NaN where ``alpha == 0``
    (float32 holds every uint8 / uint16 value exactly); otherwise ``pixels`` as given."""
    if not alpha or pixels.ndim != 3 or pixels.shape[2] not in (2, 4):
        return pixels
    colour, seen = alpha_as_mask(pixels, True)
    if like is not None:
        colour = grey_like(colour, like)
    out = colour.astype(np.float32)  # a copy: the caller's pixels are not touched
    out[~seen] = np.nan
    return out


def grey_like(pixels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``pixels`` as one grey channel when it is colour whose channels are all equal and ``other``
    is grey (2-D or one channel): a grey file decoded as BGR(A) -- OpenCV decodes a grey + alpha
    PNG as four channels, the grey repeated three times -- against a grey template or image.
    Otherwise ``pixels`` as given (a real colour image against a grey one stays refused)."""
    if not (pixels.ndim == 3 and pixels.shape[2] == 3 and (other.ndim == 2 or other.shape[2] == 1)):
        return pixels
    first = pixels[:, :, 0]
    if np.array_equal(first, pixels[:, :, 1]) and np.array_equal(first, pixels[:, :, 2]):
        return np.ascontiguousarray(first)
    return pixels


def align_inputs(template, template_alpha: bool, template_mask, image, image_alpha: bool, image_mask):
    """``(template, template_mask, image, image_mask)`` for :func:`warpsvc.align` from decoded
    files: each file's alpha as its mask (:func:`alpha_as_mask`), then a grey + alpha file
    (decoded as colour) made grey again when the other input is grey (:func:`grey_like`).
    Inputs without alpha are passed as given (a 3-channel tensor against a grey one stays
    refused, as in the library)."""
    template, template_mask = alpha_as_mask(template, template_alpha, template_mask)
    image, image_mask = alpha_as_mask(image, image_alpha, image_mask)
    if template_alpha:
        template = grey_like(template, image)
    if image_alpha:
        image = grey_like(image, template)
    return template, template_mask, image, image_mask
