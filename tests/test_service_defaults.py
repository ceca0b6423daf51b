"""Defaults sized to the machine: workers and OpenCV threads = the CPUs the process may use
(``warpsvc.core.threads.available_cpus``: affinity mask capped by the cgroup quota, tested in the
library's own tests). Oracles: ``taskset`` on a real ``warpsvc serve`` (its worker count)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from interop.harness import REPO

from warpsvc.core.threads import available_cpus
from warpsvc.server import Settings


def test_settings_defaults_follow_usable_cpus_and_env_overrides():
    n = available_cpus()
    s = Settings()
    assert s.workers == n and s.cv_threads == n and s.blas_threads == 1
    s = Settings.from_env({"WARPSVC_WORKERS": "1", "WARPSVC_CV_THREADS": "3"})
    assert s.workers == 1 and s.cv_threads == 3


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_serve_without_flags_forks_one_worker_per_usable_cpu():
    """``taskset -c 0`` leaves the server one CPU: one worker; without it, one per usable CPU."""
    for prefix, expected in ((["taskset", "-c", "0"], 1), ([], available_cpus())):
        env = {k: v for k, v in os.environ.items() if k != "WARPSVC_WORKERS"}
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0",
                                 "--metrics-port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            lines = []
            deadline = time.monotonic() + 60
            while len(lines) < expected:
                assert time.monotonic() < deadline
                line = proc.stdout.readline()
                if "serving on" in line:
                    lines.append(line)
            time.sleep(0.5)  # no further worker appears
            pids = {int(line.split("pid ")[1].split(")")[0]) for line in lines}
            children = {int(c) for c in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                       text=True).stdout.split()}
            # one worker: the process itself serves; several: forked children, one per line
            assert pids == ({proc.pid} if expected == 1 else children) and len(pids) == expected, (pids, children)
        finally:
            proc.terminate()
            code = proc.wait(30)
            proc.stdout.close()
        assert code == 0
