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
