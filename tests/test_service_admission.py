"""Admission (warpsvc/server/admission.py) on a real ``warpsvc serve`` process: with every compute
slot and every admitted place taken by slow alignments, health and reflection still answer within
1 s, one more work call is refused RESOURCE_EXHAUSTED at once, and a call waiting for a slot past
its deadline ends DEADLINE_EXCEEDED -- the status the access log records too.

Slow calls: Warp of a 2048x2048 uint8 image onto a 5000x5000 grid with Lanczos interpolation
(about 0.6 s of one core each at the worker's one OpenCV thread).
"""

from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from interop.harness import ServerProcess, wait_serving
from warpsvc_client import WarpClient

from warpsvc import AffineTransform, HomographyTransform
from warpsvc_api import convert, wire
from warpsvc_api.v1 import warp_pb2 as pb

SLOTS, ADMITTED = 1, 4  # one slot: the four slow calls run one after another


def _access(srv: ServerProcess) -> list[dict]:
    out = []
    for line in srv.stderr:
        if "warpsvc.access" in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def _until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_health_and_reflection_answer_while_every_slot_is_busy():
    # one OpenCV thread: the four slow calls (one after another in the single slot) last seconds
    # even on an idle machine, so they are all still in the server while the probes run
    with ServerProcess("--port", "0", "--threads", str(SLOTS), "--cv-threads", "1",
                       "--max-concurrent-rpcs", str(ADMITTED)) as srv:
        wait_serving(srv.target)
        request = _slow_warp_request()
        channel = grpc.insecure_channel(srv.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        try:
            slow = [_slow_warp(channel).future(request, timeout=60) for _ in range(ADMITTED)]
            time.sleep(0.5)  # let the four uploads reach the server before the first probe
            # Every admitted place taken: the server logs no call yet, so wait until a further
            # work call is refused (the refusal is logged at once).
            health = health_pb2_grpc.HealthStub(channel)
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)
            with WarpClient(srv.target, retries=1, timeout=10) as client:
                def refused() -> bool:
                    try:
                        client.jacobian_determinant(AffineTransform.identity(), (4, 4), timeout=0.5)
                        return False
                    except grpc.RpcError as err:
                        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                            return False  # admitted before a slow call arrived, then queued for the slot
                        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
                        assert "max_concurrent_rpcs" in err.details()
                        return True

                _until(refused)
                assert not any(f.done() for f in slow), "the slow calls ended before the probes ran"
                for _ in range(5):
                    t0 = time.perf_counter()
                    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    assert answer.status == health_pb2.HealthCheckResponse.SERVING
                    t1 = time.perf_counter()
                    (listing,) = refl.ServerReflectionInfo(
                        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=1.0)
                    names = {s.name for s in listing.list_services_response.service}
                    assert "warpsvc.v1.WarpService" in names
                    assert t1 - t0 < 1.0 and time.perf_counter() - t1 < 1.0
                assert not all(f.done() for f in slow)
            assert [f.result() > 5000 * 5000 for f in slow] == [True] * ADMITTED
        finally:
            channel.close()
    statuses = [line["status"] for line in _access(srv) if line["method"].endswith("/Warp")]
    assert statuses == ["OK"] * ADMITTED


def test_a_call_waiting_for_a_slot_past_its_deadline_is_deadline_exceeded():
    # one OpenCV thread: the slow call (~1 s of Lanczos on an idle core) outlasts the short one's
    # 0.1 s wait + 0.3 s deadline even on a quiet machine
    with ServerProcess("--port", "0", "--threads", "1", "--cv-threads", "1", "--max-concurrent-rpcs", "4") as srv:
        wait_serving(srv.target)
        channel = grpc.insecure_channel(srv.target, options=[("grpc.max_receive_message_length", 64 << 20)])
        try:
            busy = _slow_warp(channel).future(_slow_warp_request(), timeout=60)
            time.sleep(0.1)  # the slow call holds the only slot
            with WarpClient(srv.target, retries=1) as client, pytest.raises(grpc.RpcError) as info:
                client.jacobian_determinant(AffineTransform.identity(), (4, 4), timeout=0.3)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert not busy.done()
            assert busy.result() > 5000 * 5000
        finally:
            channel.close()
        _until(lambda: any(x["method"].endswith("/JacobianDeterminant") for x in _access(srv)))
    (line,) = [x for x in _access(srv) if x["method"].endswith("/JacobianDeterminant")]
    assert line["status"] == "DEADLINE_EXCEEDED" and line["ms"] < 1000


def _slow_warp_request() -> wire.Parts:
    image = (np.arange(2048 * 2048) % 251).astype(np.uint8).reshape(2048, 2048)
    H = HomographyTransform(np.array([[2.4, 0.05, 3.0], [0.02, 2.4, 2.0], [1e-5, 2e-5, 1.0]]))
    fields = convert.warp_request(H, (5000, 5000), interpolation="lanczos", border="constant", border_value=0.0,
                                  intensity="plain", antialias=False, response_form="tensor", jpeg_quality=0)
    return wire.Parts.of(fields).then(convert.image_field(image, wire.number(pb.WarpRequest, "image")))


def _slow_warp(channel):
    """A multi-callable for the raw slow Warp (the response is not decoded)."""
    return channel.unary_unary("/warpsvc.v1.WarpService/Warp", request_serializer=wire.serialize,
                               response_deserializer=len)
