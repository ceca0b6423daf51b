r"""Tier 1 of the large conserve scalings: rows written with non-temporal (streaming) stores.

``intensity="conserve"`` turns a uint8 warp into float32: a 1080p RGB result is 25 MB, four
times the plain warp's 6 MB. Written through the cache, that stream evicts the source image
and the sampled rows from the last-level cache (here 32 MB: source 6 + sampled 6 + result
25 MB do not fit), so the *next* warp reads its source from memory again. Measured on this
2-core EPYC, 1080p RGB affine, calls in a loop: OpenCV's plain warp 4.3 ms, ours 7.0 ms at
2 threads (1.6x), of which the scaling pass itself is only ~0.9 ms; the rest is the warp
slowed by the evictions. Non-temporal stores write whole cache lines straight to memory
without reading them first and without displacing cached data; glibc's ``memcpy`` switches
to them for the same reason above a share of the shared cache.

Every kernel here computes, per row, ``out = float32(src) * factor`` with ``factor`` a float32
row (``W C`` values), in the order and with the IEEE operations of tier 0
(:mod:`._scale_kernels`: convert, then one float32 multiply), so results are bit for bit the
same. A row is written as a scalar head up to the first 64-byte boundary of ``out``, then
16-float vectors (one cache line each) with ``!nontemporal`` stores, then a scalar tail; one
``fence seq_cst`` per call (on x86 a locked instruction, ``lock or`` to the stack, or
``mfence``: both order the streaming stores) makes them visible before anyone reads the rows. The kernels are serial and release the GIL: the caller runs them over
strips on :mod:`.strips`' pool (numba's own thread pool would compete with OpenCV's for the
cores between the warp and the scaling).

This module imports numba at import time: only the tier-1 loader imports it
(:func:`._scale_kernels.compile_stream_tier1`, the warm-up, a background upgrade).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ._compiled import compiled

VEC = 16  # floats per streaming store: one 64-byte cache line
LINE = 64


@intrinsic
def _stream_times(typingctx, src, fac, out, i, j):
    """``out[i:i+16] = float32(src[i:i+16]) * fac[j:j+16]`` with one non-temporal vector
    store; ``out`` at ``i`` must be 64-byte aligned (the callers' head loop sees to it)."""
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (src, fac, out)):
        return None  # the pointer arithmetic below assumes contiguous 1-D arrays
    if src.dtype not in (types.uint8, types.uint16, types.float32) or fac.dtype != types.float32 \
            or out.dtype != types.float32:
        return None
    sig = types.void(src, fac, out, i, j)

    def codegen(context, builder, signature, args):
        s, f, o, ii, jj = args
        s_ty = signature.args[0].dtype
        sa = context.make_array(signature.args[0])(context, builder, s)
        fa = context.make_array(signature.args[1])(context, builder, f)
        oa = context.make_array(signature.args[2])(context, builder, o)
        vf = ir.VectorType(ir.FloatType(), VEC)
        if s_ty == types.float32:
            x = builder.load(builder.bitcast(builder.gep(sa.data, [ii]), vf.as_pointer()), align=4)
        else:
            bits = 8 if s_ty == types.uint8 else 16
            vi = ir.VectorType(ir.IntType(bits), VEC)
            x = builder.uitofp(builder.load(builder.bitcast(builder.gep(sa.data, [ii]), vi.as_pointer()), align=1), vf)
        factor = builder.load(builder.bitcast(builder.gep(fa.data, [jj]), vf.as_pointer()), align=4)
        store = builder.store(builder.fmul(x, factor), builder.bitcast(builder.gep(oa.data, [ii]), vf.as_pointer()),
                              align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _fence(typingctx):
    """A sequentially consistent fence (x86: a locked instruction or ``mfence``, which order
    streaming stores)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@compiled()
def _row_times(src_row, fac, out_row):
    """``out_row = float32(src_row) * fac`` (1-D, same length): scalar values up to
    ``out_row``'s first 64-byte boundary, streaming vectors, a scalar tail."""
    n = out_row.shape[0]
    head = min(((LINE - out_row.ctypes.data % LINE) % LINE) // 4, n)
    for k in range(head):
        out_row[k] = np.float32(src_row[k]) * fac[k]
    end = head + (n - head) // VEC * VEC
    for k in range(head, end, VEC):
        _stream_times(src_row, fac, out_row, k, k)
    for k in range(end, n):
        out_row[k] = np.float32(src_row[k]) * fac[k]


@compiled()
def rows_times_row(src, fac, out):
    """``out[y] = float32(src[y]) * fac`` for every row of the C-contiguous ``(h, W C)`` arrays
    (``fac`` one float32 row: a constant repeated, or a per-column factor repeated per
    channel). Then one fence."""
    for y in range(src.shape[0]):
        _row_times(src[y], fac, out[y])
    _fence()


@compiled(error_model="numpy", inline="always")  # IEEE division by 0 (inf / NaN, then guarded), as in tier 0
def _factor_at(ax, base, det_m):
    """Tier 0's projective factor at a column with ``ax = M20 x`` of a row with
    ``base = M21 y + M22``: ``ww = |ax + base|``, ``det_m / ((ww ww) ww)``, 0 where not finite
    (float64)."""
    ww = abs(ax + base)
    fx = det_m / (ww * ww * ww)
    return fx if math.isfinite(fx) else 0.0


@compiled(error_model="numpy")  # a division by 0 is IEEE (inf / NaN, then guarded), as in tier 0
def rows_projective(src, c, m, det_m, row0, out):
    """The projective factor of :func:`._scale_kernels.scale_by_projective_det` (tier 0's
    float64 operations in its order: ``ax = M20 x`` once per call, then per pixel
    ``ww = |ax + (M21 y + M22)|``, ``f = det_m / ((ww ww) ww)``, 0 where not finite, rounded to
    float32) written straight into a row buffer repeated over the ``c`` channels, then
    :func:`_row_times` per row of the ``(h, W c)`` arrays. Where the rounded factor overflows
    to inf, the product is formed in float64 (the factor recomputed) and rounded once (after a
    fence, with plain stores).

    Loop shapes, measured on 1080p RGB at one thread (this EPYC, AVX-512): writing the three
    channels' factor inside the factor loop and reading ``ax`` from a row (no int -> float
    conversion per pixel) took 1.75 ms against 2.05 ms for a separate float64 factor row, its
    float32 copy and an expansion pass (the constant-factor kernel, pure streaming: 1.00 ms);
    RGBA (4 channels written out like 3) 2.4 against 5.8 ms; a running maximum in place of the
    ``huge`` flag took 1.7x as long; interleaving the factor with the stores in chunks of 64-512
    pixels did not overlap them (2.4 ms)."""
    h, n = src.shape
    w = n // c
    m20, m21, m22 = m[2, 0], m[2, 1], m[2, 2]
    ax = np.empty(w)
    for x in range(w):
        ax[x] = m20 * np.float64(x)
    fac = np.empty(n, np.float32)
    for y in range(h):
        base = m21 * np.float64(y + row0) + m22
        huge = False
        if c == 3:  # 3 and 4 channels written out: LLVM vectorises them
            for x in range(w):
                r = np.float32(_factor_at(ax[x], base, det_m))
                fac[3 * x] = r
                fac[3 * x + 1] = r
                fac[3 * x + 2] = r
                huge |= r == np.inf
        elif c == 4:
            for x in range(w):
                r = np.float32(_factor_at(ax[x], base, det_m))
                fac[4 * x] = r
                fac[4 * x + 1] = r
                fac[4 * x + 2] = r
                fac[4 * x + 3] = r
                huge |= r == np.inf
        elif c == 1:
            for x in range(w):
                r = np.float32(_factor_at(ax[x], base, det_m))
                fac[x] = r
                huge |= r == np.inf
        else:
            for x in range(w):
                r = np.float32(_factor_at(ax[x], base, det_m))
                for ch in range(c):
                    fac[x * c + ch] = r
                huge |= r == np.inf
        _row_times(src[y], fac, out[y])
        if huge:
            _fence()
            for x in range(w):
                if fac[x * c] == np.inf:
                    fx = _factor_at(ax[x], base, det_m)
                    for ch in range(c):
                        out[y, x * c + ch] = np.float32(np.float64(src[y, x * c + ch]) * fx)
    _fence()
