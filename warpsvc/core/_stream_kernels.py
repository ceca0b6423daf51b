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


def _typed(src, fac, out) -> bool:
    """The intrinsics' argument types: contiguous 1-D arrays (the pointer arithmetic assumes
    them), a uint8 / uint16 / float32 source, float32 factors and result."""
    return (all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (src, fac, out))
            and src.dtype in (types.uint8, types.uint16, types.float32)
            and fac.dtype == types.float32 and out.dtype == types.float32)


def _vec(builder, array, at, element):
    """A 16-lane vector of ``element`` loaded from ``array`` (a numba array struct) at ``at``."""
    vt = ir.VectorType(element, VEC)
    return builder.load(builder.bitcast(builder.gep(array.data, [at]), vt.as_pointer()),
                        align=1 if isinstance(element, ir.IntType) else 4)


def _source_floats(builder, src_array, src_type, at):
    """``float32(src[at:at+16])`` as a vector (integers converted exactly: ``uitofp``)."""
    if src_type == types.float32:
        return _vec(builder, src_array, at, ir.FloatType())
    bits = 8 if src_type == types.uint8 else 16
    return builder.uitofp(_vec(builder, src_array, at, ir.IntType(bits)), ir.VectorType(ir.FloatType(), VEC))


def _stream_store(builder, value, out_array, at):
    """``out[at:at+16] = value`` with one non-temporal, 64-byte aligned vector store."""
    ptr = builder.bitcast(builder.gep(out_array.data, [at]), ir.VectorType(ir.FloatType(), VEC).as_pointer())
    store = builder.store(value, ptr, align=LINE)
    store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


def _expand_mask(c: int, q: int) -> list[int]:
    """Lane ``i`` of output vector ``q`` of a block starting at pixel ``p`` takes factor
    ``r[p + (16 q + i) // c]``: indices into the 32 factors ``r[p:p+32]``."""
    return [(VEC * q + i) // c for i in range(VEC)]


def _make_stream_expand(c: int):
    """An intrinsic ``(src, r, out, k, p)`` writing ``out[k:k+16 n]`` (``n = 3`` vectors for
    ``c = 3``: 48 floats, 16 pixels; one for ``c = 4``: 4 pixels) as ``float32(src) *`` the
    per-pixel factor ``r`` repeated over the ``c`` channels, with ``k = c p``: the factors are
    loaded once as two 16-lane vectors and spread over the channels by constant shuffles, so
    no channel-repeated factor row is written to memory and read back. ``out`` at ``k`` must
    be 64-byte aligned; ``r`` must hold 32 values from ``p``. ``c = 1``:
    ``out[k:k+16] = float32(src[k:k+16]) * r[p:p+16]``, 16 factors read (the plain product
    with a row of factors, :func:`_row_times`)."""
    n = 3 if c == 3 else 1
    i32 = ir.IntType(32)
    masks = [ir.Constant(ir.VectorType(i32, VEC), [ir.Constant(i32, j) for j in _expand_mask(c, q)])
             for q in range(n)]

    @intrinsic
    def _stream_expand(typingctx, src, r, out, k, p):
        if not _typed(src, r, out):
            return None
        sig = types.void(src, r, out, k, p)

        def codegen(context, builder, signature, args):
            s, f, o, kk, pp = args
            sa, fa, oa = (context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], (s, f, o)))
            lo = _vec(builder, fa, pp, ir.FloatType())
            hi = None if c == 1 else _vec(builder, fa, builder.add(pp, ir.Constant(pp.type, VEC)), ir.FloatType())
            for q in range(n):
                at = builder.add(kk, ir.Constant(kk.type, VEC * q))
                x = _source_floats(builder, sa, signature.args[0].dtype, at)
                factor = lo if c == 1 else builder.shuffle_vector(lo, hi, masks[q])
                _stream_store(builder, builder.fmul(x, factor), oa, at)
            return context.get_dummy_value()

        return sig, codegen

    return _stream_expand


_stream_times, _expand3, _expand4 = (_make_stream_expand(c) for c in (1, 3, 4))


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
    per pixel, 32 values readable past the row's last pixel): scalar values up to the first
    64-byte boundary of ``out_row`` that is also a pixel boundary, streaming blocks
    (:func:`_make_stream_expand`: 16 pixels of RGB, 4 of RGBA), a scalar tail. RGB: one of the
    first three line boundaries is a pixel boundary (``16 = 1 mod 3``), so the scalar head is
    under 48 values; RGBA: the caller sees to it that the row starts on a pixel-aligned 16 bytes."""
    n = out_row.shape[0]
    lead = ((LINE - out_row.ctypes.data % LINE) % LINE) // 4
    for _ in range(2):
        if lead % c != 0:
            lead += VEC
    head = min(lead, n)
    for k in range(head):
        out_row[k] = np.float32(src_row[k]) * r[k // c]
    block = VEC * 3 if c == 3 else VEC
    end = head + (n - head) // block * block
    step, p0 = block // c, head // c  # pixels per block, the first block's pixel
    if c == 3:
        for j, k in enumerate(range(head, end, block)):
            _expand3(src_row, r, out_row, k, p0 + step * j)
    else:
        for j, k in enumerate(range(head, end, block)):
            _expand4(src_row, r, out_row, k, p0 + step * j)
    for k in range(end, n):
        out_row[k] = np.float32(src_row[k]) * r[k // c]


@compiled(error_model="numpy")  # a division by 0 is IEEE (inf / NaN, then guarded), as in tier 0
def rows_projective(src, c, m, det_m, row0, out):
    """The projective factor of :func:`._scale_kernels.scale_by_projective_det` (tier 0's
    float64 operations in its order: ``ax = M20 x`` once per call, then per pixel
    ``ww = |ax + (M21 y + M22)|``, ``f = det_m / ((ww ww) ww)``, 0 where not finite, rounded to
    float32) into one row of per-pixel factors ``r``, then the row's product with the source:
    :func:`_row_times_expanded` for 3 channels and for 4 on 16-byte aligned rows (the factor
    spread over the channels in registers), :func:`_row_times` with ``r`` itself for one
    channel, with ``r`` repeated over the channels into a row buffer otherwise. Where the
    rounded factor overflows to inf, the product is formed in float64 (the factor recomputed)
    and rounded once (after a fence, with plain stores).

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
    # RGBA rows (16 w bytes apart) all start pixel-aligned on 16 bytes, or none does
    expand = c == 3 or (c == 4 and out.ctypes.data % 16 == 0)
    fac = np.empty(0 if c == 1 or expand else n, np.float32)
    for y in range(h):
        base = m21 * np.float64(y + row0) + m22
        huge = False
        for x in range(w):
            f = np.float32(_factor_at(ax[x], base, det_m))
            r[x] = f
            huge |= f == np.inf
        if c == 1:
            _row_times(src[y], r, out[y])
        elif expand:
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
