"""``warpsvc serve --workers 2 --metrics-port P``: the real server, real calls, ``/metrics`` over HTTP.

Calls go over several connections (the kernel spreads connections over the two SO_REUSEPORT
workers) and end OK, INVALID_ARGUMENT or shed (RESOURCE_EXHAUSTED from the concurrency limit);
one scrape of the parent must show exactly the counts the test made. The multiprocess folder is
the test's (``PROMETHEUS_MULTIPROC_DIR``), so each worker's own files can be read apart: both
workers served calls, and the scrape is their sum.

Oracles: the number of calls of each kind the test made and what each returned (the statuses,
the ``AlignResult.reason`` of every alignment), image sizes (pixels), the pids in the workers'
"serving on" lines.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from interop.harness import REPO, ServerProcess, wait_serving
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from test_metrics import scrape, total, value
from warpsvc_client import WarpClient

import warpsvc
from warpsvc import AffineTransform
from warpsvc.server import Settings, build_server
from warpsvc_api import convert, wire
from warpsvc_api.v1 import warp_pb2 as pb

SERVICE = "warpsvc.v1.WarpService"
SHAPE = (48, 64)
ALIGN_SHAPE = (512, 512)
CONNECTIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(port: int, **kw) -> WarpClient:
    # A subchannel (connection) of its own: the kernel assigns a worker per connection.
    return WarpClient(f"127.0.0.1:{port}", timeout=30, retries=1,
                      options=[("grpc.use_local_subchannel_pool", 1)], **kw)


def _worker_pids(srv: ServerProcess, n: int) -> list[int]:
    deadline = time.monotonic() + 20
    while sum("serving on" in line for line in srv.stdout) < n:
        assert time.monotonic() < deadline, srv.stderr
        time.sleep(0.05)
    return [int(line.split("pid ")[1].split(")")[0]) for line in srv.stdout if "serving on" in line]


def _scrape_when_up(port: int):
    deadline = time.monotonic() + 10
    while True:
        try:
            return scrape(port)
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def _per_worker(mp_dir, pid: int, tmp_path) -> dict:
    """The samples of one worker alone: its ``*_<pid>.db`` files merged by prometheus-client."""
    alone = tmp_path / f"alone-{pid}"
    shutil.rmtree(alone, ignore_errors=True)
    alone.mkdir()
    for f in mp_dir.glob(f"*_{pid}.db"):
        shutil.copy(f, alone / f.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))
    samples: dict = {}
    for family in registry.collect():
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return samples


def _slow_align_inputs():
    """Two unrelated smooth textures: with a 1.5 s time budget the alignment runs ~1.5-2.5 s and
    ends ``reason="time_budget"`` (an OK call)."""
    import cv2

    rng = np.random.default_rng(3)
    return [cv2.GaussianBlur(rng.random(ALIGN_SHAPE).astype(np.float32), (0, 0), 3) for _ in range(2)]


def test_two_workers_one_scrape_exact_counts(tmp_path):
    mp_dir = tmp_path / "mp"
    metrics_port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    args = ("--port", "0", "--workers", "2", "--max-concurrent-rpcs", "2", "--metrics-port", str(metrics_port))
    image = np.arange(SHAPE[0] * SHAPE[1], dtype=np.uint8).reshape(SHAPE)
    shift = AffineTransform.from_components(translation=(3, 2))
    expected_warp = warpsvc.warp(image, shift)
    with ServerProcess(*args, env=env) as srv:
        wait_serving(srv.target)
        pids = _worker_pids(srv, 2)
        ok = bad = dets = 0
        clients = []
        try:
            # New connections until both workers have served some (at least CONNECTIONS of them).
            while len(clients) < CONNECTIONS or not all(
                    total(_per_worker(mp_dir, pid, tmp_path), "grpc_server_started_total", grpc_service=SERVICE)
                    for pid in pids):
                assert len(clients) < 40, "the kernel never spread connections over both workers"
                client = _client(srv.port)
                clients.append(client)
                np.testing.assert_array_equal(client.warp(image, shift), expected_warp)
                ok += 1
                with pytest.raises(warpsvc.InvalidArgumentError):
                    client.warp(b"not an image file", shift)  # INVALID_ARGUMENT in decode: no pixels
                bad += 1
                assert client.jacobian_determinant(shift, SHAPE).shape == SHAPE
                dets += 1
            # Shed: two slow alignments fill one worker's limit of 2; a third call on the same
            # connection is refused RESOURCE_EXHAUSTED. gRPC counts a call out in a callback after
            # its response went: let the last ones settle first.
            time.sleep(0.3)
            template, moving = _slow_align_inputs()
            busy = clients[0]
            slow = [busy._rpc["Align"].future(
                _align_request(template, moving), timeout=30) for _ in range(2)]
            deadline = time.monotonic() + 20
            while total(scrape(metrics_port), "warpsvc_rpcs_in_flight", grpc_method="Align") < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            with pytest.raises(grpc.RpcError) as shed_err:
                busy.warp(image, shift)
            assert shed_err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reasons = [_reason(f.result()) for f in slow]
        finally:
            for client in clients:
                client.close()
        time.sleep(0.3)  # the last completion callbacks
        s = _scrape_when_up(metrics_port)
        per_worker = {pid: _per_worker(mp_dir, pid, tmp_path) for pid in pids}
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0

    def count(name, method, samples=s, **labels):
        return value(samples, name, grpc_type="unary", grpc_service=SERVICE, grpc_method=method, **labels)

    shed = 1
    assert count("grpc_server_started_total", "Warp") == ok + bad + shed
    assert count("grpc_server_handled_total", "Warp", grpc_code="OK") == ok
    assert count("grpc_server_handled_total", "Warp", grpc_code="INVALID_ARGUMENT") == bad
    assert count("grpc_server_handled_total", "Warp", grpc_code="RESOURCE_EXHAUSTED") == shed
    assert count("grpc_server_handling_seconds_count", "Warp") == ok + bad  # a shed call never ran
    assert value(s, "warpsvc_rpcs_shed_total", grpc_service=SERVICE, grpc_method="Warp") == shed
    assert count("grpc_server_handled_total", "JacobianDeterminant", grpc_code="OK") == dets
    assert count("grpc_server_started_total", "Align") == 2
    assert count("grpc_server_handled_total", "Align", grpc_code="OK") == 2
    assert total(s, "warpsvc_rpcs_in_flight") == 0
    for reason in set(reasons):
        assert value(s, "warpsvc_align_outcomes_total", reason=reason) == reasons.count(reason)
    assert total(s, "warpsvc_align_outcomes_total") == 2
    px = SHAPE[0] * SHAPE[1]
    assert value(s, "warpsvc_pixels_total", grpc_method="Warp", kind="input") == ok * px
    assert value(s, "warpsvc_pixels_total", grpc_method="Warp", kind="output") == ok * px
    assert value(s, "warpsvc_pixels_total", grpc_method="JacobianDeterminant", kind="output") == dets * px
    assert value(s, "warpsvc_pixels_total", grpc_method="Align", kind="input") == 2 * 2 * ALIGN_SHAPE[0] ** 2
    # stages: a refused call was timed in decode only
    stage = "warpsvc_stage_seconds_count"
    assert value(s, stage, grpc_method="Warp", stage="decode") == ok + bad
    assert value(s, stage, grpc_method="Warp", stage="compute") == ok
    assert value(s, stage, grpc_method="Warp", stage="encode") == ok
    assert value(s, stage, grpc_method="Align", stage="compute") == 2
    # bytes: the serialized sizes of the requests the client sent (the shed one was never read)
    assert value(s, "warpsvc_request_bytes_total", grpc_service=SERVICE, grpc_method="Warp") == (
        ok * _warp_request_bytes(image, shift) + bad * _warp_request_bytes(b"not an image file", shift))
    response = len(wire.serialize(convert.image_parts(expected_warp).nested(wire.number(pb.WarpResponse, "image"))))
    assert value(s, "warpsvc_response_bytes_total", grpc_service=SERVICE, grpc_method="Warp") == ok * response
    # process metrics of both workers, labelled by pid
    assert {lab["pid"] for lab, _ in s["warpsvc_worker_resident_memory_bytes"]} == {str(p) for p in pids}
    # both workers served, and the scrape is the sum of their files
    started = {pid: total(w, "grpc_server_started_total", grpc_service=SERVICE) for pid, w in per_worker.items()}
    assert all(n > 0 for n in started.values()), f"one worker got no connection: {started}"
    assert sum(started.values()) == total(s, "grpc_server_started_total", grpc_service=SERVICE)


def _align_request(template, image):
    fields = convert.align_request("homography", None, levels=1, robust=None, photometric=None,
                                   max_iterations=100000, tolerance=1e-12, time_budget=1.5,
                                   template_mask=None, image_mask=None)
    return wire.Parts.of(fields).then(*(convert.image_field(v, wire.number(pb.AlignRequest, n), n)
                                        for n, v in (("template", template), ("image", image))))


def _warp_request_bytes(image, transform) -> int:
    """The size of the WarpRequest ``WarpClient.warp(image, transform)`` sends."""
    fields = convert.warp_request(transform, None, interpolation="linear", border="constant", border_value=0.0,
                                  intensity="plain", antialias=False, response_form="tensor", jpeg_quality=0)
    return len(wire.serialize(wire.Parts.of(fields).then(convert.image_field(image, wire.number(pb.WarpRequest,
                                                                                                "image")))))


def _reason(response) -> str:
    return convert.align_result(response.message).reason


def test_a_taken_metrics_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0", "--metrics-port", str(port)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"metrics endpoint: cannot bind 127.0.0.1:{port}" in out.stderr and "--metrics-port" in out.stderr
    assert "Traceback" not in out.stderr


def test_metrics_port_setting():
    assert Settings().metrics_port == 9464
    assert Settings.from_env({"WARPSVC_METRICS_PORT": "0"}).metrics_port == 0
    with pytest.raises(ValueError, match="metrics_port must be in 0..65535"):
        Settings(metrics_port=70000)
    with pytest.raises(ValueError, match="metrics_port and port must differ"):
        Settings(port=9464)
    # 0 disables: no Metrics in the worker (no interceptor, nothing recorded)
    srv = build_server(Settings(port=0, metrics_port=0))
    try:
        assert srv.metrics is None
    finally:
        srv.stop(0).wait()
    srv = build_server(Settings(port=0, metrics_port=1))
    try:
        assert srv.metrics is not None and srv.metrics.registry is not None
    finally:
        srv.stop(0).wait()


def test_unauthenticated_calls_are_counted_as_unary(tmp_path):
    """A refused unary call is answered by a request-streaming handler that never reads the body
    (:class:`warpsvc.server.interceptors.BodilessRefusal`); its metrics still say what the client
    called: ``grpc_type="unary"``, code UNAUTHENTICATED, one per call."""
    token_file = tmp_path / "token"
    token_file.write_text("tok-" + "ab" * 16 + "\n")
    metrics_port = free_port()
    with ServerProcess("--port", "0", "--workers", "1", "--token-file", str(token_file),
                       "--metrics-port", str(metrics_port)) as srv:
        wait_serving(srv.target)
        with grpc.insecure_channel(srv.target) as channel:
            warp_call = channel.unary_unary(f"/{SERVICE}/Warp")
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as info:
                    warp_call(b"\x0a\x00", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        samples = _scrape_when_up(metrics_port)
    labels = dict(grpc_service=SERVICE, grpc_method="Warp", grpc_code="UNAUTHENTICATED")
    assert value(samples, "grpc_server_handled_total", grpc_type="unary", **labels) == 3
    assert total(samples, "grpc_server_handled_total", grpc_type="client_stream", grpc_method="Warp") == 0
