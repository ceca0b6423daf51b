"""Tier 0 of the antialiased scatter: the kernels of :mod:`._splat_kernels` in numpy, with the
same arguments and bit-identical results (see :mod:`.antialias` for the math and for when
each tier runs).

Why: numba's one-time cost in a fresh process (importing it, its typing context, loading the
cached machine code, starting its thread pool: 0.5-0.9 s) is far above the 150 ms target for
a first call; these functions import nothing but numpy, so the first antialiased warps of a
process run here while tier 1 is loaded in a background thread.

Bit-identical, not merely close: every node's position, half-widths, footprint shares and
weights are computed with the same IEEE operations in the same order as the compiled loops
(which are compiled without fast-math for that reason: no FMA contraction, no reassociation,
no approximate reciprocals), and the deposits are added with ``np.add.at`` in the compiled
kernels' order (node order, which is also each output pixel's order there), so every sum
receives the same terms in the same order. A zero share adds an exact 0 in the compiled
kernels (or is skipped there); here it is always skipped: the same sums (``x + 0 = x``, and
an accumulator never holds ``-0``). Tests: ``tests/test_antialias_tiers.py``.

Vectorised over nodes, looping in Python only over blocks (to list their nodes) and over the
footprint's 3x3 offsets; work is done in chunks of at most :data:`CHUNK_NODES` nodes, so the
temporaries stay within :func:`chunk_bytes` (~1.3 MB; :func:`.antialias.plan` counts it for the
matrix path; the generic path's are within its own node chunks' allowance). Each numpy call
releases the GIL inside its loop and lasts well under a millisecond, so other Python threads
keep running. Single-threaded (a first call; tier 1 is parallel): measured on a dense polar
first call (600x600 -> 360x200, 2M nodes), the generic scatter's strips on two threads were no
faster in a fresh process (the second thread's allocations page-fault its own arena, and
the numpy calls contend for the GIL).

The compiled kernels' skips (node rows that miss a strip, runs of zero values, the ``_reaches``
test) only save work: a skipped node deposits nothing there either. The matrix scatter has no
strips here: a call covers the rows of all its strips at once, visiting each listed block once.
"""

from __future__ import annotations

import numpy as np

PAD = 2  # zero rows / columns around a source window
BLOCK = 32  # block side (source pixels)
GUARD = 4  # accumulator ring (output pixels)

CHUNK_NODES = 1 << 11  # nodes per vectorised chunk of the matrix scatter
POINT_CHUNK_NODES = 1 << 14  # of the generic scatter (within the allowance of its node chunks; 2^15
# made 3x the page faults in a fresh process: 59k against 21k, first dense polar call ~7 % slower)
BYTES_PER_NODE = 512  # temporaries per node of a chunk (geometry, 9 deposits' indices and weights) ...
BYTES_PER_NODE_CHANNEL = 64  # ... plus per channel (tracemalloc peaks: see tests)


def unique_sorted(a) -> np.ndarray:
    """``np.unique`` of an array already sorted (non-decreasing): its distinct values.

    ``np.unique`` itself is avoided on the first-call paths: numpy 2.4's ``_unique1d`` asks
    ``np.ma.is_masked``, so a process's first ``np.unique`` imports ``numpy.ma`` (~14 ms, half
    of a first antialiased homography warp of a point field)."""
    a = np.asarray(a)
    if a.size < 2:
        return a.ravel().copy()
    a = a.ravel()
    return a[np.concatenate(([True], a[1:] != a[:-1]))]


def unique_rows(a: np.ndarray) -> np.ndarray:
    """``np.unique(a, axis=0)`` of a 2-D integer array: its distinct rows, sorted
    lexicographically (see :func:`unique_sorted` for why not ``np.unique``)."""
    if len(a) < 2:
        return a.copy()
    s = a[np.lexsort(a.T[::-1])]
    return s[np.concatenate(([True], np.any(s[1:] != s[:-1], axis=1)))]


