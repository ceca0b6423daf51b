"""``python -m warpsvc.healthcheck``: exit codes against real servers on loopback (plaintext, TLS
with a CA-signed certificate and ``--server-name``, the server's own ``WARPSVC_TLS_*``
environment, NOT_SERVING from a plain health server and from a draining warpsvc, unreachable),
the bearer token it sends, the environment names it shares with ``warpsvc/server/settings.py``,
and its weight (modules imported, RSS, CPU: a resource bound measured with
``getrusage(RUSAGE_CHILDREN)`` in a wrapper process; the figures are in
``benchmarks/bench_healthcheck.py``)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from interop.harness import REPO, ServerProcess, wait_serving

from warpsvc import healthcheck
from warpsvc.server import settings as server_settings

PROBE_FILE = pathlib.Path(healthcheck.__file__)
RSS_BOUND_MB = 40
CPU_BOUND_S = 0.3
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


def probe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m warpsvc.healthcheck`` as a user would; ``env`` replaces every WARPSVC_* variable."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("WARPSVC_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "warpsvc.healthcheck", *args], check=False, cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=60)


# -- the environment names are the server's --------------------------------------------------------
def test_environment_names_match_server_settings():
    """The probe duplicates the names (to avoid importing settings); they must stay the server's."""
    fields = {f.name for f in dataclasses.fields(server_settings.Settings)}
    for field, name in healthcheck.SERVER_ENV.items():
        assert field in fields, field
        assert name == server_settings.ENV_PREFIX + field.upper()
    for name in healthcheck.PROBE_ENV.values():  # probe-only names must not shadow a server setting
        assert name.startswith(server_settings.ENV_PREFIX)
        assert name[len(server_settings.ENV_PREFIX):].lower() not in fields, name


@pytest.mark.parametrize("env,target", [({}, "127.0.0.1:50051"), ({"WARPSVC_PORT": "6000"}, "127.0.0.1:6000"),
                                        ({"WARPSVC_HOST": "0.0.0.0", "WARPSVC_PORT": "7"}, "127.0.0.1:7"),
                                        ({"WARPSVC_HOST": "::"}, "127.0.0.1:50051"),
                                        ({"WARPSVC_HOST": "10.1.2.3"}, "10.1.2.3:50051"),
                                        ({"WARPSVC_HOST": "fd00::5", "WARPSVC_PORT": "9"}, "[fd00::5]:9")])
def test_default_target_from_the_server_environment(env, target):
    assert healthcheck.default_target(env) == target


# -- a plain gRPC health server (for NOT_SERVING and metadata) ------------------------------------------
class _Recorder(grpc.ServerInterceptor):
    def __init__(self):
        self.metadata = []

    def intercept_service(self, continuation, details):
        self.metadata.append(dict(details.invocation_metadata))
        return continuation(details)


@pytest.fixture
def health_server():
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[recorder])
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer, recorder
    finally:
        server.stop(0).wait()


def test_exit_codes_serving_not_serving_unknown(health_server):
    target, servicer, _ = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    out = probe(target)
    assert (out.returncode, out.stdout.strip()) == (0, "SERVING"), out.stderr
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    out = probe(target)
    assert (out.returncode, out.stdout.strip()) == (1, "NOT_SERVING")
    out = probe(target, "--service", "no.such.Service")
    assert (out.returncode, out.stdout.strip()) == (1, "NOT_FOUND")


def test_unreachable_is_unhealthy():
    out = probe("127.0.0.1:1", "--timeout", "2")
    assert (out.returncode, out.stdout.strip()) == (1, "UNAVAILABLE")


def test_token_sent_from_environment_or_file(health_server, tmp_path):
    target, servicer, recorder = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(target, env={"WARPSVC_TOKEN": "s3cret"}).returncode == 0
    (tmp_path / "token").write_text("fromfile\n")
    assert probe(target, "--token-file", str(tmp_path / "token")).returncode == 0
    assert probe(target).returncode == 0
    sent = [m.get("authorization") for m in recorder.metadata]
    assert sent == ["Bearer s3cret", "Bearer fromfile", None], sent


