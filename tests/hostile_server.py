"""Helpers for the amplification tests (issue 13): a fresh CLI server per case, one hostile call
timed against its deadline, a health watcher polling throughout, server memory from /proc, the
access log read back, and builders for the hostile files.

Not a test module (no ``test_`` prefix); used by ``test_hostile_amplification.py`` and the
amplification fuzzer in ``test_hostile_inputs.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import pathlib
import threading
import time
import zlib

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from interop.harness import ServerProcess, wait_serving
from PIL import Image
from test_image_probe import LONG, LONG8, SHORT, _tiff

from warpsvc.v1 import warp_pb2 as pb
from warpsvc.v1 import warp_pb2_grpc

BIG_MESSAGES = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE}
HEALTH_TIMEOUT_S = 1.0


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in KiB."""
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclasses.dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    elapsed: float
    field: str | None
    response: object = None


class HealthWatch:
    """Polls ``grpc.health.v1.Health/Check`` every 0.1 s on its own channel; each answer must be
    SERVING within :data:`HEALTH_TIMEOUT_S`. ``failures`` lists what was not."""

    def __init__(self, target: str):
        self._channel = grpc.insecure_channel(target)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._stop = threading.Event()
        self.failures: list[tuple[float, str, float]] = []
        self.polls = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        t0 = time.monotonic()
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                resp = self._stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as err:
                status = err.code().name
            took = time.monotonic() - start
            self.polls += 1
            if status != "SERVING" or took > HEALTH_TIMEOUT_S:
                self.failures.append((round(start - t0, 2), status, round(took, 2)))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._channel.close()