def chunk_bytes(nodes: int, channels: int) -> int:
    """Working memory of one matrix-scatter chunk (counted in the plan's ``working_bytes``)."""
    return min(int(nodes), CHUNK_NODES) * (BYTES_PER_NODE + BYTES_PER_NODE_CHANNEL * channels)


def _gather(src, r, c, pad_checked: bool):
    """``src[r, c, :]`` as ``(N, C)``, 0 where ``(r, c)`` lies outside the array (unless the
    caller knows every index is inside: a padded window)."""
    if pad_checked:
        return src[r, c]
    inside = (r >= 0) & (c >= 0) & (r < src.shape[0]) & (c < src.shape[1])
    out = src[np.where(inside, r, 0), np.where(inside, c, 0)]
    out[~inside] = 0.0
    return out


_CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (row, column) offsets of the bilinear reads a, b, c, d


def _corner_reads(src, r, c, inside_known, corners):
    """``src[r + dr, c + dc, :]`` for the offsets ``corners`` of :data:`_CORNERS`, each ``(N, C)``
    in column-major layout (a contiguous column per channel, for the per-channel arithmetic of
    :func:`node_values`). A contiguous window read inside (``inside_known``) is read as one
    flat ``take`` per channel and corner (~2.5x faster than indexing with ``(r, c)``; the
    same elements)."""
    if not (inside_known and src.flags.c_contiguous):
        return [np.asfortranarray(_gather(src, r + dr, c + dc, inside_known)) for dr, dc in corners]
    w, nch = src.shape[1], src.shape[2]
    flat = src.reshape(-1)
    first = r * (w * nch)
    first += c * nch
    reads = []
    for dr, dc in corners:
        out = np.empty((len(first), nch), order="F")
        for ch in range(nch):
            off = (dr * w + dc) * nch + ch  # read from the shifted view: no index array per corner
            flat[off:].take(first, out=out[:, ch])
        reads.append(out)
    return reads


def node_values(src, sx, sy, row0, pad, inside_known=False):
    """Bilinear values ``(N, C)`` of the source window at nodes ``(sx, sy)`` (``_node_value`` /
    ``_node_value_at``): a pixel centre reads its pixel, other nodes
    ``(1 - fy) ((1 - fx) a + fx b) + fy ((1 - fx) c + fx d)``; 0 outside the array. Column-major
    (each channel's values contiguous); computed channel by channel, in place, with every
    product and sum's operands in the order written above (the same bits; which NaN an operation
    on two NaNs returns, and so a NaN's sign, may differ)."""
    fx0, fy0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - fx0, sy - fy0
    r = fy0.astype(np.int64)
    r += pad - row0
    c = fx0.astype(np.int64)
    c += pad
    centre = (fx == 0.0) & (fy == 0.0)
    if centre.all():
        return _corner_reads(src, r, c, inside_known, _CORNERS[:1])[0]
    a, b, cc, d = _corner_reads(src, r, c, inside_known, _CORNERS)
    gx, gy = 1 - fx, 1 - fy
    v = np.empty(a.shape, order="F")
    with np.errstate(invalid="ignore", over="ignore"):
        for ch in range(a.shape[1]):
            _bilinear(a[:, ch], b[:, ch], cc[:, ch], d[:, ch], fx, fy, gx, gy, v[:, ch])
            np.copyto(v[:, ch], a[:, ch], where=centre)
    return v


def _bilinear(a, b, c, d, fx, fy, gx, gy, out) -> None:
    """``out = gy * (gx * a + fx * b) + fy * (gx * c + fx * d)``, overwriting ``b``, ``c``, ``d``."""
    np.multiply(gx, a, out=out)
    np.multiply(fx, b, out=b)
    np.add(out, b, out=out)
    np.multiply(gy, out, out=out)
    np.multiply(gx, c, out=c)
    np.multiply(fx, d, out=d)
    np.add(c, d, out=c)
    np.multiply(fy, c, out=c)
    np.add(out, c, out=out)


