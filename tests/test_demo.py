"""The README's `bash scripts/main.sh demo` runs with the library's default limits: every warp of
the tour succeeds, conserves its flux where the output holds the whole input, and writes its PNGs."""

import re

import cv2

from warpsvc import demo


def test_demo_tour_runs_under_the_default_limits(tmp_path):
    lines = demo.run(tmp_path)
    totals = {}
    for ln in lines:
        m = re.match(r"(\w+)\s+\d+x\d+\s+conserved total (\S+)", ln)
        if m:
            totals[m[1]] = float(m[2])
    source = float(re.search(r"total (\S+)", lines[0])[1])
    assert set(totals) >= {"affine", "homography", "polar", "logpolar", "homography_then_polar"}
    # the tilt keeps the whole image inside the output grid: its conserved total is the input's
    assert abs(totals["homography"] - source) <= 1e-4 * source
    for name in totals:
        img = cv2.imread(str(tmp_path / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.size > 0 and img.max() > 0, name