class HostileServer:
    """A fresh ``warpsvc serve`` subprocess, warmed up, with its memory baseline."""

    def __init__(self, srv: ServerProcess, token: str | None = None):
        self.srv = srv
        auth = [("authorization", f"Bearer {token}")] if token else None
        self.channel = grpc.insecure_channel(srv.target, options=BIG_MESSAGES)
        self.stub = warp_pb2_grpc.WarpServiceStub(self.channel)
        warm = pb.WarpRequest(image=pb.Image(tensor=pb.Tensor(shape=[8, 8], dtype=pb.DTYPE_UINT8, data=bytes(64))),
                              transforms=[pb.Transform(affine=pb.AffineTransform(matrix=[1, 0, 0.5, 0, 1, 0]))])
        for antialias in (False, True, False):  # imports, compiled kernels, first allocations
            request = pb.WarpRequest()
            request.CopyFrom(warm)
            request.antialias = antialias
            self.stub.Warp(request, timeout=60, metadata=auth)
        self._await_access_lines("Warp", 3)  # else a late warm-up line could pass for a test call's
        self.baseline = proc_status(srv.proc.pid)

    @property
    def target(self) -> str:
        return self.srv.target

    def call(self, method: str, request, deadline: float, metadata=None) -> Outcome:
        start = time.monotonic()
        try:
            resp = getattr(self.stub, method)(request, timeout=deadline, metadata=metadata)
            return Outcome(grpc.StatusCode.OK, "", time.monotonic() - start, None, resp)
        except grpc.RpcError as err:
            return Outcome(err.code(), err.details() or "", time.monotonic() - start, violation(err))

    def peak_growth_mib(self) -> float:
        """Peak resident memory since start (VmHWM) above the post-warm-up resident memory."""
        return (proc_status(self.srv.proc.pid)["VmHWM"] - self.baseline["VmRSS"]) / 1024

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the server answers health quickly again (work that ignored a deadline ends)."""
        end = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < end:
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    return
                except grpc.RpcError:
                    time.sleep(0.2)

    def _access_entries(self, method: str, after: int = 0) -> list[dict]:
        entries = []
        for line in list(self.srv.stderr)[after:]:
            if "warpsvc.access" in line and "{" in line:
                entry = json.loads(line[line.index("{"):])
                if entry["method"].endswith("/" + method):
                    entries.append(entry)
        return entries

    def _await_access_lines(self, method: str, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` access-log lines of ``method`` were read from the server's stderr:
        the server logs a call after answering it and a reader thread collects stderr, so a line
        can arrive after its response (a mark taken too early would then see it)."""
        end = time.monotonic() + timeout
        while len(self._access_entries(method)) < count:
            if time.monotonic() > end:
                raise AssertionError(f"{count} access-log lines of {method} not seen in {timeout} s")
            time.sleep(0.02)

    def log_mark(self) -> int:
        """A position in the server's stderr: :meth:`access_log` reads only lines after it."""
        return len(self.srv.stderr)

    def access_log(self, method: str, after: int, timeout: float = 30.0) -> dict:
        """The first access-log entry of ``method`` after ``after`` (waits for it: a call that
        ignores its deadline is logged only when its work ends). Lines look like
        ``<time> INFO warpsvc.access {"method": ..., "status": ..., "ms": ...}``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            entries = self._access_entries(method, after)
            if entries:
                return entries[0]
            time.sleep(0.1)
        raise AssertionError(f"no access-log line for {method}")


def violation(err: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            return bad.field_violations[0].field
    return None


@contextlib.contextmanager
def hostile_server(*args: str, token: str | None = None):
    """A fresh server (killed at the end: a worker busy in hostile work would hold SIGTERM);
    ``token`` is what the warm-up calls send when the server requires one."""
    srv = ServerProcess("--port", "0", "--grace-seconds", "1", *args)
    try:
        wait_serving(srv.target)
        server = HostileServer(srv, token)
        try:
            yield server
        finally:
            server.channel.close()
    finally:
        srv.kill()
        srv.__exit__(None, None, None)


# -- request builders ------------------------------------------------------------------------------
def tensor(arr: np.ndarray) -> pb.Image:
    dtype = {np.uint8: pb.DTYPE_UINT8, np.uint16: pb.DTYPE_UINT16, np.float32: pb.DTYPE_FLOAT32,
             np.float64: pb.DTYPE_FLOAT64}[arr.dtype.type]
    return pb.Image(tensor=pb.Tensor(shape=arr.shape, dtype=dtype, data=np.ascontiguousarray(arr).tobytes()))


def encoded(data: bytes) -> pb.Image:
    return pb.Image(encoded=pb.EncodedImage(data=data))


def affine(*m) -> pb.Transform:
    return pb.Transform(affine=pb.AffineTransform(matrix=list(m)))


def polar_chain(steps: int, side: int) -> list[pb.Transform]:
    """``steps`` alternating forward/inverse linear-polar transforms on ``side`` x ``side`` grids."""
    out = []
    grid = pb.ImageSize(height=side, width=side)
    for k in range(steps):
        polar = pb.PolarTransform(center=pb.Point(x=side / 2, y=side / 2), max_radius=side * 0.4, polar_shape=grid,
                                  inverse=bool(k % 2))
        if k % 2:
            polar.cartesian_shape.CopyFrom(grid)
        out.append(pb.Transform(polar=polar))
    return out


def deflate_tiff(h: int, w: int, *, size_entries=None, tile: int | None = None) -> bytes:
    """An 8-bit grey TIFF of zeros, deflate-compressed (tiny on the wire, large decoded): one strip
    of ``h`` rows, or one ``tile`` x ``tile`` tile. ``size_entries`` replaces the ImageWidth/
    ImageLength entries (duplicates, other types)."""
    side_h, side_w = (tile, tile) if tile else (h, w)
    payload = zlib.compress(bytes(side_h * side_w), 9)
    sizes = size_entries or [(256, LONG, [w]), (257, LONG, [h])]
    layout = [(258, SHORT, [8]), (259, SHORT, [8]), (262, SHORT, [1]), (277, SHORT, [1])]
    if tile:
        chunks = [(322, LONG, [tile]), (323, LONG, [tile]), (324, LONG, [0]), (325, LONG, [len(payload)])]
    else:
        chunks = [(273, LONG, [0]), (278, LONG, [h]), (279, LONG, [len(payload)])]
    entries = sizes + layout + chunks
    first = _tiff(entries)
    offset_tag = 324 if tile else 273
    return _tiff([(t, typ, [len(first)] if t == offset_tag else v) for t, typ, v in entries], pixels=payload)


def long8_sizes(h: int, w: int):
    return [(256, LONG8, [w]), (257, LONG8, [h])]


def duplicate_sizes(h: int, w: int):
    """The real size first (libtiff keeps it), a 1x1 decoy after (the old reader kept the last)."""
    return [(256, LONG, [w]), (257, LONG, [h]), (256, LONG, [1]), (257, LONG, [1])]


def progressive_jpeg(side: int, extra_scans: int) -> bytes:
    """A smooth ``side`` x ``side`` progressive JPEG (Pillow: 10 scans) with its last scan
    repeated ``extra_scans`` more times before EOI (libjpeg decodes every one)."""
    ramp = np.add.outer(np.arange(side), np.arange(side)) % 256
    buf = io.BytesIO()
    Image.fromarray(np.dstack([ramp] * 3).astype(np.uint8)).save(buf, "JPEG", progressive=True, quality=75)
    data = buf.getvalue()
    start, eoi = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:eoi] + data[start:eoi] * extra_scans + data[eoi:]