def test_client_cert_flags_go_together():
    out = probe("127.0.0.1:1", "--tls-client-cert", "x.pem")
    assert out.returncode == 2 and "go together" in out.stderr


# -- the real server ---------------------------------------------------------------------------------
def test_plaintext_server():
    with ServerProcess("--port", "0") as srv:
        wait_serving(srv.target)
        out = probe(srv.target)
        assert (out.returncode, out.stdout.strip()) == (0, "SERVING")
        out = probe(env={"WARPSVC_PORT": str(srv.port), "WARPSVC_HOST": "0.0.0.0"})  # the server's own env
        assert (out.returncode, out.stdout.strip()) == (0, "SERVING")


def test_draining_server_is_not_serving():
    """SIGTERM with a call in flight: the real server keeps answering health, NOT_SERVING, while it
    drains; the probe exits 1 and says so; the in-flight call still completes."""
    import signal

    from hostile_server import BIG_MESSAGES, polar_chain

    from warpsvc.v1 import warp_pb2 as pb
    from warpsvc.v1 import warp_pb2_grpc

    from test_metrics import scrape, value
    from test_service_metrics import free_port

    slow = pb.JacobianDeterminantRequest(transforms=polar_chain(16, 1000),
                                         output_shape=pb.ImageSize(height=1000, width=1000))
    metrics_port = free_port()
    with ServerProcess("--port", "0", "--grace-seconds", "30", "--max-output-pixels", str(1 << 20),
                       env={"WARPSVC_METRICS_PORT": str(metrics_port)}) as srv:
        wait_serving(srv.target)
        assert probe(srv.target).returncode == 0
        with grpc.insecure_channel(srv.target, options=BIG_MESSAGES) as channel:
            call = warp_pb2_grpc.WarpServiceStub(channel).JacobianDeterminant.future(slow, timeout=60)
            # SIGTERM once the call runs in its handler (it runs for seconds), not after a fixed sleep
            deadline = time.monotonic() + 30
            while value(scrape(metrics_port), "warpsvc_rpcs_in_flight", grpc_method="JacobianDeterminant") < 1:
                assert time.monotonic() < deadline and not call.done()
                time.sleep(0.02)
            assert not call.done()
            srv.signal(signal.SIGTERM)
            time.sleep(0.3)
            out = probe(srv.target, "--timeout", "2")
            assert (out.returncode, out.stdout.strip()) == (1, "NOT_SERVING"), (out.stdout, call.done())
            assert list(call.result().determinant.shape) == [1000, 1000]
        assert srv.wait(60) == 0


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate it signed for ``warpsvc.internal`` only (not 127.0.0.1), and a
    self-signed certificate for 127.0.0.1."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=warpsvc test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=warpsvc.internal", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:warpsvc.internal\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf", cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "self.key", "-out", "self.pem", "-days",
             "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)
    return d


def _serving_tls(srv, ca, name):
    tls = healthcheck.TlsOptions(ca=str(ca), server_name=name)
    for _ in range(200):
        if healthcheck.check(srv.target, timeout=2, tls=tls) == "SERVING":
            return
    raise AssertionError("TLS server never SERVING")


@needs_openssl
def test_tls_ca_signed_certificate_and_server_name(pki):
    with ServerProcess("--port", "0", "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")) as srv:
        _serving_tls(srv, pki / "ca.pem", "warpsvc.internal")
        ok = probe(srv.target, "--tls-ca", str(pki / "ca.pem"), "--server-name", "warpsvc.internal")
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING"), ok.stderr
        # the certificate does not name 127.0.0.1: without --server-name the handshake fails
        wrong_name = probe(srv.target, "--tls-ca", str(pki / "ca.pem"), "--timeout", "3")
        assert (wrong_name.returncode, wrong_name.stdout.strip()) == (1, "UNAVAILABLE")
        # an untrusted root (the self-signed certificate) fails too
        untrusted = probe(srv.target, "--tls-ca", str(pki / "self.pem"), "--server-name", "warpsvc.internal",
                          "--timeout", "3")
        assert untrusted.returncode == 1
        # plaintext probes get no answer from a TLS port
        plain = probe(srv.target, "--timeout", "3")
        assert (plain.returncode, plain.stdout.strip()) == (1, "UNAVAILABLE")
        # the container's environment: the server's port and a CA and name for the probe
        env = {"WARPSVC_PORT": str(srv.port), "WARPSVC_TLS_CERT": str(pki / "server.pem"),
               "WARPSVC_TLS_KEY": str(pki / "server.key"), "WARPSVC_TLS_CA": str(pki / "ca.pem"),
               "WARPSVC_TLS_SERVER_NAME": "warpsvc.internal"}
        by_env = probe(env=env)
        assert (by_env.returncode, by_env.stdout.strip()) == (0, "SERVING"), by_env.stderr


