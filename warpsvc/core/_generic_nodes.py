"""Node helpers of the antialias scatter's generic path (:func:`.antialias._scatter_generic`):
which nodes can be dropped before the transform maps them, the transform's map and Jacobian row
norms of a chunk of nodes (in parallel, in small runs), and the arrays reused across chunks.
See :mod:`.antialias` for the scatter itself."""

from __future__ import annotations

import numpy as np

from .strips import run_strips

MAP_RUN = 1 << 14  # nodes per call of the transform's map (temporaries ~128 KB each, not fresh pages)


def _nonzero_reads(src):
    """``True`` if every value of the padded window ``src`` is non-zero, else a ``(rows, cols)``
    mask: whether any of the pixels ``(r .. r + 1, c .. c + 1)`` (any channel) is non-zero or
    NaN. A node whose bilinear reads start at ``(r, c)`` (the window row and column of its
    ``floor``) and lie where the mask is False has the value 0 exactly: it deposits nothing, so
    it need not be mapped (sparse sources, point fields: most nodes)."""
    nz = (src != 0.0).any(axis=2)
    if nz.all():
        return True
    rows = nz.copy()
    rows[:-1] |= nz[1:]
    out = rows.copy()
    out[:, :-1] |= rows[:, 1:]
    return out


class _Buffers:
    """Arrays reused from chunk to chunk of one scatter (grown when a chunk needs more rows).

    A fresh multi-megabyte array per chunk comes back from the allocator as untouched pages
    (glibc returns freed memory at the top of the heap, or unmaps it), so every chunk paid
    for its pages again: ~17 000 page faults and ~60 ms of system time per dense polar
    antialiased warp (600x600, 2M nodes)."""

    def __init__(self):
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, width: int | None = None, dtype=np.float64) -> np.ndarray:
        a = self._arrays.get(name)
        if a is None or a.shape[0] < n:
            a = self._arrays[name] = np.empty((n,) if width is None else (n, width), dtype)
        return a[:n]


def _map_and_row_norms(t, xy, out=None):
    """``(t.map(xy), n)``, C-contiguous ``(n, 2)``, with ``n[:, i]`` the norm of row ``i`` of
    ``t``'s Jacobian at each node: a transform's own ``map_and_row_norms`` when it has one
    (polar: closed form, no ``(n, 2, 2)`` Jacobian), else from ``map`` and ``jacobian``.

    In parallel over runs of nodes (:func:`.strips.run_strips`; numpy releases the GIL inside
    each call): maps are pointwise, so a node's values do not depend on the run it is in (the
    chunks of :func:`_scatter_generic` rely on the same), and the result is the same for any
    thread count (``tests/test_antialias_tiers.py``). ``out``: ``(pos, rows)`` to write into."""
    n = len(xy)
    pos, rows = (np.empty((n, 2)), np.empty((n, 2))) if out is None else out

    def run(a, b):
        for c in range(a, b, MAP_RUN):  # small runs: the transform's temporaries reuse freed memory
            d = min(b, c + MAP_RUN)
            pos[c:d], rows[c:d] = _map_and_row_norms_serial(t, xy[c:d])

    run_strips(run, n, n)
    return pos, rows


def _map_and_row_norms_serial(t, xy):
    """:func:`_map_and_row_norms` on the calling thread."""
    fused = getattr(t, "map_and_row_norms", None)
    if fused is not None:
        return fused(xy)
    pos = t.map(xy)
    jac = t.jacobian(xy)
    rows = np.empty((len(jac), 2))
    np.hypot(jac[:, 0, 0], jac[:, 0, 1], out=rows[:, 0])
    np.hypot(jac[:, 1, 0], jac[:, 1, 1], out=rows[:, 1])
    return pos, rows
