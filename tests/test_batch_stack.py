"""``warpsvc-batch stack``: a synthetic shaky sequence cut from a real photograph (the generator of
``benchmarks/bench_sequence.py``: ``skimage.data.astronaut``, random-walk homographies with
shake, perspective, exposure flicker and noise; truth ``reference_from_frame`` known exactly).

Oracles: the true homographies (corner error), the frames' own totals (flux of the sum stack, with
a padded grid that contains every frame), the true footprints (coverage counts at pixels every
frame covers fully or not at all), finite differences (the trajectory's rotation/scale), the
library's ``warpsvc.stack`` on the same frames (the batch stack), an uninterrupted run (a killed
and resumed one), ``--target local`` (the same job through a real server on loopback), headless
Chromium (the report). Also ``warpsvc-batch align --search``.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import warpsvc
from interop.harness import ServerProcess, wait_serving
from test_batch_helpers import REPO, batch_cmd, run_batch, unreadable_file

sys.path.insert(0, str(REPO / "benchmarks"))
try:
    import bench_sequence as bench
finally:
    sys.path.remove(str(REPO / "benchmarks"))

N_FRAMES, SEED = 16, 2026      # the benchmark's seed: its first frames (drift up to ~11 px, 0.6 deg)
FRAME_H, FRAME_W = bench.FRAME
CORNER_TOL_PX = 0.1            # the target (the library's benchmark: max 0.098 px over 300 frames)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PRODUCTS = ("stack.tiff", "coverage.tiff", "trajectory.json", "trajectory.csv")


def corner_error(m, truth) -> float:
    return bench.corner_error(np.asarray(m, np.float64), truth)


def translation(x, y):
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])


def imread(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def trajectory(out):
    return json.loads((out / "trajectory.json").read_text())


def manifest_lines(out) -> list[dict]:
    """The manifest's records; a line torn by a killed run is skipped (as ``--resume`` does)."""
    recs = []
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue
    return recs


def frame_records(out):
    return [r for r in manifest_lines(out) if not r["input"].startswith("(")]


def outputs_of(out) -> dict:
    """Every deterministic output file's bytes (not the manifest or the report: they hold timings)."""
    files = [out / p for p in PRODUCTS] + sorted((out / "aligned").rglob("*.tif"))
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in files if p.exists()}


@pytest.fixture(scope="module")
def seq(tmp_path_factory):
    """The sequence as float32 TIFF frames ``f000.tif ...`` and its truth."""
    root = tmp_path_factory.mktemp("seq")
    _, noisy, ref_from, _ = bench.make_frames(N_FRAMES, SEED)
    src = root / "in"
    src.mkdir()
    for i, f in enumerate(noisy):
        assert cv2.imwrite(str(src / f"f{i:03d}.tif"), f)
    return {"root": root, "src": src, "frames": noisy, "truth": ref_from}


@pytest.fixture(scope="module")
def local_run(seq):
    out = seq["root"] / "out_local"
    res = run_batch("stack", seq["src"], out)
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"{N_FRAMES} ok, 0 failed" in res.stdout
    return out


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0", "--workers", "1") as srv:
        wait_serving(srv.target)
        yield srv


