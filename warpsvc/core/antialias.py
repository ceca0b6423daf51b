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
The loops are compiled (:mod:`._splat_kernels`).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _splat_kernels as k
from .transforms import AffineTransform, Transform, compose

OVERSAMPLING = 1.5  # m = ceil(1.5 s): 1 node per pixel for shrinks >= 1.5x; moire < 0.3 % when rotating
MAX_NODES_PER_PIXEL_AXIS = 64
CHUNK_NODES = 1 << 21  # nodes per generic-path chunk (bounds memory)
STRIP_ELEMENTS = 1 << 24  # accumulator elements per output strip (128 MiB of float64)


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


def block_layout(dst_from_src: Transform, h: int, w: int) -> dict:
    """Blocks of source pixels: origins, node factor ``m`` and the bounding box of each block's
    image (sampled on a 3x3 grid; ``finite`` is False where a horizon crosses the block)."""
    by, bx = _block_grid(h, w)
    pts, per = _block_samples(by, bx, 3)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        jac = dst_from_src.jacobian(pts)
        y = dst_from_src.map(pts)
    jac = np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)
    stretch = np.linalg.svd(jac, compute_uv=False)[:, 0].reshape(-1, per).max(axis=1)
    m = np.clip(np.ceil(OVERSAMPLING * stretch), 1, MAX_NODES_PER_PIXEL_AXIS).astype(np.int64)
    y = y.reshape(-1, per, 2)
    finite = np.isfinite(y).all(axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: blocks beyond a horizon
        lo = np.nanmin(np.where(finite[..., None], y, np.nan), axis=1)
        hi = np.nanmax(np.where(finite[..., None], y, np.nan), axis=1)
    gx, gy = np.meshgrid(bx, by)
    return {"origins": np.stack([gy.ravel(), gx.ravel()], 1).astype(np.int64), "m": m, "lo": lo, "hi": hi,
            "finite": finite.all(axis=1), "margin": 2.0 * k.BLOCK * np.maximum(stretch, 1.0)}


def blocks_visible(layout: dict, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Blocks whose image can touch output rows ``[r0, r1)`` x columns ``[c0, c1)``."""
    lo, hi, margin = layout["lo"], layout["hi"], layout["margin"]
    with np.errstate(invalid="ignore"):
        far = ((hi[:, 0] < cols[0] - margin) | (lo[:, 0] > cols[1] + margin)
               | (hi[:, 1] < rows[0] - margin) | (lo[:, 1] > rows[1] + margin))
    return ~far | ~layout["finite"]  # a horizon crosses the block: keep it


def scatter(image: np.ndarray, dst_from_src: Transform, out_shape, *, with_coverage: bool = True, row_period=None):
    """Scatter ``image (H, W, C)`` through ``dst_from_src`` onto ``out_shape``.

    Returns ``flux (Ho, Wo, C) float64`` (the integral of the source model over each output
    pixel's preimage) and ``coverage (Ho, Wo) float64`` (the same for an all-ones image; ``None``
    unless ``with_coverage``). ``row_period`` (a polar output's angle axis) folds deposits that
    fall beyond the first or last row back onto the other end. Large outputs are accumulated
    in row strips (each reading the blocks whose image can reach it) to bound memory.
    """
    h, w, c = image.shape
    ho, wo = out_shape
    pad = k.PAD
    nch = c + 1 if with_coverage else c
    src = np.zeros((h + 2 * pad, w + 2 * pad, nch), dtype=np.float64)
    src[pad:pad + h, pad:pad + w, :c] = image
    if with_coverage:
        src[pad:pad + h, pad:pad + w, c] = 1.0
    layout = block_layout(dst_from_src, h, w)
    visible = blocks_visible(layout, (0, ho), (0, wo))
    blocks = np.column_stack([layout["origins"], np.where(visible, layout["m"], 1)])
    if len(np.unique(blocks[:, 2])) > 1:
        sums = np.zeros(src.shape[:2])
        k.tent_sums(blocks, h, w, sums)
        inside = sums > 0
        src[inside] /= sums[inside][:, None]
    g = k.GUARD
    periodic = row_period is not None and row_period == ho
    strip = ho if periodic else max(64, STRIP_ELEMENTS // ((wo + 2 * g) * nch))
    out = np.empty((ho, wo, nch))
    for r0 in range(0, ho, strip):
        r1 = min(ho, r0 + strip)
        in_strip = visible if (r0, r1) == (0, ho) else visible & blocks_visible(layout, (r0, r1), (0, wo))
        strip_from_src = dst_from_src if r0 == 0 else compose(dst_from_src, AffineTransform([[1, 0, 0], [0, 1, -r0]]))
        acc = np.zeros((r1 - r0 + 2 * g, wo + 2 * g, nch))
        _scatter_blocks(src, np.ascontiguousarray(blocks[in_strip]), h, w, strip_from_src, acc)
        if periodic:
            acc[ho:ho + g] += acc[:g]  # rows -g..-1 are rows ho-g..ho-1
            acc[g:2 * g] += acc[ho + g:]  # rows ho..ho+g-1 are rows 0..g-1
        out[r0:r1] = acc[g:-g, g:-g]
    return out[:, :, :c], (out[:, :, c] if with_coverage else None)


def _scatter_blocks(src, blocks, h, w, dst_from_src, acc):
    if dst_from_src.is_matrix():
        mat = np.array(dst_from_src.matrix, dtype=np.float64)
        centre = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        if mat[2] @ centre < 0:
            mat = -mat  # the source's own side of the horizon has w > 0
        k.scatter_matrix(src, blocks, h, w, mat, acc)
    else:
        _scatter_generic(src, blocks, h, w, dst_from_src, acc)


def _scatter_generic(src, blocks, h, w, dst_from_src, acc):
    """Nodes listed in chunks, mapped by the transform in numpy, deposited by the kernel."""
    nodes_per_block = (k.BLOCK * blocks[:, 2]) ** 2
    start = 0
    while start < len(blocks):
        stop = start + 1
        total = nodes_per_block[start]
        while stop < len(blocks) and total + nodes_per_block[stop] <= CHUNK_NODES:
            total += nodes_per_block[stop]
            stop += 1
        chunk = np.ascontiguousarray(blocks[start:stop])
        xy = np.empty((int(total), 2))
        node_m = np.empty(int(total), dtype=np.int64)
        n = k.list_nodes(chunk, h, w, xy, node_m)
        xy, node_m = xy[:n], node_m[:n]
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            pos = dst_from_src.map(xy)
            jac = dst_from_src.jacobian(xy)
        rows = np.stack([np.hypot(jac[:, 0, 0], jac[:, 0, 1]), np.hypot(jac[:, 1, 0], jac[:, 1, 1])], 1)
        k.scatter_points(src, xy, node_m, np.ascontiguousarray(pos), np.ascontiguousarray(rows), acc)
        start = stop
