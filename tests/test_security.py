"""Security at runtime: TLS refuses plaintext clients, the bearer token is enforced and never
logged, the batch client's manifest cannot make it touch files outside OUTPUT_DIR, and the server
opens no file a request names (``strace`` on the real server process). See SECURITY.md."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import cv2
import grpc
import numpy as np
import pytest
from interop.harness import REPO, ServerProcess, wait_serving
from test_batch_helpers import make_mixed_folder, read_manifest, run_batch
from warpsvc_client import WarpClient, convert

from warpsvc import AffineTransform
from warpsvc.v1 import warp_pb2 as pb
from warpsvc.v1 import warp_pb2_grpc

IMG = (np.arange(30 * 40 * 3) % 251).astype(np.uint8).reshape(30, 40, 3)
SHIFT = AffineTransform([[1, 0, 2.0], [0, 1, 1.0]])


def _self_signed(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A throw-away certificate for ``localhost`` / 127.0.0.1 (openssl CLI; ``cryptography`` is not
    a dependency)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls_server_refuses_plaintext_clients(tmp_path):
    cert, key = _self_signed(tmp_path)
    with ServerProcess("--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)) as srv:
        from warpsvc.healthcheck import check

        deadline = time.monotonic() + 30  # TLS health probe (the certificate names 127.0.0.1 too)
        while check(srv.target, timeout=5, tls_ca=str(cert)) != "SERVING":
            assert time.monotonic() < deadline, "TLS server not SERVING"
            time.sleep(0.1)
        root = cert.read_bytes()
        with WarpClient(srv.target, root_certificates=root, server_name="localhost", timeout=20) as client:
            np.testing.assert_array_equal(client.warp(IMG, AffineTransform.identity()), IMG)
        # A plaintext client gets no answer: the TLS handshake fails, the call is UNAVAILABLE.
        with WarpClient(srv.target, timeout=10, retries=1) as plain, pytest.raises(grpc.RpcError) as info:
            plain.warp(IMG, SHIFT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext health probes are refused too (health is exempt from the token, not from TLS).
        assert check(srv.target, timeout=5) != "SERVING"
        # A TLS client that does not trust this certificate is refused as well.
        with WarpClient(srv.target, tls=True, server_name="localhost", timeout=10, retries=1) as untrusting, \
                pytest.raises(grpc.RpcError) as info:
            untrusting.warp(IMG, SHIFT)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # Raw bytes of an HTTP/2 plaintext preface get no HTTP/2 answer either.
        import socket

        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
            try:
                reply = sock.recv(64)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert not reply.startswith(b"\x00\x00"), reply  # no HTTP/2 SETTINGS frame back
        assert srv.proc.poll() is None


def test_token_enforced_and_never_logged(tmp_path):
    token = "tok-" + secrets.token_hex(16)
    wrong = "tok-" + secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    # --grace-seconds 20: refused calls must not hold the drain gate (they once leaked a count
    # each, so shutdown waited out the whole grace): the server stops well inside it.
    with ServerProcess("--port", "0", "--token-file", str(token_file), "--log-level", "debug",
                       "--grace-seconds", "20") as srv:
        wait_serving(srv.target)  # health is exempt from the token
        with grpc.insecure_channel(srv.target) as channel:
            stub = warp_pb2_grpc.WarpServiceStub(channel)
            request = pb.WarpRequest(image=convert.image(IMG), transforms=convert.transforms(SHIFT))
            for metadata in (None, (("authorization", f"Bearer {wrong}"),), (("authorization", token),),
                             (("authorization", f"Basic {token}"),), (("authorization", f"Bearer {token} "),),
                             (("authorization", f"bearer {token}"),), (("x-token", f"Bearer {token}"),)):
                for method, req in (("Warp", request), ("JacobianDeterminant", pb.JacobianDeterminantRequest()),
                                    ("Align", pb.AlignRequest())):
                    with pytest.raises(grpc.RpcError) as info:
                        getattr(stub, method)(req, timeout=20, metadata=metadata)
                    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, (metadata, info.value.details())
                    assert token not in info.value.details()
            ok = stub.Warp(request, timeout=20, metadata=(("authorization", f"Bearer {token}"),))
            assert list(ok.image.tensor.shape) == [30, 40, 3]
            # A bad request with the right token: refused for its content, the token not echoed.
            with pytest.raises(grpc.RpcError) as info:
                stub.Warp(pb.WarpRequest(), timeout=20, metadata=(("authorization", f"Bearer {token}"),))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and token not in info.value.details()
        with WarpClient(srv.target, token=token) as client:
            np.testing.assert_array_equal(client.warp(IMG, AffineTransform.identity()), IMG)
        with WarpClient(srv.target, token=wrong, retries=1) as client, pytest.raises(grpc.RpcError) as info:
            client.jacobian_determinant(SHIFT, (4, 4))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stopping = time.monotonic()
        srv.signal()
        assert srv.wait(60) == 0
        assert time.monotonic() - stopping < 10, "shutdown waited for refused calls (drain-gate leak)"
    logs = "".join(srv.stdout + srv.stderr)
    assert '"status": "UNAUTHENTICATED"' in logs and '"status": "OK"' in logs  # the access log saw the calls
    assert token not in logs and token[4:] not in logs and wrong not in logs
    assert "auth=token" in logs  # the banner says auth is on, without the value
    # nor in the process's command line (the token comes from a file or the environment)
    assert token not in " ".join(srv.proc.args)


def test_token_from_environment_is_not_logged():
    token = "env-" + secrets.token_hex(16)
    with ServerProcess("--port", "0", "--log-level", "debug", "--grace-seconds", "2",
                       env={"WARPSVC_TOKEN": token}) as srv:
        wait_serving(srv.target)
        with WarpClient(srv.target, retries=1) as anonymous, pytest.raises(grpc.RpcError) as info:
            anonymous.jacobian_determinant(SHIFT, (4, 4))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with WarpClient(srv.target, token=token) as client:
            assert client.jacobian_determinant(SHIFT, (4, 4)).shape == (4, 4)
    logs = "".join(srv.stdout + srv.stderr)
    assert "JacobianDeterminant" in logs and token not in logs and token[4:] not in logs


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (symlinks not followed) -> (size, mtime_ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_batch_resume_refuses_manifest_paths_that_escape(tmp_path):
    """A tampered manifest (``--resume`` reads it back) names files outside OUTPUT_DIR: absolute
    paths, ``..``, a symlink out of the folder. None is trusted as "complete" and none is written
    or deleted: images with escaping records are redone inside OUTPUT_DIR, the symlinked output is
    refused (PathError), the outside files stay as they were. (Names from ``--transforms`` files: tests/test_batch_paths.py.)"""
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 4)
    assert run_batch("warp", src, out, "--matrix", "1,0,2,0,1,-1", "--no-report").returncode == 0
    first = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    for i, rel in enumerate(names):  # each victim is a byte-identical copy of a real output
        victims[rel] = outside / f"victim{i}{pathlib.Path(rel).suffix}"
        shutil.copyfile(out / first[rel]["output"], victims[rel])
    # names[0]: the output replaced by a symlink to the identical outside file
    (out / first[names[0]]["output"]).unlink()
    os.symlink(victims[names[0]], out / first[names[0]]["output"])
    # the other names: records claiming escaping outputs, with the victims' size and hash
    tampered = []
    escapes = ["../outside/" + victims[names[1]].name, str(victims[names[2]]),
               "sub/../../outside/" + victims[names[3]].name]
    for rel, bad in zip(names[1:], escapes, strict=True):
        (out / first[rel]["output"]).unlink()
        tampered.append({**first[rel], "output": bad})
    with open(out / "manifest.jsonl", "a") as fh:
        fh.writelines(json.dumps(rec) + "\n" for rec in tampered)
    before = _tree(outside)
    res = run_batch("warp", src, out, "--matrix", "1,0,2,0,1,-1", "--no-report", "--resume")
    # The symlinked output is refused (PathError, not followed nor replaced); the others redone.
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{len(names) - 1} ok, 1 failed, 0 skipped" in res.stdout, res.stdout
    assert "PathError" in res.stderr and "outside" in res.stderr, res.stderr
    assert _tree(outside) == before  # nothing outside was written, replaced or deleted
    assert all(_sha(v) == first[rel]["sha256"] for rel, v in victims.items())
    assert (out / first[names[0]]["output"]).is_symlink()
    for rel in names[1:]:
        produced = out / first[rel]["output"]
        assert produced.is_file() and not produced.is_symlink(), rel
        assert _sha(produced) == first[rel]["sha256"]
    last = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert last[names[0]]["status"] == "failed" and "PathError" in last[names[0]]["error"]
    assert all(not pathlib.Path(r["output"]).is_absolute() and ".." not in r["output"] for r in last.values())


# -- the server opens no file named by a request --------------------------------------------------------
OPEN_CALLS = "openat,open,creat,openat2,unlink,unlinkat,rename,renameat,renameat2,mkdir,mkdirat,symlink,symlinkat"
ALLOWED_PREFIXES = ("/proc/", "/sys/", "/dev/")


def _requests_naming(canary: pathlib.Path) -> list[tuple[str, object]]:
    """Requests whose bytes carry the canary's path every way the API allows (there are no string
    fields in requests: paths can only hide in image bytes), plus every image codec on both sides."""
    path = str(canary).encode()
    png = cv2.imencode(".png", IMG)[1].tobytes()
    # a PNG with a tEXt chunk holding the path, and an iTXt-like "file://" URL
    text = b"tEXt" + b"source\x00" + path
    chunk = len(text[4:]).to_bytes(4, "big") + text + (0).to_bytes(4, "big")
    png_text = png[:33] + chunk + png[33:]
    t = convert.transforms(SHIFT)
    req = []
    for data in (path, b"file://" + path, png_text, b"\x89PNG\r\n\x1a\n" + path, b"II*\x00" + path,
                 cv2.imencode(".jpg", IMG)[1].tobytes() + path, cv2.imencode(".tiff", IMG)[1].tobytes()):
        req.append(("Warp", pb.WarpRequest(image=pb.Image(encoded=pb.EncodedImage(data=data)), transforms=t)))
    for form in (pb.RESPONSE_FORM_PNG, pb.RESPONSE_FORM_JPEG, pb.RESPONSE_FORM_TIFF, pb.RESPONSE_FORM_TENSOR):
        req.append(("Warp", pb.WarpRequest(image=convert.image(IMG), transforms=t, response_form=form)))
    req.append(("Warp", pb.WarpRequest(image=convert.image(IMG.astype(np.float32)), transforms=t,
                                       response_form=pb.RESPONSE_FORM_TIFF)))
    req.append(("Warp", pb.WarpRequest(image=pb.Image(tensor=pb.Tensor(shape=[len(path)], dtype=pb.DTYPE_UINT8,
                                                                       data=path)), transforms=t)))
    req.append(("JacobianDeterminant", pb.JacobianDeterminantRequest(transforms=t,
                                                                     output_shape=pb.ImageSize(height=5, width=5))))
    tmpl = np.ascontiguousarray(IMG[5:25, 5:35, 0]).astype(np.float32)
    req.append(("Align", pb.AlignRequest(template=convert.image(tmpl), image=convert.image(IMG[:, :, 0]),
                                         model=pb.MOTION_MODEL_TRANSLATION, init=[1, 0, -5, 0, 1, -5])))
    return req


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_server_opens_no_file_named_by_a_request(tmp_path):
    canary = tmp_path / "canary.png"
    cv2.imwrite(str(canary), IMG)
    trace = tmp_path / "trace.txt"
    probe = subprocess.run(["strace", "-f", "-e", "trace=openat", "-o", str(tmp_path / "probe.txt"), "true"],
                           check=False, capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode()[:200]}")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(["strace", "-f", "-qq", "-e", f"trace={OPEN_CALLS}", "-o", str(trace),
                               sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0", "--workers", "1",
                               "--no-warm-up", "--metrics-port", "0"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=log,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    worker = None
    try:
        port = None
        for line in server.stdout:
            m = re.search(r"serving on \S+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, (tmp_path / "server.log").read_text()
        worker = _traced_child(server.pid)
        target = f"127.0.0.1:{port}"
        wait_serving(target, timeout=60)
        with grpc.insecure_channel(target) as channel:
            stub = warp_pb2_grpc.WarpServiceStub(channel)
            warm = _requests_naming(tmp_path / "warm-up.png")
            for method, request in warm:  # first calls may import modules lazily: not counted
                try:
                    getattr(stub, method)(request, timeout=60)
                except grpc.RpcError:
                    pass
            mark = len(trace.read_text().splitlines())
            fd_before = _regular_fds(worker)
            for method, request in _requests_naming(canary):
                try:
                    getattr(stub, method)(request, timeout=60)
                except grpc.RpcError as err:
                    assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
            fd_after = _regular_fds(worker)
            end = len(trace.read_text().splitlines())
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGTERM)  # the server itself (strace would only detach)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        server.stdout.close()
        log.close()
    lines = trace.read_text().splitlines()
    everything = "\n".join(lines)
    assert "openat(" in everything, "strace recorded nothing: the check proved nothing"
    assert str(canary) not in everything and str(tmp_path / "warm-up.png") not in everything
    print(f"\nstrace: {len(lines)} lines, {end - mark} while serving the canary requests")
    during = [ln for ln in lines[mark:end] if re.match(r"\d+\s+\w+\(", ln)]  # syscalls while serving the requests
    for line in during:
        m = re.search(r'"([^"]*)"', line)
        path = m.group(1) if m else ""
        assert path.startswith((*ALLOWED_PREFIXES, sys.prefix, "/usr/")), line
        assert "O_WRONLY" not in line and "O_RDWR" not in line and "O_CREAT" not in line, line
        assert not re.match(r"\d+\s+(unlink|rename|mkdir|symlink|creat)", line), line
    assert fd_after <= fd_before, (fd_before, fd_after)


def _traced_child(strace_pid: int) -> int:
    """The server process strace started (its only child)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = pathlib.Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError("strace has no child")