# -- registration ------------------------------------------------------------------------------------
def test_trajectory_matches_the_true_homographies(seq, local_run):
    doc = trajectory(local_run)
    rows = doc["frames"]
    assert [r["name"] for r in rows] == [f"f{i:03d}.tif" for i in range(N_FRAMES)]
    assert doc["reference"]["name"] == "f000.tif" and doc["reference"]["index"] == 0
    assert rows[0]["method"] == "reference" and np.array_equal(rows[0]["matrix"], np.eye(3))
    errors = [corner_error(r["matrix"], t) for r, t in zip(rows, seq["truth"])]
    assert max(errors) < CORNER_TOL_PX, errors
    for r, t in zip(rows, seq["truth"]):
        assert r["status"] == "ok" and r["registered"] and r["method"] in ("reference", "anchored", "keyframe", "chained")
        c = np.array([(FRAME_W - 1) / 2, (FRAME_H - 1) / 2])
        true_centre = warpsvc.HomographyTransform(t).map(c[None])[0]
        assert np.allclose(r["drift"], true_centre - c, atol=CORNER_TOL_PX)
        inv = np.linalg.inv(r["matrix"])
        np.testing.assert_allclose(inv / inv[2, 2], r["inverse"], atol=1e-9)  # both normalised: [2][2] = 1
        if r["method"] != "reference":
            assert r["corner_sd"] and 0 < max(r["corner_sd"]) < 0.1 and len(r["covariance"]) == 8
    assert max(abs(np.asarray(r["drift"])).max() for r in rows) > 5  # the sequence does move
    # the CSV says the same
    lines = (local_run / "trajectory.csv").read_text().splitlines()
    head = lines[0].split(",")
    assert len(lines) == N_FRAMES + 1
    for line, r in zip(lines[1:], rows):
        cells = dict(zip(head, line.split(",")))
        assert cells["name"] == r["name"] and cells["method"] == r["method"]
        m = np.array([float(cells[f"m{i}{j}"]) for i in range(3) for j in range(3)]).reshape(3, 3)
        assert np.array_equal(m, np.asarray(r["matrix"]))
        assert float(cells["drift_x"]) == r["drift"][0]
    # the aligned frames are float32 on the reference grid, one record each
    recs = frame_records(local_run)
    assert len(recs) == N_FRAMES and all(r["status"] == "ok" and r["dtype"] == "float32" for r in recs)
    assert imread(local_run / "aligned" / "f007.tif").dtype == np.float32


def test_motion_summary_against_finite_differences():
    from warpsvc_client.batch.stack_trajectory import motion_summary

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.eye(3) + rng.normal(0, [[0.1, 0.1, 10], [0.1, 0.1, 10], [2e-4, 2e-4, 0]])
        s = motion_summary(m, (120, 160))
        t = warpsvc.HomographyTransform(m)
        c = np.array([79.5, 59.5])
        e = 1e-4
        jac = np.stack([(t.map([c + d])[0] - t.map([c - d])[0]) / (2 * e) for d in (np.array([e, 0]), np.array([0, e]))],
                       axis=1)
        assert math.isclose(s["scale"], math.sqrt(abs(np.linalg.det(jac))), rel_tol=1e-6)
        assert math.isclose(s["rotation_deg"], math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1])),
                            abs_tol=1e-5)
        np.testing.assert_allclose(s["drift"], t.map([c])[0] - c, atol=1e-9)
        corners = np.array([[0, 0], [159, 0], [159, 119], [0, 119.0]])
        np.testing.assert_allclose(s["corner_displacement"], t.map(corners) - corners, atol=1e-9)


# -- the stack ---------------------------------------------------------------------------------------
def _pad_for(truth) -> int:
    """Pixels around the reference that contain every frame (plus the bilinear support)."""
    h, w = FRAME_H, FRAME_W
    corners = np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])
    pts = np.concatenate([warpsvc.HomographyTransform(t).map(corners) for t in truth])
    over = max(-pts[:, 0].min(), -pts[:, 1].min(), pts[:, 0].max() - (w - 1), pts[:, 1].max() - (h - 1))
    return math.ceil(over) + 4


