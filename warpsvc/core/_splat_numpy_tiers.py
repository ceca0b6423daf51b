"""Which tier of the antialiased scatter runs (see the module docstring of :mod:`.antialias`):
tier 1's loading (:data:`UPGRADE`, the warm-up's :func:`compile_tier1`, :func:`warming_up`) and
the choice for one step (:func:`_use_tier1`). Imports numba only when tier 1 is loaded."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading

import numpy as np

from . import _splat_numpy as k
from ._compiled import BackgroundUpgrade

KERNELS = ("matrix_layout", "scatter_matrix", "tent_sums", "list_nodes", "scatter_points")
_TIER1_MODULE = "warpsvc.core._splat_kernels"
_LOADING = threading.Lock()  # held while tier 1 is being imported / loaded (upgrade thread or warm-up)
_log = logging.getLogger(__name__)


def _tier1():
    from . import _splat_kernels  # imports numba

    return _splat_kernels


def _tier1_examples(name: str) -> tuple:
    """Small arguments of exactly the types the scatter passes to kernel ``name`` (C-contiguous
    writable float64 / int64 / bool arrays, Python ints)."""
    i8 = np.int64
    mat = np.array([[0.5, 0.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 1.0]])
    blocks = np.array([[-1, -1, 1]], dtype=i8)
    strips = np.array([[0, 4 + 2 * k.GUARD]], dtype=i8)
    acc = np.zeros((4 + 2 * k.GUARD, 4 + 2 * k.GUARD, 2))
    src = np.ones((2 + 2 * k.PAD, 3 + 2 * k.PAD, 2))
    if name == "matrix_layout":
        return (mat, mat.copy(), np.arange(-1, 3, k.BLOCK), np.arange(-1, 3, k.BLOCK), 3, np.empty(1),
                np.empty((1, 2)), np.empty((1, 2)), np.empty(1, dtype=bool), np.empty(1, dtype=bool))
    if name == "scatter_matrix":
        return (src, blocks, strips, np.array([0, 1], dtype=i8), np.array([0], dtype=i8), 2, 3, mat, acc, 0, k.PAD)
    if name == "tent_sums":
        return blocks, np.array([0, 1], dtype=i8), np.array([0], dtype=i8), 2, 3, np.zeros(src.shape[:2]), -1, 3, 0
    xy, node_m = np.zeros((2, 2)), np.ones(2, dtype=i8)
    if name == "list_nodes":
        return np.array([[0, 0, 1, 1]], dtype=i8), np.array([0], dtype=i8), 1, 2, xy, node_m
    return src, xy, node_m, np.zeros((2, 2)), np.ones((2, 2)), strips, acc, 0  # scatter_points


def _load_tier1(name: str) -> None:
    """Import the compiled kernels and compile / load kernel ``name`` (numba's on-disk cache)."""
    with _LOADING:
        getattr(_tier1(), name)(*_tier1_examples(name))


_WARM_UP_IDLE = threading.Event()  # cleared while warmup.warm() runs (a server's background warm-up)
_WARM_UP_IDLE.set()
WARM_UP_WAIT_S = 120.0


@contextlib.contextmanager
def warming_up():
    """Mark a warm-up in progress (:func:`.warmup.warm`): antialiased calls made meanwhile wait
    for it, as they did before tier 0 existed (they blocked on numba's import and compile),
    so a server's first requests find tier 1 loaded and its memory settled."""
    _WARM_UP_IDLE.clear()
    try:
        yield
    finally:
        _WARM_UP_IDLE.set()


UPGRADE = BackgroundUpgrade(None, _tier1_examples, after_calls=2, load=_load_tier1, name="warpsvc.core._splat_kernels.")


def _use_tier1(*names: str) -> bool:
    """Whether the scatter step needing kernels ``names`` runs compiled (tier 1) now: all of
    them loaded; or none failed, the compiled module was imported by someone else (tests,
    benchmarks, code calling the kernels: numba is already paid for) and nobody is loading
    tier 1 right now: then they are loaded here, in the calling thread. Else tier 0. While
    :func:`warming_up` is on, it first waits for the warm-up (at most :data:`WARM_UP_WAIT_S`)."""
    if all(UPGRADE.ready(n) for n in names):
        return True
    if not _WARM_UP_IDLE.is_set():
        _WARM_UP_IDLE.wait(WARM_UP_WAIT_S)
        if all(UPGRADE.ready(n) for n in names):
            return True
    if any(UPGRADE.failed(n) for n in names) or _TIER1_MODULE not in sys.modules or UPGRADE.running():
        return False  # (the upgrade thread releases the lock between two kernels: do not take over)
    if not _LOADING.acquire(blocking=False):
        return False  # the upgrade thread or a warm-up is loading it: do not wait for it
    try:
        _LOADING.release()
        for n in names:
            if not UPGRADE.ready(n):
                UPGRADE.compile_now(n)
    except Exception:  # noqa: BLE001 - tier 0 keeps working; say why once
        _log.warning("warpsvc: loading the compiled antialias kernels failed; staying on numpy", exc_info=True)
        for n in names:
            if not UPGRADE.ready(n):
                UPGRADE.mark_failed(n)
        return False
    return True


def compile_tier1() -> None:
    """Compile (or load) every compiled scatter kernel now, in this thread (the warm-up calls it);
    later scatters use them."""
    for name in KERNELS:
        UPGRADE.compile_now(name)


def scatter_tier(*names: str) -> int:
    """The tier a scatter step needing kernels ``names`` (default: all) would use now, without
    loading anything (0 or 1)."""
    return int(all(UPGRADE.ready(n) for n in (names or KERNELS)))


