"""Helpers shared by the service tests: start a server in-process or as a real CLI subprocess.

(Lives under ``tests/interop/`` so the service tests own it without touching ``tests/conftest.py``.)
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
READY = re.compile(r"serving on (\S+):(\d+)")


@contextlib.contextmanager
def inprocess_server(**settings):
    """A started in-process server; yields the ``WarpServer`` (``.port``)."""
    from warpsvc.server import Settings, build_server

    srv = build_server(Settings(port=0, **settings))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0).wait()


class ServerProcess:
    """``warpsvc serve`` as a subprocess (the way a user starts it), stdout parsed for the port."""

    def __init__(self, *args: str, env: dict | None = None, timeout: float = 30.0):
        # No /metrics unless asked for: parallel test servers would all want port 9464. One worker
        # unless asked for (the default follows the CPUs: tests/test_service_defaults.py).
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WARPSVC_METRICS_PORT": "0", "WARPSVC_WORKERS": "1",
                    **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warpsvc.cli", "serve", *args], cwd=REPO, env=full_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._ready = threading.Event()
        self.port: int | None = None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.stderr))

    def _pump(self, stream, sink, look_for_ready):
        for line in stream:
            sink.append(line)
            m = READY.search(line) if look_for_ready else None
            if m and self.port is None:
                self.port = int(m.group(2))
                self._ready.set()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def wait_serving(target: str, timeout: float = 20.0) -> None:
    from warpsvc.healthcheck import check

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(target, timeout=1.0) == "SERVING":
            return
        time.sleep(0.05)
    raise TimeoutError(f"{target} not SERVING after {timeout} s")


def node_ready() -> str | None:
    """Why the Node interop cannot run here, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        return "node_modules missing (run `npm ci`; scripts/test.sh does when node exists)"
    return None


def buf_binary() -> pathlib.Path | None:
    path = REPO / "node_modules" / ".bin" / "buf"
    return path if path.exists() else None