def _shares(p, half):
    """``(i0, s (3, N))``: the compiled ``_axis_shares`` / ``_triangle_shares``, same operations
    (``0.5 + u (1 - 0.5 |u|)`` of ``u = clip((i0 + 1/2 - p) / half, -1, 1)`` and of the next
    pixel's ``u``; ``1 / half`` once, as there). Computed in place, a few arrays per axis
    instead of a dozen temporaries: the products and sums are the same IEEE operations
    (``x * 0.5 = 0.5 * x``, ``u * a = a * u``, ``a + 0.5 = 0.5 + a`` exactly)."""
    i0 = np.subtract(p, half)
    i0 += 0.5
    np.floor(i0, out=i0)
    inv = np.divide(1.0, half)
    c0, c1 = _tent_cdf(i0, 0.5, p, inv), _tent_cdf(i0, 1.5, p, inv)
    np.subtract(c1, c0, out=inv)  # (inv is not needed any more)
    np.subtract(1.0, c1, out=c1)
    return i0, (c0, inv, c1)


def _tent_cdf(i0, edge, p, inv):
    """``0.5 + u (1 - 0.5 |u|)``, ``u = clip((i0 + edge - p) * inv, -1, 1)`` (compiled
    ``_tent_cdf``), in two arrays."""
    u = np.add(i0, edge)
    u -= p
    u *= inv
    np.clip(u, -1.0, 1.0, out=u)
    c = np.abs(u)
    c *= 0.5
    np.subtract(1.0, c, out=c)
    c *= u
    c += 0.5
    return c


def _axis_masks(s, i0, n_off, lo, hi, zeros_harmless=False) -> list:
    """Per offset ``d < n_off`` of an axis: which nodes deposit there (share ``s[d]`` non-zero,
    pixel ``i0 + d`` inside ``[lo, hi)``), ``True`` where every node does (found by reductions
    first: the common case). ``zeros_harmless``: every value is finite, so a zero share deposits
    an exact ``+-0`` that changes no sum (``x + 0 = x``; an accumulator never holds ``-0``):
    with every pixel inside, each offset is then ``True`` and no slot needs picking."""
    inside = i0.min() >= lo and i0.max() + (n_off - 1) < hi
    masks = []
    for d in range(n_off):
        if inside:
            masks.append(True if zeros_harmless or s[d].all() else s[d] != 0.0)
        else:
            masks.append((s[d] != 0.0) & (i0 + d >= lo) & (i0 + d < hi))
    return masks


def _deposit(acc, values, px, py, hx, hy, scale, row_lo, row_hi):
    """Add ``values[k, ch] * ((sx_dx sy_dy) scale_k)`` at accumulator pixel ``(iy0 + dy + G,
    ix0 + dx + G)`` for every node ``k`` and offsets ``dx, dy in 0..2`` whose two shares are
    non-zero, inside rows ``[row_lo, row_hi)`` and the accumulator's columns; node-major order
    (each pixel receives its deposits in node order, as in the compiled kernels).

    The weights are built offset-major (contiguous rows: numpy is slow on short inner
    dimensions), then each channel's deposits ``value * weight`` are written node-major, the
    order ``np.add.at`` adds them in; where some slots ``(k, dy, dx)`` deposit nothing, the
    others are picked (:func:`_slots`, their order unchanged). The same products as before,
    operands in the same order; the zero-share slots' products (``NaN`` for a non-finite
    value) are computed but never added -- except when every value and scale is finite and
    every pixel inside: then the zero-share slots are added too (exact zeros: the same sums,
    and picking the others, ~35 ms of a 2M-node first call, is skipped)."""
    n = len(px)
    if n == 0:
        return
    ix0, sx = _shares(px, hx)
    iy0, sy = _shares(py, hy)
    wa, nch = acc.shape[1], acc.shape[2]
    # footprints of half-width <= 1/2 cover at most 2 pixels per axis: when no node's third
    # share is non-zero, the third offset deposits nothing and is not visited
    nx = 3 if sx[2].any() else 2
    ny = 3 if sy[2].any() else 2
    ix0 = ix0.astype(np.int64)
    ix0 += GUARD
    iy0 = iy0.astype(np.int64)
    iy0 += GUARD
    finite = bool(np.isfinite(values).all() and np.isfinite(scale).all())
    col_ok = _axis_masks(sx, ix0, nx, 0, wa, finite)
    row_ok = _axis_masks(sy, iy0, ny, row_lo, row_hi, finite)
    slots = None if all(m is True for m in col_ok + row_ok) else _slots(col_ok, row_ok, n)
    idx, wgt = _slot_indices(iy0, ix0, ny, nx, wa, nch), _slot_weights(sx, sy, ny, nx, scale)
    if slots is not None:
        idx = idx.take(slots)
    flat = acc.reshape(-1)
    dep = np.empty((n, ny * nx))
    with np.errstate(invalid="ignore", over="ignore"):
        for ch in range(nch):
            for o in range(ny * nx):
                np.multiply(values[:, ch], wgt[o], out=dep[:, o])
            added = dep.reshape(-1) if slots is None else dep.reshape(-1).take(slots)
            np.add.at(flat, idx + ch if ch else idx, added)


