"""``warpsvc-batch --engine dask``: the embedded LocalCluster gives the library's results, and a
Dask worker SIGKILLed mid-run loses no image and leaves no partial output (the task reruns)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import cv2
import numpy as np
import pytest

import warpsvc
from test_batch_faults import _records_so_far
from test_batch_helpers import REPO, all_files, batch_cmd, make_align_folder, make_mixed_folder, read_manifest

psutil = pytest.importorskip("psutil", reason="needs psutil (comes with dask.distributed)")
pytest.importorskip("distributed", reason="--engine dask needs dask.distributed (extra 'warpsvc[dask]')")

H = "0.95,0.05,4,-0.03,1.02,2,2e-4,-1e-4,1"
BOOKKEEPING = {"manifest.jsonl", ".warpsvc-batch.lock"}


def _dask_workers(pid: int) -> list:
    """The worker processes of the CLI's embedded LocalCluster (its multiprocessing children)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "multiprocessing" in cmd and "resource_tracker" not in cmd:
            out.append(child)
    return out


def test_dask_engine_matches_the_library_and_survives_a_killed_worker(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 160)
    args = ["warp", src, out, "--matrix", H, "--antialias", "--engine", "dask",
            "--jobs", "2", "--no-progress", "--no-report"]
    proc = subprocess.Popen(batch_cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_records_so_far(out / "manifest.jsonl")) < 30:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    workers = _dask_workers(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0].pid, signal.SIGKILL)
    killed_at = len(_records_so_far(out / "manifest.jsonl"))
    stdout, stderr = proc.communicate(timeout=300)
    assert killed_at < len(names), "the run finished before the worker was killed"
    assert proc.returncode == 0, stdout + stderr
    assert f"{len(names)} ok, 0 failed" in stdout, stdout
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["input"] for r in records) == names  # each image recorded exactly once
    assert all(r["status"] == "ok" and r["target"] == "dask" for r in records)
    # no partial output, no temporary file: exactly one output per image, equal to the library's
    assert set(all_files(out)) == {f.replace(os.path.splitext(f)[1], ".tif") if not f.endswith((".tif", ".tiff"))
                                   else f for f in names} | BOOKKEEPING
    t = warpsvc.HomographyTransform(np.array(H.split(","), float).reshape(3, 3))
    for r in records[::7]:
        got = cv2.imread(str(out / r["output"]), cv2.IMREAD_UNCHANGED)
        want = warpsvc.warp(cv2.imread(str(src / r["input"]), cv2.IMREAD_UNCHANGED), t, antialias=True)
        np.testing.assert_array_equal(got, want.astype(got.dtype), err_msg=r["input"])


def test_dask_engine_align_jacobian_and_usage(tmp_path):
    src = tmp_path / "in"
    tmpl, truth = make_align_folder(src, 8, seed=5)
    cv2.imwrite(str(tmp_path / "ref.png"), tmpl)
    res = subprocess.run(batch_cmd("align", src, tmp_path / "out", "--reference", tmp_path / "ref.png", "--model",
                                   "affine", "--engine", "dask", "--jobs", "2", "--no-progress"),
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    from test_batch_helpers import CORNER_TOL_PX, corner_error

    assert sorted(r["input"] for r in records) == sorted(truth)
    assert all(corner_error(np.array(r["matrix"]), truth[r["input"]]) < CORNER_TOL_PX for r in records)
    assert all(r["attempts"] == 1 for r in records)
    assert (tmp_path / "out" / "report.html").stat().st_size > 0
    # folders written as the docs write them, "in/ out/": the trailing "/" made every image fail
    jac = subprocess.run(batch_cmd("jacobian", f"{src}/", f"{tmp_path / 'jac'}/", "--matrix", H, "--format", "npy", "--engine",
                                   "dask", "--jobs", "2", "--no-progress", "--no-report"),
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert jac.returncode == 0, jac.stdout + jac.stderr
    t = warpsvc.HomographyTransform(np.array(H.split(","), float).reshape(3, 3))
    for rel in truth:
        got = np.load(tmp_path / "jac" / rel.replace(".png", ".npy"))
        np.testing.assert_array_equal(got, warpsvc.jacobian_determinant(t, (64, 64), dtype=np.float32))
    bad = subprocess.run(batch_cmd("warp", src, tmp_path / "o2", "--matrix", H, "--engine", "dask", "--target",
                                   "127.0.0.1:1"), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--engine dask" in bad.stderr
