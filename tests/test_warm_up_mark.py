"""The server's warm-up counts as begun before the server starts (runner._begin_warm_up).

Antialiased calls made during a warm-up wait for it (``antialias.warming_up``) so they find the
compiled kernels loaded. The mark used to be set inside the warm-up thread, so a request that
arrived between ``srv.start()`` and the thread's first step ran the numpy tier and started a
second, concurrent load. The fake ``warm`` below never sets the mark itself, so the checks fail
unless the runner sets it before the thread runs."""

from __future__ import annotations

import threading

from warpsvc.core import _splat_numpy_tiers as tier_policy
from warpsvc.core import warmup
from warpsvc.server import runner


def test_mark_is_set_before_the_thread_runs_and_cleared_after(monkeypatch):
    gate, entered = threading.Event(), threading.Event()

    def fake_warm(verbose=False):
        entered.set()
        assert gate.wait(10)
        return 0.0

    monkeypatch.setattr(warmup, "warm", fake_warm)
    assert tier_policy._WARM_UP_IDLE.is_set()
    thread, _mark = runner._begin_warm_up(0)
    assert not tier_policy._WARM_UP_IDLE.is_set()  # before the thread exists: no window
    thread.start()
    assert entered.wait(10)
    assert not tier_policy._WARM_UP_IDLE.is_set()
    gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert tier_policy._WARM_UP_IDLE.is_set()


def test_failed_warm_up_still_clears_the_mark(monkeypatch):
    def broken_warm(verbose=False):
        raise RuntimeError("no cache")

    monkeypatch.setattr(warmup, "warm", broken_warm)
    thread, _mark = runner._begin_warm_up(1)
    assert not tier_policy._WARM_UP_IDLE.is_set()
    thread.start()
    thread.join(10)
    assert tier_policy._WARM_UP_IDLE.is_set()


_WAITS = """
import threading, numpy as np, warpsvc
from warpsvc.core import warmup
from warpsvc.server import runner
done = threading.Event()
def slow_warm(verbose=False):
    done.wait(0.3)
    done.set()
    return 0.3
warmup.warm = slow_warm
thread, _mark = runner._begin_warm_up(2)
thread.start()
img = np.zeros((40, 40), np.float32)
img[20, 20] = 1.0
out = warpsvc.warp(img, warpsvc.AffineTransform(np.diag([0.5, 0.5, 1.0])[:2]), (20, 20),
                   intensity="conserve", antialias=True)
print(done.is_set(), float(out.sum()))
"""


def test_an_antialiased_call_waits_for_a_begun_warm_up():
    """A call made after the mark and before the warm-up finished returns after it did (in a
    fresh process: where the compiled kernels are loaded already, nothing waits)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _WAITS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    waited, flux = out.stdout.split()
    assert waited == "True"  # the call returned only after the warm-up ended
    assert abs(float(flux) - 1.0) < 1e-6  # and it still conserves the flux
