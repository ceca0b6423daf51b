"""Large motion on high-resolution photographs: ``align(template, image, "homography")`` with no
start on a 12 MP (4000x3000) image, against SIFT + MAGSAC at full resolution (the anchor) and
against warpsvc detecting at full resolution in one piece (the behaviour before
``features.DETECT_PIXELS`` and ``features.TILE_PIXELS``: both set to infinity).

    python benchmarks/bench_align_highres.py --trials 24 --json benchmarks/results/align_highres.json

Images: a 3000x4000 collage of 12 cells of 1000x1000, each a photograph (bicubic, cropped to the
cell: 2-3.3x enlarged, so softer at the pixel than a phone's 12 MP frame) -- every photograph
once as it is and once mirrored (SIFT's descriptors are not mirror-invariant, so no cell repeats
another's features). *Tuning* set: the tuning photographs of ``bench_align_real.py`` (camera,
astronaut, coffee, chelsea, rocket, coins); *held-out* set (never tuned on, own rows): brick,
immunohistochemistry, hubble_deep_field, each as it is and mirrored, and six ``made``
photographs (different seeds, made at the cell's size: full-resolution detail).

*Huge* set (its own rows, not tuned on): a 5700x5700 collage (32.5 MP, about the server's input
limit) of 36 cells of 950 px -- the tuning photographs as they are and mirrored, and 24 ``made``
photographs -- with templates of side 100, 200 or 300: small templates, for which the detection
factor stays 1 and the detection runs in tiles.

Trial ``k``: a template of side 400, 800 or 1200 (``k mod 3``; huge: 100, 200, 300) taken through a random homography
(rotation U(-180, 180) deg, scale U(0.6, 1.6), corners jittered by 6 % of the side, >= 50 % of
the template inside the image), gain U(0.7, 1.3), bias U(-20, 20), gamma U(0.8, 1.25), noise 4 on
both, both JPEG-encoded at quality 85, grey. Success: corner RMS <= 1 px.

Per call: ``perf_counter`` time and the peak resident memory it added (``VmHWM`` of
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``, minus the resident
size before the call). One OpenCV thread (``--threads``). Methods alternate trial by trial.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import bench_align_real as real

import warpsvc
from warpsvc.core.align import features

CELL = 1000
GRID = (3, 4)  # rows, columns of cells: a 3000x4000 image
SIDES = (400, 800, 1200)
MADE_SEEDS = (21, 22, 23, 24, 25, 26)
# ``huge``: 5700x5700 (32.5 MP, the server's input limit is 32 Mi pixels), 36 cells of 950 px: the
# tuning photographs as they are and mirrored and 24 made photographs; small templates.
HUGE_CELL, HUGE_GRID, HUGE_SIDES = 950, 6, (100, 200, 300)


def _cell(img):
    """``img`` enlarged (bicubic) to cover a CELL x CELL square, centre-cropped."""
    h, w = img.shape[:2]
    s = CELL / min(h, w)
    big = cv2.resize(img, (max(CELL, round(w * s)), max(CELL, round(h * s))), interpolation=cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - CELL) // 2, (big.shape[1] - CELL) // 2
    return big[y0:y0 + CELL, x0:x0 + CELL]


def collage(subset: str) -> np.ndarray:
    """The subset's 3000x4000 RGB collage (``huge``: 5700x5700; see the module docstring)."""
    if subset == "huge":
        cells = [cv2.resize(real.photo(n), (HUGE_CELL, HUGE_CELL), interpolation=cv2.INTER_CUBIC) for n in real.TUNING]
        cells += [c[:, ::-1] for c in cells] + [real.made_photo(100 + i, (HUGE_CELL, HUGE_CELL)) for i in range(24)]
        order = np.random.default_rng(7).permutation(len(cells))
        g = HUGE_GRID
        return np.vstack([np.hstack([np.ascontiguousarray(cells[order[r * g + j]]) for j in range(g)]) for r in range(g)])
    if subset == "tuning":
        cells = [real.photo(n) for n in real.TUNING]
        cells = [_cell(c) for c in cells] + [_cell(c[:, ::-1]) for c in cells]
    else:
        shown = [real.photo(n) for n in real.HELD_OUT if n != "made"]
        cells = [_cell(c) for c in shown] + [_cell(c[:, ::-1]) for c in shown]
        cells += [real.made_photo(seed, (CELL, CELL)) for seed in MADE_SEEDS]
    rows, cols = GRID
    order = np.random.default_rng(5 if subset == "tuning" else 6).permutation(len(cells))
    tiles = [np.ascontiguousarray(cells[i]) for i in order[: rows * cols]]
    return np.vstack([np.hstack(tiles[r * cols:(r + 1) * cols]) for r in range(rows)])


