"""WarpClient channel behaviour: retries past the 256 KiB buffer, deadlines, tokens, TLS, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from interop.harness import inprocess_server
from warpsvc_client import WarpClient
from warpsvc_client.client import channel_options, service_config

import warpsvc
from warpsvc import AffineTransform
from warpsvc.server import Settings
from warpsvc.server.servicer import WarpServicer, add_to_server
from warpsvc_api.v1 import warp_pb2_grpc

IMG = np.random.default_rng(41).random((400, 400, 3)).astype(np.float32)  # 1.9 MB request
SHIFT = AffineTransform([[1, 0, 3.0], [0, 1, -2.0]])


class FlakyServicer(WarpServicer):
    """Answers UNAVAILABLE to the first ``failures`` Warp calls, then serves normally."""

    def __init__(self, failures: int):
        super().__init__(Settings())
        self.failures, self.calls = failures, 0
        self._lock = threading.Lock()

    def Warp(self, request, context):
        with self._lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "flaky")
        return super().Warp(request, context)


@pytest.fixture
def flaky():
    servicer = FlakyServicer(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 64 << 20)])
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_service_config_retries_unavailable_with_round_robin():
    cfg = json.loads(service_config(5))
    assert cfg["loadBalancingConfig"] == [{"round_robin": {}}]
    policy = cfg["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 5
    opts = dict(channel_options(64 << 20, 5))
    assert opts["grpc.per_rpc_retry_buffer_size"] == 64 << 20
    assert opts["grpc.max_send_message_length"] == opts["grpc.max_receive_message_length"] == 64 << 20


def test_large_request_is_retried_on_unavailable(flaky):
    servicer, target = flaky
    with WarpClient(target, timeout=20) as client:
        out = client.warp(IMG, SHIFT)
    np.testing.assert_array_equal(out, warpsvc.warp(IMG, SHIFT))
    assert servicer.calls == 3  # two UNAVAILABLE, then served


def test_without_the_raised_buffer_a_large_request_is_not_retried(flaky):
    """Why the client raises grpc.per_rpc_retry_buffer_size: gRPC's 256 KiB default silently
    disables retries for larger requests."""
    servicer, target = flaky
    opts = [o for o in channel_options(64 << 20, 5) if o[0] != "grpc.per_rpc_retry_buffer_size"]
    with grpc.insecure_channel(target, options=opts) as channel:
        from warpsvc_api import convert
        from warpsvc_api.v1 import warp_pb2 as pb

        request = pb.WarpRequest(image=convert.image_message(IMG), transforms=convert.transforms(SHIFT))
        with pytest.raises(grpc.RpcError) as info:
            warp_pb2_grpc.WarpServiceStub(channel).Warp(request, timeout=20)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.calls == 1


def test_errors_come_back_as_library_errors_with_the_field():
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}") as client:
        with pytest.raises(warpsvc.InvalidArgumentError) as info:
            client.warp(IMG, AffineTransform([[1, 0, 0], [0, 1, 0]]), interpolation="linear", border_value=np.inf)
        assert info.value.field == "border_value"
        assert isinstance(info.value.__cause__, grpc.RpcError)
        with pytest.raises(warpsvc.InvalidArgumentError) as info:
            client.warp(IMG, SHIFT, interpolation="bogus")  # refused client-side, like the library
        assert info.value.field == "interpolation"
        with pytest.raises(warpsvc.InvalidTransformError):
            client.warp(IMG, np.eye(3))


def test_deadline_exceeded(monkeypatch):
    release = threading.Event()
    real = warpsvc.warp

    def slow(*args, **kwargs):
        release.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(warpsvc, "warp", slow)
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}", timeout=0.2) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.warp(IMG[:8, :8], SHIFT)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()


def test_bearer_token(caplog):
    token = "s3cret-token-41"
    small = IMG[:10, :10]
    with caplog.at_level("INFO", logger="warpsvc.access"), inprocess_server(token=token) as srv:
        target = f"127.0.0.1:{srv.port}"
        for wrong in (None, "nope"):
            with WarpClient(target, token=wrong) as client, pytest.raises(grpc.RpcError) as info:
                client.warp(small, SHIFT)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with WarpClient(target, token=token) as client:
            np.testing.assert_array_equal(client.warp(small, SHIFT), warpsvc.warp(small, SHIFT))
        from warpsvc.healthcheck import check

        assert check(target) == "SERVING"  # health needs no token
    assert not any(token in r.getMessage() for r in caplog.records)
    assert sum('"UNAUTHENTICATED"' in r.getMessage() for r in caplog.records) == 2


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    small = IMG[:10, :10]
    with inprocess_server(tls_cert=str(cert), tls_key=str(key)) as srv:
        with WarpClient(f"localhost:{srv.port}", root_certificates=cert.read_bytes()) as client:
            np.testing.assert_array_equal(client.warp(small, SHIFT), warpsvc.warp(small, SHIFT))
        with WarpClient(f"127.0.0.1:{srv.port}", retries=1) as plain, pytest.raises(grpc.RpcError) as info:
            plain.warp(small, SHIFT, timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        from warpsvc.healthcheck import check

        assert check(f"localhost:{srv.port}", tls_ca=str(cert)) == "SERVING"
