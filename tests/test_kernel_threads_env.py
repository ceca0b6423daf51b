"""``WARPSVC_THREADS`` (the server's compute slots) and ``WARPSVC_KERNEL_THREADS`` (threads of one
compiled-kernel call) are two settings: the library reads only the second, and a worker's kernel
count comes from ``--kernel-threads`` (default ``--cv-threads``), never from ``--threads``.

Each case runs in a fresh interpreter (the library reads its variable once, on first use), with
the oracle being the value the process was configured with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from warpsvc.core import threads
from warpsvc.server.settings import Settings, add_arguments, from_args

PROBE_LIBRARY = "from warpsvc.core import threads; print(threads.get_threads(), threads.available_cpus())"
PROBE_WORKER = """
import json, sys, cv2
from warpsvc.core import threads
from warpsvc.server.runner import configure_threads
from warpsvc.server.settings import Settings
configure_threads(Settings(**json.loads(sys.argv[1])))
print(json.dumps({"kernel": threads.get_threads(), "cv": cv2.getNumThreads()}))
"""


def _run(code: str, *args: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("WARPSVC_THREADS", "WARPSVC_KERNEL_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code, *args], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_library_ignores_the_servers_slot_count():
    got, cpus = map(int, _run(PROBE_LIBRARY, WARPSVC_THREADS="7").split())
    assert got == cpus  # the default, not 7


def test_the_library_reads_warpsvc_kernel_threads():
    got, _ = map(int, _run(PROBE_LIBRARY, WARPSVC_KERNEL_THREADS="3", WARPSVC_THREADS="7").split())
    assert got == 3


def test_a_bad_kernel_thread_count_names_the_variable(monkeypatch):
    saved = threads._chosen
    try:
        threads._chosen = None
        monkeypatch.setenv("WARPSVC_KERNEL_THREADS", "three")
        with pytest.raises(threads.InvalidArgumentError) as exc:
            threads.get_threads()
        assert exc.value.field == "WARPSVC_KERNEL_THREADS"
    finally:
        threads._chosen = saved


@pytest.mark.parametrize("settings,env,kernel,cv", [
    ({"threads": 7, "cv_threads": 1}, {"WARPSVC_THREADS": "7"}, 1, 1),           # slots never leak
    ({"threads": 7, "cv_threads": 2, "kernel_threads": 1}, {}, 1, 2),           # explicit kernel count
    ({"threads": 1, "cv_threads": 1, "kernel_threads": 2}, {"WARPSVC_KERNEL_THREADS": "5"}, 2, 1),  # setting wins
])
def test_a_worker_sets_its_kernel_threads_from_its_settings(settings, env, kernel, cv):
    got = json.loads(_run(PROBE_WORKER, json.dumps(settings), **env))
    assert got == {"kernel": kernel, "cv": cv}


def test_settings_from_environment_and_flags():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    s = from_args(parser.parse_args([]), environ={"WARPSVC_THREADS": "6", "WARPSVC_CV_THREADS": "2"})
    assert (s.threads, s.kernel_threads, s.kernel_thread_count) == (6, None, 2)
    s = from_args(parser.parse_args([]), environ={"WARPSVC_KERNEL_THREADS": "3", "WARPSVC_CV_THREADS": "2"})
    assert (s.kernel_threads, s.kernel_thread_count) == (3, 3)
    s = from_args(parser.parse_args(["--kernel-threads", "1", "--threads", "9"]), environ={})
    assert (s.threads, s.kernel_thread_count) == (9, 1)
    with pytest.raises(ValueError, match="kernel_threads"):
        Settings(kernel_threads=0)
