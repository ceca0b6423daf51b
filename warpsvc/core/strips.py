"""A small persistent thread pool that runs one function over horizontal strips of rows.

``run_strips(fn, rows, work)`` splits ``[0, rows)`` into ``n`` contiguous strips, runs ``n - 1``
of them on pool threads and one on the calling thread, and returns when all are done (the
first exception raised by a strip is re-raised in the caller). ``n`` is
:func:`.threads.strip_count` ``(work)``: the thread setting (:mod:`.threads`), at most one
strip per ``MIN_WORK_PER_THREAD`` elements and one per row.

The strip functions do their work in numpy and OpenCV calls on whole rows, both of which
release the GIL inside their loops, so the strips really run at once and other Python threads
(a server's handlers, its health service) keep running. Nothing is compiled: the first call
costs the pool's thread start (~0.1 ms per thread), not a JIT.

Fork: a forked child starts a pool of its own at its first strip call (the parent's threads
do not exist in it).

Rules for strip functions: they write only their own rows of the output (so the result does
not depend on the number of strips, i.e. on the thread count) and never call
:func:`run_strips` themselves (a strip waiting for the pool could wait for itself).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .threads import strip_count

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's pool threads: forget the pool (and a lock a
    parent thread may have held), so the child's first strip call starts its own instead of
    waiting forever for threads that do not exist."""
    global _lock, _pool, _pool_size
    _lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _workers(n: int) -> ThreadPoolExecutor:
    """The shared pool with at least ``n`` threads (grown, never shrunk: idle threads sleep)."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="warpsvc-strip")
            _pool_size = n
            if old is not None:
                old.shutdown(wait=False)  # running strips finish; new ones go to the new pool
        return _pool


def strip_edges(rows: int, n: int) -> list[int]:
    """``n + 1`` row boundaries splitting ``[0, rows)`` into ``n`` strips of near-equal height."""
    n = max(1, min(n, rows))
    return [rows * i // n for i in range(n + 1)]


def run_strips(fn, rows: int, work: int | None = None) -> int:
    """``fn(r0, r1)`` for every strip of ``[0, rows)``, in parallel; returns the strip count."""
    if rows <= 0:
        return 0
    n = min(strip_count(work), rows)
    if n == 1:
        fn(0, rows)
        return 1
    edges = strip_edges(rows, n)
    pool = _workers(n - 1)
    futures = [pool.submit(fn, edges[i], edges[i + 1]) for i in range(1, n)]
    error = None
    try:
        fn(edges[0], edges[1])
    except BaseException as exc:  # noqa: BLE001 - wait for the others, then re-raise
        error = exc
    for f in futures:
        try:
            f.result()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        raise error
    return n
