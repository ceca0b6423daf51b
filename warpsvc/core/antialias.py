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

Tiers. numba's one-time cost in a fresh process (its import, typing context, cache load and
thread pool: 0.5-0.9 s) is far above a first call's 150 ms budget, so each kernel has a numpy
twin (:mod:`._splat_numpy`, tier 0) with the same arguments and bit-identical results (the
compiled kernels are built without fast-math; tier 0 repeats their IEEE operations and adds
the deposits in their order). A step uses tier 1 when its kernels are loaded; else, when
``warpsvc.core._splat_kernels`` was imported by someone else (tests, benchmarks, code calling
the kernels) and nobody is loading it, it loads them in the calling thread (as before tiers);
else it runs tier 0. Calls made while :func:`.warmup.warm` loads the kernels wait for it (a
server's first requests then behave as before). :data:`UPGRADE` (a
:class:`._compiled.BackgroundUpgrade`, one key per kernel) starts a daemon thread at the 2nd
tier-0 scatter of a process, or at the first once numba is imported, which imports numba and
loads the five kernels from numba's cache (~0.5-1 s of CPU, part of it holding the GIL); the
calls after it use tier 1. ``WARPSVC_KERNEL_UPGRADE=0`` turns that off (tier 1 only after a
warm-up / :func:`compile_tier1`). Tier 0 is single-threaded: 600x600 -> 230x230 shrink of a
point field ~12 ms (tier 1 ~1.5 ms), of a photograph 65-90 ms (3-6 ms).

The matrix scatter works on runs of a node row in two passes: a branch-free one that LLVM
vectorises (positions, half-widths, footprint shares and 2x2 weights of every node), then the
deposits in node order; runs whose source values are all zero, and node rows whose image misses
a strip's rows, are skipped before either. For matrix transforms the block layout itself is one
compiled pass (:func:`._splat_kernels.matrix_layout`, the arithmetic of the transform's own
``map`` / ``jacobian``); other transforms sample theirs in numpy.

