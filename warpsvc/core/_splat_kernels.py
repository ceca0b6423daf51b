"""Compiled inner loops of the antialiased scatter: tier 1 (numba; see :mod:`.antialias` for the
math and for when each tier runs).

Why compiled: the scatter visits every source sub-node once and deposits into a 3x3 output
window; in numpy (tier 0, :mod:`._splat_numpy`, used while this module loads in a background
thread) that is ~50 array passes and ordered ``np.add.at`` deposits (5-20x slower). The
loops release the GIL and run in parallel (``prange``) over output strips (the scatters) or
block rows (the tent sums), each writing only its own rows, so results are bit-identical for
every thread count; cached on disk after the first run (``python -m warpsvc.core.warmup``).
No fast-math (the same IEEE operations in the source order, no FMA contraction): tier 0 repeats
them and gives the same bits (``tests/test_antialias_tiers.py``); measured, no slower.
Importing this module imports numba: :mod:`.antialias` does it only to use tier 1.

Arrays:
* ``src (n + 2P, w + 2P, C) float64``: a window of source rows divided by the tent-sum
  normaliser, with ``P = PAD`` zero rows/columns around the source: array row ``i`` is source
  row ``row0 - P + i`` (``row0 = 0`` and ``n = h``: the whole source);
* ``blocks (nb, 3) int64``: ``(first row, first column, m)`` of each block of source pixels;
* ``acc (Ho + 2G, Wo + 2G, C) float64``: output accumulator with a ``G = GUARD`` pixel ring
  (deposits just outside the frame land there; periodic outputs fold it back); accumulator row
  ``a`` is output row ``a - G``;
* ``strip_rows (S, 2) int64``: the accumulator rows ``[lo, hi)`` each parallel strip owns.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._compiled import compiled
from ._splat_numpy import BLOCK, GUARD, PAD  # noqa: F401 - shared with tier 0 (numpy)


@compiled(inline="always")
def _tent_cdf(t):
    """CDF of the unit tent on ``[-1, 1]``: ``1/2 (1 + t)^2`` for ``t <= 0``, ``1 - 1/2 (1 - t)^2``
    above, i.e. ``1/2 + u (1 - |u| / 2)`` with ``u = clip(t, -1, 1)`` (branch-free: the branches
    of the piecewise form were mispredicted at about every node)."""
    u = min(max(t, -1.0), 1.0)
    return 0.5 + u * (1.0 - 0.5 * abs(u))


@compiled(inline="always")
def _triangle_shares(p, half, shares):
    """Integrals of a unit-mass triangle (centre ``p``, half-width ``half <= 1``) over pixels
    ``i0, i0 + 1, i0 + 2`` (pixel ``i`` spans ``[i - 1/2, i + 1/2]``); returns ``(i0, n)``, ``n``
    the pixels a deposit visits: 2 when the third share is exactly 0 and ``half <= 1/2`` (the
    triangle then ends inside pixel ``i0 + 1``: every shrink), else 3. Deciding by the
    half-width first keeps the choice the same over whole regions (a predictable branch)."""
    i0 = math.floor(p - half + 0.5)
    inv = 1.0 / half
    c0 = _tent_cdf((i0 + 0.5 - p) * inv)
    c1 = _tent_cdf((i0 + 1.5 - p) * inv)
    shares[0] = c0
    shares[1] = c1 - c0
    shares[2] = 1.0 - c1
    return i0, 3 if (half > 0.5 or shares[2] != 0.0) else 2


@compiled(inline="always")
def _deposit(acc, px, py, hx, hy, value, finite, scale, wx, wy, row_lo, row_hi):
    """Add ``value * scale`` (per channel) at output point ``(px, py)`` with triangle footprints,
    writing only accumulator rows ``[row_lo, row_hi)`` (the calling strip's own rows).

    A ``finite`` value is added over the whole 2x2 or 3x3 window without testing each share
    (a zero share adds an exact 0: the same sums, and no branch that flips from node to node);
    a non-finite one only where its share is non-zero (so inf x 0 never spreads a NaN). Columns
    stay inside the guard ring for ``px`` in ``[-3, Wo + 2]`` and ``half <= 1`` (checked: else
    the window is clipped to the ring)."""
    ix0, nx = _triangle_shares(px, hx, wx)
    iy0, ny = _triangle_shares(py, hy, wy)
    wo = acc.shape[1]
    dense = finite and ix0 + GUARD >= 0 and ix0 + GUARD + nx <= wo
    for dy in range(ny):
        yy = iy0 + dy + GUARD
        if yy < row_lo or yy >= row_hi or (not finite and wy[dy] == 0.0):
            continue
        for dx in range(nx):
            xx = ix0 + dx + GUARD
            if not dense and (xx < 0 or xx >= wo or wx[dx] == 0.0):
                continue
            wgt = wx[dx] * wy[dy] * scale
            for ch in range(acc.shape[2]):
                acc[yy, xx, ch] += value[ch] * wgt


@compiled(inline="always")
def _reaches(py, row_lo, row_hi):
    """Can a node at output row ``py`` deposit into accumulator rows ``[row_lo, row_hi)``?
    (Footprint rows lie within ``py +- 2.5``; this only skips work, ``_deposit`` decides.)"""
    return py + GUARD + 3.0 >= row_lo and py + GUARD - 3.0 < row_hi


@compiled(inline="always")
def _strip_scratch(src, strip_rows, s):
    """Strip ``s``'s accumulator rows ``[lo, hi)`` and its scratch arrays (node value per
    channel, footprint shares per axis)."""
    return strip_rows[s, 0], strip_rows[s, 1], np.empty(src.shape[2]), np.empty(3), np.empty(3)


@compiled(inline="always")
def _node_value(src, sx, sy, row0, value):
    """Bilinear value of the padded source window (first source row ``row0``) at source point
    ``(sx, sy)``; returns ``(nonzero, finite)``: False if all channels are 0, and whether all
    are finite (``|v| < inf`` is False for inf and NaN)."""
    x0 = math.floor(sx)
    y0 = math.floor(sy)
    fx = sx - x0
    fy = sy - y0
    r = y0 + PAD - row0
    c = x0 + PAD
    nonzero = False
    finite = True
    if fx == 0.0 and fy == 0.0:  # a pixel centre (always so when m = 1)
        for ch in range(src.shape[2]):
            v = src[r, c, ch]
            value[ch] = v
            nonzero |= v != 0.0
            finite &= abs(v) < math.inf
        return nonzero, finite
    for ch in range(src.shape[2]):
        v = ((1 - fy) * ((1 - fx) * src[r, c, ch] + fx * src[r, c + 1, ch])
             + fy * ((1 - fx) * src[r + 1, c, ch] + fx * src[r + 1, c + 1, ch]))
        value[ch] = v
        nonzero |= v != 0.0
        finite &= abs(v) < math.inf
    return nonzero, finite


@compiled(parallel=True)
def tent_sums(blocks, row_ptr, block_rows, h, w, sums, iy_lo, iy_hi, row0):
    """``sums[j] += sum over nodes n of tent(n - j) / m_n^2`` (padded window layout, first source
    row ``row0``) over the nodes of the block rows ``block_rows`` (``row_ptr``: first block of
    each block row, and the end) whose pixel row lies in ``[iy_lo, iy_hi)``.

    1 where the lattice is uniform, different only where neighbouring blocks use different
    ``m``. A block row writes 33 padded rows and rows of equal parity never share one: callers
    pass block rows of one parity per call (all even ones, then all odd ones), which then run in
    parallel with a result independent of the thread count (and of the windowing: each sum
    receives the same terms in the same order)."""
    for q in prange(block_rows.shape[0]):
        br = block_rows[q]
        for b in range(row_ptr[br], row_ptr[br + 1]):
            y0, x0, m = blocks[b, 0], blocks[b, 1], blocks[b, 2]
            inv_m = 1.0 / m
            area = inv_m * inv_m
            for iy in range(max(y0, iy_lo), min(y0 + BLOCK, h, iy_hi)):
                for ky in range(m):
                    fy = ky * inv_m
                    for ix in range(x0, min(x0 + BLOCK, w)):
                        for kx in range(m):
                            fx = kx * inv_m
                            r, c = iy + PAD - row0, ix + PAD
                            sums[r, c] += (1 - fy) * (1 - fx) * area
                            sums[r, c + 1] += (1 - fy) * fx * area
                            sums[r + 1, c] += fy * (1 - fx) * area
                            sums[r + 1, c + 1] += fy * fx * area


@compiled(inline="always")
def _clip(x, lo, hi):
    """``x`` limited to ``[lo, hi]`` as selects (vectorisable; NaN stays NaN)."""
    x = lo if x < lo else x
    return hi if x > hi else x


@compiled(inline="always")
def _tent_cdfs(p, half):
    """``(i0, c0, c1)`` of :func:`_triangle_shares` in floating point, for the vectorised pass:
    the shares are ``(c0, c1 - c0, 1 - c1)`` over pixels ``i0 .. i0 + 2``, ``i0`` still a float
    (NaN-safe; converted once the node is accepted)."""
    i0 = np.floor(p - half + 0.5)
    inv = 1.0 / half
    u0 = _clip((i0 + 0.5 - p) * inv, -1.0, 1.0)
    u1 = _clip((i0 + 1.5 - p) * inv, -1.0, 1.0)
    return i0, 0.5 + u0 * (1.0 - 0.5 * abs(u0)), 0.5 + u1 * (1.0 - 0.5 * abs(u1))


@compiled(inline="always")
def _axis_shares(p, half, out, k):
    """:func:`_tent_cdfs` as columns: ``out[:, k] = (i0, s0, s1, s2)``."""
    i0, c0, c1 = _tent_cdfs(p, half)
    out[0, k] = i0
    out[1, k] = c0
    out[2, k] = c1 - c0
    out[3, k] = 1.0 - c1


@compiled(inline="always")
def _deposit_shares(acc, ix0, nx, wx, iy0, ny, wy, k, value, finite, scale, row_lo, row_hi):
    """:func:`_deposit` with the shares known: columns ``wx[:, k]``, ``wy[:, k]`` = ``(i0, s0, s1,
    s2)``. The common case (finite value, a 2x2 window inside the strip and the ring: every
    node of a shrink) is written out: the same products in the same order, no loops."""
    wo = acc.shape[1]
    xx, yy = ix0 + GUARD, iy0 + GUARD
    dense = finite and xx >= 0 and xx + nx <= wo
    if dense and nx == 2 and ny == 2 and yy >= row_lo and yy + 2 <= row_hi:
        w00 = wx[1, k] * wy[1, k] * scale
        w01 = wx[2, k] * wy[1, k] * scale
        w10 = wx[1, k] * wy[2, k] * scale
        w11 = wx[2, k] * wy[2, k] * scale
        for ch in range(acc.shape[2]):
            v = value[ch]
            acc[yy, xx, ch] += v * w00
            acc[yy, xx + 1, ch] += v * w01
            acc[yy + 1, xx, ch] += v * w10
            acc[yy + 1, xx + 1, ch] += v * w11
        return
    for dy in range(ny):
        yy = iy0 + dy + GUARD
        if yy < row_lo or yy >= row_hi or (not finite and wy[1 + dy, k] == 0.0):
            continue
        for dx in range(nx):
            xx = ix0 + dx + GUARD
            if not dense and (xx < 0 or xx >= wo or wx[1 + dx, k] == 0.0):
                continue
            wgt = wx[1 + dx, k] * wy[1 + dy, k] * scale
            for ch in range(acc.shape[2]):
                acc[yy, xx, ch] += value[ch] * wgt


@compiled(inline="always")
def _row_misses(sx_first, sx_last, m10, m20, cy, cw, row_lo, row_hi):
    """Does a node row (columns ``sx_first .. sx_last``; ``y_1 = (m10 x + cy) / (m20 x + cw)``)
    stay clear of accumulator rows ``[row_lo, row_hi)``? With ``w > 0`` at both ends the row's
    image is the segment between the end images, so every node's ``y_1`` lies between them; the
    test keeps a footprint's reach (3 px) plus 1 px for rounding, so a skipped row is one whose
    nodes ``_reaches`` would all have rejected (the result is unchanged; strips just stop
    computing the node rows of shared blocks that only their neighbour needs)."""
    wa, wb = m20 * sx_first + cw, m20 * sx_last + cw
    if not (wa > 0.0 and wb > 0.0):
        return False
    ya, yb = (m10 * sx_first + cy) / wa, (m10 * sx_last + cy) / wb
    lo, hi = min(ya, yb), max(ya, yb)
    return hi + GUARD + 4.0 < row_lo or lo + GUARD - 4.0 >= row_hi


@compiled(inline="always")
def _run_is_zero(src, sx_first, sx_last, sy, row0, pad):
    """Is every source value a run of nodes (row ``sy``, columns ``sx_first .. sx_last``) can read
    zero? (the bilinear reads of :func:`_node_value_at`: rows ``floor(sy)`` and the next one
    unless ``sy`` is whole, columns ``floor(sx_first) .. floor(sx_last) + 1``; values outside
    the array are zero)."""
    r0 = math.floor(sy) + pad - row0
    r1 = min(r0 + (1 if sy != math.floor(sy) else 0), src.shape[0] - 1)
    r0 = max(r0, 0)
    c0 = max(math.floor(sx_first) + pad, 0)
    c1 = min(math.floor(sx_last) + pad + 1, src.shape[1] - 1)
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            for ch in range(src.shape[2]):
                if src[r, c, ch] != 0.0:
                    return False
    return True


RUN = 64  # nodes per vectorised pass (its scratch rows stay in L1)
SKIP, FAST, GENERAL = 0, 1, 2  # what the deposit pass does with a node


@compiled(inline="always")
def _floor_index(f, lo, hi):
    """Float index ``f`` (already whole) as an int within ``[lo, hi]``; NaN gives ``lo`` (no
    undefined float -> int conversion in the vectorised pass)."""
    f = f if f >= lo else lo
    f = f if f <= hi else hi
    return int(f)


@compiled(inline="always")
def _at(src, r, c, ch):
    """``src[r, c, ch]``, 0 outside the array."""
    if r < 0 or c < 0 or r >= src.shape[0] or c >= src.shape[1]:
        return 0.0
    return src[r, c, ch]


@compiled(inline="always")
def _node_value_at(src, sx, sy, row0, pad, value):
    """:func:`_node_value` for a window with ``pad`` zero rows/columns (``PAD``, or 0: the
    caller's image itself), reading 0 outside the array (the same values)."""
    x0 = math.floor(sx)
    y0 = math.floor(sy)
    fx = sx - x0
    fy = sy - y0
    r = y0 + pad - row0
    c = x0 + pad
    nonzero = False
    finite = True
    for ch in range(src.shape[2]):
        if fx == 0.0 and fy == 0.0:  # a pixel centre
            v = _at(src, r, c, ch)
        else:
            v = ((1 - fy) * ((1 - fx) * _at(src, r, c, ch) + fx * _at(src, r, c + 1, ch))
                 + fy * ((1 - fx) * _at(src, r + 1, c, ch) + fx * _at(src, r + 1, c + 1, ch)))
        value[ch] = v
        nonzero |= v != 0.0
        finite &= abs(v) < math.inf
    return nonzero, finite


@compiled(inline="always")
def _node_footprint(sx, m00, m01, m10, m11, m20, m21, cx, cy, cw, inv_m):
    """``(w, px, py, hx, hy)`` of the node ``(sx, sy)`` of a node row (``cx, cy, cw`` =
    ``M_i1 sy + M_i2``): ``y = (M[:2] x~) / w`` and the footprint half-widths, the Jacobian's
    row norms over ``m``: ``|M_i: - y_i M_2:| / (w m)`` (first two columns), capped to
    ``[1e-9, 1]``. Shared by the vectorised pass and the general deposits (the same operations
    in the same order: the same bits)."""
    ww = m20 * sx + cw
    rw = 1.0 / ww
    px = (m00 * sx + cx) * rw
    py = (m10 * sx + cy) * rw
    a0, a1 = m00 - px * m20, m01 - px * m21
    b0, b1 = m10 - py * m20, m11 - py * m21
    sc = rw * inv_m
    hx = _clip(math.sqrt(a0 * a0 + a1 * a1) * sc, 1e-9, 1.0)
    hy = _clip(math.sqrt(b0 * b0 + b1 * b1) * sc, 1e-9, 1.0)
    return ww, px, py, hx, hy


@compiled(parallel=True, error_model="numpy")  # no fast-math: bit-identical to tier 0 (._splat_numpy)
def scatter_matrix(src, blocks, strip_rows, strip_ptr, strip_blocks, h, w, mat, acc, row0, pad):
    """Fused scatter for a projective ``dst_from_src`` matrix ``mat (3, 3)`` (``w > 0`` side),
    in parallel over output strips; ``src`` is the window of source rows from ``row0`` (its
    blocks are the only ones listed) with ``pad`` zero rows/columns around it: ``PAD`` for a
    window of :class:`.antialias.SourceRows`, 0 for the caller's float64 image itself (values
    outside the array read as 0 either way).

    Strip ``s`` owns accumulator rows ``strip_rows[s] = [lo, hi)`` and visits the blocks
    ``blocks[strip_blocks[strip_ptr[s]:strip_ptr[s + 1]]]`` (those whose image can reach it, in
    global block order). Node ``(ix + kx/m, iy + ky/m)``: position ``y = (M[:2] x~) / w``,
    Jacobian rows ``(M_i: - y_i M_2:) / w``, footprint half-widths ``|row| / m`` (capped at
    1 px), mass ``value / m^2``. Every output pixel receives the same deposits in the same
    order however the rows are split, so the result is bit-identical for any thread count.

    Each run of :data:`RUN` nodes of a node row goes in two passes: a branch-free one
    (vectorised by LLVM: 4 nodes per instruction) computing every node's position, half-widths,
    footprint shares, 2x2 weights and what to do with it (:data:`SKIP`: ``w <= 0``, NaN, out of
    reach; :data:`FAST`: a 2x2 window inside the strip and the ring; else :data:`GENERAL`),
    keeping only the 2x2 weights, the first pixel and that decision per node, then the deposits
    in node order; a :data:`GENERAL` node recomputes its shares there (the same operations:
    the same bits; keeping all 11 values of every node for the rare general one cost ~15 % of
    the scatter of a photograph). Runs whose source values are all zero are skipped.
    ``error_model="numpy"``: no zero-division checks (a node with ``w <= 0`` computes values
    the second pass never reads)."""
    ho, wo = acc.shape[0] - 2 * GUARD, acc.shape[1] - 2 * GUARD
    wa = acc.shape[1]
    m00, m01, m02 = mat[0, 0], mat[0, 1], mat[0, 2]
    m10, m11, m12 = mat[1, 0], mat[1, 1], mat[1, 2]
    m20, m21, m22 = mat[2, 0], mat[2, 1], mat[2, 2]
    for s in prange(strip_rows.shape[0]):
        row_lo, row_hi = strip_rows[s, 0], strip_rows[s, 1]
        nch = src.shape[2]
        value = np.empty(nch)
        m_most = 1
        for q in range(strip_ptr[s], strip_ptr[s + 1]):
            m_most = max(m_most, blocks[strip_blocks[q], 2])
        sxs = np.empty(BLOCK * m_most)  # a block's node columns
        # Per node of a run (one row per quantity: vectorisable): 2x2 weights, first pixel
        # per axis, what to do; the shares (i0, s0, s1, s2) per axis of one general node.
        shx = np.empty((4, 1))
        shy = np.empty((4, 1))
        wq = np.empty((4, RUN))
        first = np.empty((2, RUN), dtype=np.int64)
        todo = np.empty(RUN, dtype=np.int64)
        vals = np.empty((nch, RUN))  # node values per channel
        finite = np.empty(RUN, dtype=np.bool_)
        for q in range(strip_ptr[s], strip_ptr[s + 1]):
            b = strip_blocks[q]
            y0, x0, m = blocks[b, 0], blocks[b, 1], blocks[b, 2]
            inv_m = 1.0 / m
            area = inv_m * inv_m
            n_row = (min(x0 + BLOCK, w) - x0) * m
            for i in range(min(x0 + BLOCK, w) - x0):
                for kx in range(m):
                    sxs[i * m + kx] = (x0 + i) + kx * inv_m
            for iy in range(y0, min(y0 + BLOCK, h)):
                for ky in range(m):
                    sy = iy + ky * inv_m
                    cx, cy, cw = m01 * sy + m02, m11 * sy + m12, m21 * sy + m22
                    if _row_misses(sxs[0], sxs[n_row - 1], m10, m20, cy, cw, row_lo, row_hi):
                        continue  # the strip next door owns every row this node row reaches
                    r = iy + pad - row0  # the window row of pixel row iy
                    for k0 in range(0, n_row, RUN):
                        n = min(RUN, n_row - k0)
                        if _run_is_zero(src, sxs[k0], sxs[k0 + n - 1], sy, row0, pad):
                            continue  # sparse sources (point fields): no node of the run deposits
                        for k in range(n):  # branch-free: vectorised
                            ww, px, py, hx, hy = _node_footprint(sxs[k0 + k], m00, m01, m10, m11, m20, m21,
                                                                 cx, cy, cw, inv_m)
                            ix0, cx0, cx1 = _tent_cdfs(px, hx)
                            iy0, cy0, cy1 = _tent_cdfs(py, hy)
                            xx = _floor_index(ix0, -2.0 * GUARD, wo + 2.0 * GUARD) + GUARD
                            yy = _floor_index(iy0, -2.0 * GUARD, ho + 2.0 * GUARD) + GUARD
                            first[0, k], first[1, k] = xx, yy
                            # NaN fails every comparison: such nodes are skipped
                            keep = ((ww > 0.0) & (px >= -3.0) & (py >= -3.0) & (px <= wo + 2) & (py <= ho + 2)
                                    & _reaches(py, row_lo, row_hi))
                            fast = ((hx <= 0.5) & (hy <= 0.5) & (1.0 - cx1 == 0.0) & (1.0 - cy1 == 0.0)
                                    & (xx >= 0) & (xx + 2 <= wa) & (yy >= row_lo) & (yy + 2 <= row_hi))
                            todo[k] = (FAST if fast else GENERAL) if keep else SKIP
                            sx1, sy1 = cx1 - cx0, cy1 - cy0
                            wq[0, k] = cx0 * cy0 * area
                            wq[1, k] = sx1 * cy0 * area
                            wq[2, k] = cx0 * sy1 * area
                            wq[3, k] = sx1 * sy1 * area
                        # the node values and what to do: a zero value deposits nothing, a
                        # non-finite one only where its shares are non-zero (general deposits);
                        # a skipped node stays skipped. One pass per node; grey pixel centres
                        # (m = 1) have their own loop (vectorised)
                        c0 = x0 + k0 + pad  # m = 1: the window column of the run's first node (>= -1)
                        if m == 1 and nch == 1:
                            for k in range(n):
                                v = src[r, c0 + k, 0] if c0 + k >= 0 else 0.0
                                vals[0, k] = v
                                fin = abs(v) < math.inf
                                finite[k] = fin
                                t = todo[k]
                                todo[k] = SKIP if (t == SKIP or v == 0.0) else (t if fin else GENERAL)
                        else:
                            for k in range(n):
                                if m == 1:  # a pixel centre: its pixel (0 left of an unpadded image)
                                    nz, fin = False, True
                                    for ch in range(nch):
                                        v = src[r, c0 + k, ch] if c0 + k >= 0 else 0.0
                                        vals[ch, k] = v
                                        nz |= v != 0.0
                                        fin &= abs(v) < math.inf
                                else:
                                    nz, fin = _node_value_at(src, sxs[k0 + k], sy, row0, pad, value)
                                    for ch in range(nch):
                                        vals[ch, k] = value[ch]
                                finite[k] = fin
                                t = todo[k]
                                todo[k] = SKIP if (t == SKIP or not nz) else (t if fin else GENERAL)
                        for k in range(n):  # the deposits, in node order
                            if todo[k] == SKIP:
                                continue
                            xx, yy = first[0, k], first[1, k]
                            if todo[k] == FAST:
                                for ch in range(nch):
                                    v = vals[ch, k]
                                    acc[yy, xx, ch] += v * wq[0, k]
                                    acc[yy, xx + 1, ch] += v * wq[1, k]
                                    acc[yy + 1, xx, ch] += v * wq[2, k]
                                    acc[yy + 1, xx + 1, ch] += v * wq[3, k]
                                continue
                            for ch in range(nch):
                                value[ch] = vals[ch, k]
                            # the general window (rare: expansions, edges, non-finite values)
                            # recomputes its node's shares instead of keeping every node's
                            _, px, py, hx, hy = _node_footprint(sxs[k0 + k], m00, m01, m10, m11, m20, m21,
                                                                cx, cy, cw, inv_m)
                            _axis_shares(px, hx, shx, 0)
                            _axis_shares(py, hy, shy, 0)
                            nx = 3 if (hx > 0.5 or shx[3, 0] != 0.0) else 2
                            ny = 3 if (hy > 0.5 or shy[3, 0] != 0.0) else 2
                            _deposit_shares(acc, xx - GUARD, nx, shx, yy - GUARD, ny, shy, 0,
                                            value, finite[k], area, row_lo, row_hi)


@compiled(parallel=True)
def list_nodes(pieces, first, h, w, out_xy, out_m):
    """Write the node coordinates of ``pieces (n, 4)`` (block origin row, origin column, ``m``,
    end row: a block or a run of its pixel rows) in scatter order into ``out_xy (N, 2)``;
    piece ``b``'s nodes start at row ``first[b]`` (the running sum of the node counts)."""
    for b in prange(pieces.shape[0]):
        y0, x0, m, y1 = pieces[b, 0], pieces[b, 1], pieces[b, 2], pieces[b, 3]
        inv_m = 1.0 / m
        n = first[b]
        for iy in range(y0, min(y1, h)):
            for ky in range(m):
                for ix in range(x0, min(x0 + BLOCK, w)):
                    for kx in range(m):
                        out_xy[n, 0] = ix + kx * inv_m
                        out_xy[n, 1] = iy + ky * inv_m
                        out_m[n] = m
                        n += 1


@compiled(parallel=True)  # no fast-math: bit-identical to tier 0
def scatter_points(src, node_xy, node_m, pos, rows, strip_rows, acc, row0):
    """Generic scatter, in parallel over output strips (as :func:`scatter_matrix`): node ``k`` at
    source ``node_xy[k]`` lands at ``pos[k]`` with Jacobian row norms ``rows[k]`` (precomputed
    by the transform in numpy); ``src`` is the window of source rows from ``row0``."""
    ho, wo = acc.shape[0] - 2 * GUARD, acc.shape[1] - 2 * GUARD
    for s in prange(strip_rows.shape[0]):
        row_lo, row_hi, value, wx, wy = _strip_scratch(src, strip_rows, s)
        for k in range(node_xy.shape[0]):
            px, py = pos[k, 0], pos[k, 1]
            if not _reaches(py, row_lo, row_hi):
                continue
            if not (px > -3.0 and py > -3.0 and px < wo + 2 and py < ho + 2):
                continue  # also rejects NaN
            nonzero, finite = _node_value(src, node_xy[k, 0], node_xy[k, 1], row0, value)
            if not nonzero:
                continue
            inv_m = 1.0 / node_m[k]
            hx, hy = rows[k, 0] * inv_m, rows[k, 1] * inv_m
            if not (hx < math.inf):
                hx = 1.0  # singular point (a polar pole): widest footprint, mass kept
            if not (hy < math.inf):
                hy = 1.0
            hx = min(max(hx, 1e-9), 1.0)
            hy = min(max(hy, 1e-9), 1.0)
            _deposit(acc, px, py, hx, hy, value, finite, inv_m * inv_m, wx, wy, row_lo, row_hi)


@compiled(parallel=True)
def matrix_layout(mat, side, by, bx, n, stretch, lo, hi, finite, dead):
    """Block layout of a matrix ``dst_from_src`` (see :func:`.antialias.block_layout`): for
    block ``(by[i], bx[j])`` (row-major, index ``b``), on an ``n x n`` grid of points
    ``origin + t``, ``t = 0 .. BLOCK``: ``stretch[b]`` the largest singular value of the
    Jacobian (non-finite entries as 0), ``lo``/``hi[b]`` the bounding box of the finite images
    (NaN if none), ``finite[b]`` every image finite and ``w > 0`` for the ``side`` matrix (the
    source's own side of the horizon), ``dead[b]`` ``w <= 0`` at every point. The arithmetic
    of :meth:`MatrixTransform.map` / ``jacobian`` and of ``_largest_singular_value``, in one
    pass instead of ~40 numpy calls (no fast math: the same IEEE operations, no contraction)."""
    nbx = bx.shape[0]
    for i in prange(by.shape[0]):
        for j in range(nbx):
            b = i * nbx + j
            s_most = 0.0
            x_lo, y_lo, x_hi, y_hi = math.inf, math.inf, -math.inf, -math.inf
            any_finite, all_finite, all_dead = False, True, True
            for a in range(n):
                y = by[i] + BLOCK * (a / (n - 1))
                for c in range(n):
                    x = bx[j] + BLOCK * (c / (n - 1))
                    w = x * mat[2, 0] + y * mat[2, 1] + mat[2, 2]
                    px = (x * mat[0, 0] + y * mat[0, 1] + mat[0, 2]) / w if w != 0.0 else math.nan
                    py = (x * mat[1, 0] + y * mat[1, 1] + mat[1, 2]) / w if w != 0.0 else math.nan
                    ok = math.isfinite(px) and math.isfinite(py)
                    if ok:
                        any_finite = True
                        x_lo, x_hi = min(x_lo, px), max(x_hi, px)
                        y_lo, y_hi = min(y_lo, py), max(y_hi, py)
                    ws = x * side[2, 0] + y * side[2, 1] + side[2, 2]
                    all_finite &= ok and ws > 0.0
                    all_dead &= ws <= 0.0
                    if w != 0.0:
                        j00 = (mat[0, 0] - px * mat[2, 0]) / w
                        j01 = (mat[0, 1] - px * mat[2, 1]) / w
                        j10 = (mat[1, 0] - py * mat[2, 0]) / w
                        j11 = (mat[1, 1] - py * mat[2, 1]) / w
                    else:
                        j00 = j01 = j10 = j11 = 0.0
                    j00 = j00 if math.isfinite(j00) else 0.0
                    j01 = j01 if math.isfinite(j01) else 0.0
                    j10 = j10 if math.isfinite(j10) else 0.0
                    j11 = j11 if math.isfinite(j11) else 0.0
                    fro = j00 * j00 + j01 * j01 + j10 * j10 + j11 * j11
                    det = j00 * j11 - j01 * j10
                    s2 = 0.5 * (fro + math.sqrt(max(fro * fro - 4.0 * det * det, 0.0)))
                    s = math.sqrt(s2) if math.isfinite(s2) else math.inf
                    s_most = max(s_most, s)
            stretch[b] = s_most
            if any_finite:
                lo[b, 0], lo[b, 1], hi[b, 0], hi[b, 1] = x_lo, y_lo, x_hi, y_hi
            else:
                lo[b, 0] = lo[b, 1] = hi[b, 0] = hi[b, 1] = math.nan
            finite[b] = all_finite
            dead[b] = all_dead