def _slots(col_ok, row_ok, n):
    """Flat node-major slots ``(k, dy, dx)`` of the ``n`` nodes that deposit (both axes' masks
    true), in order."""
    ok = np.empty((n, len(row_ok), len(col_ok)), dtype=bool)
    for dy in range(len(row_ok)):
        for dx in range(len(col_ok)):
            np.logical_and(row_ok[dy], col_ok[dx], out=ok[:, dy, dx])
    return np.flatnonzero(ok)  # indices: faster than a boolean mask


def _slot_indices(iy0, ix0, ny, nx, wa, nch):
    """Flat accumulator index of every slot ``(k, dy, dx)``, node-major (integer arithmetic)."""
    base = iy0 * wa
    base += ix0
    base *= nch
    idx = np.empty((len(base), ny, nx), np.int64)
    for dy in range(ny):
        for dx in range(nx):
            np.add(base, (dy * wa + dx) * nch, out=idx[:, dy, dx])
    return idx.reshape(-1)


def _slot_weights(sx, sy, ny, nx, scale):
    """``(sx[dx] * sy[dy]) * scale`` per offset ``dy * nx + dx``, offset-major (contiguous rows)."""
    wgt = np.empty((ny * nx, len(scale)))
    for dy in range(ny):
        for dx in range(nx):
            o = wgt[dy * nx + dx]
            np.multiply(sx[dx], sy[dy], out=o)
            np.multiply(o, scale, out=o)
    return wgt


def _block_pieces(src, block, h, w, row0, pad):
    """The block's live nodes (value not 0 in every channel) as ``(sx, sy, values (N, C),
    1 / m)`` pieces of at most :data:`CHUNK_NODES` nodes each (runs of node rows), in node
    order. ``m = 1``: the nodes are the pixel centres, their values the pixels (one slice of
    the window per piece, 0 outside the array)."""
    y0, x0, m = (int(v) for v in block)
    inv_m = 1.0 / m
    xs = (np.arange(x0, min(x0 + BLOCK, w), dtype=np.float64)[:, None] + np.arange(m) * inv_m).ravel()
    ys = (np.arange(y0, min(y0 + BLOCK, h), dtype=np.float64)[:, None] + np.arange(m) * inv_m).ravel()
    per = max(1, CHUNK_NODES // max(1, len(xs)))  # node rows per piece (one node row <= 32 x 64 nodes)
    for a in range(0, len(ys), per):
        if m == 1:
            r = np.arange(y0 + a, min(y0 + a + per, y0 + len(ys))) + (pad - row0)
            c = np.arange(x0, x0 + len(xs)) + pad
            v = _gather(src, r[:, None], c[None, :], False)
            iy, ix = np.nonzero((v != 0.0).any(axis=2))
            if len(iy):
                yield xs[ix], ys[a + iy], v[iy, ix], inv_m
            continue
        sy = np.repeat(ys[a:a + per], len(xs))
        sx = np.tile(xs, len(sy) // len(xs))
        vals = node_values(src, sx, sy, row0, pad)
        live = (vals != 0.0).any(axis=1)
        if live.any():
            yield sx[live], sy[live], vals[live], inv_m


def _live_chunks(src, blocks, ids, h, w, row0, pad):
    """``(sx, sy, inv_m, values)`` of the live nodes of blocks ``ids``, in node order, in chunks
    of at most :data:`CHUNK_NODES` nodes."""
    pending, count = [], 0
    for b in ids:
        for piece in _block_pieces(src, blocks[b], h, w, row0, pad):
            if count + len(piece[0]) > CHUNK_NODES and pending:
                yield _joined(pending)
                pending, count = [], 0
            pending.append(piece)
            count += len(piece[0])
    if pending:
        yield _joined(pending)


def _joined(pieces):
    return (np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces]),
            np.concatenate([np.full(len(p[0]), p[3]) for p in pieces]), np.concatenate([p[2] for p in pieces]))


