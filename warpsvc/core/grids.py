"""A transform's coordinate map and determinant map over a block of output pixels, evaluated in
sub-blocks small enough that the caller's ``poll()`` between two of them stops the work promptly.

Cost model. Evaluating a chain of ``n`` steps (:func:`.budget.transform_steps`, matrices
multiplied out) at ``N`` pixels costs about ``N n`` *pixel-steps*; one sub-block does at most
:data:`GRID_WORK` of them, whatever the chain length and the image size: whole rows while a row
fits (``rows = GRID_WORK // (width n)``), else runs of ``GRID_WORK // n`` pixels (at least one)
of a single row. Measured on the 2-core reference machine, a polar step costs ~25 ns per pixel
for the sampling map and ~90 ns for ``|det J|`` (chain rule: the map *and* the Jacobian of every
step), so a sub-block is ~3 ms and ~12 ms of work.

Every value is a function of its own pixel only (``sampling_map`` / ``jacobian_determinant``
are pointwise), so the result does not depend on the blocking: it is bit-identical to a single
call over the whole block.
"""

from __future__ import annotations

import numpy as np

from .budget import transform_steps

GRID_WORK = 1 << 17  # pixel-steps per sub-block (then a poll)


def _poll(poll) -> None:
    if poll is not None:
        poll()


def sub_blocks(rows: tuple[int, int], cols: tuple[int, int], steps: int):
    """Yield ``(rows, cols)`` half-open sub-blocks of ``rows x cols`` in row-major order, each of at
    most :data:`GRID_WORK` pixel-steps (and at least one pixel)."""
    (r0, r1), (c0, c1) = rows, cols
    w = c1 - c0
    pixels = max(1, GRID_WORK // max(1, steps))
    if pixels >= w:
        step = pixels // max(1, w)
        for a in range(r0, r1, step):
            yield (a, min(r1, a + step)), (c0, c1)
        return
    for a in range(r0, r1):
        for b in range(c0, c1, pixels):
            yield (a, a + 1), (b, min(c1, b + pixels))


def coordinate_grid(src_from_dst, rows, cols, dtype=np.float64, poll=None, steps=None):
    """``src_from_dst.sampling_grid(rows, cols, dtype)`` evaluated in sub-blocks, ``poll()`` after
    each one: two ``(h, w)`` arrays ``(x, y)`` of ``dtype``."""
    steps = transform_steps(src_from_dst) if steps is None else steps
    parts = list(sub_blocks(rows, cols, steps))
    if len(parts) == 1:
        out = src_from_dst.sampling_grid(rows, cols, dtype)
        _poll(poll)
        return out
    shape = (rows[1] - rows[0], cols[1] - cols[0])
    mx, my = np.empty(shape, dtype), np.empty(shape, dtype)
    for (a, b), (c, d) in parts:
        bx, by = src_from_dst.sampling_grid((a, b), (c, d), dtype)
        ra, ca = a - rows[0], c - cols[0]
        mx[ra:ra + b - a, ca:ca + d - c] = bx
        my[ra:ra + b - a, ca:ca + d - c] = by
        _poll(poll)
    return mx, my


def determinant_grid(src_from_dst, rows, cols, poll=None, steps=None) -> np.ndarray:
    """``|det J|`` of ``src_from_dst`` over ``rows x cols`` as ``(h, w) float64``, in sub-blocks.

    A family whose ``determinant_grid`` returns a row broadcast (stride 0 along the rows: a
    polar image's determinant depends on the column only) declares the map row-independent: the
    whole block is then one cheap call, returned as the same (read-only) broadcast view."""
    steps = transform_steps(src_from_dst) if steps is None else steps
    parts = sub_blocks(rows, cols, steps)
    first_rows, first_cols = next(parts)
    first = src_from_dst.determinant_grid(first_rows, first_cols)
    _poll(poll)
    if (first_rows, first_cols) == (tuple(rows), tuple(cols)):
        return first
    if first.shape[0] > 1 and first.strides[0] == 0 and first_cols == tuple(cols):
        return src_from_dst.determinant_grid(rows, cols)
    out = np.empty((rows[1] - rows[0], cols[1] - cols[0]), dtype=np.float64)
    out[first_rows[0] - rows[0]:first_rows[1] - rows[0], first_cols[0] - cols[0]:first_cols[1] - cols[0]] = first
    for (a, b), (c, d) in parts:
        out[a - rows[0]:b - rows[0], c - cols[0]:d - cols[0]] = src_from_dst.determinant_grid((a, b), (c, d))
        _poll(poll)
    return out


def finite_determinant_grid(src_from_dst, rows, cols, poll=None, steps=None) -> np.ndarray:
    """:func:`determinant_grid` with singular points (a polar centre) replaced by the mean over four
    points at +-1/4 px: the pixel average of an integrable singularity (0 if still not finite)."""
    det = determinant_grid(src_from_dst, rows, cols, poll, steps)
    bad = ~np.isfinite(det)
    if bad.any():
        det = np.array(det)
        ys, xs = np.nonzero(bad)
        xs, ys = xs + cols[0], ys + rows[0]
        acc = np.zeros(len(ys))
        for ox in (-0.25, 0.25):
            for oy in (-0.25, 0.25):
                acc += np.abs(src_from_dst.jacobian_determinant(np.column_stack([xs + ox, ys + oy])))
        det[bad] = acc / 4
        det[~np.isfinite(det)] = 0.0
    return det
