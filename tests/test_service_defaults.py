"""Defaults sized to the machine (warpsvc/server/cpus.py): the CPUs the process may use are the
affinity mask capped by the cgroup CPU quota. Oracles: fake cgroup trees (v1 and v2) with known
quotas, ``taskset`` on a real ``warpsvc serve`` (its worker count), ``os.sched_getaffinity``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from interop.harness import REPO

from warpsvc.server import Settings
from warpsvc.server import cpus


def _tree(tmp_path, files: dict, proc_cgroup: str):
    for rel, text in files.items():
        path = tmp_path / "cg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "self_cgroup").write_text(proc_cgroup)
    return str(tmp_path / "cg"), str(tmp_path / "self_cgroup")


@pytest.mark.parametrize("files, proc, quota", [
    ({"cpu.max": "max 100000\n"}, "0::/\n", None),                                   # v2, no limit
    ({"cpu.max": "150000 100000\n"}, "0::/\n", 1.5),                                 # v2 at the root
    ({"kubepods/pod1/cpu.max": "50000 100000\n", "cpu.max": "max 100000"},
     "0::/kubepods/pod1\n", 0.5),                                                    # v2, own cgroup
    ({"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
      "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n", 2.0),                # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "4:cpu,cpuacct:/\n", None),                                                     # v1, no limit
    ({}, "", None),                                                                  # no cgroup files
])
def test_quota_from_cgroup_v1_and_v2(tmp_path, files, proc, quota):
    root, self_cgroup = _tree(tmp_path, files, proc)
    assert cpus.quota_cpus(root, self_cgroup) == quota
    expected = os.sched_getaffinity(0).__len__()
    if quota is not None:
        expected = min(expected, max(1, -(-int(quota * 10) // 10)))  # ceil for these quotas
    assert cpus.usable_cpus(root, self_cgroup) == expected


def test_fractional_quota_rounds_up_and_never_below_one(tmp_path):
    root, self_cgroup = _tree(tmp_path, {"cpu.max": "10000 100000"}, "0::/\n")
    assert cpus.usable_cpus(root, self_cgroup) == 1
    root, self_cgroup = _tree(tmp_path / "b", {"cpu.max": "110000 100000"}, "0::/\n")
    assert cpus.usable_cpus(root, self_cgroup) == min(2, len(os.sched_getaffinity(0)))


def test_settings_defaults_follow_usable_cpus_and_env_overrides():
    n = cpus.usable_cpus()
    s = Settings()
    assert s.workers == n and s.cv_threads == n and s.blas_threads == 1
    s = Settings.from_env({"WARPSVC_WORKERS": "1", "WARPSVC_CV_THREADS": "3"})
    assert s.workers == 1 and s.cv_threads == 3


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) not installed")
def test_serve_without_flags_forks_one_worker_per_usable_cpu():
    """``taskset -c 0`` leaves the server one CPU: one worker; without it, one per usable CPU."""
    for prefix, expected in ((["taskset", "-c", "0"], 1), ([], cpus.usable_cpus())):
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