def scatter_matrix(src, blocks, strip_rows, strip_ptr, strip_blocks, h, w, mat, acc, row0, pad):
    """:func:`._splat_kernels.scatter_matrix` in numpy: the listed blocks (each once, in global
    block order) deposit into the rows of all strips, ``[strip_rows[0, 0], strip_rows[-1, 1])``."""
    ho, wo = acc.shape[0] - 2 * GUARD, acc.shape[1] - 2 * GUARD
    row_lo, row_hi = int(strip_rows[0, 0]), int(strip_rows[-1, 1])
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = (tuple(float(v) for v in row) for row in mat)
    ids = unique_sorted(np.sort(strip_blocks[strip_ptr[0]:strip_ptr[-1]]))
    for sx, sy, inv_m, vals in _live_chunks(src, blocks, ids, h, w, row0, pad):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            cx, cy, cw = m01 * sy + m02, m11 * sy + m12, m21 * sy + m22
            ww = m20 * sx + cw
            rw = 1.0 / ww
            px = (m00 * sx + cx) * rw
            py = (m10 * sx + cy) * rw
            a0, a1 = m00 - px * m20, m01 - px * m21
            b0, b1 = m10 - py * m20, m11 - py * m21
            sc = rw * inv_m
            hx = np.clip(np.sqrt(a0 * a0 + a1 * a1) * sc, 1e-9, 1.0)
            hy = np.clip(np.sqrt(b0 * b0 + b1 * b1) * sc, 1e-9, 1.0)
            keep = (ww > 0.0) & (px >= -3.0) & (py >= -3.0) & (px <= wo + 2) & (py <= ho + 2)
            area = inv_m * inv_m
            _deposit(acc, vals[keep], px[keep], py[keep], hx[keep], hy[keep], area[keep], row_lo, row_hi)


def list_nodes(pieces, first, h, w, out_xy, out_m):
    """:func:`._splat_kernels.list_nodes` in numpy (the same node coordinates, same order): a
    piece's nodes form a ``(node rows, node columns)`` grid in ``out_xy``, written by
    broadcasting its column coordinates down and its row coordinates across: node rows
    ``iy + ky/m`` outer, node columns ``(x0 + i) + kx/m`` inner (no tiled temporaries)."""
    for b in range(pieces.shape[0]):
        y0, x0, m, y1 = (int(v) for v in pieces[b])
        inv_m = 1.0 / m
        frac = np.arange(m) * inv_m  # kx * inv_m
        xs = (np.arange(x0, min(x0 + BLOCK, w), dtype=np.float64)[:, None] + frac[None, :]).ravel()
        ys = (np.arange(y0, min(y1, h), dtype=np.float64)[:, None] + frac[None, :]).ravel()
        n, count = int(first[b]), len(xs) * len(ys)
        block = out_xy[n:n + count]
        grid = block.reshape(len(ys), len(xs), 2)  # a view of the callers' C-contiguous rows
        grid[:, :, 0] = xs
        grid[:, :, 1] = ys[:, None]
        if grid.base is None:  # reshape had to copy (rows not contiguous): write the copy back
            block[...] = grid.reshape(count, 2)
        out_m[n:n + count] = m


