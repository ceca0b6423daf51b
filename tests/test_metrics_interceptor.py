"""MetricsInterceptor on a real gRPC server on loopback with a trivial generic handler: every
outcome (OK, INVALID_ARGUMENT, UNKNOWN, shed RESOURCE_EXHAUSTED, server streaming) is counted
exactly, scraped over HTTP while every RPC thread is busy."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from test_metrics import scrape, status_of, total, value

from warpsvc.server import metrics as wm
from warpsvc.server import metrics_interceptor as wmi

SERVICE = "test.Echo"
POOL_THREADS = 2  # == the concurrency limit: when both block, nothing is left to serve RPCs
BLOCK_SECONDS = 0.3


class EchoHandler(grpc.GenericRpcHandler):
    """Raw-bytes echo: b"bad" -> INVALID_ARGUMENT, b"boom" -> exception, b"block" -> wait."""

    def __init__(self, metrics: wm.Metrics):
        self.metrics = metrics
        self.release = threading.Event()
        self.blocked = threading.Semaphore(0)

    def unary(self, request: bytes, context) -> bytes:
        with self.metrics.stage("compute"):
            self.metrics.pixels("input", len(request))
            if request == b"bad":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
            if request == b"boom":
                raise RuntimeError("handler bug")
            if request == b"block":
                self.blocked.release()
                assert self.release.wait(10)
        return request[::-1]

    def stream(self, request: bytes, context):
        for i in range(int(request)):
            yield b"x" * (i + 1)

    def service(self, details):
        if details.method == f"/{SERVICE}/Unary":
            return grpc.unary_unary_rpc_method_handler(self.unary)
        if details.method == f"/{SERVICE}/Stream":
            return grpc.unary_stream_rpc_method_handler(self.stream)
        return None


@pytest.fixture
def served():
    metrics = wm.Metrics()
    assert not metrics.multiprocess
    handler = EchoHandler(metrics)
    interceptor = wmi.MetricsInterceptor(metrics)
    assert isinstance(interceptor, grpc.ServerInterceptor)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=POOL_THREADS), handlers=[handler],
                         interceptors=[interceptor], maximum_concurrent_rpcs=POOL_THREADS)
    interceptor.attach(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    endpoint = wm.MetricsEndpoint.start("127.0.0.1", 0, registry=metrics.registry)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield handler, channel, endpoint, server
    finally:
        handler.release.set()
        channel.close()
        endpoint.close()
        server.stop(None).wait()




def test_every_outcome_is_counted_exactly(served):
    handler, channel, endpoint, server = served
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    stream = channel.unary_stream(f"/{SERVICE}/Stream")
    oks = [b"a", b"bc", b"def"]
    assert [status_of(unary, r) for r in oks] == [grpc.StatusCode.OK] * 3
    assert status_of(unary, b"bad") == grpc.StatusCode.INVALID_ARGUMENT
    assert status_of(unary, b"boom") == grpc.StatusCode.UNKNOWN
    assert status_of(channel.unary_unary(f"/{SERVICE}/Missing"), b"x") == grpc.StatusCode.UNIMPLEMENTED
    assert [len(m) for m in stream(b"4", timeout=10)] == [1, 2, 3, 4]

    # Fill both handler threads (== the concurrency limit), then one call more is shed. gRPC
    # counts a call out in a callback after its response went: wait for the last to settle.
    deadline = time.monotonic() + 10
    while server._state.active_rpc_count:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    blocked = [unary.future(b"block", timeout=20) for _ in range(POOL_THREADS)]
    for _ in blocked:
        assert handler.blocked.acquire(timeout=10)
    t_blocked = time.perf_counter()
    assert status_of(unary, b"shed-me") == grpc.StatusCode.RESOURCE_EXHAUSTED
    busy = scrape(endpoint.port)  # answered with every RPC thread busy
    while time.perf_counter() - t_blocked < BLOCK_SECONDS:
        time.sleep(0.02)
    handler.release.set()
    assert [f.result() for f in blocked] == [b"kcolb"] * POOL_THREADS
    s = scrape(endpoint.port)

    u = {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "Unary"}
    assert value(busy, "warpsvc_rpcs_in_flight", grpc_method="Unary") == POOL_THREADS
    assert value(busy, "warpsvc_rpcs_shed_total", grpc_method="Unary") == 1
    assert value(s, "warpsvc_rpcs_in_flight", grpc_method="Unary") == 0
    # 3 OK + bad + boom + 2 blocked (OK) + 1 shed
    assert value(s, "grpc_server_started_total", **u) == 8
    assert value(s, "grpc_server_handled_total", grpc_code="OK", **u) == 3 + POOL_THREADS
    assert value(s, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **u) == 1
    assert value(s, "grpc_server_handled_total", grpc_code="UNKNOWN", **u) == 1
    assert value(s, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED", **u) == 1
    assert value(s, "warpsvc_rpcs_shed_total", grpc_method="Unary") == 1
    assert total(s, "grpc_server_handled_total", **u) == value(s, "grpc_server_started_total", **u)
    # unknown methods are not counted (unbounded label values)
    assert not [lab for lab, _ in s["grpc_server_started_total"] if lab["grpc_method"] == "Missing"]
    # handler time: 7 handlers ran (the shed call never did); the 2 blocked ones took >= 0.3 s
    assert value(s, "grpc_server_handling_seconds_count", **u) == 7
    assert value(s, "grpc_server_handling_seconds_bucket", le="0.25", **u) <= 7 - POOL_THREADS
    assert value(s, "grpc_server_handling_seconds_bucket", le="+Inf", **u) == 7
    # wire bytes: raw-bytes handlers, so request bytes == the requests, responses == reversed OKs
    sent_requests = oks + [b"bad", b"boom"] + [b"block"] * POOL_THREADS  # the shed one is never read
    assert value(s, "grpc_server_msg_received_total", **u) == len(sent_requests)
    assert value(s, "warpsvc_request_bytes_total", grpc_method="Unary") == sum(map(len, sent_requests))
    assert value(s, "grpc_server_msg_sent_total", **u) == 3 + POOL_THREADS
    assert value(s, "warpsvc_response_bytes_total", grpc_method="Unary") == sum(map(len, oks)) + 5 * POOL_THREADS
    # stage and pixels reported from inside the handler carry the method
    assert value(s, "warpsvc_stage_seconds_count", grpc_method="Unary", stage="compute") == 7
    assert value(s, "warpsvc_pixels_total", grpc_method="Unary", kind="input") == sum(map(len, sent_requests))
    # server streaming: one call, 4 messages of 1+2+3+4 bytes
    st = {"grpc_type": "server_stream", "grpc_service": SERVICE, "grpc_method": "Stream"}
    assert value(s, "grpc_server_started_total", **st) == 1
    assert value(s, "grpc_server_handled_total", grpc_code="OK", **st) == 1
    assert value(s, "grpc_server_msg_received_total", **st) == 1
    assert value(s, "grpc_server_msg_sent_total", **st) == 4
    assert value(s, "warpsvc_response_bytes_total", grpc_method="Stream") == 10
    assert value(s, "warpsvc_rpcs_in_flight", grpc_method="Stream") == 0


def test_concurrency_probe_reads_the_pinned_grpc_server():
    """The probe relies on grpcio's private server state: fail loudly if a grpc upgrade moves it."""
    with_limit = grpc.server(futures.ThreadPoolExecutor(max_workers=1), maximum_concurrent_rpcs=3)
    without = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        probe = wmi.concurrency_probe(with_limit)
        assert probe is not None and probe() is False
        with_limit._state.active_rpc_count = 3
        assert probe() is True
        with_limit._state.active_rpc_count = 0
        assert wmi.concurrency_probe(without) is None
        assert wmi.concurrency_probe(object()) is None
    finally:
        with_limit.stop(None)
        without.stop(None)
