"""Compiled inner loops of the antialiased scatter (numba; see :mod:`.antialias` for the math).

Why compiled: the scatter visits every source sub-node once and deposits into a 3x3 output
window; in numpy that is ~50 array passes plus nine ``bincount`` calls (~10x slower). The
loops release the GIL and run in parallel (``prange``) over output strips (the scatters) or
block rows (the tent sums), each writing only its own rows, so results are bit-identical for
every thread count; cached on disk after the first run (``python -m warpsvc.core.warmup``).

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

from ._compiled import FASTMATH, compiled

PAD = 2
BLOCK = 32
GUARD = 4


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
    ``i0, i0 + 1, i0 + 2`` (pixel ``i`` spans ``[i - 1/2, i + 1/2]``); returns ``i0``."""
    i0 = math.floor(p - half + 0.5)
    inv = 1.0 / half
    c0 = _tent_cdf((i0 + 0.5 - p) * inv)
    c1 = _tent_cdf((i0 + 1.5 - p) * inv)
    shares[0] = c0
    shares[1] = c1 - c0
    shares[2] = 1.0 - c1
    return i0


@compiled(inline="always")
def _deposit(acc, px, py, hx, hy, value, scale, wx, wy, row_lo, row_hi):
    """Add ``value * scale`` (per channel) at output point ``(px, py)`` with triangle footprints,
    writing only accumulator rows ``[row_lo, row_hi)`` (the calling strip's own rows)."""
    ix0 = _triangle_shares(px, hx, wx)
    iy0 = _triangle_shares(py, hy, wy)
    wo = acc.shape[1]
    for dy in range(3):
        yy = iy0 + dy + GUARD
        if yy < row_lo or yy >= row_hi or wy[dy] == 0.0:
            continue
        for dx in range(3):
            xx = ix0 + dx + GUARD
            if xx < 0 or xx >= wo or wx[dx] == 0.0:
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
    ``(sx, sy)``; False if all zero."""
    x0 = math.floor(sx)
    y0 = math.floor(sy)
    fx = sx - x0
    fy = sy - y0
    r = y0 + PAD - row0
    c = x0 + PAD
    nonzero = False
    if fx == 0.0 and fy == 0.0:  # a pixel centre (always so when m = 1)
        for ch in range(src.shape[2]):
            v = src[r, c, ch]
            value[ch] = v
            if v != 0.0:
                nonzero = True
        return nonzero
    for ch in range(src.shape[2]):
        v = ((1 - fy) * ((1 - fx) * src[r, c, ch] + fx * src[r, c + 1, ch])
             + fy * ((1 - fx) * src[r + 1, c, ch] + fx * src[r + 1, c + 1, ch]))
        value[ch] = v
        if v != 0.0:
            nonzero = True
    return nonzero


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


@compiled(parallel=True, fastmath=FASTMATH)
def scatter_matrix(src, blocks, strip_rows, strip_ptr, strip_blocks, h, w, mat, acc, row0):
    """Fused scatter for a projective ``dst_from_src`` matrix ``mat (3, 3)`` (``w > 0`` side),
    in parallel over output strips; ``src`` is the window of source rows from ``row0`` (its
    blocks are the only ones listed).

    Strip ``s`` owns accumulator rows ``strip_rows[s] = [lo, hi)`` and visits the blocks
    ``blocks[strip_blocks[strip_ptr[s]:strip_ptr[s + 1]]]`` (those whose image can reach it, in
    global block order). Node ``(ix + kx/m, iy + ky/m)``: position ``y = (M[:2] x~) / w``,
    Jacobian rows ``(M_i: - y_i M_2:) / w``, footprint half-widths ``|row| / m`` (capped at
    1 px), mass ``value / m^2``. Every output pixel receives the same deposits in the same
    order however the rows are split, so the result is bit-identical for any thread count.
    """
    ho, wo = acc.shape[0] - 2 * GUARD, acc.shape[1] - 2 * GUARD
    for s in prange(strip_rows.shape[0]):
        row_lo, row_hi, value, wx, wy = _strip_scratch(src, strip_rows, s)
        for q in range(strip_ptr[s], strip_ptr[s + 1]):
            b = strip_blocks[q]
            y0, x0, m = blocks[b, 0], blocks[b, 1], blocks[b, 2]
            inv_m = 1.0 / m
            area = inv_m * inv_m
            for iy in range(y0, min(y0 + BLOCK, h)):
                for ky in range(m):
                    sy = iy + ky * inv_m
                    for ix in range(x0, min(x0 + BLOCK, w)):
                        for kx in range(m):
                            sx = ix + kx * inv_m
                            ww = mat[2, 0] * sx + mat[2, 1] * sy + mat[2, 2]
                            if ww <= 0.0:
                                continue
                            py = (mat[1, 0] * sx + mat[1, 1] * sy + mat[1, 2]) / ww
                            if not _reaches(py, row_lo, row_hi):
                                continue  # also rejects NaN
                            px = (mat[0, 0] * sx + mat[0, 1] * sy + mat[0, 2]) / ww
                            if px < -3.0 or py < -3.0 or px > wo + 2 or py > ho + 2:
                                continue
                            if not _node_value(src, sx, sy, row0, value):
                                continue
                            j00 = (mat[0, 0] - px * mat[2, 0]) / ww
                            j01 = (mat[0, 1] - px * mat[2, 1]) / ww
                            j10 = (mat[1, 0] - py * mat[2, 0]) / ww
                            j11 = (mat[1, 1] - py * mat[2, 1]) / ww
                            hx = min(max(math.sqrt(j00 * j00 + j01 * j01) * inv_m, 1e-9), 1.0)
                            hy = min(max(math.sqrt(j10 * j10 + j11 * j11) * inv_m, 1e-9), 1.0)
                            _deposit(acc, px, py, hx, hy, value, area, wx, wy, row_lo, row_hi)


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


@compiled(parallel=True, fastmath=FASTMATH)
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
            if not _node_value(src, node_xy[k, 0], node_xy[k, 1], row0, value):
                continue
            inv_m = 1.0 / node_m[k]
            hx, hy = rows[k, 0] * inv_m, rows[k, 1] * inv_m
            if not (hx < math.inf):
                hx = 1.0  # singular point (a polar pole): widest footprint, mass kept
            if not (hy < math.inf):
                hy = 1.0
            hx = min(max(hx, 1e-9), 1.0)
            hy = min(max(hy, 1e-9), 1.0)
            _deposit(acc, px, py, hx, hy, value, inv_m * inv_m, wx, wy, row_lo, row_hi)