@needs_openssl
def test_tls_self_signed_from_the_server_settings_alone(pki):
    """With only the server's WARPSVC_TLS_CERT/KEY set (a self-signed certificate for 127.0.0.1),
    the probe trusts that certificate and needs no flag at all."""
    env = {"WARPSVC_TLS_CERT": str(pki / "self.pem"), "WARPSVC_TLS_KEY": str(pki / "self.key")}
    with ServerProcess("--port", "0", env=env) as srv:
        _serving_tls(srv, pki / "self.pem", None)
        out = probe(env={**env, "WARPSVC_PORT": str(srv.port)})
        assert (out.returncode, out.stdout.strip()) == (0, "SERVING"), out.stderr


def test_unreadable_ca_is_unhealthy_not_a_traceback():
    out = probe("127.0.0.1:1", "--tls-ca", "/nonexistent/ca.pem")
    assert out.returncode == 1 and out.stdout.startswith("ERROR") and "Traceback" not in out.stderr


# -- weight ------------------------------------------------------------------------------------------
# the library's dependencies and modules (the lazy package ``warpsvc.core`` itself loads nothing)
HEAVY = ("numpy", "cv2", "numba", "scipy", "skimage", "warpsvc.core.", "warpsvc.server", "warpsvc_api")
MEASURE = r"""
import json, resource, subprocess, sys
subprocess.run(sys.argv[1:], capture_output=True, timeout=60)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"maxrss_mb": r.ru_maxrss / 1024, "cpu_s": r.ru_utime + r.ru_stime}))
"""
LIST_MODULES = r"""
import runpy, sys, json
sys.argv = ["healthcheck", "127.0.0.1:1", "--timeout", "0.5"]
try:
    {run}
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


def measure(cmd: list[str]) -> dict:
    """RSS and CPU of one probe process (a wrapper's RUSAGE_CHILDREN holds only that child)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout)


def imported(run: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", LIST_MODULES.replace("{run}", run)], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout.splitlines()[-1])  # the probe prints its status first


def _heavy(modules) -> list[str]:
    return [m for m in modules if any(m.startswith(h) if h.endswith(".") else m == h or m.startswith(h + ".")
                                      for h in HEAVY)]


def test_the_probe_module_imports_only_grpc_and_the_health_stubs():
    mods = imported(f"runpy.run_path({str(PROBE_FILE)!r}, run_name='__main__')")
    assert "grpc" in mods and "grpc_health.v1.health_pb2" in mods
    assert _heavy(mods) == []


def test_the_probe_script_within_its_resource_bound():
    """Issue 12: <= 40 MB RSS and <= 0.3 s CPU per probe (best of three: the machine is shared)."""
    runs = [measure([sys.executable, str(PROBE_FILE), "127.0.0.1:1", "--timeout", "0.5"]) for _ in range(3)]
    assert min(r["maxrss_mb"] for r in runs) <= RSS_BOUND_MB, runs
    assert min(r["cpu_s"] for r in runs) <= CPU_BOUND_S, runs


def test_python_dash_m_probe_is_light_too():
    mods = imported("runpy.run_module('warpsvc.healthcheck', run_name='__main__', alter_sys=True)")
    assert _heavy(mods) == [], _heavy(mods)[:10]
    runs = [measure([sys.executable, "-m", "warpsvc.healthcheck", "127.0.0.1:1", "--timeout", "0.5"])
            for _ in range(3)]
    assert min(r["maxrss_mb"] for r in runs) <= RSS_BOUND_MB, runs
    assert min(r["cpu_s"] for r in runs) <= CPU_BOUND_S, runs
