"""``report.html`` rendered in headless Chromium: self-contained, a non-trivial picture, summary
plots before the rows, failures and non-converged alignments before successes; one scale per
kind of map for the run (the reference frame's residual renders dark)."""

from __future__ import annotations

import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from test_batch_helpers import make_align_folder, run_batch

pytest.importorskip("matplotlib", reason="the report's summary plots need matplotlib (extra 'warpsvc[batch]')")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FAILED_BG, OK_BG = (0xF4, 0xB6, 0xB6), (0xBF, 0xE6, 0xBF)  # report.CSS: td.st of failed / ok rows (RGB)


@pytest.fixture(scope="module")
def align_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    src, out = root / "in", root / "out"
    tmpl, _ = make_align_folder(src, 12, seed=9)
    cv2.imwrite(str(root / "ref.png"), tmpl)
    cv2.imwrite(str(src / "set0" / "aaa_reference.png"), tmpl)  # the reference itself: residual ~0
    (src / "set0" / "zzz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rng = np.random.default_rng(4)
    cv2.imwrite(str(src / "set1" / "noise.png"), (rng.random((64, 64)) * 255).astype(np.uint8))  # cannot converge
    res = run_batch("align", src, out, "--reference", root / "ref.png", "--model", "affine", "--jobs", "1",
                    "--max-iterations", "5")
    assert res.returncode == 1, res.stdout + res.stderr
    return out


def test_report_is_self_contained_and_ordered(align_run):
    html = (align_run / "report.html").read_text()
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", html)  # nothing fetched from a network
    assert "<script" not in html
    rows = re.findall(r"<tr class='(\w+)'>", html)
    assert rows[0] == "failed" and "ok" in rows
    assert rows == sorted(rows, key=["failed", "unconverged", "ok"].index)  # failed, not converged, then ok
    assert html.index("data:image/png;base64") < html.index("<table>")  # summary plots come first
    assert html.count("<details>") == len(rows) == 15
    assert "residuals on one scale for the run" in html and "log2 |det J| on one scale for the run" in html


def test_residual_of_the_reference_frame_is_dark_on_the_run_scale(align_run):
    from warpsvc_client.batch.report import Scales

    before = np.abs(np.random.default_rng(1).normal(0, 20, (32, 32)))
    panels = [{"residual before": before, "residual after": np.full((32, 32), 1.0)}]
    scales = Scales(panels)
    after = scales.picture("residual after", panels[0]["residual after"]).astype(float)
    worst = scales.picture("residual before", np.full((1, 1), scales.residual)).astype(float)
    assert after.mean() < 0.15 * worst.mean()  # ~1 grey level renders near black, not bright


@pytest.mark.skipif(CHROMIUM is None, reason="LOUD SKIP: no chromium (apt-get install -y chromium) -- the report "
                                             "was not rendered in a browser")
def test_report_renders_in_headless_chromium(align_run, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2400",
           f"--screenshot={shot}", (align_run / "report.html").as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = cv2.imread(str(shot))[:, :, ::-1]  # RGB
    assert img is not None and img.shape[:2] == (2400, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 500  # plots, thumbnails: not blank
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (align_run / "report.html").as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    assert dom.index("zzz_broken.png") < dom.index("aaa_reference.png")  # failure first, though it sorts last

    def first_row(rgb):
        hit = np.all(np.abs(img.astype(int) - rgb) <= 3, axis=2).any(axis=1)
        return int(np.argmax(hit)) if hit.any() else None

    failed_y, ok_y = first_row(FAILED_BG), first_row(OK_BG)
    assert failed_y is not None and ok_y is not None, (failed_y, ok_y)
    assert failed_y < ok_y  # on screen too: the failed row's status cell is above every ok row's
    (align_run / "screenshot.png").write_bytes(shot.read_bytes())  # kept for a look by eye
