"""How many threads one call of the parallel kernels may use.

The kernels run in parallel over output rows or strips and release the GIL: the scaling and
polar-map kernels (:mod:`._scale_kernels`: numpy / OpenCV calls over strips on the pool of
:mod:`.strips`, nothing compiled, except the projective factor's tier 1, numba, once compiled)
and the antialias scatter (:mod:`._splat_kernels`, numba).
The thread count they use is, in order:

1. the value given to :func:`set_threads` (process-wide);
2. the ``WARPSVC_KERNEL_THREADS`` environment variable (read on first use);
3. :func:`available_cpus`: the CPUs this process may really use, i.e. the affinity mask
   (``os.sched_getaffinity``) capped by the cgroup CPU quota (``cpu.max`` in cgroup v2,
   ``cpu.cfs_quota_us / cpu.cfs_period_us`` in v1), as inside a container limited with
   ``--cpus``.

``WARPSVC_THREADS`` is *not* read here: it is the server's ``--threads`` (work calls computing at
once per worker, :mod:`warpsvc.server.settings`), a count of calls, not of threads per call. The
two once shared that name, so a server configured for 16 compute slots made every kernel call of
any library code in that environment start 16 threads. The server sets the kernels' count itself
(``warpsvc serve --kernel-threads`` / the same ``WARPSVC_KERNEL_THREADS``, default: its OpenCV
thread count) with :func:`set_threads` in each worker.

For the numba kernels it is capped by numba's pool size (``NUMBA_NUM_THREADS``, fixed when
numba starts); :func:`strip_count` (the strip kernels) never imports numba. OpenCV has
its own process-wide count (``cv2.setNumThreads``); ``set_threads(n)`` sets both unless
``opencv=False``, so one call sizes the whole library.

numba's per-launch thread count is thread-local; :func:`kernel_threads` is called by the
kernels' Python wrappers in the calling thread right before each parallel launch, so every
calling thread (a server's handler threads included) honours the setting.
"""

from __future__ import annotations

import math
import os
import pathlib

from .errors import InvalidArgumentError

ENV_VAR = "WARPSVC_KERNEL_THREADS"
SERVER_SLOTS_ENV_VAR = "WARPSVC_THREADS"  # the server's compute slots: never read here
_CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
_chosen: int | None = None


def _cgroup_quota(root: pathlib.Path = _CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup CPU quota, ``None`` when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: ``len(sched_getaffinity)`` capped by the cgroup quota
    (rounded up: a 1.5-CPU quota lets two threads share the time)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _parse(value, field: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{field} must be a positive integer, got {value!r}", field=field) from None
    if isinstance(value, bool) or n < 1 or str(n) != str(value).strip():
        raise InvalidArgumentError(f"{field} must be a positive integer, got {value!r}", field=field)
    return n


def get_threads() -> int:
    """The thread count the kernels use (see the module docstring for the order)."""
    global _chosen
    if _chosen is None:
        env = os.environ.get(ENV_VAR)
        _chosen = _parse(env, ENV_VAR) if env not in (None, "") else available_cpus()
    return _chosen


def set_threads(n: int | None, *, opencv: bool = True) -> int:
    """Set the kernels' thread count (``None``: back to the default) and, unless
    ``opencv=False``, OpenCV's (``cv2.setNumThreads``). Returns the count now in effect."""
    global _chosen
    _chosen = None if n is None else _parse(n, "threads")
    n_eff = get_threads()
    if opencv:
        import cv2

        cv2.setNumThreads(n_eff)
    return n_eff


MIN_WORK_PER_THREAD = 1 << 16  # elements / nodes (~50 us of work): below, waking a thread costs more


def strip_count(work: int | None = None) -> int:
    """Strips (threads) for one strip-kernel call (:mod:`.strips`): the setting, with a ``work``
    size (elements) at most one per ``MIN_WORK_PER_THREAD``. Does not import numba."""
    n = get_threads()
    if work is not None:
        n = max(1, min(n, int(work) // MIN_WORK_PER_THREAD))
    return n


def kernel_threads(work: int | None = None) -> int:
    """Apply the setting to numba in the calling thread (thread-local there) and return it;
    with a ``work`` size (elements or nodes), at most one thread per ``MIN_WORK_PER_THREAD``
    (a small launch runs on the calling thread alone: waking pool threads would cost more,
    and on a busy machine a woken thread may wait for a core)."""
    import numba

    n = min(get_threads(), numba.config.NUMBA_NUM_THREADS)
    if work is not None:
        n = max(1, min(n, int(work) // MIN_WORK_PER_THREAD))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    return n