def test_sum_stack_conserves_every_frames_flux_and_coverage_counts(seq):
    pad = _pad_for(seq["truth"])
    out = seq["root"] / "out_sum"
    res = run_batch("stack", seq["src"], out, "--combine", "sum", "--pad", pad, "--no-report")
    assert res.returncode == 0, res.stderr
    total = imread(out / "stack.tiff").astype(np.float64)
    assert total.shape == (FRAME_H + 2 * pad, FRAME_W + 2 * pad) and imread(out / "stack.tiff").dtype == np.float32
    frames_total = sum(imread(seq["src"] / f"f{i:03d}.tif").astype(np.float64).sum() for i in range(N_FRAMES))
    assert abs(total.sum() / frames_total - 1) < 1e-6, total.sum() / frames_total - 1
    # coverage: count, from the true footprints, the frames that cover an output pixel fully
    # (its square's corners 1 px inside the frame) or not at all (1 px outside); pixels
    # where every frame is one or the other have a known count
    cov = imread(out / "coverage.tiff").astype(np.float64)
    frame_from_grid = [np.linalg.inv(translation(pad, pad) @ t) for t in seq["truth"]]
    m = 1.0
    yy, xx = np.mgrid[0:cov.shape[0], 0:cov.shape[1]]
    count = np.zeros(cov.shape, int)
    decisive = np.ones(cov.shape, bool)
    for f in frame_from_grid:
        corners = [warpsvc.HomographyTransform(f).map(np.c_[(xx + dx).ravel(), (yy + dy).ravel()]).reshape(
            cov.shape + (2,)) for dx, dy in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))]
        px, py = np.stack([c[..., 0] for c in corners]), np.stack([c[..., 1] for c in corners])
        inside = ((px.min(0) > -0.5 + m) & (px.max(0) < FRAME_W - 0.5 - m)
                  & (py.min(0) > -0.5 + m) & (py.max(0) < FRAME_H - 0.5 - m))
        outside = ((px.max(0) < -0.5 - m) | (px.min(0) > FRAME_W - 0.5 + m)
                   | (py.max(0) < -0.5 - m) | (py.min(0) > FRAME_H - 0.5 + m))
        count += inside
        decisive &= inside | outside
    counts = sorted(set(count[decisive].tolist()))
    assert {0, N_FRAMES} <= set(counts) and len(counts) >= 3, counts
    for k in counts:  # every decisive pixel of every count
        sel = decisive & (count == k)
        assert np.abs(cov[sel] - k).max() < 1e-3, (k, np.abs(cov[sel] - k).max())
    assert decisive.mean() > 0.5
    # the batch stack is the library's stack of the same frames and transforms
    grid = [translation(pad, pad) @ np.asarray(r["matrix"]) for r in trajectory(out)["frames"]]
    lib = warpsvc.stack(seq["frames"], grid, total.shape, combine="sum")
    np.testing.assert_allclose(total, lib.image, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(cov, lib.coverage, atol=1e-5)


def test_resampled_stacker_equals_the_library_stack():
    """The batch job feeds pre-resampled frames to the library's Stacker: same result as
    ``warpsvc.stack`` for every combine and sigma clipping (guards its use of Stacker's state)."""
    from warpsvc_client.batch.stack_combine import ResampledStacker, coverage_weight

    rng = np.random.default_rng(5)
    frames = [rng.gamma(2.0, 40.0, (40, 50, 3)) for _ in range(12)]
    frames[2][10:14, 20:24] += 5000  # an outlier for the clipping (12 samples: its z-score can exceed 3)
    moves = [translation(20 + rng.normal(0, 3), 15 + rng.normal(0, 3)) @ np.array(
        [[1.01, 0.02, 0], [-0.01, 0.99, 0], [1e-4, 0, 1]]) for _ in frames]
    shape = (70, 90)
    for combine, clip in (("sum", None), ("mean", None), ("median", None), ("mean", 2.5), ("sum", 2.5)):
        lib = warpsvc.stack(frames, moves, shape, combine=combine, clip=clip)
        s = ResampledStacker(shape, combine=combine, clip=clip)
        for f, m in zip(frames, moves):
            t = warpsvc.HomographyTransform(m)
            flux = warpsvc.warp(f, t, shape, intensity="conserve", antialias=True)
            area = warpsvc.warp(np.ones(f.shape[:2]), t, shape, intensity="conserve", antialias=True)
            s.add_resampled(flux, coverage_weight(area, warpsvc.jacobian_determinant(t, shape)))
        got = s.result()
        assert np.array_equal(np.isnan(got.image), np.isnan(lib.image)), combine
        np.testing.assert_allclose(got.image, lib.image, rtol=1e-9, atol=1e-9, equal_nan=True)
        np.testing.assert_allclose(got.coverage, lib.coverage, atol=1e-12)
        if clip:
            assert got.rejected.sum() > 0 and np.array_equal(got.rejected, lib.rejected)


# -- resume ------------------------------------------------------------------------------------------
def _aligned_stats(out) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (out / "aligned").glob("*.tif")}


