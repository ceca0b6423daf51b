"""Guards of ``warpsvc-batch``: names that escape the output folder, nested and identical folders,
inputs never overwritten, output collisions, globs, dry runs, per-image transforms files."""

from __future__ import annotations

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

import warpsvc
from test_batch_helpers import all_files, make_mixed_folder, read_manifest, run_batch
from warpsvc_client.batch import manifest, paths

SHIFT = "1,0,2,0,1,-1"


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "a/..", "/etc/passwd", "C:\\x.png", "~/x.png", "",
                                  ".", "a/\x00.png"])
def test_unsafe_names_are_rejected(name):
    with pytest.raises(paths.PathError):
        paths.safe_relative(name)


@pytest.mark.parametrize("name,expected", [("a/b.png", "a/b.png"), ("./a.png", "a.png"), ("a//b.png", "a/b.png"),
                                           ("a\\b.png", "a/b.png")])
def test_safe_names_are_normalised(name, expected):
    assert paths.safe_relative(name).as_posix() == expected


def test_symlink_out_of_the_output_folder_is_rejected(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "link")
    [p] = paths.plan([("a.png", "link/a.png")], tmp_path / "in", tmp_path / "out")
    assert p.error and "outside" in p.error


def test_plan_refuses_collisions_and_overwriting_inputs(tmp_path):
    src = tmp_path / "data"
    (src / "raw" / "raw").mkdir(parents=True)
    for rel in ("raw/raw/x.png", "raw/x.png", "a.png", "a.jpg"):
        (src / rel).write_bytes(b"x")
    # output folder = data/, input = data/raw: raw/x.png would land on the input data/raw/x.png
    [p] = paths.plan([("raw/x.png", "raw/x.png")], src / "raw", src)
    assert p.error and "input" in p.error
    both = paths.plan([("a.png", "a.tif"), ("a.jpg", "a.tif")], src, tmp_path / "out")
    assert all(p.error and "several" in p.error for p in both)


def test_resume_ignores_records_whose_output_name_escapes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "secret.png").write_bytes(b"abc")
    rec = {"input": "x.png", "output": "../secret.png", "status": "ok", "bytes": 3,
           "sha256": hashlib.sha256(b"abc").hexdigest()}
    assert not manifest.is_complete(rec, out, "../secret.png")
    (out / "x.png").write_bytes(b"abc")
    assert manifest.is_complete(dict(rec, output="x.png"), out, "x.png")
    assert not manifest.is_complete(dict(rec, output="x.png", bytes=4), out, "x.png")  # incomplete file


def test_transforms_file_names_cannot_escape(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 3)
    (tmp_path / "victim.png").write_bytes(b"keep")
    rows = [{"path": names[0], "matrix": [1, 0, 2, 0, 1, -1], "output": "../escape.png"},
            {"path": names[1], "matrix": [1, 0, 2, 0, 1, -1], "output": str(tmp_path / "victim.png")},
            {"path": "../victim.png", "matrix": [1, 0, 2, 0, 1, -1], "output": "v.png"},
            {"path": names[2], "matrix": [[1, 0, 2], [0, 1, -1]], "output": "sub/fine.png"}]
    spec = tmp_path / "t.jsonl"
    spec.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run_batch("warp", src, out, "--transforms", spec)
    assert res.returncode == 1
    records = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    for key in (names[0], names[1], "../victim.png"):
        assert records[key]["status"] == "failed" and "PathError" in records[key]["error"], records[key]
    assert records[names[2]]["status"] == "ok"
    assert (tmp_path / "victim.png").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["out"])
    assert [f for f in all_files(out) if f.endswith(".png") and f != "contact_sheet.png"] == ["sub/fine.png"]


