"""Compiled per-pixel loops: determinant scaling (``intensity="conserve"``) and separable polar
maps. Each runs in parallel over rows (``prange``), GIL released; one fused pass (read the
sampled image, convert, scale, write float) replaces 2-4 numpy passes.

Scaling ``out = sampled * |det J_{T^{-1}}(y)|`` comes in the shapes the determinant takes:

* affine ``S``: a constant ``|det M_2x2|`` (:func:`scale_by_constant`);
* projective ``S`` with matrix ``M``: ``|det M| / |w|^3``, ``w = M20 x + M21 y + M22``, affine
  along each row (:func:`scale_by_projective_det`);
* polar ``S``: a function of the column only (:func:`scale_by_columns`);
* anything else: a full ``(H, W)`` map (:func:`scale_by_map`).

Arrays are ``(H, W, C)``; ``out`` is float32 or float64. Where the factor is passed in the output
dtype, the product is formed in that dtype (numba promotes uint8/uint16/float32 x float32 to
float32, as numpy's ``out = src.astype(float32); out *= factor`` does), so results are
bit-identical to the numpy formulation and independent of the thread count (elementwise work).
"""

from __future__ import annotations

import math

import numpy as np

from ._compiled import FASTMATH, lazy_compiled

prange = range  # numba.prange once compiled (see ._compiled.lazy_compiled): numba imports lazily


@lazy_compiled(parallel=True)
def scale_by_constant(src, factor, out):
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor`` (``factor`` in ``out``'s dtype); rows
    flattened to ``W C`` values (C-contiguous arrays) so the loop vectorises."""
    h, w, c = src.shape
    flat_src = src.reshape(h, w * c)
    flat_out = out.reshape(h, w * c)
    for i in prange(h):
        for k in range(w * c):
            flat_out[i, k] = flat_src[i, k] * factor


@lazy_compiled(parallel=True, fastmath=FASTMATH)
def scale_by_projective_det(src, m, det_m, row0, out):
    """``out[y, x, c] = src[y, x, c] * |det M| / |w(x, row0 + y)|^3``; 0 where ``w = 0`` or the
    factor is not finite (computed in float64). ``row0``: output row of ``src[0]`` (bands).
    Per row, the factors first (a vectorisable loop), then the products."""
    h, w, c = src.shape
    for i in prange(h):
        base = m[2, 1] * (i + row0) + m[2, 2]
        f = np.empty(w)
        for j in range(w):
            ww = abs(m[2, 0] * j + base)
            fj = det_m / (ww * ww * ww)
            f[j] = fj if (ww > 0.0 and math.isfinite(fj)) else 0.0
        for j in range(w):
            fj = f[j]
            for ch in range(c):
                out[i, j, ch] = src[i, j, ch] * fj


@lazy_compiled(parallel=True)
def scale_by_columns(src, flat_factor, out):
    """``out[y, x, c] = out.dtype(src[y, x, c]) * flat_factor[x C + c]``: a factor per column,
    repeated for each channel by the caller (rows flattened to ``W C`` values so the loop
    vectorises; factor in ``out``'s dtype)."""
    h, w, c = src.shape
    flat_src = src.reshape(h, w * c)
    flat_out = out.reshape(h, w * c)
    for i in prange(h):
        for k in range(w * c):
            flat_out[i, k] = flat_src[i, k] * flat_factor[k]


@lazy_compiled(parallel=True)
def scale_by_map(src, factor, out):
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor[y, x]`` (factor in ``out``'s dtype)."""
    h, w, c = src.shape
    for i in prange(h):
        for j in range(w):
            f = factor[i, j]
            for ch in range(c):
                out[i, j, ch] = src[i, j, ch] * f


@lazy_compiled(parallel=True)
def outer_maps(row_cos, row_sin, radius, cx, cy, mx, my):
    """``mx[i, j] = float32(radius[j] * row_cos[i] + cx)`` (and ``my`` with ``row_sin``, ``cy``):
    the polar -> Cartesian sampling maps, computed in double and rounded once, as OpenCV does."""
    for i in prange(mx.shape[0]):
        c, s = row_cos[i], row_sin[i]
        for j in range(mx.shape[1]):
            mx[i, j] = radius[j] * c + cx
            my[i, j] = radius[j] * s + cy