def test_resume_after_a_killed_run_gives_identical_outputs_without_redoing_frames(seq, local_run):
    out = seq["root"] / "out_killed"
    proc = subprocess.Popen(batch_cmd("stack", seq["src"], out, "--no-progress"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "stack.tiff").exists()
    done = {r["input"] for r in frame_records(out) if r["status"] == "ok"}
    assert 4 <= len(done) < N_FRAMES, done
    before = _aligned_stats(out)
    kept = {name: st for name, st in before.items() if name in done}
    res = run_batch("stack", seq["src"], out, "--resume")
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"{len(done)} skipped" in res.stdout, res.stdout
    assert outputs_of(out) == outputs_of(local_run)  # byte for byte, as if never interrupted
    after = _aligned_stats(out)
    assert all(after[name] == st for name, st in kept.items())  # verified frames neither resampled nor rewritten
    counts = {}
    for r in frame_records(out):
        counts[r["input"]] = counts.get(r["input"], 0) + 1
    assert all(counts[name] == 1 for name in done)


def test_resume_restacks_deleted_outputs_and_other_combines_from_verified_frames(seq, local_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(local_run, out)
    for name in ("stack.tiff", "trajectory.json", "aligned/f009.tif"):
        (out / name).unlink()
    (out / "aligned" / "f004.tif").write_bytes(b"not the recorded bytes")
    res = run_batch("stack", seq["src"], out, "--resume")
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"{N_FRAMES - 2} skipped" in res.stdout and "registered 2 " in res.stdout, res.stdout
    assert "replayed 8, 0 differing" in res.stdout, res.stdout  # frames 0..9 less the two redone
    assert outputs_of(out) == outputs_of(local_run)
    # every frame verified: a new combine registers nothing and stacks the aligned frames again
    before = _aligned_stats(out)
    res = run_batch("stack", seq["src"], out, "--resume", "--combine", "median", "--sigma-clip", "3")
    assert res.returncode == 0, res.stderr
    assert f"{N_FRAMES} skipped" in res.stdout and "registered 0 " in res.stdout and "replayed" not in res.stdout
    assert _aligned_stats(out) == before
    median = imread(out / "stack.tiff")
    lib = warpsvc.stack(seq["frames"], [r["matrix"] for r in trajectory(out)["frames"]], (FRAME_H, FRAME_W),
                        combine="median", clip=3.0)
    assert np.array_equal(np.isnan(median), np.isnan(lib.image))
    np.testing.assert_allclose(median, lib.image, rtol=1e-5, atol=1e-3, equal_nan=True)
    assert trajectory(out)["combine"] == "median"


# -- bad input ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_run(seq):
    src = seq["root"] / "in_bad"
    src.mkdir()
    for i in range(8):
        shutil.copy(seq["src"] / f"f{i:03d}.tif", src)
    (src / "f003b.tif").write_bytes((src / "f003.tif").read_bytes()[:500])   # truncated
    kind = unreadable_file(src / "f005b.png")
    cv2.imwrite(str(src / "f006b.png"), np.zeros((FRAME_H, FRAME_W, 3), np.uint8))  # colour among grey frames
    out = seq["root"] / "out_bad"
    res = run_batch("stack", src, out)
    return {"src": src, "out": out, "res": res, "kind": kind}


def test_bad_frames_are_recorded_failed_and_the_rest_stacked(seq, bad_run):
    res, out = bad_run["res"], bad_run["out"]
    assert res.returncode == 1, res.stderr + res.stdout
    assert "8 ok, 3 failed" in res.stdout, res.stdout
    failed = {r["input"]: r["error"] for r in frame_records(out) if r["status"] != "ok"}
    assert set(failed) == {"f003b.tif", "f005b.png", "f006b.png"}, failed
    assert "InvalidImageError" in failed["f003b.tif"] and "channel" in failed["f006b.png"]
    for name in failed:
        assert f"FAILED {name}" in res.stderr
    doc = trajectory(out)
    assert doc["stacked"] == 8
    rows = {r["name"]: r for r in doc["frames"]}
    assert all(rows[n]["status"] == "failed" and rows[n]["aligned"] is None for n in failed)
    good = [f"f{i:03d}.tif" for i in range(8)]
    for i, name in enumerate(good):
        assert corner_error(rows[name]["matrix"], seq["truth"][i]) < CORNER_TOL_PX
    lib = warpsvc.stack(seq["frames"][:8], [rows[n]["matrix"] for n in good], (FRAME_H, FRAME_W))
    np.testing.assert_allclose(imread(out / "stack.tiff"), lib.image, rtol=1e-5, atol=1e-3, equal_nan=True)
    page = (out / "report.html").read_text()
    assert page.index("Trajectory") < page.index("Failed frames (3)") < page.index("f003b.tif") < page.index(
        "Frames (8 ok)")  # summary, then the failed frames, then the rest
    assert "data:image/png;base64," in page and "http:" not in page and "https:" not in page and "<script" not in page


@pytest.mark.parametrize("extra, needle", [
    (("--shard", "0/2"), "--shard"),
    (("--engine", "dask"), "--engine dask"),
    (("--reference", "no/such/frame.png"), "--reference"),
    (("--combine", "median", "--max-pixels", "10"), None),
])
def test_usage_errors_exit_2_with_a_clear_message(seq, tmp_path, extra, needle):
    res = run_batch("stack", seq["src"], tmp_path / "out", *extra)
    if needle is None:  # every frame refused by the pixel limit: nothing to register
        assert res.returncode == 2 and "no frame of INPUT can be read" in res.stderr, res.stderr
        return
    assert res.returncode == 2, res.stderr + res.stdout
    assert needle in res.stderr, res.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_dry_run_lists_and_writes_nothing(seq, local_run, tmp_path):
    res = run_batch("stack", seq["src"], tmp_path / "out", "--dry-run")
    assert res.returncode == 0 and f"dry run: {N_FRAMES} to register" in res.stdout, res.stdout
    assert not (tmp_path / "out").exists()
    res = run_batch("stack", seq["src"], local_run, "--dry-run", "--resume")
    assert f"0 to register, {N_FRAMES} verified" in res.stdout, res.stdout


# -- a real server, fsspec ---------------------------------------------------------------------------
def test_server_target_gives_the_local_trajectory_and_stack(seq, local_run, server):
    out = seq["root"] / "out_server"
    res = run_batch("stack", seq["src"], out, "--target", server.target, "--no-report")
    assert res.returncode == 0, res.stderr + res.stdout
    local, remote = trajectory(local_run)["frames"], trajectory(out)["frames"]
    for a, b, t in zip(local, remote, seq["truth"]):
        assert a["method"] == b["method"]
        assert bench.corner_error(np.asarray(a["matrix"]), np.asarray(b["matrix"])) < 1e-3
        assert corner_error(b["matrix"], t) < CORNER_TOL_PX
    np.testing.assert_allclose(imread(out / "stack.tiff"), imread(local_run / "stack.tiff"), rtol=1e-5, atol=1e-3,
                               equal_nan=True)
    assert {r["target"] for r in frame_records(out)} == {server.target}


def test_a_middle_reference_frame_locally_and_over_the_stream(seq, server):
    """``--reference`` a frame in the middle: the library registers the frames before it backwards
    from it (local); the stream, which cannot hold frames back, gets it as an image and aligns
    every frame to it (server). Both against the truth, and against each other."""
    docs = {}
    for where, target in (("local", ()), ("server", ("--target", server.target))):
        out = seq["root"] / f"out_mid_{where}"
        res = run_batch("stack", seq["src"], out, "--reference", seq["src"] / "f008.tif", "--no-report", *target)
        assert res.returncode == 0, res.stderr + res.stdout
        docs[where] = doc = trajectory(out)
        assert doc["reference"]["index"] == 8 and doc["reference"]["name"] == "f008.tif"
        ref_from_8 = np.linalg.inv(seq["truth"][8])
        # frame 8's own noise now enters every pair: 0.15 px (the frame-0 reference run: < 0.1)
        errors = [corner_error(r["matrix"], ref_from_8 @ t) for r, t in zip(doc["frames"], seq["truth"])]
        assert max(errors) < 0.15 and np.median(errors) < CORNER_TOL_PX, errors
    assert docs["local"]["frames"][8]["method"] == "reference"
    assert np.array_equal(docs["local"]["frames"][8]["matrix"], np.eye(3))
    for a, b in zip(docs["local"]["frames"], docs["server"]["frames"]):
        assert bench.corner_error(np.asarray(a["matrix"]), np.asarray(b["matrix"])) < 1e-3  # measured 1e-5


def _floats_close(a, b, rel=1e-9) -> bool:
    """Equal JSON documents, numbers within ``rel`` (structure, strings and nulls exactly)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_floats_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_floats_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= rel * max(abs(a), abs(b), 1.0)
    return a == b


def _csv_cells(data: bytes) -> list:
    """Rows of a CSV, numeric cells as floats (for :func:`_floats_close`)."""
    def cell(v):
        try:
            return float(v)
        except ValueError:
            return v
    return [[cell(v) for v in line.split(",")] for line in data.decode().splitlines()]


def test_fsspec_memory_urls_give_the_same_outputs(seq, local_run):
    fsspec = pytest.importorskip("fsspec")
    from warpsvc_client.batch import cli

    fs = fsspec.filesystem("memory")
    for p in sorted(seq["src"].iterdir()):
        fs.pipe_file(f"/stackseq/in/{p.name}", p.read_bytes())
    try:
        assert cli.main(["stack", "memory://stackseq/in", "memory://stackseq/out", "--no-progress"]) == 0
        for name in PRODUCTS + ("aligned/f005.tif",):
            got, want = fs.cat_file(f"/stackseq/out/{name}"), (local_run / name).read_bytes()
            if name == "trajectory.json":  # floats of the solver: equal to 1e-9 (last-bit drift, see note)
                assert _floats_close(json.loads(got), json.loads(want)), name
            elif name == "trajectory.csv":
                assert _floats_close(_csv_cells(got), _csv_cells(want)), name
            else:
                assert got == want, name
        recs = [json.loads(x) for x in fs.cat_file("/stackseq/out/manifest.jsonl").splitlines()]
        assert sum(1 for r in recs if r["status"] == "ok") == N_FRAMES + 4
    finally:
        fs.rm("/stackseq", recursive=True)


# -- the report --------------------------------------------------------------------------------------
@pytest.mark.skipif(CHROMIUM is None, reason="LOUD SKIP: no chromium (apt-get install -y chromium) -- the stack "
                                             "report was not rendered in a browser")
def test_report_renders_in_headless_chromium(bad_run, tmp_path):
    page = bad_run["out"] / "report.html"
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2000",
           f"--screenshot={shot}", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (2000, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # plots and pictures, not blank
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert dom.index("Trajectory") < dom.index("Failed frames (3)") < dom.index("Frames (8 ok)")
    (bad_run["out"] / "screenshot.png").write_bytes(shot.read_bytes())  # kept for a look by eye


@pytest.fixture(scope="module")
def blurred_seq(tmp_path_factory):
    """A sharp reference frame, then frames blurred by 3 px (``test_align_stream``'s camera path):
    noise-corrected ZNCC ~0.966 against the reference, under the library's default 0.97."""
    from scipy import ndimage as ndi
    from test_align_stream import FRAMES, PATH

    src = tmp_path_factory.mktemp("blurred") / "in"
    src.mkdir()
    for i, f in enumerate(FRAMES[:4]):
        assert cv2.imwrite(str(src / f"f{i:03d}.tif"), f if i == 0 else ndi.gaussian_filter(f, 3.0))
    return src, [np.linalg.inv(PATH[0]) @ m for m in PATH[:4]]


@pytest.mark.parametrize("where", ["local", "server"])
def test_stack_min_zncc_option(blurred_seq, server, where, tmp_path):
    """``stack --min-zncc`` reaches every pairwise alignment, locally and over AlignStream: by
    default the blurred frames fail ``low_correlation`` (recorded failed, exit 1, the summary
    counting them as not registered); with ``--min-zncc 0.5`` all register on the true path;
    values outside [-1, 1] exit 2 before any work."""
    from warpsvc_client.batch import cli, stack_job

    src, truth = blurred_seq
    target = ["--target", server.target] if where == "server" else []
    args = cli.build_parser().parse_args(["stack", str(src), str(tmp_path / "o"), "--min-zncc", "0.25"])
    assert stack_job.registration_options(args)[0] == {"min_zncc": 0.25}
    default = run_batch("stack", src, tmp_path / "default", "--no-report", *target)
    assert default.returncode == 1 and "registered 1 of 4 aligned" in default.stdout, default.stdout + default.stderr
    assert [r["method"] for r in trajectory(tmp_path / "default")["frames"]] == ["reference"] + ["unregistered"] * 3
    assert all("low_correlation" in r["error"] for r in frame_records(tmp_path / "default") if r["status"] == "failed")
    low = run_batch("stack", src, tmp_path / "low", "--min-zncc", "0.5", "--no-report", *target)
    assert low.returncode == 0 and "registered 4 of 4 aligned" in low.stdout, low.stdout + low.stderr
    rows = trajectory(tmp_path / "low")["frames"]
    assert all(r["registered"] for r in rows)
    for row, want in zip(rows, truth):
        assert np.abs(np.asarray(row["matrix"], np.float64).reshape(3, 3) - want).max() < 0.5
    for bad in ("1.5", "nan", "high"):
        res = run_batch("stack", src, tmp_path / f"bad_{bad}", "--min-zncc", bad, *target)
        assert res.returncode == 2 and "--min-zncc" in res.stderr, (bad, res.returncode, res.stderr)


def test_server_killed_mid_run_then_resumed_locally(seq, local_run):
    """The server dies mid-stream: the frames not registered yet fail, the stack is not written
    (the manifest says so), exit 1; ``--resume --target local`` re-uses the frames the server
    finished and ends with the bytes of an uninterrupted local run."""
    out = seq["root"] / "out_server_killed"
    with ServerProcess("--port", "0", "--workers", "1") as srv:
        wait_serving(srv.target)
        proc = subprocess.Popen(batch_cmd("stack", seq["src"], out, "--no-progress", "--no-report", "--target",
                                          srv.target, "--retries", "1", "--rpc-timeout", "10"),
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        manifest = out / "manifest.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.005)
        srv.kill()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout + stderr
    assert "FAILED stack:" in stderr
    recs = manifest_lines(out)
    last = {r["input"]: r for r in recs}
    assert last["(stack)"]["status"] == "failed"
    done = {n for n, r in last.items() if r["status"] == "ok" and not n.startswith("(")}
    assert 4 <= len(done) < N_FRAMES, sorted(done)
    assert any("registration stopped" in (r["error"] or "") or "UNAVAILABLE" in (r["error"] or "")
               for r in last.values() if r["status"] != "ok")
    res = run_batch("stack", seq["src"], out, "--resume")
    assert res.returncode == 0, res.stderr + res.stdout
    assert f"{len(done)} skipped" in res.stdout, res.stdout
    assert outputs_of(out) == outputs_of(local_run)