def trial(image_rgb, k, seed, sides=SIDES):
    rng = np.random.default_rng([seed, k, 4000])
    H, W = image_rgb.shape[:2]
    n = sides[k % len(sides)]
    theta, s = np.deg2rad(rng.uniform(-180, 180)), rng.uniform(0.6, 1.6)
    tp = real.corners(n)
    c = (n - 1) / 2.0
    R = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    while True:  # >= 50 % of the template inside the image
        centre = np.array([rng.uniform(0.1 * W, 0.9 * W), rng.uniform(0.1 * H, 0.9 * H)])
        pts = (tp - c) @ R.T + centre + rng.normal(0, 0.06 * n, (4, 2))
        truth = warpsvc.HomographyTransform.from_points(tp, pts).matrix.copy()
        g = np.mgrid[0:n:16, 0:n:16].reshape(2, -1).T[:, ::-1].astype(np.float64)
        q = np.column_stack([g, np.ones(len(g))]) @ truth.T
        q = q[:, :2] / q[:, 2:]
        if np.mean((q[:, 0] >= 0) & (q[:, 0] <= W - 1) & (q[:, 1] >= 0) & (q[:, 1] <= H - 1)) >= 0.5:
            break
    grey = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    t = cv2.warpPerspective(grey, truth, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    t = real.photometric(t, rng) + rng.normal(0, 4, (n, n)).astype(np.float32)
    img = grey + rng.normal(0, 4, grey.shape).astype(np.float32)
    t8 = real.jpeg(np.clip(t, 0, 255).astype(np.uint8))
    i8 = real.jpeg(np.clip(img, 0, 255).astype(np.uint8))
    return {"template": t8, "image": i8, "tp": tp, "truth_pts": pts, "side": n}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run(method, tr):
    t, i = tr["template"], tr["image"]
    if method == "sift_magsac":
        return real.sift_magsac(t, i), None
    saved = features.DETECT_PIXELS, features.TILE_PIXELS
    if method == "warpsvc_full_res":  # the detection before the common factor and the tiles
        features.DETECT_PIXELS = features.TILE_PIXELS = float("inf")
    try:
        r = warpsvc.align(t, i, "homography")
    finally:
        features.DETECT_PIXELS, features.TILE_PIXELS = saved
    return r.inverse, r


METHODS = ("warpsvc", "warpsvc_full_res", "sift_magsac")


def measure(image, n, seed, sides=SIDES):
    rows = {m: [] for m in METHODS}
    for k in range(n):
        tr = trial(image, k, seed, sides)
        for m in METHODS:
            before = _rss_kb("VmRSS")
            peak_ok = _reset_peak()
            t0 = time.perf_counter()
            W, r = run(m, tr)
            dt = time.perf_counter() - t0
            peak = (_rss_kb("VmHWM") - before) / 1024.0 if peak_ok else float("nan")
            err = real.rms(W, tr["tp"], tr["truth_pts"]) if W is not None else float("inf")
            rows[m].append({"side": tr["side"], "ms": dt * 1e3, "peak_mb": peak, "err": err, "ok": err <= 1.0,
                                "converged": None if r is None else bool(r.converged),
                                "start": None if r is None else str(r.start)})
    return rows


def summary(rows):
    out = {}
    for m, rs in rows.items():
        ok = [r for r in rs if r["ok"]]
        s = {"n": len(rs), "success_pct": 100.0 * len(ok) / max(1, len(rs)),
                 "median_err_px": statistics.median([r["err"] for r in ok]) if ok else None,
                 "mean_ms": statistics.fmean(r["ms"] for r in rs), "median_ms": statistics.median(r["ms"] for r in rs),
                 "median_peak_mb": statistics.median(r["peak_mb"] for r in rs),
                 "max_peak_mb": max(r["peak_mb"] for r in rs)}
        if rs and rs[0]["converged"] is not None:
            s["agree_pct"] = 100.0 * sum(r["converged"] == r["ok"] for r in rs) / len(rs)
        s["by_side"] = {side: {"success_pct": 100.0 * sum(r["ok"] for r in rs if r["side"] == side)
                                   / max(1, sum(r["side"] == side for r in rs)),
                                   "median_ms": statistics.median([r["ms"] for r in rs if r["side"] == side])}
                        for side in sorted({r["side"] for r in rs})}
        out[m] = s
    anchor = out["sift_magsac"]
    for m in ("warpsvc", "warpsvc_full_res"):
        out[m]["mean_time_vs_sift_magsac"] = out[m]["mean_ms"] / anchor["mean_ms"]
        out[m]["median_peak_vs_sift_magsac"] = out[m]["median_peak_mb"] / anchor["median_peak_mb"]
    return out


def markdown(res):
    lines = [("| set | method | n | success % | agree % | median err px | mean ms | median ms | time / SIFT+MAGSAC "
             "| median peak MB | max peak MB | success % by side (400 / 800 / 1200) |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for subset, s in res["sets"].items():
        for m, v in s.items():
            sides = " / ".join(f"{x['success_pct']:.0f}" for x in v["by_side"].values())
            err = "-" if v["median_err_px"] is None else f"{v['median_err_px']:.3f}"
            agree = f"{v['agree_pct']:.1f}" if "agree_pct" in v else "-"
            lines.append(f"| {subset} | {m} | {v['n']} | {v['success_pct']:.1f} | {agree} "
                         f"| {err} | {v['mean_ms']:.0f} | {v['median_ms']:.0f} "
                         f"| {v.get('mean_time_vs_sift_magsac', 1.0):.2f} | {v['median_peak_mb']:.0f} "
                         f"| {v['max_peak_mb']:.0f} | {sides} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sets", default="tuning,held_out,huge")
    ap.add_argument("--huge-trials", type=int, default=6)
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    cv2.setNumThreads(args.threads)
    warm = trial(collage("tuning"), 999, args.seed)
    for m in METHODS:  # imports, first-call costs
        run(m, dict(warm, template=warm["template"][:200, :200], image=warm["image"][:800, :800]))
    res = {"command": "python benchmarks/bench_align_highres.py " + " ".join(argv or sys.argv[1:]),
           "threads": args.threads, "opencv": cv2.__version__, "detect_pixels": features.DETECT_PIXELS,
           "tile_pixels": features.TILE_PIXELS,
           "min_detect_side": features.MIN_DETECT_SIDE, "load_before": os.getloadavg(), "sets": {}}
    for subset in args.sets.split(","):
        huge = subset == "huge"
        rows = measure(collage(subset), args.huge_trials if huge else args.trials, args.seed,
                       HUGE_SIDES if huge else SIDES)
        res["sets"][subset] = summary(rows)
        res.setdefault("trials", {})[subset] = rows
        print(subset, json.dumps(res["sets"][subset]), flush=True)
    res["load_after"] = os.getloadavg()
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
        args.json.with_suffix(".md").write_text(markdown(res) + "\n")
        print("wrote", args.json)


if __name__ == "__main__":
    main()