Planning comes first (:func:`plan`): the block layout gives the node count and the working
memory before anything large is allocated, so :mod:`.budget` can refuse a call. The scatter
then runs in row *bands* of about :data:`NODES_PER_BAND` nodes (the work histogram over output
rows comes from each block's image), calling ``poll()`` between bands so a caller's deadline
or cancellation stops the work; each band is split into as many strips as there are threads,
balanced by the same histogram (tier 0: one strip per band, the same bands and polls).

Generic path: the nodes whose bilinear reads are all zero are dropped before the transform
maps them (:func:`_nonzero_reads`; they deposit nothing): a sparse source costs the map and
Jacobian of its few live nodes only (same bits). A window whose reads are at least
:data:`DENSE_READS` non-zero keeps every node (the filter's gathers cost more there than
mapping its few zero nodes: ~40 ms of a 2M-node first call).

Memory. The float64 source (with its coverage channel, its border extension over the output's
preimage for non-constant borders and polar seams: up to 3x3 source sizes) is never
materialised whole: :class:`SourceRows` builds one *window* of block rows at a time, at most
:data:`WINDOW_BYTES` (at least one block row), gathered from the caller's image through the
border rule's row and column indices; the tent-sum normaliser is computed per window from the
block rows that reach it. Windows are scattered in block order and every output pixel
receives the same deposits in the same order, so the result is bit-identical to one window.
The working memory is then the accumulator (output size) plus one window.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

from . import _splat_numpy as k  # tier 0 (numpy) and the shared constants PAD, BLOCK, GUARD
from . import _splat_numpy_tiers as tier_policy
from ._splat_numpy_tiers import (KERNELS, UPGRADE, _tier1, _use_tier1, compile_tier1,  # noqa: F401
                                 scatter_tier, warming_up)
from ._generic_nodes import _Buffers, _map_and_row_norms, _nonzero_reads  # noqa: F401 (tests use them here)
from ._strip_work import _row_work, _split_rows, _strip_rows
from .threads import kernel_threads

OVERSAMPLING = 1.5  # m = ceil(1.5 s): 1 node per pixel for shrinks >= 1.5x; moire < 0.3 % when rotating
MAX_NODES_PER_PIXEL_AXIS = 64
# One node factor for every block when it costs at most this many times the per-block factors'
# nodes (:func:`_uniform_if_affordable`: mixed factors misplace flux along block edges).
UNIFORM_NODE_RATIO = 4.0
CHUNK_NODES = 1 << 18  # nodes x chain steps per generic-path chunk (memory: ~GENERIC_BYTES_PER_NODE each)
TIER0_CHUNK_NODES = 1 << 16  # the same on tier 0 (numpy): its chunk arrays are fresh pages once
# per call, so smaller chunks fault less (dense 600x600 polar first call, 2M nodes: 11.7k -> 4.7k
# page faults, ~25 ms); tier 1 keeps the larger chunks (kernel_threads gives one thread per 2^16)
MIN_CHUNK_NODES = 1 << 12
WINDOW_BYTES = 1 << 23  # padded float64 source window (block rows scattered together)
NODES_PER_BAND = 1 << 21  # nodes between two poll() calls (~50 ms on one core)
MATRIX_MARGIN = 4.0  # output px: a node's footprint reaches < 2.5 px beyond the block's exact image box
GENERIC_BYTES_PER_NODE = 320  # node list, positions, Jacobians and the transform's temporaries
DENSE_READS = 0.9  # share of non-zero reads above which no node is dropped before the map
WORK_SAMPLE = 8  # every 8th node's output row estimates the generic scatter's work per row
LAYOUT_WORK_PER_BLOCK = 64  # kernel_threads() work units per block of the compiled layout (~0.1 us each)


class _Tiers:
    """Which kernels one scatter ran in tier 0 (reported to :data:`UPGRADE` at its end)."""

    def __init__(self):
        self.tier0: list[str] = []

    def pick(self, *names: str):
        """``(kernels module, threads(work))`` for a step needing kernels ``names``."""
        if _use_tier1(*names):
            return _tier1(), kernel_threads
        self.tier0.extend(n for n in names if n not in self.tier0)
        return k, _one_thread

    def report(self) -> None:
        if self.tier0:
            tier_policy.UPGRADE.tier0_used(*self.tier0, *(n for n in KERNELS if n not in self.tier0))


def _one_thread(work=None) -> int:
    return 1


def _block_grid(h: int, w: int):
    """Block origins: pixels ``-1 .. h-1`` (the tent of pixel 0 reaches back to -1)."""
    return np.arange(-1, h, k.BLOCK), np.arange(-1, w, k.BLOCK)


@functools.lru_cache(maxsize=32)
def _block_origins_and_pixels(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """``(nb, 2)`` int64 ``(row, column)`` origins of the blocks of an ``h x w`` source
    (row-major) and each block's pixel count; read-only, cached per shape (~40 us of numpy calls
    that every antialiased call of that source size repeated)."""
    by, bx = _block_grid(h, w)
    origins = np.empty((len(by) * len(bx), 2), np.int64)
    origins[:, 0] = np.repeat(by, len(bx))
    origins[:, 1] = np.tile(bx, len(by))
    pixels = (np.minimum(origins[:, 0] + k.BLOCK, h) - origins[:, 0]) * (np.minimum(origins[:, 1] + k.BLOCK, w)
                                                                         - origins[:, 1])
    origins.setflags(write=False)
    pixels.setflags(write=False)
    return origins, pixels


def _block_origins_xy(by, bx) -> np.ndarray:
    """``(nb, 2)`` float ``(x, y)`` origins of the blocks (row-major blocks)."""
    gx, gy = np.meshgrid(bx.astype(float), by.astype(float))
    return np.stack([gx.ravel(), gy.ravel()], 1)


def _block_samples(by, bx, n: int):
    """``(nb * n * n, 2)`` points on an ``n x n`` grid over each block (row-major blocks)."""
    t = np.linspace(0.0, k.BLOCK, n)
    offs = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    return (_block_origins_xy(by, bx)[:, None, :] + offs[None]).reshape(-1, 2), len(offs)


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


def _map_and_jacobian(dst_from_src, pts, poll=None):
    """``(jacobian (N, 2, 2), map (N, 2))`` at ``pts``, in runs of ``GRID_WORK / steps`` points
    with ``poll()`` between two (pointwise: the same values as one call)."""
    from .budget import transform_steps
    from .grids import GRID_WORK

    run = max(1024, GRID_WORK // transform_steps(dst_from_src))
    jac, y = np.empty((len(pts), 2, 2)), np.empty((len(pts), 2))
    for a in range(0, len(pts), run):
        if a:
            _poll(poll)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            jac[a:a + run] = dst_from_src.jacobian(pts[a:a + run])
            y[a:a + run] = dst_from_src.map(pts[a:a + run])
    return jac, y


def _sampled_layout(dst_from_src, by, bx, poll=None):
    """``(stretch, lo, hi, finite)`` of :func:`block_layout` from the transform's own ``map`` and
    ``jacobian`` on a 3x3 grid of points per block (any transform)."""
    pts, per = _block_samples(by, bx, 3)
    jac, y = _map_and_jacobian(dst_from_src, pts, poll)
    jac = np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
    stretch = _largest_singular_value(jac).reshape(-1, per).max(axis=1)
    y = y.reshape(-1, per, 2)
    finite = np.isfinite(y).all(axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: blocks beyond a horizon
        lo = np.nanmin(np.where(finite[..., None], y, np.nan), axis=1)
        hi = np.nanmax(np.where(finite[..., None], y, np.nan), axis=1)
    return stretch, lo, hi, finite.all(axis=1)


def _exact_boxes(dst_from_src, by, bx):
    """``(lo, hi)`` of each block's image from the transform's ``image_boxes`` (exact bounds of
    the images of the closed squares ``[origin, origin + BLOCK]``, which hold every node of a
    block), or None when it has none (or declines): then the sampled boxes and their margin."""
    boxes = getattr(dst_from_src, "image_boxes", None)
    if boxes is None:
        return None
    origins = _block_origins_xy(by, bx)
    return boxes(origins, origins + k.BLOCK)


def block_layout(dst_from_src, h: int, w: int, poll=None) -> dict:
    """Blocks of source pixels: origins, node factor ``m``, node count and the bounding box of
    each block's image (sampled on a 3x3 grid; ``finite`` is False where a horizon crosses the
    block, ``dead`` True where the whole block lies beyond it).

    For matrix transforms the box is exact (a block with ``w > 0`` at its four corners maps to
    the convex quadrilateral of their images), so the search margin is a few pixels, as for
    transforms that bound their blocks' images exactly themselves (``image_boxes``: the forward
    polar warp); other transforms keep a margin of two block images around the sampled box."""
    by, bx = _block_grid(h, w)
    if dst_from_src.is_matrix():
        nb = len(by) * len(bx)
        stretch, lo, hi = np.empty(nb), np.empty((nb, 2)), np.empty((nb, 2))
        finite, dead = np.empty(nb, dtype=bool), np.empty(nb, dtype=bool)
        mat = np.array(dst_from_src.matrix, dtype=np.float64)  # a writable copy: one numba signature
        kern, threads = _Tiers().pick("matrix_layout")
        threads(nb * LAYOUT_WORK_PER_BLOCK)
        kern.matrix_layout(mat, source_side_matrix(dst_from_src, h, w), by, bx, 3, stretch, lo, hi, finite, dead)
        margin = np.full(nb, MATRIX_MARGIN)
    else:
        stretch, lo, hi, finite = _sampled_layout(dst_from_src, by, bx, poll)
        dead = np.zeros(len(stretch), dtype=bool)
        margin = 2.0 * k.BLOCK * np.maximum(stretch, 1.0)
        exact = _exact_boxes(dst_from_src, by, bx)
        if exact is not None:  # the transform bounds its blocks' images itself: the matrices' margin
            (lo, hi), margin = exact, np.full(len(stretch), MATRIX_MARGIN)
    m = np.clip(np.ceil(OVERSAMPLING * stretch), 1, MAX_NODES_PER_PIXEL_AXIS).astype(np.int64)
    origins, pixels = _block_origins_and_pixels(h, w)
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


def plan(dst_from_src, src_shape, out_shape, channels: int, with_coverage: bool = True, poll=None) -> ScatterPlan:
    """Plan the scatter of a ``src_shape`` source with ``channels`` channels onto ``out_shape``.

    ``working_bytes``: one source window (:func:`window_rows`) and its tent sums, the
    accumulator, and the generic path's node chunks or the matrix path's tier-0 chunk."""
    h, w = src_shape
    ho, wo = out_shape
    layout = block_layout(dst_from_src, h, w, poll)
    visible = blocks_visible(layout, (0, ho), (0, wo))
    m = np.where(visible, layout["m"], 1)
    block_nodes = np.where(visible, layout["pixels"] * m * m, 0)
    if visible.any():
        m, block_nodes = _uniform_if_affordable(m, visible, layout["pixels"], block_nodes)
    blocks = np.column_stack([layout["origins"], m])
    nodes = int(block_nodes.sum())
    mixed = bool(m.size > 1 and np.any(m != m.flat[0]))
    nch = channels + 1 if with_coverage else channels
    window = (min(h, window_rows(w, nch)) + 2 * k.PAD) * (w + 2 * k.PAD)
    g = k.GUARD
    working = 8 * window * nch + (9 * window if mixed else 0) + 8 * (ho + 2 * g) * (wo + 2 * g) * nch
    if not dst_from_src.is_matrix():
        working += GENERIC_BYTES_PER_NODE * min(nodes, 2 * CHUNK_NODES)
    else:
        working += k.chunk_bytes(nodes, nch)  # tier 0's chunk (the same budget whichever tier runs)
    return ScatterPlan(layout, blocks, visible, block_nodes, nodes, mixed, int(working))


def _uniform_if_affordable(m, visible, pixels, block_nodes):
    """Every visible block at the largest visible ``m`` when that costs at most
    :data:`UNIFORM_NODE_RATIO` times the per-block nodes; else the per-block ``m`` as given.

    Where neighbouring blocks use different ``m`` their node lattices meet unevenly: the tent
    sums ``S_j`` restore each source pixel's *total* mass, but not where in the pixel it lies, so
    the deposits are misplaced by up to a node spacing along the block edges. Measured (a new
    user's audit, against the exact preimage areas): the README's tilt homography of a ones image,
    plain, read 0.923 instead of 1 along a block edge (conserve: worst pixel 8.8 %, 7x7 window
    0.88 %); a stronger perspective 14.6 % / 1.6 %. With one ``m`` the lattice is regular and both
    read 1 exactly, for 2.5x / 2.2x the nodes. Shrinks of 1.5x and more have ``m = 1`` everywhere
    and are unchanged."""
    top = int(m[visible].max())
    uniform_nodes = np.where(visible, pixels * top * top, 0)
    if int(uniform_nodes.sum()) > UNIFORM_NODE_RATIO * int(block_nodes.sum()):
        return m, block_nodes
    return np.where(visible, top, 1), uniform_nodes


def window_rows(w: int, channels: int) -> int:
    """Source rows per window: a multiple of the block height within :data:`WINDOW_BYTES`
    (padded float64 rows of ``channels`` values), at least one block row."""
    row_bytes = 8 * (w + 2 * k.PAD) * channels
    return max(1, WINDOW_BYTES // (row_bytes * k.BLOCK)) * k.BLOCK


class SourceRows:
    """The scatter's source: ``image (H, W, C)`` (or its border extension: source rows ``rows``
    x columns ``cols`` of the image, ``-1`` meaning ``fill``), as padded float64 windows of rows
    with, given ``with_coverage``, a last channel of ones over the (extended) source."""

    def __init__(self, image: np.ndarray, with_coverage: bool, rows=None, cols=None, fill: float = 0.0):
        self.image, self.rows, self.cols, self.fill = image, rows, cols, fill
        self.with_coverage = with_coverage
        self.h, self.w = image.shape[:2] if rows is None else (len(rows), len(cols))
        self.channels = image.shape[2] + (1 if with_coverage else 0)

    def window(self, y_lo: int, y_hi: int) -> np.ndarray:
        """``(y_hi - y_lo + 2P, w + 2P, C') float64``: array row ``i`` is source row
        ``y_lo - P + i`` (zero outside ``[0, h)``), ``P`` zero columns either side."""
        pad, c = k.PAD, self.image.shape[2]
        a, b = max(0, y_lo - pad), min(self.h, y_hi + pad)
        if b <= a:
            return np.zeros((y_hi - y_lo + 2 * pad, self.w + 2 * pad, self.channels), dtype=np.float64)
        # Only the frame around the rows read is zeroed (the inside is written once, not twice).
        src = np.empty((y_hi - y_lo + 2 * pad, self.w + 2 * pad, self.channels), dtype=np.float64)
        i0, i1 = a - (y_lo - pad), b - (y_lo - pad)
        src[:i0] = 0.0
        src[i1:] = 0.0
        src[i0:i1, :pad] = 0.0
        src[i0:i1, pad + self.w:] = 0.0
        inner = src[i0:i1, pad:pad + self.w]
        if self.rows is None:
            inner[:, :, :c] = self.image[a:b]
        else:
            rows = self.rows[a:b]
            inner[:, :, :c] = self.image[np.ix_(np.maximum(rows, 0), np.maximum(self.cols, 0))]
            inner[rows < 0, :, :c] = self.fill
            inner[:, self.cols < 0, :c] = self.fill
        if self.with_coverage:
            inner[:, :, c] = 1.0
        return src


def padded_source(image: np.ndarray, with_coverage: bool, rows=None, cols=None, fill: float = 0.0) -> np.ndarray:
    """``(h + 2P, w + 2P, C [+1]) float64``: the whole source of :class:`SourceRows` in one window
    (``P`` zero rows/columns around it)."""
    source = SourceRows(image, with_coverage, rows, cols, fill)
    return source.window(0, source.h)


def _windows(source, p: ScatterPlan):
    """``(block rows [q0, q1), source rows [y_lo, y_hi))`` in block order: one window for a
    padded array (the whole source), windows of :func:`window_rows` rows for a :class:`SourceRows`."""
    per_row = p.layout["blocks_per_row"]
    n_rows = len(p.blocks) // per_row
    if isinstance(source, np.ndarray):
        return [(0, n_rows, 0, source.shape[0] - 2 * k.PAD)]
    origins = p.blocks[::per_row, 0]
    most = max(1, window_rows(source.w, source.channels) // k.BLOCK)
    step = -(-n_rows // -(-n_rows // most))  # as many block rows in each window as the bound allows, balanced
    return [(q0, min(n_rows, q0 + step), int(origins[q0]),
             int(origins[q0 + step]) if q0 + step < n_rows else source.h) for q0 in range(0, n_rows, step)]


def _normalise_tent_sums(src, p: ScatterPlan, h: int, w: int, window, poll, tiers=None) -> None:
    """Divide the window ``src`` (block rows ``[q0, q1)``, source rows ``[y_lo, y_hi)``) by the
    lattice's tent sums (only needed where blocks of different ``m`` meet). Its nodes read rows
    ``y_lo .. y_hi``, whose sums come from pixel rows ``y_lo - 1 .. y_hi`` of block rows
    ``q0 - 1 .. q1``: those, in two parity phases of block rows (the order of a single window),
    polling between groups of rows."""
    q0, q1, y_lo, y_hi = window
    sums = np.zeros(src.shape[:2])
    per_row = p.layout["blocks_per_row"]
    n_rows = len(p.blocks) // per_row
    row_ptr = np.arange(0, len(p.blocks) + 1, per_row, dtype=np.int64)
    row_nodes = (p.layout["pixels"] * p.blocks[:, 2] ** 2).reshape(n_rows, per_row).sum(axis=1)
    lo, hi = max(0, q0 - 1), min(n_rows, q1 + 1)
    kern, threads = (tiers or _Tiers()).pick("tent_sums")
    for parity in (0, 1):
        todo = np.arange(lo + (lo + parity) % 2, hi, 2, dtype=np.int64)
        for group in _groups(todo, row_nodes[todo], NODES_PER_BAND):
            threads(int(row_nodes[group].sum()))
            kern.tent_sums(p.blocks, row_ptr, group, h, w, sums, y_lo - 1, y_hi + 1, y_lo)
            _poll(poll)
    np.divide(src, sums[:, :, None], out=src, where=(sums > 0)[:, :, None])


def _groups(items: np.ndarray, cost: np.ndarray, budget: float):
    """Consecutive runs of ``items`` whose summed ``cost`` stays near ``budget`` (>= 1 item each)."""
    cum = np.cumsum(cost)
    if len(items) == 0:
        return []
    cuts = np.searchsorted(cum, np.arange(budget, cum[-1], budget), side="right")
    cuts = k.unique_sorted(np.clip(cuts, 1, len(items) - 1)) if len(items) > 1 else np.array([], int)
    return np.split(items, cuts)


def _poll(poll) -> None:
    if poll is not None:
        poll()


def _bands(work: np.ndarray):
    """Row bands of about ``NODES_PER_BAND`` nodes (one kernel launch, then a poll, each)."""
    ho = len(work)
    cum = np.cumsum(work)
    cuts = np.searchsorted(cum, np.arange(NODES_PER_BAND, cum[-1], NODES_PER_BAND), side="right")
    edges = k.unique_sorted(np.concatenate([[0], np.clip(cuts, 1, ho - 1), [ho]])) if ho > 1 else np.array([0, ho])
    return list(zip(edges[:-1], edges[1:]))


def scatter(src, p: ScatterPlan, dst_from_src, out_shape, *, row_period=None, poll=None):
    """Scatter the source through ``dst_from_src``: a padded array (:func:`padded_source`) or a
    :class:`SourceRows` (scattered one window of rows at a time).

    Returns the accumulated ``(Ho, Wo, C')`` float64 view (``C'`` the channels of the source): the
    integral of the source model over each output pixel's preimage (the coverage channel last,
    if any). ``row_period`` (a polar output's angle axis) folds deposits that fall beyond the
    first or last row back onto the other end. ``poll()`` is called between bands.
    """
    if isinstance(src, np.ndarray):
        h, w, nch = src.shape[0] - 2 * k.PAD, src.shape[1] - 2 * k.PAD, src.shape[2]
    else:
        h, w, nch = src.h, src.w, src.channels
    ho, wo = out_shape
    g = k.GUARD
    per_row = p.layout["blocks_per_row"]
    acc = np.zeros((ho + 2 * g, wo + 2 * g, nch))
    mat = source_side_matrix(dst_from_src, h, w) if dst_from_src.is_matrix() else None
    image = _readable_as_is(src, p) if mat is not None else None
    windows = [(0, len(p.blocks) // per_row, 0, h)] if image is not None else _windows(src, p)
    window = None
    tiers = _Tiers()
    for q0, q1, y_lo, y_hi in windows:
        blocks = slice(q0 * per_row, q1 * per_row)
        if not p.block_nodes[blocks].any():
            continue  # no node of these rows reaches the output
        if image is not None:
            _scatter_matrix(image, 0, p, blocks, mat, h, w, acc, poll, pad=0, tiers=tiers)
            continue
        window = None  # the previous one is freed before the next is built
        window = src if isinstance(src, np.ndarray) else src.window(y_lo, y_hi)
        if p.mixed:
            _normalise_tent_sums(window, p, h, w, (q0, q1, y_lo, y_hi), poll, tiers)
        if mat is not None:
            _scatter_matrix(window, y_lo, p, blocks, mat, h, w, acc, poll, tiers=tiers)
        else:
            _scatter_generic(window, y_lo, p, blocks, h, w, dst_from_src, acc, poll, tiers)
    tiers.report()
    if row_period is not None and row_period == ho:
        acc[ho:ho + g] += acc[:g]  # rows -g..-1 are rows ho-g..ho-1
        acc[g:2 * g] += acc[ho + g:]  # rows ho..ho+g-1 are rows 0..g-1
    return acc[g:-g, g:-g]


def _readable_as_is(src, p: ScatterPlan):
    """The caller's image, if the matrix kernel can read it directly instead of a padded
    float64 window (it reads 0 outside the array): a :class:`SourceRows` without border
    extension or coverage channel, a uniform lattice (no tent sums to divide by), float64,
    C-contiguous, writeable (numba types read-only arrays apart: a new compilation) and in
    native byte order. Saves the window's copy and, in a process that has just freed its
    memory, the page faults of a fresh 8 bytes x source allocation (~1.3 ms at 600x600)."""
    if not isinstance(src, SourceRows) or src.rows is not None or src.with_coverage or p.mixed:
        return None
    img = src.image
    ok = (img.dtype == np.float64 and img.dtype.isnative and img.flags.c_contiguous and img.flags.writeable)
    return img if ok else None


def _scatter_matrix(src, row0, p: ScatterPlan, blocks: slice, mat, h, w, acc, poll, pad=k.PAD, tiers=None):
    ho = acc.shape[0] - 2 * k.GUARD
    kern, kernel_threads = (tiers or _Tiers()).pick("scatter_matrix")
    lay = p.layout
    work = _row_work(p, ho, blocks)
    live = blocks.start + np.nonzero(p.block_nodes[blocks] > 0)[0]
    with np.errstate(invalid="ignore"):
        top, bottom = lay["lo"][live, 1] - lay["margin"][live], lay["hi"][live, 1] + lay["margin"][live]
    anywhere = ~lay["finite"][live]
    for b0, b1 in _bands(work):
        threads = kernel_threads(int(work[b0:b1].sum()))
        edges = _split_rows(work, b0, b1, threads)
        lists = [live[anywhere | ((bottom >= r0) & (top <= r1))] for r0, r1 in zip(edges[:-1], edges[1:])]
        ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        kern.scatter_matrix(src, p.blocks, _strip_rows(edges, ho), ptr, np.concatenate(lists).astype(np.int64),
                            h, w, mat, acc, row0, pad)
        _poll(poll)


def _pieces(p: ScatterPlan, blocks: slice, h: int, w: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Live ``blocks`` as ``(y0, x0, m, y_end)`` pieces of at most ``chunk`` nodes each (a
    block with a large ``m`` is cut into runs of pixel rows; node order is unchanged)."""
    live = blocks.start + np.nonzero(p.block_nodes[blocks] > 0)[0]
    blocks = p.blocks[live]
    y0, x0, m = blocks[:, 0], blocks[:, 1], blocks[:, 2]
    rows = np.minimum(y0 + k.BLOCK, h) - y0
    per_row = (np.minimum(x0 + k.BLOCK, w) - x0) * m * m
    step = np.maximum(1, chunk // per_row)
    n_pieces = -(-rows // step)
    idx = np.repeat(np.arange(len(live)), n_pieces)
    k_in = np.arange(len(idx)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    start = y0[idx] + k_in * step[idx]
    end = np.minimum(start + step[idx], y0[idx] + rows[idx])
    pieces = np.column_stack([start, x0[idx], m[idx], end]).astype(np.int64)
    return pieces, (end - start) * per_row[idx]


def _scatter_generic(src, row0, p: ScatterPlan, blocks: slice, h, w, dst_from_src, acc, poll, tiers=None):
    """Nodes listed in chunks, mapped by the transform in numpy, deposited by the kernel; a
    chunk holds ``CHUNK_NODES / steps`` nodes (``TIER0_CHUNK_NODES / steps`` on tier 0) of a
    chain of ``steps`` (so each costs about the same whatever the chain length), in node order
    (the deposits' order is unchanged)."""
    from .budget import transform_steps

    ho = acc.shape[0] - 2 * k.GUARD
    kern, kernel_threads = (tiers or _Tiers()).pick("list_nodes", "scatter_points")
    per_chunk = TIER0_CHUNK_NODES if kern is k else CHUNK_NODES
    chunk_nodes = max(MIN_CHUNK_NODES, per_chunk // transform_steps(dst_from_src))
    pieces, counts = _pieces(p, blocks, h, w, chunk_nodes)
    reads = None
    buffers = _Buffers()  # the chunks' arrays, reused: fresh ones cost page faults every chunk
    for chunk in _groups(np.arange(len(pieces)), counts, chunk_nodes):
        first = np.concatenate([[0], np.cumsum(counts[chunk])[:-1]]).astype(np.int64)
        total = int(counts[chunk].sum())
        xy = buffers.get("xy", total, 2)
        node_m = buffers.get("m", total, dtype=np.int64)
        kernel_threads(total)
        kern.list_nodes(np.ascontiguousarray(pieces[chunk]), first, h, w, xy, node_m)
        if reads is None:
            reads = _nonzero_reads(src)
            if reads is not True and reads.mean() >= DENSE_READS:
                reads = True  # dense: filtering would cost more than mapping the few zero nodes
        if reads is not True:  # drop the nodes whose value is 0 before the transform maps them
            r = np.floor(xy[:, 1]).astype(np.int64) + (k.PAD - row0)
            live = reads[r, np.floor(xy[:, 0]).astype(np.int64) + k.PAD]
            xy, node_m = xy[live], node_m[live]
            total = len(xy)
            if total == 0:
                _poll(poll)
                continue
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            pos, rows = _map_and_row_norms(dst_from_src, xy, (buffers.get("pos", total, 2), buffers.get("rows", total, 2)))
        threads = kernel_threads(total)
        # nodes per output row, from every WORK_SAMPLE-th node: only balances the strips (each
        # strip deposits its own rows in node order whatever the split)
        work = np.bincount(np.clip(np.nan_to_num(pos[::WORK_SAMPLE, 1], nan=-1.0), 0, ho - 1).astype(np.int64),
                           minlength=ho) + 1.0
        edges = _split_rows(work, 0, ho, threads)
        kern.scatter_points(src, xy, node_m, pos, rows, _strip_rows(edges, ho), acc, row0)
        _poll(poll)