def scatter_points(src, node_xy, node_m, pos, rows, strip_rows, acc, row0):
    """:func:`._splat_kernels.scatter_points` in numpy, in chunks of :data:`POINT_CHUNK_NODES` nodes.

    A chunk whose nodes all land inside and are all live (the common case, found by
    reductions) is read through slices instead of gathers (the same values)."""
    row_lo, row_hi = int(strip_rows[0, 0]), int(strip_rows[-1, 1])
    ho, wo = acc.shape[0] - 2 * GUARD, acc.shape[1] - 2 * GUARD
    for a in range(0, node_xy.shape[0], POINT_CHUNK_NODES):
        sl = slice(a, a + POINT_CHUNK_NODES)
        kept = _landing(pos[sl], wo, ho)
        if kept is not None and len(kept) == 0:
            continue
        xy = node_xy[sl] if kept is None else node_xy[sl].take(kept, axis=0)
        vals = node_values(src, xy[:, 0], xy[:, 1], row0, PAD, inside_known=True)
        live = (vals != 0.0).any(axis=1)
        if live.all():
            sel = sl if kept is None else kept + a
        else:
            sel = (np.flatnonzero(live) if kept is None else kept[live]) + a
            vals = vals[live]
        if len(vals) == 0:
            continue
        inv_m = 1.0 / node_m[sel]
        hx, hy = _half_width(rows[sel, 0], inv_m), _half_width(rows[sel, 1], inv_m)
        _deposit(acc, vals, pos[sel, 0], pos[sel, 1], hx, hy, inv_m * inv_m, row_lo, row_hi)


def _landing(p, wo, ho):
    """Chunk positions of the nodes landing strictly inside ``(-3, Wo + 2) x (-3, Ho + 2)``
    (NaN does not), or None when all do (min / max: NaN propagates, so it fails the test)."""
    px, py = p[:, 0], p[:, 1]
    if p.min() > -3.0 and px.max() < wo + 2 and py.max() < ho + 2:  # p.min(): both lower bounds in one contiguous pass
        return None
    return np.flatnonzero((px > -3.0) & (py > -3.0) & (px < wo + 2) & (py < ho + 2))


def _half_width(norm, inv_m):
    """``clip(norm * inv_m, 1e-9, 1)``, infinite or NaN (a singular point: a pole) as 1, the
    widest footprint: the clip maps inf to 1, then NaN is replaced by 1 (the same values as
    replacing both by 1 before clipping)."""
    h = norm * inv_m
    np.clip(h, 1e-9, 1.0, out=h)  # (np.clip is vectorised; fmin and maximum by a scalar are ~3x slower)
    nan = np.isnan(h)
    if nan.any():
        h[nan] = 1.0
    return h


_SEQUENCES: dict = {}
_FOLD_VALUES = 1 << 16  # values per np.add.accumulate call of the tent sums (0.5 MB)


