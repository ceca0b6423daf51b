"""The idle heap trim (``warpsvc.server.heap_trim``): a worker gives the free heap of a burst of
large calls back to the system once it has been idle ``--trim-idle-seconds``, and keeps it
with ``0``. Oracles: the process's own resident memory (``/proc/<pid>/status``) and glibc's
free-heap count."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from hostile_server import hostile_server, proc_status
from warpsvc_client.client import WarpClient

import warpsvc
from warpsvc.server import heap_trim
from warpsvc.server.settings import Settings

pytestmark = pytest.mark.skipif(heap_trim._glibc() is None, reason="needs glibc (mallinfo2, malloc_trim)")

IMG = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), dtype=np.uint8)
HOM = warpsvc.HomographyTransform.from_points([[0, 0], [1999, 0], [1999, 1999], [0, 1999]],
                                              [[10, 5], [1990, 20], [1980, 1990], [5, 1985]])

HEAP_SCRIPT = """
import gc
from warpsvc.server import heap_trim
blocks = [bytes(100_000) for _ in range(1500)]  # 150 MB of heap blocks (below the mmap threshold)
keep = blocks[-1]
del blocks                                      # freed below a live block: the heap's top cannot shrink
gc.collect()
free = heap_trim.free_heap_bytes()
released = heap_trim.trim_now()
print(free, released, heap_trim.free_heap_bytes() >= 0)
"""


def test_trim_now_returns_the_free_heap():
    out = subprocess.run([sys.executable, "-c", HEAP_SCRIPT], capture_output=True, text=True, check=True).stdout
    free, released, _ = out.split()
    assert int(free) >= 100 << 20  # the freed blocks are held by the heap
    assert int(released) >= 64 << 20  # and given back by the trim (resident memory fell)


def test_small_free_heap_is_left_alone():
    assert heap_trim.trim_now(min_free=1 << 60) is None


def test_setting_parses_and_guards():
    assert Settings.from_env({"WARPSVC_TRIM_IDLE_SECONDS": "0"}).trim_idle_seconds == 0
    assert Settings().trim_idle_seconds == 5.0
    with pytest.raises(ValueError, match="trim_idle_seconds"):
        Settings(trim_idle_seconds=-1)
    with pytest.raises(ValueError, match="trim_idle_seconds"):
        Settings(trim_idle_seconds=float("nan"))


def _burst_then_idle(srv, idle_s: float) -> tuple[int, int, int]:
    """(baseline, after the burst, after ``idle_s`` idle) resident KiB of the worker."""
    pid = srv.srv.proc.pid
    base = proc_status(pid)["VmRSS"]
    client = WarpClient(srv.target)
    for _ in range(3):  # 12 MB in, 48 MB float32 out per call: ~200 MB of heap buffers
        assert client.warp(IMG, HOM, intensity="conserve", timeout=60).shape == IMG.shape
    after = proc_status(pid)["VmRSS"]
    end, rss = time.monotonic() + idle_s, after
    while time.monotonic() < end:
        time.sleep(0.25)
        rss = proc_status(pid)["VmRSS"]
    return base, after, rss


def test_an_idle_worker_gives_its_heap_back():
    with hostile_server("--workers", "1", "--trim-idle-seconds", "1") as srv:
        base, after, idle = _burst_then_idle(srv, 4.0)
    grown = after - base
    assert grown > 100 << 10  # the burst really held > 100 MiB (else the test proves nothing)
    assert idle < after - grown // 2, (base, after, idle)


def test_zero_keeps_the_heap():
    with hostile_server("--workers", "1", "--trim-idle-seconds", "0") as srv:
        base, after, idle = _burst_then_idle(srv, 3.0)
    assert after - base > 100 << 10
    assert idle > after - (after - base) // 4, (base, after, idle)