def test_csv_transforms_one_matrix_per_image(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = [n for n in make_mixed_folder(src, 5) if n.endswith(".png")]
    lines = ["path,matrix"] + [f"{n},1 0 {i} 0 1 {-i}" for i, n in enumerate(names)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    res = run_batch("warp", src, out, "--transforms", tmp_path / "t.csv")
    assert res.returncode == 0, res.stderr
    assert all_files(out) == sorted(names + ["manifest.jsonl", "report.html", "contact_sheet.png",
                                             ".warpsvc-batch.lock"])
    for i, n in enumerate(names):
        img = cv2.imread(str(src / n), cv2.IMREAD_UNCHANGED)
        t = warpsvc.AffineTransform([[1, 0, i], [0, 1, -i]])
        np.testing.assert_array_equal(cv2.imread(str(out / n), cv2.IMREAD_UNCHANGED), warpsvc.warp(img, t))


def test_nested_output_refused_unless_allowed_and_inputs_untouched(tmp_path):
    src = tmp_path / "in"
    names = make_mixed_folder(src, 4)
    digest = {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in names}
    res = run_batch("warp", src, src / "out", "--matrix", SHIFT)
    assert res.returncode == 2 and "inside INPUT_DIR" in res.stderr
    assert not (src / "out").exists()
    res = run_batch("warp", src, src, "--matrix", SHIFT, "--allow-nested-output")
    assert res.returncode == 2 and "never overwritten" in res.stderr
    for _ in range(2):  # the second run must not discover the first run's outputs as inputs
        res = run_batch("warp", src, src / "out", "--matrix", SHIFT, "--allow-nested-output")
        assert res.returncode == 0, res.stderr
        assert f"{len(names)} ok" in res.stdout
    assert {n: hashlib.sha256((src / n).read_bytes()).hexdigest() for n in names} == digest


def test_dry_run_writes_nothing_and_globs_select(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 10)
    res = run_batch("warp", src, out, "--matrix", SHIFT, "--dry-run", "--include", "*.png", "--exclude", "d1/*")
    assert res.returncode == 0
    expected = [n for n in names if n.endswith(".png") and not n.startswith("d1/")]
    assert [line.split(" -> ")[0] for line in res.stdout.splitlines()[:-1]] == expected
    assert f"{len(expected)} to do" in res.stdout
    assert not out.exists()


def test_float_results_go_to_tiff_and_usage_errors_exit_2(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_mixed_folder(src, 2)
    res = run_batch("warp", src, out, "--matrix", SHIFT, "--intensity", "conserve")
    assert res.returncode == 0, res.stderr
    got = cv2.imread(str(out / "d0" / "k000.tif"), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.float32
    assert run_batch("warp", src, out, "--matrix", "1,2,3").returncode == 2
    assert run_batch("warp", src, out).returncode == 2  # no transform
    assert run_batch("warp", tmp_path / "missing", out, "--matrix", SHIFT).returncode == 2
    victim = src / "d0" / "k000.png"
    before = victim.read_bytes()
    res = run_batch("warp", src, tmp_path / "o2", "--matrix", SHIFT, "--manifest", victim)
    assert res.returncode == 2 and "inside INPUT_DIR" in res.stderr
    assert victim.read_bytes() == before


def test_shards_split_the_sorted_list_deterministically(tmp_path):
    names = [f"n{i:03d}.png" for i in range(23)]
    parts = [paths.shard(list(reversed(names)), i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == names and sum(map(len, parts)) == 23  # disjoint and covering
    assert {len(p) for p in parts} == {5, 6}
    assert parts[1] == names[1::4]  # from the sorted list, whatever order it came in
    src = tmp_path / "in"
    found = make_mixed_folder(src, 9)
    done = []
    for i in range(3):
        res = run_batch("warp", src, tmp_path / f"out{i}", "--matrix", SHIFT, "--shard", f"{i}/3", "--no-report")
        assert res.returncode == 0, res.stderr
        done += [r["input"] for r in map(json.loads, (tmp_path / f"out{i}" / "manifest.jsonl").read_text().split())]
    assert sorted(done) == found and len(done) == len(set(done))
    assert run_batch("warp", src, tmp_path / "x", "--matrix", SHIFT, "--shard", "3/3").returncode == 2