def _tent_sequence(m: int, row_kind: int, col_kind: int) -> np.ndarray:
    """The terms one block adds to one of its sums, in the compiled loop's order, for a sum on
    the block's first (``kind 0``), inner (1) or last (2) pixel row / column of its footprint.

    The loop visits node pixel rows ``iy``, node rows ``ky``, pixel columns ``ix``, node
    columns ``kx`` and adds to the sums at ``(iy, ix)`` ``(1 - fy)(1 - fx) a``, ``(iy, ix + 1)``
    ``(1 - fy) fx a``, ``(iy + 1, ix)`` ``fy (1 - fx) a``, ``(iy + 1, ix + 1)`` ``fy fx a``
    (``f = k / m``, ``a = 1 / m^2``). So sum ``(R, C)`` receives, in order: from ``iy = R - 1``
    (not on the first row), per ``ky``: the ``kx`` terms of ``ix = C - 1`` (not on the first
    column) then those of ``ix = C`` (not on the last); then the same from ``iy = R`` (not on
    the last row) with ``1 - fy``. Cached."""
    key = (m, row_kind, col_kind)
    seq = _SEQUENCES.get(key)
    if seq is None:
        inv_m = 1.0 / m
        area = inv_m * inv_m
        f = np.arange(m) * inv_m
        g = 1 - f
        parts = []
        for lower, fy in ((True, f), (False, g)):  # iy = R - 1 (corners 2, 3), then iy = R (corners 0, 1)
            if (lower and row_kind == 0) or (not lower and row_kind == 2):
                continue
            cols = []
            if col_kind != 0:
                cols.append(fy[:, None] * f[None, :] * area)  # ix = C - 1: the pixel is its + 1 corner
            if col_kind != 2:
                cols.append(fy[:, None] * g[None, :] * area)  # ix = C
            parts.append(np.concatenate(cols, axis=1).ravel())  # (ky, [ix, kx])
        seq = _SEQUENCES[key] = np.concatenate(parts)
    return seq


