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


def _expand_mask(c: int, phase: int, q: int) -> list[int]:
    """Lane ``i`` of output vector ``q`` of a block starting at channel ``phase`` of pixel ``p``
    takes factor ``r[p + (phase + 16 q + i) // c]``: indices into the 32 factors ``r[p:p+32]``."""
    return [(phase + VEC * q + i) // c for i in range(VEC)]


def _make_stream_expand(c: int, phase: int):
    """An intrinsic ``(src, r, out, k, p)`` writing ``out[k:k+16 n]`` (``n = 3`` vectors for
    ``c = 3``: 48 floats, 16 pixels; one for ``c = 4``: 4 pixels) as ``float32(src) *`` the
    per-pixel factor ``r`` repeated over the ``c`` channels, with ``k = c p + phase``: the
    factors are loaded once as two 16-lane vectors and spread over the channels by constant
    shuffles, so no channel-repeated factor row is written to memory and read back. ``out`` at
    ``k`` must be 64-byte aligned; ``r`` must hold 32 values from ``p``."""
    n = 3 if c == 3 else 1

    @intrinsic
    def _stream_expand(typingctx, src, r, out, k, p):
        if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (src, r, out)):
            return None
        if src.dtype not in (types.uint8, types.uint16, types.float32) or r.dtype != types.float32 \
                or out.dtype != types.float32:
            return None
        sig = types.void(src, r, out, k, p)

        def codegen(context, builder, signature, args):
            s, f, o, kk, pp = args
            s_ty = signature.args[0].dtype
            sa = context.make_array(signature.args[0])(context, builder, s)
            fa = context.make_array(signature.args[1])(context, builder, f)
            oa = context.make_array(signature.args[2])(context, builder, o)
            vf = ir.VectorType(ir.FloatType(), VEC)
            i32 = ir.IntType(32)
            lo = builder.load(builder.bitcast(builder.gep(fa.data, [pp]), vf.as_pointer()), align=4)
            hi_at = builder.add(pp, ir.Constant(pp.type, VEC))
            hi = builder.load(builder.bitcast(builder.gep(fa.data, [hi_at]), vf.as_pointer()), align=4)
            for q in range(n):
                at = builder.add(kk, ir.Constant(kk.type, VEC * q))
                if s_ty == types.float32:
                    x = builder.load(builder.bitcast(builder.gep(sa.data, [at]), vf.as_pointer()), align=4)
                else:
                    vi = ir.VectorType(ir.IntType(8 if s_ty == types.uint8 else 16), VEC)
                    x = builder.uitofp(builder.load(builder.bitcast(builder.gep(sa.data, [at]), vi.as_pointer()),
                                                    align=1), vf)
                mask = ir.Constant(ir.VectorType(i32, VEC), [ir.Constant(i32, j) for j in _expand_mask(c, phase, q)])
                factor = builder.shuffle_vector(lo, hi, mask)
                store = builder.store(builder.fmul(x, factor),
                                      builder.bitcast(builder.gep(oa.data, [at]), vf.as_pointer()), align=LINE)
                store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(i32, 1)]))
            return context.get_dummy_value()

        return sig, codegen

    return _stream_expand


_e30, _e31, _e32 = (_make_stream_expand(3, ph) for ph in range(3))
_e40, _e41, _e42, _e43 = (_make_stream_expand(4, ph) for ph in range(4))


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


