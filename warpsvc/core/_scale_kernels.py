"""Per-pixel loops of ``intensity="conserve"`` (determinant scaling) and of the separable polar
maps, as numpy calls over horizontal strips on the thread pool of :mod:`.strips`.

Nothing is compiled (the first call costs what any numpy call does, not a JIT and its cache
load), numpy releases the GIL inside each call's loop, and the strips run in parallel, as many
as the thread setting (:mod:`.threads`) allows. Each strip works through chunks of about
:data:`CHUNK_VALUES` values so its temporaries stay in the core's cache; every output value is
a function of its own pixel only, so neither the strips nor the chunks change a value: the
results do not depend on the thread count.

Scaling ``out = sampled * |det J_{T^{-1}}(y)|`` comes in the shapes the determinant takes:

* affine ``S``: a constant ``|det M_2x2|`` (:func:`scale_by_constant`);
* projective ``S`` with matrix ``M``: ``|det M| / |w|^3``, ``w = M20 x + M21 y + M22``
  (:func:`scale_by_projective_det`);
* polar ``S``: a function of the column only (:func:`scale_by_columns`);
* anything else: a full ``(H, W)`` map (:func:`scale_by_map`).

Arrays are ``(H, W, C)`` and C-contiguous; ``out`` is float32 or float64. Each chunk is first
converted into ``out`` (``out = out.dtype(src)``, exact for uint8 / uint16 / float32 values),
then multiplied in place by the factor in ``out``'s dtype: the numpy formulation
``out = src.astype(out.dtype); out *= factor``, bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np

from .strips import run_strips

CHUNK_VALUES = 1 << 18  # values per chunk of a simple strip: ~0.2 ms of work per numpy call
CHAIN_CHUNK_VALUES = 1 << 15  # per chunk of a chain of float64 passes: its temporaries stay in L2
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _chunks(r0: int, r1: int, row_values: int, values: int = CHUNK_VALUES):
    """``(a, b)`` row ranges of ``[r0, r1)`` of about ``values`` values each."""
    step = max(1, values // max(1, row_values))
    for a in range(r0, r1, step):
        yield a, min(r1, a + step)


def _rows(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of ``(H, W, C)`` as a ``(rows, W C)`` view (C-contiguous input)."""
    return a[r0:r1].reshape(r1 - r0, -1)


def _times_pixel_factor(out3: np.ndarray, factor: np.ndarray) -> None:
    """``out3[y, x, c] *= factor[y, x]`` in place (``(h, w, C)`` times ``(h, w)``): the factor is
    first repeated over the channels, so the product runs along contiguous rows."""
    c = out3.shape[2]
    if c == 1:
        np.multiply(out3[:, :, 0], factor, out=out3[:, :, 0])
        return
    flat = out3.reshape(out3.shape[0], -1)
    spread = cv2.merge([factor] * c) if c <= 4 else np.repeat(factor, c, axis=1)  # merge: ~4x faster
    np.multiply(flat, spread.reshape(flat.shape), out=flat)


def scale_by_constant(src, factor, out) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor`` (``factor`` in ``out``'s dtype)."""
    h, w, c = src.shape
    depth = cv2.CV_32F if out.dtype == np.float32 else cv2.CV_64F

    def strip(r0, r1):
        s, o = _rows(src, r0, r1), _rows(out, r0, r1)
        if src.dtype.kind == "f":  # same dtype as out: one fused numpy pass (inf / NaN kept)
            np.multiply(s, factor, out=o)
        else:  # integers (always finite): OpenCV's fused convert-and-scale, x * f rounded once
            cv2.addWeighted(s, float(factor), s, 0.0, 0.0, dst=o, dtype=depth)

    run_strips(strip, h, src.size)


def scale_by_columns(src, flat_factor, out) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * flat_factor[x C + c]``: a factor per column,
    repeated for each channel by the caller (factor in ``out``'s dtype)."""
    h, w, c = src.shape

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w * c):
            o = _rows(out, a, b)
            np.copyto(o, _rows(src, a, b))
            np.multiply(o, flat_factor, out=o)

    run_strips(strip, h, src.size)


def scale_by_map(src, factor, out) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor[y, x]`` (factor in ``out``'s dtype)."""
    h, w, c = src.shape

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w * c):
            np.copyto(out[a:b], src[a:b])
            _times_pixel_factor(out[a:b], factor[a:b])

    run_strips(strip, h, src.size)


def scale_by_projective_det(src, m, det_m, row0, out) -> None:
    """``out[y, x, c] = src[y, x, c] * |det M| / |w(x, row0 + y)|^3``, the factor computed in
    float64; 0 where ``w = 0`` or the factor is not finite. ``row0``: output row of ``src[0]``
    (bands).

    Per chunk: ``w = M20 x + (M21 y + M22)``, ``f = |det M| / ((|w| |w|) |w|)`` in float64 (the
    same operations in the same order as the formula), then ``out = out.dtype(src) *
    out.dtype(f)``: for float32 output the factor is rounded to float32 before the product
    (<= 1 ulp from rounding the float64 product once). A chunk whose factor is not finite
    somewhere or exceeds float32's range takes the exact path: guarded factor, product in
    float64, rounded once (so 0 counts stay 0 and huge factors give inf, never NaN)."""
    h, w, c = src.shape
    if not np.isfinite(det_m):
        out[...] = 0
        return
    ax = m[2, 0] * np.arange(w, dtype=np.float64)
    limit = FLOAT32_MAX if out.dtype == np.float32 else np.inf

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w, CHAIN_CHUNK_VALUES):
            base = m[2, 1] * np.arange(a + row0, b + row0, dtype=np.float64) + m[2, 2]
            ww = np.abs(np.add(ax, base[:, None]))
            f = np.multiply(ww, ww)
            np.multiply(f, ww, out=f)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                np.divide(det_m, f, out=f)
            if f.max() <= limit:  # all finite and in range (NaN fails the comparison)
                np.copyto(out[a:b], src[a:b])
                _times_pixel_factor(out[a:b], f if out.dtype == np.float64 else f.astype(out.dtype))
                continue
            f[~np.isfinite(f)] = 0.0
            with np.errstate(over="ignore"):
                out[a:b] = src[a:b] * f[:, :, None]

    run_strips(strip, h, src.size)


def outer_maps(row_cos, row_sin, radius, cx, cy, mx, my) -> None:
    """``mx[i, j] = mx.dtype(radius[j] * row_cos[i] + cx)`` (and ``my`` with ``row_sin``, ``cy``):
    the polar -> Cartesian sampling maps, computed in double and rounded once, as OpenCV does."""
    h, w = mx.shape

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w, CHAIN_CHUNK_VALUES):
            for m_out, trig, centre in ((mx, row_cos, cx), (my, row_sin, cy)):
                prod = np.multiply.outer(trig[a:b], radius)
                np.add(prod, centre, out=m_out[a:b], casting="same_kind")

    run_strips(strip, h, 2 * mx.size)