def _fold(flat, idx, seq) -> None:
    """``flat[i] = (((flat[i] + seq[0]) + seq[1]) + ...)`` for every (distinct) index ``i`` of
    ``idx``: a left-to-right ``np.add.accumulate`` per row (sequential, not pairwise)."""
    per = max(1, _FOLD_VALUES // (len(seq) + 1))
    for a in range(0, len(idx), per):
        part = idx[a:a + per]
        run = np.empty((len(part), len(seq) + 1))
        run[:, 0] = flat[part]
        run[:, 1:] = seq
        np.add.accumulate(run, axis=1, out=run)
        flat[part] = run[:, -1]


def _kind_indices(kind: int, n: int) -> np.ndarray:
    """Footprint offsets ``0 .. n`` (``n`` node pixels: ``n + 1`` sums) of a row / column kind."""
    return np.array([0]) if kind == 0 else (np.arange(1, n) if kind == 1 else np.array([n]))


def tent_sums(blocks, row_ptr, block_rows, h, w, sums, iy_lo, iy_hi, row0):
    """:func:`._splat_kernels.tent_sums` in numpy, the same terms added in the same order to
    every sum, without listing them one by one.

    A call's block rows have one parity: they share no sum row, and each block shares sums
    only with its left and right neighbours (its first / last footprint column), where the
    compiled loop adds the left block's terms first. So: first the inner and last columns of
    every block, then their first columns; each sum is folded from its current value through
    its block's sequence (:func:`_tent_sequence`: one of nine per ``m``). A block's inner sums
    start at 0 (no other block reaches them): their fold is one value per ``m``."""
    bl = np.concatenate([np.arange(row_ptr[br], row_ptr[br + 1]) for br in block_rows]) if len(block_rows) else []
    if len(bl) == 0:
        return
    y0, x0, m = blocks[bl, 0], blocks[bl, 1], blocks[bl, 2]
    iy0 = np.maximum(y0, iy_lo)
    n_r = np.minimum(np.minimum(y0 + BLOCK, h), iy_hi) - iy0
    n_c = np.minimum(x0 + BLOCK, w) - x0
    ok = (n_r > 0) & (n_c > 0)
    wp = sums.shape[1]
    flat = sums.reshape(-1)
    base = (iy0 + PAD - row0) * wp + x0 + PAD  # flat index of each block's first sum
    groups = unique_rows(np.stack([m[ok], n_r[ok], n_c[ok]], 1))
    for col_kinds in ((1, 2), (0,)):
        for mv, nr, nc in groups:
            group = np.nonzero(ok & (m == mv) & (n_r == nr) & (n_c == nc))[0]
            for g0 in range(0, len(group), 64):  # <= 64 blocks at once: index arrays <= 0.5 MB
                _tent_group(flat, base[group[g0:g0 + 64]], int(mv), int(nr), int(nc), wp, col_kinds)


def _tent_group(flat, bases, mv, nr, nc, wp, col_kinds) -> None:
    """The sums of the footprint columns ``col_kinds`` of blocks with first sums ``bases``
    (all with node factor ``mv``, ``nr`` x ``nc`` node pixels)."""
    for row_kind in (0, 1, 2):
        rows = _kind_indices(row_kind, nr)
        for col_kind in col_kinds:
            rel = (rows[:, None] * wp + _kind_indices(col_kind, nc)[None, :]).ravel()
            if len(rel) == 0:
                continue
            idx = (bases[:, None] + rel[None, :]).ravel()
            seq = _tent_sequence(mv, row_kind, col_kind)
            if row_kind == 1 and col_kind == 1:  # inner sums: from 0, one value
                flat[idx] = np.add.accumulate(np.concatenate([[0.0], seq]))[-1]
            else:
                _fold(flat, idx, seq)


def matrix_layout(mat, side, by, bx, n, stretch, lo, hi, finite, dead):
    """:func:`._splat_kernels.matrix_layout` in numpy (the same IEEE operations, vectorised over
    blocks and grid points)."""
    t = by.shape[0], bx.shape[0]
    steps = np.arange(n) / (n - 1)  # a / (n - 1)
    ys = by[:, None] + BLOCK * steps[None, :]  # (nby, n)
    xs = bx[:, None] + BLOCK * steps[None, :]  # (nbx, n)
    # points (i, j, a, c): y = ys[i, a], x = xs[j, c]
    y = np.broadcast_to(ys[:, None, :, None], (t[0], t[1], n, n))
    x = np.broadcast_to(xs[None, :, None, :], (t[0], t[1], n, n))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        wv = x * mat[2, 0] + y * mat[2, 1] + mat[2, 2]
        nz = wv != 0.0
        px = np.where(nz, (x * mat[0, 0] + y * mat[0, 1] + mat[0, 2]) / wv, np.nan)
        py = np.where(nz, (x * mat[1, 0] + y * mat[1, 1] + mat[1, 2]) / wv, np.nan)
        ok = np.isfinite(px) & np.isfinite(py)
        ws = x * side[2, 0] + y * side[2, 1] + side[2, 2]
        jac = []
        for num in ((mat[0, 0] - px * mat[2, 0]), (mat[0, 1] - px * mat[2, 1]),
                    (mat[1, 0] - py * mat[2, 0]), (mat[1, 1] - py * mat[2, 1])):
            j = np.where(nz, num / wv, 0.0)
            jac.append(np.where(np.isfinite(j), j, 0.0))
        j00, j01, j10, j11 = jac
        fro = j00 * j00 + j01 * j01 + j10 * j10 + j11 * j11
        det = j00 * j11 - j01 * j10
        s2 = 0.5 * (fro + np.sqrt(np.maximum(fro * fro - 4.0 * det * det, 0.0)))
        s = np.where(np.isfinite(s2), np.sqrt(s2), np.inf)
    nb = t[0] * t[1]
    stretch[:] = np.maximum(s.reshape(nb, -1).max(axis=1), 0.0)
    okb = ok.reshape(nb, -1)
    any_ok = okb.any(axis=1)
    for k, (coord, out, red, start) in enumerate(((px, lo, np.min, np.inf), (py, lo, np.min, np.inf),
                                                  (px, hi, np.max, -np.inf), (py, hi, np.max, -np.inf))):
        vals = red(np.where(okb, coord.reshape(nb, -1), start), axis=1)
        out[:, k % 2] = np.where(any_ok, vals, np.nan)
    finite[:] = (okb & (ws.reshape(nb, -1) > 0.0)).all(axis=1)
    dead[:] = (ws.reshape(nb, -1) <= 0.0).all(axis=1)
