"""Jacobian-footprint, flux-conserving resampling (``warp(..., antialias=True)``).

Point sampling ``in(T^{-1}(y)) |det J_{T^{-1}}(y)|`` conserves the *total* but not the local
flux when ``T`` shrinks the image: each output pixel reads one point of a source area several
pixels wide (aliasing). Here the source is *scattered* instead, each piece with a footprint
shaped by the local Jacobian, in the spirit of drizzle (Fruchter & Hook 2002) and of the
Jacobian-sized kernels of DeForest (2004):

1. **Continuous model.** The source is the bilinear (tent) interpolant
   ``f(x) = sum_j I_j tent(x - j)``, zero outside the image: the model the plain ``linear``
   warp samples. Pixel ``j`` carries flux ``I_j`` (its tent integrates to 1).
2. **Nodes.** A tent of half-width 1 is exactly a sum of tents of half-width ``1/m`` on the
   lattice ``j + k/m`` with coefficients ``tent(k/m)``; so ``f`` is the sum over lattice nodes
   ``n`` of ``f(n) tent_m(x - n)``, and node ``n`` carries mass ``f(n) / m^2`` per axis pair.
   ``m`` is chosen per 32x32-pixel block as ``ceil(1.5 s)``, ``s`` the largest singular value of
   ``J_T`` on the block, so each node's footprint stays below one output pixel of half-width.
   Where neighbouring blocks use different ``m`` the lattices meet unevenly; dividing the
   image by ``S_j = sum_n tent(n - j) / m_n^2`` (1 elsewhere) makes every pixel's masses sum
   to exactly ``I_j`` again.
3. **Footprint.** The node's tent, pushed through the local Jacobian, is approximated by the
   separable triangle of half-widths ``(|J_T row 0|, |J_T row 1|) / m`` centred at ``T(n)``
   and integrated exactly over the output pixels it touches (at most 3 per axis). The shares
   sum to exactly 1.

So every source pixel's flux lands in full within about one output pixel of its image:
conservation holds locally, not only in total. The coverage (the same scatter of an all-ones
image) says how much of each output pixel's preimage lies inside the source.

Cost: about one node per source pixel when shrinking, one per output pixel when enlarging.
The loops are compiled (:mod:`._splat_kernels`), release the GIL and run in parallel over
output row strips, each strip owning its rows (bit-identical results for any thread count).

Planning comes first (:func:`plan`): the block layout gives the node count and the working
memory before anything large is allocated, so :mod:`.budget` can refuse a call. The scatter
then runs in row *bands* of about :data:`NODES_PER_BAND` nodes (the work histogram over output
rows comes from each block's image), calling ``poll()`` between bands so a caller's deadline
or cancellation stops the work; each band is split into as many strips as there are threads,
balanced by the same histogram.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import _splat_kernels as k
from .threads import kernel_threads

OVERSAMPLING = 1.5  # m = ceil(1.5 s): 1 node per pixel for shrinks >= 1.5x; moire < 0.3 % when rotating
MAX_NODES_PER_PIXEL_AXIS = 64
CHUNK_NODES = 1 << 18  # nodes per generic-path chunk (bounds memory: ~GENERIC_BYTES_PER_NODE each)
NODES_PER_BAND = 1 << 21  # nodes between two poll() calls (~50 ms on one core)
MATRIX_MARGIN = 4.0  # output px: a node's footprint reaches < 2.5 px beyond the block's exact image box
GENERIC_BYTES_PER_NODE = 320  # node list, positions, Jacobians and the transform's temporaries


def _block_grid(h: int, w: int):
    """Block origins: pixels ``-1 .. h-1`` (the tent of pixel 0 reaches back to -1)."""
    return np.arange(-1, h, k.BLOCK), np.arange(-1, w, k.BLOCK)


def _block_samples(by, bx, n: int):
    """``(nb * n * n, 2)`` points on an ``n x n`` grid over each block (row-major blocks)."""
    t = np.linspace(0.0, k.BLOCK, n)
    offs = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    gx, gy = np.meshgrid(bx.astype(float), by.astype(float))
    origins = np.stack([gx.ravel(), gy.ravel()], 1)
    return (origins[:, None, :] + offs[None]).reshape(-1, 2), len(offs)


def _largest_singular_value(jac: np.ndarray) -> np.ndarray:
    """``s_max`` of each ``(2, 2)`` matrix in closed form (10x faster than ``np.linalg.svd``):
    ``s_max^2 = (F + sqrt(F^2 - 4 det^2)) / 2`` with ``F = ||J||_F^2`` (the eigenvalues of
    ``J^T J`` have sum ``F`` and product ``det^2``)."""
    a, b, c, d = jac[:, 0, 0], jac[:, 0, 1], jac[:, 1, 0], jac[:, 1, 1]
    with np.errstate(over="ignore", invalid="ignore"):
        fro = a * a + b * b + c * c + d * d
        det = a * d - b * c
        s2 = 0.5 * (fro + np.sqrt(np.maximum(fro * fro - 4.0 * det * det, 0.0)))
    return np.sqrt(np.where(np.isfinite(s2), s2, np.inf))


def source_side_matrix(dst_from_src, h: int, w: int) -> np.ndarray:
    """The ``dst_from_src`` matrix scaled so the source centre has ``w > 0`` (the kernel keeps
    nodes with ``w > 0``: the source's own side of the horizon)."""
    mat = np.array(dst_from_src.matrix, dtype=np.float64)
    centre = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    return -mat if mat[2] @ centre < 0 else mat


def block_layout(dst_from_src, h: int, w: int) -> dict:
    """Blocks of source pixels: origins, node factor ``m``, node count and the bounding box of
    each block's image (sampled on a 3x3 grid; ``finite`` is False where a horizon crosses the
    block, ``dead`` True where the whole block lies beyond it).

    For matrix transforms the box is exact (a block with ``w > 0`` at its four corners maps to
    the convex quadrilateral of their images), so the search margin is a few pixels; other
    transforms keep a margin of two block images."""
    by, bx = _block_grid(h, w)
    pts, per = _block_samples(by, bx, 3)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        jac = dst_from_src.jacobian(pts)
        y = dst_from_src.map(pts)
    jac = np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
    stretch = _largest_singular_value(jac).reshape(-1, per).max(axis=1)
    m = np.clip(np.ceil(OVERSAMPLING * stretch), 1, MAX_NODES_PER_PIXEL_AXIS).astype(np.int64)
    y = y.reshape(-1, per, 2)
    finite = np.isfinite(y).all(axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: blocks beyond a horizon
        lo = np.nanmin(np.where(finite[..., None], y, np.nan), axis=1)
        hi = np.nanmax(np.where(finite[..., None], y, np.nan), axis=1)
    finite = finite.all(axis=1)
    dead = np.zeros(len(m), dtype=bool)
    if dst_from_src.is_matrix():
        mat = source_side_matrix(dst_from_src, h, w)
        ws = (pts @ mat[2, :2] + mat[2, 2]).reshape(-1, per)
        dead = (ws <= 0).all(axis=1)
        finite &= (ws > 0).all(axis=1)
        margin = np.full(len(m), MATRIX_MARGIN)
    else:
        margin = 2.0 * k.BLOCK * np.maximum(stretch, 1.0)
    gx, gy = np.meshgrid(bx, by)
    origins = np.stack([gy.ravel(), gx.ravel()], 1).astype(np.int64)
    pixels = (np.minimum(origins[:, 0] + k.BLOCK, h) - origins[:, 0]) * (np.minimum(origins[:, 1] + k.BLOCK, w)
                                                                         - origins[:, 1])
    return {"origins": origins, "m": m, "lo": lo, "hi": hi, "finite": finite, "dead": dead, "margin": margin,
            "pixels": pixels, "blocks_per_row": len(bx)}


def blocks_visible(layout: dict, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Blocks whose image can touch output rows ``[r0, r1)`` x columns ``[c0, c1)``."""
    lo, hi, margin = layout["lo"], layout["hi"], layout["margin"]
    with np.errstate(invalid="ignore"):
        far = ((hi[:, 0] < cols[0] - margin) | (lo[:, 0] > cols[1] + margin)
               | (hi[:, 1] < rows[0] - margin) | (lo[:, 1] > rows[1] + margin))
    return (~far | ~layout["finite"]) & ~layout["dead"]  # a horizon crosses the block: keep it


@dataclass(frozen=True)
class ScatterPlan:
    """What a scatter will do, known before it allocates: blocks ``(nb, 3)`` (origin row,
    origin column, ``m``; ``m = 1`` for blocks that cannot reach the output), the visible mask,
    nodes per block, the total node count and the working memory in bytes."""

    layout: dict
    blocks: np.ndarray
    visible: np.ndarray
    block_nodes: np.ndarray
    nodes: int
    mixed: bool
    working_bytes: int


def plan(dst_from_src, src_shape, out_shape, channels: int, with_coverage: bool = True) -> ScatterPlan:
    """Plan the scatter of a ``src_shape`` source with ``channels`` channels onto ``out_shape``."""
    h, w = src_shape
    ho, wo = out_shape
    layout = block_layout(dst_from_src, h, w)
    visible = blocks_visible(layout, (0, ho), (0, wo))
    m = np.where(visible, layout["m"], 1)
    blocks = np.column_stack([layout["origins"], m])
    block_nodes = np.where(visible, layout["pixels"] * m * m, 0)
    nodes = int(block_nodes.sum())
    mixed = len(np.unique(m)) > 1
    nch = channels + 1 if with_coverage else channels
    padded = (h + 2 * k.PAD) * (w + 2 * k.PAD)
    g = k.GUARD
    working = 8 * padded * nch + (9 * padded if mixed else 0) + 8 * (ho + 2 * g) * (wo + 2 * g) * nch
    if not dst_from_src.is_matrix():
        working += GENERIC_BYTES_PER_NODE * min(nodes, 2 * CHUNK_NODES)
    return ScatterPlan(layout, blocks, visible, block_nodes, nodes, mixed, int(working))


def padded_source(image: np.ndarray, with_coverage: bool, rows=None, cols=None, fill: float = 0.0) -> np.ndarray:
    """``(h + 2P, w + 2P, C [+1]) float64``: the source (or its border extension: source rows
    ``rows`` x columns ``cols``, ``-1`` meaning ``fill``) with ``P`` zero rows/columns around it
    and, with coverage, a last channel of ones over the (extended) source."""
    c = image.shape[2]
    if rows is not None:
        view = image[np.ix_(np.maximum(rows, 0), np.maximum(cols, 0))]
    else:
        view = image
    h, w = view.shape[:2]
    pad = k.PAD
    src = np.zeros((h + 2 * pad, w + 2 * pad, c + 1 if with_coverage else c), dtype=np.float64)
    inner = src[pad:pad + h, pad:pad + w]
    inner[:, :, :c] = view
    if rows is not None:
        inner[rows < 0, :, :c] = fill
        inner[:, cols < 0, :c] = fill
    if with_coverage:
        inner[:, :, c] = 1.0
    return src


def _normalise_tent_sums(src, p: ScatterPlan, h: int, w: int, poll) -> None:
    """Divide ``src`` by the lattice's tent sums (only needed where blocks of different ``m``
    meet), in two parity phases of block rows, polling between groups of rows."""
    sums = np.zeros(src.shape[:2])
    per_row = p.layout["blocks_per_row"]
    n_rows = len(p.blocks) // per_row
    row_ptr = np.arange(0, len(p.blocks) + 1, per_row, dtype=np.int64)
    row_nodes = (p.layout["pixels"] * p.blocks[:, 2] ** 2).reshape(n_rows, per_row).sum(axis=1)
    for parity in (0, 1):
        todo = np.arange(parity, n_rows, 2, dtype=np.int64)
        for group in _groups(todo, row_nodes[todo], NODES_PER_BAND):
            kernel_threads(int(row_nodes[group].sum()))
            k.tent_sums(p.blocks, row_ptr, group, h, w, sums)
            _poll(poll)
    np.divide(src, sums[:, :, None], out=src, where=(sums > 0)[:, :, None])


def _groups(items: np.ndarray, cost: np.ndarray, budget: float):
    """Consecutive runs of ``items`` whose summed ``cost`` stays near ``budget`` (>= 1 item each)."""
    cum = np.cumsum(cost)
    if len(items) == 0:
        return []
    cuts = np.searchsorted(cum, np.arange(budget, cum[-1], budget), side="right")
    cuts = np.unique(np.clip(cuts, 1, len(items) - 1)) if len(items) > 1 else np.array([], int)
    return np.split(items, cuts)


def _poll(poll) -> None:
    if poll is not None:
        poll()


def _row_work(p: ScatterPlan, ho: int) -> np.ndarray:
    """Estimated nodes per output row: each visible block's nodes spread evenly over the rows
    of its image box (plus the footprint reach); blocks a horizon crosses over every row."""
    lay = p.layout
    live = p.block_nodes > 0
    diff = np.zeros(ho + 1)
    ok = live & lay["finite"]
    r0 = np.clip(np.floor(lay["lo"][ok, 1] - 3), 0, ho).astype(np.int64)
    r1 = np.clip(np.ceil(lay["hi"][ok, 1] + 4), 0, ho).astype(np.int64)
    span = r1 > r0
    dens = p.block_nodes[ok][span] / (r1[span] - r0[span])
    np.add.at(diff, r0[span], dens)
    np.add.at(diff, r1[span], -dens)
    work = np.cumsum(diff)[:ho]
    work += p.block_nodes[live & ~lay["finite"]].sum() / ho
    return np.maximum(work, 0.0) + 1.0  # +1: every row costs a little (empty rows included)


def _split_rows(work: np.ndarray, r0: int, r1: int, parts: int) -> np.ndarray:
    """Boundaries ``[r0, ..., r1]`` splitting rows ``[r0, r1)`` into up to ``parts`` runs of
    about equal ``work``."""
    if parts <= 1 or r1 - r0 <= 1:
        return np.array([r0, r1])
    cum = np.cumsum(work[r0:r1])
    cuts = r0 + 1 + np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts)
    return np.unique(np.concatenate([[r0], np.clip(cuts, r0 + 1, r1 - 1), [r1]]))


def _strip_rows(edges: np.ndarray, ho: int) -> np.ndarray:
    """Accumulator rows ``[lo, hi)`` owned by each strip (the guard rings go to the end strips)."""
    g = k.GUARD
    rows = np.column_stack([edges[:-1] + g, edges[1:] + g]).astype(np.int64)
    rows[rows[:, 0] == g, 0] = 0
    rows[rows[:, 1] == ho + g, 1] = ho + 2 * g
    return rows


def _bands(work: np.ndarray):
    """Row bands of about ``NODES_PER_BAND`` nodes (one kernel launch, then a poll, each)."""
    ho = len(work)
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, np.arange(NODES_PER_BAND, cum[-1], NODES_PER_BAND), side="right")
    edges = np.unique(np.concatenate([[0], np.clip(cuts, 1, ho - 1), [ho]])) if ho > 1 else np.array([0, ho])
    return list(zip(edges[:-1], edges[1:]))


def scatter(src: np.ndarray, p: ScatterPlan, dst_from_src, out_shape, *, row_period=None, poll=None):
    """Scatter the padded source ``src`` (:func:`padded_source`) through ``dst_from_src``.

    Returns the accumulated ``(Ho, Wo, C')`` float64 view (``C'`` the channels of ``src``): the
    integral of the source model over each output pixel's preimage (the coverage channel last,
    if any). ``row_period`` (a polar output's angle axis) folds deposits that fall beyond the
    first or last row back onto the other end. ``poll()`` is called between bands.
    """
    h, w = src.shape[0] - 2 * k.PAD, src.shape[1] - 2 * k.PAD
    ho, wo = out_shape
    g = k.GUARD
    if p.mixed:
        _normalise_tent_sums(src, p, h, w, poll)
    acc = np.zeros((ho + 2 * g, wo + 2 * g, src.shape[2]))
    if p.nodes:
        if dst_from_src.is_matrix():
            _scatter_matrix(src, p, source_side_matrix(dst_from_src, h, w), h, w, acc, poll)
        else:
            _scatter_generic(src, p, h, w, dst_from_src, acc, poll)
    if row_period is not None and row_period == ho:
        acc[ho:ho + g] += acc[:g]  # rows -g..-1 are rows ho-g..ho-1
        acc[g:2 * g] += acc[ho + g:]  # rows ho..ho+g-1 are rows 0..g-1
    return acc[g:-g, g:-g]


def _scatter_matrix(src, p: ScatterPlan, mat, h, w, acc, poll):
    ho = acc.shape[0] - 2 * k.GUARD
    lay = p.layout
    work = _row_work(p, ho)
    live = np.nonzero(p.block_nodes > 0)[0]
    with np.errstate(invalid="ignore"):
        top, bottom = lay["lo"][live, 1] - lay["margin"][live], lay["hi"][live, 1] + lay["margin"][live]
    anywhere = ~lay["finite"][live]
    for b0, b1 in _bands(work):
        threads = kernel_threads(int(work[b0:b1].sum()))
        edges = _split_rows(work, b0, b1, threads)
        lists = [live[anywhere | ((bottom >= r0) & (top <= r1))] for r0, r1 in zip(edges[:-1], edges[1:])]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        k.scatter_matrix(src, p.blocks, _strip_rows(edges, ho), ptr, np.concatenate(lists).astype(np.int64),
                         h, w, mat, acc)
        _poll(poll)


def _pieces(p: ScatterPlan, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Live blocks as ``(y0, x0, m, y_end)`` pieces of at most ``CHUNK_NODES`` nodes each (a
    block with a large ``m`` is cut into runs of pixel rows; node order is unchanged)."""
    live = np.nonzero(p.block_nodes > 0)[0]
    blocks = p.blocks[live]
    y0, x0, m = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    rows = np.minimum(y0 + k.BLOCK, h) - y0
    per_row = (np.minimum(x0 + k.BLOCK, w) - x0) * m * m
    step = np.maximum(1, CHUNK_NODES // per_row)
    n_pieces = -(-rows // step)
    idx = np.repeat(np.arange(len(live)), n_pieces)
    k_in = np.arange(len(idx)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    start = y0[idx] + k_in * step[idx]
    end = np.minimum(start + step[idx], y0[idx] + rows[idx])
    pieces = np.column_stack([start, x0[idx], m[idx], end]).astype(np.int64)
    return pieces, (end - start) * per_row[idx]


def _scatter_generic(src, p: ScatterPlan, h, w, dst_from_src, acc, poll):
    """Nodes listed in chunks, mapped by the transform in numpy, deposited by the kernel."""
    ho = acc.shape[0] - 2 * k.GUARD
    pieces, counts = _pieces(p, h, w)
    for chunk in _groups(np.arange(len(pieces)), counts, CHUNK_NODES):
        first = np.concatenate([[0], np.cumsum(counts[chunk])[:-1]]).astype(np.int64)
        total = int(counts[chunk].sum())
        xy = np.empty((total, 2))
        node_m = np.empty(total, dtype=np.int64)
        kernel_threads(total)
        k.list_nodes(np.ascontiguousarray(pieces[chunk]), first, h, w, xy, node_m)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            pos = np.ascontiguousarray(dst_from_src.map(xy))
            jac = dst_from_src.jacobian(xy)
        rows = np.stack([np.hypot(jac[:, 0, 0], jac[:, 0, 1]), np.hypot(jac[:, 1, 0], jac[:, 1, 1])], 1)
        del jac
        threads = kernel_threads(total)
        work = np.bincount(np.clip(np.nan_to_num(pos[:, 1], nan=-1.0), 0, ho - 1).astype(np.int64),
                           minlength=ho) + 1.0
        edges = _split_rows(work, 0, ho, threads)
        k.scatter_points(src, xy, node_m, pos, np.ascontiguousarray(rows), _strip_rows(edges, ho), acc)
        _poll(poll)