def _regular_fds(pid: int) -> set[str]:
    """Paths of regular files the process holds open (from /proc/<pid>/fd), sockets/pipes excluded."""
    out = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            out.add(target)
    return out


def test_unauthenticated_calls_are_refused_without_parsing_the_body(monkeypatch):
    """The token check answers UNAUTHENTICATED with a handler whose deserializer ignores the bytes:
    the servicer's request parser never runs for an unauthenticated call (counted), and runs once
    for an authenticated one."""
    from warpsvc.server import Settings, build_server
    from warpsvc_api import wire

    parsed = []
    real = wire.deserializer

    def counting(message_type, **kw):
        inner = real(message_type, **kw)

        def parse(raw):
            parsed.append(len(raw))
            return inner(raw)

        return parse if message_type.DESCRIPTOR.name.endswith("Request") else inner  # not the client's

    monkeypatch.setattr(wire, "deserializer", counting)
    token = secrets.token_hex(8)
    srv = build_server(Settings(port=0, metrics_port=0, token=token))
    srv.start()
    big = np.zeros((2048, 2048, 3), np.uint8)  # a 12 MiB request
    try:
        with WarpClient(f"127.0.0.1:{srv.port}", retries=1, timeout=20) as anonymous, \
                pytest.raises(grpc.RpcError) as info:
            anonymous.warp(big, SHIFT)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert parsed == []
        with WarpClient(f"127.0.0.1:{srv.port}", token=token, timeout=20) as client:
            assert client.warp(IMG, SHIFT).shape == IMG.shape
        assert len(parsed) == 1
    finally:
        srv.stop(0).wait()
