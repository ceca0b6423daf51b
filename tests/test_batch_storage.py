"""``warpsvc-batch`` on object storage (fsspec): a real S3-compatible HTTP endpoint started by the
test (moto's server mode on loopback, as s3fs's own tests do), an interrupted run resumed, names
that cannot leave the prefix; ``memory://`` in a child process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import warpsvc
from test_batch_helpers import REPO, batch_cmd, make_mixed_folder, texture

pytest.importorskip("fsspec", reason="URL inputs/outputs need fsspec (extra 'warpsvc[batch]')")

H = "0.95,0.05,4,-0.03,1.02,2,2e-4,-1e-4,1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    s3fs = pytest.importorskip("s3fs", reason="the batch S3 tests need s3fs (extra 'warpsvc[s3]')")
    moto_server = pytest.importorskip("moto.server", reason="the batch S3 tests need moto[server] (test extra)")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, use_listings_cache=False)
    try:
        yield endpoint, fs
    finally:
        server.stop()


def _upload(fs, local_root, bucket_prefix, names):
    for n in names:
        fs.pipe_file(f"{bucket_prefix}/{n}", (local_root / n).read_bytes())


def _env(endpoint):
    return {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}


def _manifest(fs, key):
    try:
        raw = fs.cat_file(key)
    except FileNotFoundError:
        return []
    out = []
    for line in raw.split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _check_outputs(fs, local_src, prefix, names, matrix):
    t = warpsvc.HomographyTransform(np.array(matrix.split(","), float).reshape(3, 3)) if matrix.count(",") == 8 \
        else warpsvc.AffineTransform(np.array(matrix.split(","), float).reshape(2, 3))
    for n in names:
        got = cv2.imdecode(np.frombuffer(fs.cat_file(f"{prefix}/{n}"), np.uint8), cv2.IMREAD_UNCHANGED)
        want = warpsvc.warp(cv2.imread(str(local_src / n), cv2.IMREAD_UNCHANGED), t)
        assert got is not None and got.shape == want.shape and got.dtype == want.dtype, n
        if not n.endswith(".jpg"):
            np.testing.assert_array_equal(got, want, err_msg=n)


def test_s3_in_and_out_with_an_interrupted_run_resumed(s3, tmp_path):
    endpoint, fs = s3
    fs.mkdir("run1")
    names = []  # 384x384 frames: the run lasts several seconds, past the manifest's first upload (1 s)
    for i in range(120):
        names.append(f"f{i % 3}/frame{i:03d}.png")
        (tmp_path / "src" / names[-1]).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "src" / names[-1]), texture(i, 384))
    _upload(fs, tmp_path / "src", "run1/in", names)
    args = ["warp", "s3://run1/in", "s3://run1/out", "--matrix", H, "--jobs", "1", "--no-progress"]
    proc = subprocess.Popen(batch_cmd(*args), cwd=REPO, env=_env(endpoint), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_manifest(fs, "run1/out/manifest.jsonl")) < 1:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.stderr.close()
    time.sleep(0.5)  # the killed pool's workers notice their parent is gone and stop
    recorded = {r["input"] for r in _manifest(fs, "run1/out/manifest.jsonl") if r["status"] == "ok"}
    assert 1 <= len(recorded) < len(names), "the kill came too late to interrupt the run"
    res = subprocess.run(batch_cmd(*args, "--resume"), cwd=REPO, env=_env(endpoint), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    # every image recorded before the kill is skipped (verified: size and SHA-256 of the object)
    assert f"{len(names) - len(recorded)} ok, 0 failed, {len(recorded)} skipped" in res.stdout, res.stdout
    last = {r["input"]: r for r in _manifest(fs, "run1/out/manifest.jsonl")}
    assert set(last) == set(names) and all(r["status"] == "ok" for r in last.values())
    keys = sorted(k[len("run1/out/"):] for k in fs.find("run1/out"))
    assert keys == sorted(names + ["contact_sheet.png", "manifest.jsonl", "report.html"])  # no temporary objects
    _check_outputs(fs, tmp_path / "src", "run1/out", names, H)
    html = fs.cat_file("run1/out/report.html").decode()
    assert "<details>" in html and "s3://run1/in" in html


def test_s3_storage_options_and_names_that_try_to_leave_the_prefix(s3, tmp_path):
    endpoint, fs = s3
    fs.mkdir("run2")
    names = make_mixed_folder(tmp_path / "src", 4)
    _upload(fs, tmp_path / "src", "run2/in", names)
    fs.pipe_file("run2/victim.png", b"keep")
    rows = [{"path": names[0], "matrix": [1, 0, 2, 0, 1, -1], "output": "../victim.png"},
            {"path": names[1], "matrix": [1, 0, 2, 0, 1, -1], "output": "/run2/victim.png"},
            {"path": names[2], "matrix": [1, 0, 2, 0, 1, -1]}]
    spec = tmp_path / "t.jsonl"
    spec.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # options only from the flag
    opts = json.dumps({"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
    res = subprocess.run(batch_cmd("warp", "s3://run2/in", "s3://run2/out", "--transforms", spec,
                                   "--storage-options", opts, "--no-progress", "--no-report"),
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    last = {r["input"]: r for r in _manifest(fs, "run2/out/manifest.jsonl")}
    assert "PathError" in last[names[0]]["error"] and "PathError" in last[names[1]]["error"]
    assert last[names[2]]["status"] == "ok"
    assert fs.cat_file("run2/victim.png") == b"keep"
    assert sorted(fs.find("run2/out")) == ["run2/out/" + names[2], "run2/out/manifest.jsonl"]


MEMORY_RUN = """
import sys, cv2, fsspec, numpy as np, warpsvc
from warpsvc_client.batch import cli
src, names = sys.argv[1], sys.argv[2:]
mem = fsspec.filesystem("memory")
for n in names:
    mem.pipe_file(f"/batchtest/in/{n}", open(f"{src}/{n}", "rb").read())
args = ["warp", "memory://batchtest/in", "memory://batchtest/out", "--matrix", "1,0,2,0,1,-1", "--jobs", "1",
        "--no-progress", "--no-report"]
assert cli.main(args) == 0
t = warpsvc.AffineTransform([[1, 0, 2], [0, 1, -1]])
for n in names:
    got = cv2.imdecode(np.frombuffer(mem.cat_file(f"/batchtest/out/{n}"), np.uint8), cv2.IMREAD_UNCHANGED)
    if not n.endswith(".jpg"):
        np.testing.assert_array_equal(got, warpsvc.warp(cv2.imread(f"{src}/{n}", cv2.IMREAD_UNCHANGED), t))
assert cli.main(args + ["--resume"]) == 0
print("MEMORY-OK")
"""


def test_memory_urls(tmp_path):
    """``memory://`` lives in one process: the whole run and its checks happen in a child."""
    names = make_mixed_folder(tmp_path / "src", 5)
    res = subprocess.run([sys.executable, "-c", MEMORY_RUN, str(tmp_path / "src"), *names], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 ok, 0 failed, 0 skipped" in res.stdout and "0 ok, 0 failed, 5 skipped" in res.stdout
    assert res.stdout.strip().endswith("MEMORY-OK")
