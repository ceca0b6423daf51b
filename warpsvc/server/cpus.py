"""How many CPUs this process may really use: the affinity mask and the cgroup CPU quota.

``os.cpu_count()`` is the host's count. Inside a container (``docker run --cpus 1.5``, a Kubernetes
``limits.cpu``) or under ``taskset`` the process gets less, and sizing workers and thread pools
from the host's count oversubscribes the cores it has. So::

    usable = min(len(os.sched_getaffinity(0)), ceil(quota / period))     (at least 1)

with the quota from cgroup v2 (``cpu.max``: ``"<quota> <period>"`` or ``"max <period>"``) or cgroup
v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, ``-1`` = none), looked up for this process's own
cgroup (``/proc/self/cgroup``) and, as containers mount it, at the root of ``/sys/fs/cgroup``. A
fractional quota rounds up: 1.5 CPUs still run two threads part of the time. Imports nothing heavy
(the CLI calls it before forking).
"""

from __future__ import annotations

import math
import os

CGROUP_ROOT = "/sys/fs/cgroup"


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _own_cgroup_dirs(root: str, proc_cgroup: str) -> list[str]:
    """Candidate folders holding this process's CPU controller files (own cgroup first)."""
    dirs = []
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        if controllers == "":  # v2 unified hierarchy
            dirs.append(os.path.join(root, path.lstrip("/")))
        elif "cpu" in controllers.split(","):  # v1 cpu controller
            for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
                dirs.append(os.path.join(root, mount, path.lstrip("/")))
    dirs += [root, os.path.join(root, "cpu,cpuacct"), os.path.join(root, "cpu")]
    return dirs


def quota_cpus(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), or None when unlimited or unknown."""
    for folder in _own_cgroup_dirs(root, proc_cgroup):
        v2 = _read(os.path.join(folder, "cpu.max"))
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota == "max" or not period:
                return None
            return int(quota) / int(period)
        q, p = _read(os.path.join(folder, "cpu.cfs_quota_us")), _read(os.path.join(folder, "cpu.cfs_period_us"))
        if q is not None and p is not None:
            return None if int(q) < 0 else int(q) / int(p)
    return None


def usable_cpus(root: str = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> int:
    """CPUs this process may use: affinity mask, capped by the cgroup quota (rounded up), >= 1."""
    n = affinity_cpus()
    quota = quota_cpus(root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota - 1e-9)))
    return max(1, n)
