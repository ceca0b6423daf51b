"""``warpsvc-batch`` against a real ``warpsvc serve`` subprocess: alignment of 200 known warps,
failures recorded without stopping the run, parity with ``--target local``, dtypes, report."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from interop.harness import ServerProcess, wait_serving
from test_batch_helpers import (
    CORNER_TOL_PX,
    all_files,
    corner_error,
    make_align_folder,
    make_mixed_folder,
    read_manifest,
    run_batch,
    unreadable_file,
)

import warpsvc

H = "0.95,0.05,4,-0.03,1.02,2,2e-4,-1e-4,1"


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0", "--workers", "2") as srv:
        wait_serving(srv.target)
        yield srv


def test_align_200_known_warps_recovered_and_bad_files_recorded(server, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    tmpl, truth = make_align_folder(src, 200)
    ref = tmp_path / "reference.png"
    cv2.imwrite(str(ref), tmpl)
    (src / "set0" / "corrupt.png").write_bytes((src / "set0" / "img000.png").read_bytes()[:60])  # truncated
    kind = unreadable_file(src / "set1" / "unreadable.png")
    res = run_batch("align", src, out, "--reference", ref, "--model", "affine", "--target", server.target)
    assert res.returncode == 1, res.stderr
    assert "200 ok, 2 failed" in res.stdout
    records = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert len(records) == 202
    failed = {k: r["error"] for k, r in records.items() if r["status"] != "ok"}
    assert set(failed) == {"set0/corrupt.png", "set1/unreadable.png"}, failed
    assert "INVALID_ARGUMENT" in failed["set0/corrupt.png"] or "InvalidArgument" in failed["set0/corrupt.png"]
    assert ("FIFO" if kind == "fifo" else "Permission") in failed["set1/unreadable.png"]
    errors = {}
    for rel, m in truth.items():
        rec = records[rel]
        assert rec["status"] == "ok" and rec["convergence"]["converged"], rec
        errors[rel] = corner_error(np.array(rec["matrix"]), m)
    assert max(errors.values()) < CORNER_TOL_PX, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    # the aligned outputs show the template
    aligned = cv2.imread(str(out / "set2" / "img002.png"), cv2.IMREAD_UNCHANGED)
    inner = np.s_[6:-6, 6:-6]
    assert np.abs(aligned[inner].astype(float) - tmpl[inner]).mean() < 2.0
    written = [f for f in all_files(out) if f.endswith(".png") and f != "contact_sheet.png"]
    assert sorted(written) == sorted(truth)  # one output per good image, none for the failures
    assert (out / "report.html").stat().st_size > 0
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 5 * 128  # input, output, |det J|, residual before, residual after
    html = (out / "report.html").read_text()
    assert "set0/corrupt.png" in html and "residual after" in html


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in ("timings", "target", "attempts", "retried")}


@pytest.mark.parametrize("job_args", [
    ("warp", "--matrix", H),
    ("warp", "--matrix", H, "--intensity", "conserve", "--interpolation", "cubic"),
    ("jacobian", "--matrix", H),
    ("jacobian", "--polar", "32,32,30,72,40", "--format", "npy"),
], ids=["warp", "warp-conserve", "jacobian-tiff", "jacobian-polar-npy"])
def test_local_target_matches_the_server(server, tmp_path, job_args):
    src = tmp_path / "in"
    names = make_mixed_folder(src, 10)
    job, *opts = job_args
    remote = run_batch(job, src, tmp_path / "remote", *opts, "--target", server.target)
    local = run_batch(job, src, tmp_path / "local", *opts)  # --target local is the default
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    files = all_files(tmp_path / "local")
    assert files == all_files(tmp_path / "remote")
    for f in files:
        if f.endswith((".png", ".jpg", ".tif", ".tiff", ".npy")) and f != "contact_sheet.png":
            assert (tmp_path / "local" / f).read_bytes() == (tmp_path / "remote" / f).read_bytes(), f
    loc = sorted(map(_strip, read_manifest(tmp_path / "local" / "manifest.jsonl")), key=lambda r: r["input"])
    rem = sorted(map(_strip, read_manifest(tmp_path / "remote" / "manifest.jsonl")), key=lambda r: r["input"])
    assert loc == rem and len(loc) == len(names)


def test_local_target_matches_the_server_for_align(server, tmp_path):
    src = tmp_path / "in"
    tmpl, _ = make_align_folder(src, 12, seed=3)
    ref = tmp_path / "reference.png"
    cv2.imwrite(str(ref), tmpl)
    args = ("align", src, "--reference", ref, "--model", "homography")
    remote = run_batch(args[0], src, tmp_path / "remote", *args[2:], "--target", server.target, "--no-report")
    local = run_batch(args[0], src, tmp_path / "local", *args[2:], "--no-report")
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    loc = sorted(map(_strip, read_manifest(tmp_path / "local" / "manifest.jsonl")), key=lambda r: r["input"])
    rem = sorted(map(_strip, read_manifest(tmp_path / "remote" / "manifest.jsonl")), key=lambda r: r["input"])
    for a, b in zip(loc, rem, strict=True):  # same matrices, same outputs (elapsed times differ)
        a["convergence"].pop("elapsed"), b["convergence"].pop("elapsed")
        assert a == b


def test_bit_depth_and_format_preserved_and_equal_to_the_library(server, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 5)
    res = run_batch("warp", src, out, "--matrix", H, "--target", f"dns:///localhost:{server.port}")
    assert res.returncode == 0, res.stderr
    t = warpsvc.HomographyTransform(np.array(H.split(","), float).reshape(3, 3))
    for rel in names:
        img = cv2.imread(str(src / rel), cv2.IMREAD_UNCHANGED)
        got = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert got.dtype == img.dtype and got.shape == img.shape, rel
        if not rel.endswith(".jpg"):  # lossless formats: exactly the library's result
            np.testing.assert_array_equal(got, warpsvc.warp(img, t))


def test_jacobian_maps_are_float32_and_correct(server, tmp_path):
    src = tmp_path / "in"
    make_mixed_folder(src, 3)
    res = run_batch("jacobian", src, tmp_path / "out", "--matrix", H, "--target", server.target)
    assert res.returncode == 0, res.stderr
    det = cv2.imread(str(tmp_path / "out" / "d0" / "k000.tif"), cv2.IMREAD_UNCHANGED)
    t = warpsvc.HomographyTransform(np.array(H.split(","), float).reshape(3, 3))
    assert det.dtype == np.float32 and det.shape == (64, 64)
    np.testing.assert_array_equal(det, warpsvc.jacobian_determinant(t, (64, 64), dtype=np.float32))


def test_reference_given_as_its_file_matches_the_decoded_reference(server, tmp_path):
    """``jobs.read_image`` (the reference's bytes and probed shape, decoded by the server or once
    by the local engine) gives the same alignments as the decoded array, on both engines, and
    the library's own result."""
    from warpsvc_client.batch import jobs, storage
    from warpsvc_client.batch.backends import GrpcEngine, LocalEngine

    src = tmp_path / "in"
    tmpl, truth = make_align_folder(src, 3, seed=8)
    ref_file = cv2.imencode(".png", tmpl)[1].tobytes()
    encoded = jobs.read_image(ref_file)
    assert encoded.shape == tmpl.shape and encoded.data == ref_file
    grpc_engine = GrpcEngine([server.target], inflight=2)
    try:
        matrices = {}
        for name, reference in (("file", encoded), ("array", jobs.decode(ref_file))):
            for kind, engine in (("grpc", grpc_engine), ("local", LocalEngine())):
                (tmp_path / f"out-{name}-{kind}").mkdir()
                spec = jobs.JobSpec(job="align", inputs=storage.open_store(src),
                                    outputs=storage.open_store(tmp_path / f"out-{name}-{kind}"),
                                    align=jobs.AlignOptions(model="affine"), reference=reference)
                recs = [jobs.process(jobs.Task(i, rel, rel), spec, engine) for i, rel in enumerate(sorted(truth))]
                assert all(r.ok for r in recs), [r.error for r in recs]
                matrices[name, kind] = [r.matrix for r in recs]
    finally:
        grpc_engine.close()
    oracle = [warpsvc.align(tmpl, cv2.imread(str(src / rel), cv2.IMREAD_UNCHANGED), model="affine").matrix.tolist()
              for rel in sorted(truth)]  # the library's defaults (photometric "auto", denoise "auto")
    assert all(m == oracle for m in matrices.values()), matrices.keys()
    with pytest.raises(warpsvc.InvalidImageError, match="--max-pixels 100"):
        jobs.read_image(ref_file, max_pixels=100)


def test_align_cli_options_default_to_the_librarys(tmp_path):
    """``warpsvc-batch align`` passes the library's defaults: ``photometric`` "auto" (it passed
    ``None`` -- the library's identical-exposure opt-out -- when the flag was absent) and
    ``denoise`` "auto"; ``none`` is the opt-out of each."""
    from warpsvc_client.batch import cli

    (tmp_path / "in").mkdir()
    ref = tmp_path / "ref.png"
    cv2.imwrite(str(ref), np.zeros((8, 8), np.uint8))
    base = ["align", str(tmp_path / "in"), str(tmp_path / "out"), "--reference", str(ref)]

    def kwargs(*extra):
        return cli.make_spec(cli.build_parser().parse_args(base + list(extra))).align.kwargs()

    assert (kwargs()["photometric"], kwargs()["denoise"]) == ("auto", "auto")
    assert (kwargs("--photometric", "none")["photometric"], kwargs("--denoise", "none")["denoise"]) == (None, None)
    assert kwargs("--photometric", "gain_bias")["photometric"] == "gain_bias"
    with pytest.raises(SystemExit):
        kwargs("--denoise", "always")
