"""A forked child keeps working after its parent used the strip pool or was loading a kernel
tier in the background: the child starts its own strip pool (the parent's threads do not exist
in it), and a fork waits for a running background upgrade so that the child does not inherit
numba's import or compiler locks held by a thread it lacks. Each case runs in a subprocess
with a watchdog: a hang fails the test instead of stalling the suite."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="os.fork")

PRELUDE = """
import os, sys, time, faulthandler
import numpy as np
from warpsvc import AffineTransform, warp
from warpsvc.core import _scale_kernels as S, threads
threads.set_threads(2, opencv=False)
img = np.zeros((1100, 1000, 3), np.uint8)  # a 13 MB float32 result: strips, and the streaming tier's upgrade
t = AffineTransform.from_components(scale=(0.9, 0.8), rotation=0.2, translation=(40, 30))

def child(body):
    pid = os.fork()
    if pid == 0:
        faulthandler.dump_traceback_later(60, exit=True)  # a deadlock: dump the stacks, exit non-zero
        body()
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
"""

STRIPS = PRELUDE + """
os.environ["WARPSVC_KERNEL_UPGRADE"] = "0"
from warpsvc.core import strips
assert strips.run_strips(lambda a, b: None, 100, 10**7) == 2  # the parent's pool threads exist
reference = warp(img, t, intensity="conserve")

def body():
    out = warp(img, t, intensity="conserve")  # its strips need a pool
    assert np.array_equal(out, reference)
    print("child ok", flush=True)

print("exit", child(body), flush=True)
"""

MID_UPGRADE = PRELUDE + """
for _ in range(3):
    reference = warp(img, t, intensity="conserve")  # the third starts the streaming tier's upgrade
running = S.STREAM_UPGRADE.running()

def body():
    S.compile_stream_tier1()  # what a warm-up does: needs numba's locks
    out = warp(img, t, intensity="conserve")
    assert np.array_equal(out, reference) and S.STREAM_UPGRADE.ready(img.dtype)
    print("child ok", flush=True)

print("running at fork", running, flush=True)
print("exit", child(body), flush=True)
"""


@pytest.mark.parametrize("script", [STRIPS, MID_UPGRADE], ids=["strip pool", "mid upgrade"])
def test_forked_child_keeps_working(script):
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert "child ok" in out.stdout and "exit 0" in out.stdout, out.stdout + out.stderr
    if script is MID_UPGRADE:
        assert "running at fork True" in out.stdout  # the fork did fall inside the upgrade
