"""How the antialias scatter splits output rows between its parallel strips: an estimate of
the nodes each output row receives (:func:`_row_work`), runs of rows of about equal work
(:func:`_split_rows`) and the accumulator rows each strip owns (:func:`_strip_rows`). The
split only balances the strips: each strip deposits its own rows in node order whatever the
split, so the results do not depend on it."""

from __future__ import annotations

import numpy as np

from . import _splat_numpy as k


def _row_work(p, ho: int, blocks: slice = slice(None)) -> np.ndarray:  # p: antialias.ScatterPlan
    """Estimated nodes per output row of the ``blocks``: each visible block's nodes spread evenly
    over the rows of its image box (plus the footprint reach); blocks a horizon crosses over
    every row."""
    lay = p.layout
    live = np.zeros(len(p.block_nodes), dtype=bool)
    live[blocks] = p.block_nodes[blocks] > 0
    ok = live & lay["finite"]
    r0 = np.clip(np.floor(lay["lo"][ok, 1] - 3), 0, ho).astype(np.int64)
    r1 = np.clip(np.ceil(lay["hi"][ok, 1] + 4), 0, ho).astype(np.int64)
    span = r1 > r0
    r0, r1 = r0[span], r1[span]
    dens = p.block_nodes[ok][span] / (r1 - r0)
    # +dens at each box's first row, -dens past its last (bincount: ~10x faster than add.at;
    # the estimate only balances the strips, and the strips do not change the result)
    diff = np.bincount(r0, dens, ho + 1) - np.bincount(r1, dens, ho + 1)
    work = np.cumsum(diff, dtype=np.float64)[:ho]  # (an empty bincount is int64: every block beyond a horizon)
    work += p.block_nodes[live & ~lay["finite"]].sum() / ho
    return np.maximum(work, 0.0) + 1.0  # +1: every row costs a little (empty rows included)


def _split_rows(work: np.ndarray, r0: int, r1: int, parts: int) -> np.ndarray:
    """Boundaries ``[r0, ..., r1]`` splitting rows ``[r0, r1)`` into up to ``parts`` runs of
    about equal ``work``."""
    if parts <= 1 or r1 - r0 <= 1:
        return np.array([r0, r1])
    cum = np.cumsum(work[r0:r1])
    cuts = r0 + 1 + np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts)
    return k.unique_sorted(np.concatenate([[r0], np.clip(cuts, r0 + 1, r1 - 1), [r1]]))


def _strip_rows(edges: np.ndarray, ho: int) -> np.ndarray:
    """Accumulator rows ``[lo, hi)`` owned by each strip (the guard rings go to the end strips)."""
    g = k.GUARD
    rows = np.column_stack([edges[:-1] + g, edges[1:] + g]).astype(np.int64)
    rows[rows[:, 0] == g, 0] = 0
    rows[rows[:, 1] == ho + g, 1] = ho + 2 * g
    return rows
