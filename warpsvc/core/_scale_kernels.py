"""Compiled per-pixel loops: projective determinant scaling and separable polar maps.

Scaling (``intensity="conserve"``):

For ``S = T^{-1}`` with matrix ``M`` the map is ``|det M| / |w|^3``,
``w = M20 x + M21 y + M22``: affine along each row, so one fused pass over the warped image
(read, scale, write float) replaces building the map and multiplying (3-4 array passes).
"""

from __future__ import annotations

import math

from ._compiled import compiled


@compiled(fastmath=True)
def scale_by_projective_det(src, m, det_m, out):
    """``out[y, x, c] = src[y, x, c] * |det M| / |w(x, y)|^3``; 0 where ``w = 0``."""
    h, w, c = src.shape
    for i in range(h):
        base = m[2, 1] * i + m[2, 2]
        for j in range(w):
            ww = abs(m[2, 0] * j + base)
            f = det_m / (ww * ww * ww) if ww > 0.0 else 0.0
            if not math.isfinite(f):
                f = 0.0
            for ch in range(c):
                out[i, j, ch] = src[i, j, ch] * f


@compiled()
def outer_maps(row_cos, row_sin, radius, cx, cy, mx, my):
    """``mx[i, j] = float32(radius[j] * row_cos[i] + cx)`` (and ``my`` with ``row_sin``, ``cy``):
    the polar -> Cartesian sampling maps, computed in double and rounded once, as OpenCV does."""
    for i in range(mx.shape[0]):
        c, s = row_cos[i], row_sin[i]
        for j in range(mx.shape[1]):
            mx[i, j] = radius[j] * c + cx
            my[i, j] = radius[j] * s + cy
