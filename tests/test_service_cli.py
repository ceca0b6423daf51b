"""The server the way a user starts it: ``warpsvc serve`` as a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
from interop.harness import REPO, ServerProcess, wait_serving
from warpsvc_client import WarpClient

import warpsvc
from warpsvc import AffineTransform, HomographyTransform, PolarTransform


def healthcheck(target: str) -> int:
    return subprocess.run([sys.executable, "-m", "warpsvc.healthcheck", target, "--timeout", "2"], cwd=REPO,
                          capture_output=True, text=True).returncode


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0") as srv:
        wait_serving(srv.target)
        yield srv


def test_every_rpc_over_the_cli_server_equals_library(server):
    rng = np.random.default_rng(31)
    img = cv2.GaussianBlur(rng.random((90, 120, 3)), (0, 0), 2).astype(np.float32)
    t = HomographyTransform([[0.95, 0.05, 4.0], [-0.03, 1.02, 2.0], [2e-4, -1e-4, 1.0]])
    polar = PolarTransform((60, 45), 40.0, (120, 60))
    with WarpClient(server.target, timeout=20) as client:
        np.testing.assert_array_equal(client.warp(img, t), warpsvc.warp(img, t))
        png = cv2.imencode(".png", (img * 255).astype(np.uint8))[1].tobytes()
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(client.warp(png, polar), warpsvc.warp(decoded, polar))
        np.testing.assert_array_equal(client.jacobian_determinant(polar.inverse(), (90, 120)),
                                      warpsvc.jacobian_determinant(polar.inverse(), (90, 120)))
        if hasattr(warpsvc, "align"):
            tmpl = np.ascontiguousarray(img[10:80, 15:105])
            init = np.array([[1, 0, -14.0], [0, 1, -9.0], [0, 0, 1]])
            remote = client.align(tmpl, img, "affine", init=init)
            np.testing.assert_array_equal(remote.matrix, warpsvc.align(tmpl, img, "affine", init=init).matrix)


def test_healthcheck_module_exit_codes(server):
    assert healthcheck(server.target) == 0
    assert healthcheck("127.0.0.1:1") == 1  # nothing listens there


def test_access_log_lines_are_structured(server):
    with WarpClient(server.target) as client:
        client.jacobian_determinant(AffineTransform.identity(), (4, 5))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any('"out_px": 20,' in line for line in server.stderr):
        time.sleep(0.05)
    line = next(line for line in server.stderr if '"out_px": 20,' in line)
    assert "warpsvc.access" in line and "/warpsvc.v1.WarpService/JacobianDeterminant" in line
    assert '"status": "OK"' in line and '"in_px": 0' in line and '"ms":' in line


def test_settings_from_environment_and_bad_flags():
    with ServerProcess("--port", "0", env={"WARPSVC_MAX_OUTPUT_PIXELS": "100"}) as srv:
        wait_serving(srv.target)
        with WarpClient(srv.target) as client, pytest.raises(warpsvc.ImageTooLargeError) as info:
            client.jacobian_determinant(AffineTransform.identity(), (11, 10))
        assert info.value.field == "output_shape"
    bad = subprocess.run([sys.executable, "-m", "warpsvc.cli", "serve", "--workers", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "workers must be >= 1" in bad.stderr


EXTRA = ()


def _load(target: str, stop: threading.Event, results: list, image, transform) -> None:
    with WarpClient(target, timeout=30, retries=1) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                out = client.warp(image, transform, antialias=True)
                results.append((t0, time.monotonic(), "OK", out.shape))
            except grpc.RpcError as err:
                results.append((t0, time.monotonic(), err.code().name, None))


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_loses_no_in_flight_call(workers):
    """SIGTERM while 6 clients keep calls in flight: every call sent before the signal completes
    OK (including those queued for a handler thread), the process exits 0."""
    image = np.random.default_rng(32).random((500, 600)).astype(np.float32)
    transform = AffineTransform.from_components(scale=(0.7, 0.8), rotation=0.3, translation=(20, 10))
    with ServerProcess("--port", "0", "--workers", str(workers), "--grace-seconds", "20", *EXTRA) as srv:
        wait_serving(srv.target)
        stop, results = threading.Event(), []
        threads = [threading.Thread(target=_load, args=(srv.target, stop, results, image, transform))
                   for _ in range(6)]
        for t in threads:
            t.start()
        while len([r for r in results if r[2] == "OK"]) < 6:
            time.sleep(0.02)
        t_signal = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(30) == 0
        stop.set()
        for t in threads:
            t.join(30)
    before = [r for r in results if r[0] < t_signal - 0.05]
    in_flight = [r for r in before if r[1] > t_signal]
    assert before and all(r[2] == "OK" for r in before), [r[2] for r in before]
    assert in_flight, "no call was in flight at SIGTERM: the test proved nothing"
    # Calls sent after the signal are refused: UNAVAILABLE by the drain gate (retriable), or
    # CANCELLED if one arrives at the instant gRPC stops (grpc/grpc#41785); never anything else.
    odd = [(r[2], round(r[0] - t_signal, 3)) for r in results
           if r[2] not in ("OK", "UNAVAILABLE") and not (r[2] == "CANCELLED" and r[0] > t_signal)]
    assert not odd, odd
    assert any("draining" in line for line in srv.stderr)


def test_two_workers_share_the_port():
    with ServerProcess("--port", "0", "--workers", "2") as srv:
        wait_serving(srv.target)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum("serving on" in line for line in srv.stdout) < 2:
            time.sleep(0.05)
        lines = [line for line in srv.stdout if "serving on" in line]
        assert len(lines) == 2 and len({line.split("pid ")[1].split(")")[0] for line in lines}) == 2
        assert len({line.rsplit(":", 1)[1].split()[0] for line in lines}) == 1  # one port
        with WarpClient(f"dns:///localhost:{srv.port}") as client:
            img = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40)
            for _ in range(4):
                np.testing.assert_array_equal(client.warp(img, AffineTransform.identity()), img)
        srv.signal(signal.SIGINT)
        assert srv.wait(30) == 0


def test_workers_cap_opencv_and_blas_threads():
    """Each worker runs ``cv_threads`` OpenCV threads (here 1) and one BLAS thread (no spinning
    BLAS threads oversubscribing the cores)."""
    code = ("import cv2, threadpoolctl, numpy; from warpsvc.server.runner import run_worker; "
            "import warpsvc.server.app as app; "
            "orig = app.build_server\n"
            "def probe(settings, **_):\n"
            "    blas = [p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']\n"
            "    print('THREADS', cv2.getNumThreads(), sorted(set(blas)), flush=True); raise SystemExit(0)\n"
            "app.build_server = probe\n"
            "from warpsvc.server import Settings; run_worker(Settings(port=0, cv_threads=1))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "THREADS 1 [1]" in out.stdout, out.stdout + out.stderr


def _serve_briefly(*args, env=None, timeout=60):
    """``warpsvc serve ...`` expected to exit by itself (a refused setting or port)."""
    import os

    full = {**os.environ, "WARPSVC_METRICS_PORT": "0", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "warpsvc.cli", "serve", *args], cwd=REPO, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # it served: stop it and its forked workers, then fail
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_another_server_listens_on_is_refused(server, workers):
    """The workers share their port through SO_REUSEPORT; a second server must not (it started and
    took part of the connections). The first one keeps serving all of them."""
    out = _serve_briefly("--port", str(server.port), "--workers", workers)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot bind 127.0.0.1:{server.port}" in out.stderr and "another server listens" in out.stderr
    assert "serving on" not in out.stdout
    assert healthcheck(server.target) == 0


def test_token_file_variable_and_refused_environment(tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with ServerProcess("--port", "0", env={"WARPSVC_TOKEN_FILE": str(token)}) as srv:
        wait_serving(srv.target)
        assert any("auth=token" in line for line in srv.stdout)
        with grpc.insecure_channel(srv.target) as channel:
            from warpsvc.v1 import warp_pb2 as pb
            from warpsvc.v1 import warp_pb2_grpc

            stub = warp_pb2_grpc.WarpServiceStub(channel)
            req = pb.JacobianDeterminantRequest(transforms=[pb.Transform(affine=pb.AffineTransform(matrix=[1, 0, 0, 0, 1, 0]))],
                                                output_shape=pb.ImageSize(height=2, width=2))
            with pytest.raises(grpc.RpcError) as err:
                stub.JacobianDeterminant(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.JacobianDeterminant(req, timeout=10, metadata=[("authorization", "Bearer s3cret")])
    cases = [({"WARPSVC_NO_REFLECTION": "1"}, "WARPSVC_REFLECTION=false"),
             ({"WARPSVC_TOKEN_FILE": str(token), "WARPSVC_TOKEN": "x"}, "not both"),
             ({"WARPSVC_TOKEN_FILE": str(tmp_path / "absent")}, "WARPSVC_TOKEN_FILE: cannot read"),
             ({"WARPSVC_LOG_LEVEL": "bogus"}, "log_level must be one of")]
    for env, needle in cases:
        out = _serve_briefly("--port", "0", env=env)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, (env, out.stderr)
    out = _serve_briefly("--port", "0", "--log-level", "bogus")
    assert out.returncode == 2 and "log_level must be one of" in out.stderr and "Traceback" not in out.stderr


def test_connections_are_recycled_after_max_connection_age():
    """With an age of 1 s a client calling for 3.5 s is asked to reconnect (GOAWAY) and does, on
    new connections (new client ports in the access log); every call succeeds, none is lost."""
    import json

    with ServerProcess("--port", "0", "--max-connection-age-seconds", "1") as srv:
        wait_serving(srv.target)
        with WarpClient(srv.target, timeout=10) as client:
            t0, calls = time.monotonic(), 0
            while time.monotonic() - t0 < 3.5:
                det = client.jacobian_determinant(AffineTransform([[2.0, 0, 0], [0, 2.0, 0]]), (8, 8))
                assert np.allclose(det, 0.25)
                calls += 1
                time.sleep(0.05)
        time.sleep(0.3)
        peers = [json.loads(line[line.index("{"):])["peer"] for line in srv.stderr
                 if "warpsvc.access" in line and "JacobianDeterminant" in line]
        assert len(peers) == calls
        assert len(set(peers)) >= 2, set(peers)