@compiled()
def _row_times_expanded(src_row, r, out_row, c):
    """``out_row[k] = float32(src_row[k]) * r[k // c]`` for ``c`` 3 or 4 (``r``: one factor
    per pixel, 32 values readable past the row's last pixel): scalar values up to ``out_row``'s
    first 64-byte boundary, streaming blocks (:func:`_make_stream_expand`: 16 pixels of RGB, 4
    of RGBA), a scalar tail. The block start's channel (``phase``) is the same for every block
    of a row (a block holds whole pixels), so each row runs one of the phase loops."""
    n = out_row.shape[0]
    head = min(((LINE - out_row.ctypes.data % LINE) % LINE) // 4, n)
    for k in range(head):
        out_row[k] = np.float32(src_row[k]) * r[k // c]
    block = VEC * 3 if c == 3 else VEC
    end = head + (n - head) // block * block
    step = block // c  # pixels per block
    p0, phase = head // c, head % c
    if c == 3:
        if phase == 0:
            for j, k in enumerate(range(head, end, block)):
                _e30(src_row, r, out_row, k, p0 + step * j)
        elif phase == 1:
            for j, k in enumerate(range(head, end, block)):
                _e31(src_row, r, out_row, k, p0 + step * j)
        else:
            for j, k in enumerate(range(head, end, block)):
                _e32(src_row, r, out_row, k, p0 + step * j)
    elif phase == 0:
        for j, k in enumerate(range(head, end, block)):
            _e40(src_row, r, out_row, k, p0 + step * j)
    elif phase == 1:
        for j, k in enumerate(range(head, end, block)):
            _e41(src_row, r, out_row, k, p0 + step * j)
    elif phase == 2:
        for j, k in enumerate(range(head, end, block)):
            _e42(src_row, r, out_row, k, p0 + step * j)
    else:
        for j, k in enumerate(range(head, end, block)):
            _e43(src_row, r, out_row, k, p0 + step * j)
    for k in range(end, n):
        out_row[k] = np.float32(src_row[k]) * r[k // c]


@compiled(error_model="numpy")  # a division by 0 is IEEE (inf / NaN, then guarded), as in tier 0
def rows_projective(src, c, m, det_m, row0, out):
    """The projective factor of :func:`._scale_kernels.scale_by_projective_det` (tier 0's
    float64 operations in its order: ``ax = M20 x`` once per call, then per pixel
    ``ww = |ax + (M21 y + M22)|``, ``f = det_m / ((ww ww) ww)``, 0 where not finite, rounded to
    float32) into one row of per-pixel factors ``r``, then the row's product with the source:
    :func:`_row_times_expanded` for 3 and 4 channels (the factor spread over the channels in
    registers), :func:`_row_times` with ``r`` itself for one channel, with ``r`` repeated over
    the channels into a row buffer for other counts. Where the rounded factor overflows to
    inf, the product is formed in float64 (the factor recomputed) and rounded once (after a
    fence, with plain stores).

    Loop shapes, measured on 1080p RGB uint8 at one thread (this EPYC, AVX-512): the factor
    row alone (contiguous) 0.68 ms, the streaming product alone ~1.0 ms; the previous kernel,
    writing the factor three times per pixel into a channel-repeated row (strided stores) and
    streaming the product with that row, 1.8-2.0 ms (see docs/warping.md, seventh session);
    a running maximum in place of the ``huge`` flag took 1.7x as long; interleaving the factor
    with the stores in chunks of 64-512 pixels did not overlap them."""
    h, n = src.shape
    w = n // c
    m20, m21, m22 = m[2, 0], m[2, 1], m[2, 2]
    ax = np.empty(w)
    for x in range(w):
        ax[x] = m20 * np.float64(x)
    r = np.zeros(w + 2 * VEC, np.float32)  # 32 readable values past the last pixel (the blocks' loads)
    fac = np.empty(n if c != 1 and c != 3 and c != 4 else 0, np.float32)
    for y in range(h):
        base = m21 * np.float64(y + row0) + m22
        huge = False
        for x in range(w):
            f = np.float32(_factor_at(ax[x], base, det_m))
            r[x] = f
            huge |= f == np.inf
        if c == 1:
            _row_times(src[y], r, out[y])
        elif c == 3 or c == 4:
            _row_times_expanded(src[y], r, out[y], c)
        else:
            for x in range(w):
                for ch in range(c):
                    fac[x * c + ch] = r[x]
            _row_times(src[y], fac, out[y])
        if huge:
            _fence()
            for x in range(w):
                if r[x] == np.inf:
                    fx = _factor_at(ax[x], base, det_m)
                    for ch in range(c):
                        out[y, x * c + ch] = np.float32(np.float64(src[y, x * c + ch]) * fx)
    _fence()
