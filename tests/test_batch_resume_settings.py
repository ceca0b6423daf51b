"""``--resume`` re-uses an output only when it was made with the current run's settings (the
record's ``settings`` digest: job, options, transform or reference). Before, a resume with a
changed matrix, option or job kept the old outputs as if they were the new run's."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
from test_batch_helpers import make_mixed_folder, read_manifest, run_batch
from warpsvc_client.batch import jobs, manifest
from warpsvc_client.batch.record import Record

import warpsvc

SHIFT = "1,0,2,0,1,-1"
ROTATE = "0.98,0.17,-3,-0.17,0.98,9"


def _last(out):
    return {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}


def test_changed_matrix_redoes_every_image_and_the_outputs_follow_it(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 5)
    assert run_batch("warp", src, out, "--matrix", SHIFT, "--no-report").returncode == 0
    same = run_batch("warp", src, out, "--matrix", SHIFT, "--resume", "--no-report")
    assert same.returncode == 0 and "0 ok, 0 failed, 5 skipped" in same.stdout
    assert "other settings" not in same.stderr
    changed = run_batch("warp", src, out, "--matrix", ROTATE, "--resume", "--no-report")
    assert changed.returncode == 0 and "5 ok, 0 failed, 0 skipped" in changed.stdout, changed.stdout
    assert "5 earlier output(s) were made with other settings" in changed.stderr
    t = warpsvc.AffineTransform(np.array([float(v) for v in ROTATE.split(",")]).reshape(2, 3))
    for name in names:
        if name.endswith((".png", ".tif", ".tiff")):  # lossless: the output is exactly the new warp
            img = cv2.imread(str(src / name), cv2.IMREAD_UNCHANGED)
            got = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(got, warpsvc.warp(img, t))
    again = run_batch("warp", src, out, "--matrix", ROTATE, "--resume", "--no-report")
    assert "0 ok, 0 failed, 5 skipped" in again.stdout


def test_another_job_or_option_in_the_same_folder_is_not_taken_for_done(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_mixed_folder(src, 5)
    # conserve writes float TIFFs: the same output names as jacobian's maps
    assert run_batch("warp", src, out, "--matrix", SHIFT, "--intensity", "conserve", "--no-report").returncode == 0
    res = run_batch("jacobian", src, out, "--matrix", SHIFT, "--resume", "--no-report")
    assert res.returncode == 0 and "5 ok, 0 failed, 0 skipped" in res.stdout, res.stdout
    for rec in _last(out).values():
        assert rec["job"] == "jacobian"
        m = cv2.imread(str(out / rec["output"]), cv2.IMREAD_UNCHANGED)
        assert m.ndim == 2 and np.allclose(m, 1.0)  # a translation's |det J| = 1, not a warped image
    plain = run_batch("warp", src, out, "--matrix", SHIFT, "--intensity", "conserve", "--jpeg-quality", "80",
                      "--resume", "--no-report")
    assert "5 ok, 0 failed, 0 skipped" in plain.stdout, plain.stdout


def test_per_image_transforms_redo_only_the_images_whose_transform_changed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 4)
    spec = tmp_path / "t.jsonl"

    def write(rows):
        spec.write_text("\n".join(json.dumps({"path": n, "matrix": m}) for n, m in rows) + "\n")

    rows = [(n, [1, 0, i, 0, 1, 0]) for i, n in enumerate(names)]
    write(rows)
    assert run_batch("warp", src, out, "--transforms", spec, "--no-report").returncode == 0
    rows[2] = (names[2], [1, 0, 7, 0, 1, 0])
    write(rows)
    res = run_batch("warp", src, out, "--transforms", spec, "--resume", "--no-report")
    assert "1 ok, 0 failed, 3 skipped" in res.stdout, res.stdout
    assert _last(out)[names[2]]["matrix"][0][2] == 7


def test_align_with_another_reference_redoes_the_images(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(2)
    blur = cv2.GaussianBlur(rng.random((96, 96)), (0, 0), 2)
    base = ((blur - blur.min()) / (blur.max() - blur.min()) * 255).astype(np.uint8)
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"f{i}.png"), np.roll(base, i, axis=1))
    ref1, ref2 = tmp_path / "r1.png", tmp_path / "r2.png"
    cv2.imwrite(str(ref1), base)
    cv2.imwrite(str(ref2), np.roll(base, 1, axis=0))
    assert ref1.read_bytes() != ref2.read_bytes()
    args = ("--model", "translation", "--no-report")
    assert run_batch("align", src, out, "--reference", ref1, *args).returncode == 0
    same = run_batch("align", src, out, "--reference", ref1, "--resume", *args)
    assert "0 ok, 0 failed, 3 skipped" in same.stdout, same.stdout
    other = run_batch("align", src, out, "--reference", ref2, "--resume", *args)
    assert "3 ok, 0 failed, 0 skipped" in other.stdout, other.stdout


def test_a_record_without_settings_is_redone_and_the_digest_names_what_it_covers(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"abc")
    rec = Record(input="x.png", output="x.png", job="warp", status="ok", bytes=3, sha256=hashlib.sha256(b"abc").hexdigest())
    spec = jobs.JobSpec(job="warp", inputs=None, outputs=None, transform=warpsvc.AffineTransform(np.eye(3)[:2]))
    key = jobs.settings_digest(spec, spec.transform)
    assert manifest.is_complete(rec.replace(settings=key), out, "x.png", key)
    assert not manifest.is_complete(rec, out, "x.png", key)  # made by a version that did not record it
    assert manifest.is_complete(rec, out, "x.png")  # the stack job's own check passes None
    variants = [
        jobs.JobSpec(job="jacobian", inputs=None, outputs=None, transform=spec.transform),
        jobs.JobSpec(job="warp", inputs=None, outputs=None, transform=spec.transform,
                     warp=jobs.WarpOptions(intensity="conserve")),
        jobs.JobSpec(job="warp", inputs=None, outputs=None, transform=spec.transform,
                     warp=jobs.WarpOptions(output_shape=(10, 12))),
    ]
    keys = {jobs.settings_digest(v, v.transform) for v in variants}
    keys.add(jobs.settings_digest(spec, warpsvc.AffineTransform.from_components(translation=(1, 0))))
    assert key not in keys and len(keys) == 4
    assert Record.from_dict(json.loads(rec.replace(settings=key).to_line())).settings == key


def test_a_second_run_on_a_locked_folder_says_it_waits_then_is_refused(tmp_path):
    """Two runs writing one folder: the second says at once that it waits for the lock (it used
    to wait silently), and is refused with a clear message when the first holds on."""
    import fcntl
    import os

    src, out = tmp_path / "in", tmp_path / "out"
    make_mixed_folder(src, 2)
    out.mkdir()
    fd = os.open(out / ".warpsvc-batch.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running warpsvc-batch holds
        res = run_batch("warp", src, out, "--matrix", SHIFT, "--no-report", timeout=60)
    finally:
        os.close(fd)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "is locked by another run" in res.stderr and "waiting up to 10 s" in res.stderr
    assert "another warpsvc-batch run is writing to" in res.stderr
    assert not (out / "manifest.jsonl").exists()


def test_a_resumed_runs_report_covers_the_kept_images_too(tmp_path):
    """The report of a ``--resume`` run pictured only what it redid; it now lists the skipped
    images too (their verified outputs are in the folder), each noted as kept."""
    pytest.importorskip("matplotlib", reason="the report's summary plots need matplotlib")
    from warpsvc_client.batch.report import KEPT_NOTE

    src, out = tmp_path / "in", tmp_path / "out"
    names = make_mixed_folder(src, 4)
    assert run_batch("warp", src, out, "--matrix", SHIFT).returncode == 0
    (out / names[1]).unlink()  # one output lost: the resume redoes it, keeps the other three
    res = run_batch("warp", src, out, "--matrix", SHIFT, "--resume")
    assert res.returncode == 0 and "1 ok, 0 failed, 3 skipped" in res.stdout, res.stdout
    html = (out / "report.html").read_text()
    assert html.count("<details>") == 4  # one row per image of the folder
    assert html.count(KEPT_NOTE) == 3
    # the title counts this run, and says so; the kept images are counted apart
    assert "1 ok, 0 failed, 3 skipped (this run)</h1>" in html
    assert "The table also shows the 3 image(s) this run kept from earlier runs" in html
    for name in names:
        assert name in html
