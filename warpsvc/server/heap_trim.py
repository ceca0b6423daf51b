"""Give an idle worker's free heap back to the system (glibc ``malloc_trim``).

Why. glibc does not return freed memory on its own: :func:`.runner.tune_allocator` raises the
mmap and trim thresholds on purpose, so multi-MB message buffers are recycled instead of
faulted in again (3-9 ms per 6 MB request otherwise); and each handler thread allocates from
an arena of its own, which glibc trims only at its top, never inside. Measured here (one
worker, a global Align of a 600x600 template in a 3000x3000 RGB image, three calls): resident
memory 212 MB after the warm-up, **940 MB** after the calls, still 940 MB a minute later (772 MB
with ``--no-tune-malloc``). A container sized for the steady load would be killed at the next
large call.

What. A daemon thread samples the server every :data:`POLL_S`. After a period with calls, once
``idle_s`` seconds have passed with no call in flight and none arriving (the drain gate's count
of arrivals, and gRPC's own count of unfinished RPCs, streams included), it reads the free
bytes the heap holds (``mallinfo2().fordblks``: free chunks in every arena) and, when they are at
least :data:`MIN_FREE_BYTES`, calls ``malloc_trim(0)``, which unmaps the free pages of every
arena (``madvise(MADV_DONTNEED)``) and shrinks the heaps' tops. It runs once per idle period:
steady traffic is never trimmed, so it keeps the recycling :func:`tune_allocator` buys; the
first call after an idle period faults its buffers in again (a few ms per large buffer).

Cost: ``malloc_trim(0)`` took 6.6 ms for ~110 MB here (other threads' ``malloc`` wait for the
arena locks meanwhile; nothing is running by construction). Where glibc is absent (musl,
macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger("warpsvc.server")

POLL_S = 0.5  # how often the server's counts are sampled
MIN_FREE_BYTES = 64 << 20  # free heap worth a trim (below it the pages fault back for little gain)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _glibc():
    """``(mallinfo2, malloc_trim)`` of glibc (>= 2.33 for ``mallinfo2``), or ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        info, trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    info.restype = _MallInfo2
    info.argtypes = []
    trim.restype = ctypes.c_int
    trim.argtypes = [ctypes.c_size_t]
    return info, trim


def free_heap_bytes() -> int | None:
    """Free bytes held in the malloc heap (every arena), or ``None`` without glibc."""
    libc = _glibc()
    return None if libc is None else int(libc[0]().fordblks)


def resident_bytes() -> int:
    """This process's resident memory (``/proc/self/statm``; 0 where absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return 0


def _page_size() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE")


def trim_now(min_free: int = MIN_FREE_BYTES) -> int | None:
    """``malloc_trim(0)`` when the heap holds at least ``min_free`` free bytes; returns the
    resident bytes released (``None``: nothing done)."""
    libc = _glibc()
    if libc is None or libc[0]().fordblks < min_free:
        return None
    before = resident_bytes()
    libc[1](0)
    return max(0, before - resident_bytes())


class HeapTrimmer:
    """The thread of the module docstring. ``arrivals()``: a count that grows with every call
    arriving; ``in_flight()``: calls not finished (both read without locks)."""

    def __init__(self, arrivals, in_flight, idle_s: float, name: str = "worker"):
        self._arrivals, self._in_flight = arrivals, in_flight
        self.idle_s = float(idle_s)
        self._name = name
        self._stop = threading.Event()
        self.trims = 0  # trims done (for tests and logs)
        self._thread = threading.Thread(target=self._run, name="warpsvc-heap-trim", daemon=True)

    def start(self) -> HeapTrimmer:
        if self.idle_s > 0 and _glibc() is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        seen, armed, last_busy = self._arrivals(), False, time.monotonic()
        while not self._stop.wait(POLL_S):
            now, count = time.monotonic(), self._arrivals()
            if count != seen or self._in_flight() > 0:
                seen, armed, last_busy = count, True, now
                continue
            if armed and now - last_busy >= self.idle_s:
                armed = False
                t0 = time.perf_counter()
                released = trim_now()
                if released is not None:
                    self.trims += 1
                    log.info("%s idle %.0f s: returned %.0f MiB of free heap to the system in %.1f ms", self._name,
                             now - last_busy, released / (1 << 20), (time.perf_counter() - t0) * 1e3)
