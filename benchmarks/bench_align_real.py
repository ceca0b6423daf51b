"""warpsvc.align on real photographs: exposure, noise, large motion, colour (issue 11).

    python benchmarks/bench_align_real.py --trials 200          # the table in docs/alignment.md
    python benchmarks/bench_align_real.py --trials 20 --quick   # smoke run
    python benchmarks/bench_align_real.py --only large --large-trials 200 --threads 2 --json /tmp/l.json

Photographs: scikit-image's bundled data (offline). *Tuning* set (the defaults were chosen on
it): camera, astronaut, coffee, chelsea, rocket, coins. *Held-out* set (never tuned on, own
rows): brick, immunohistochemistry, hubble_deep_field and ``made`` (a synthetic photograph made
here: blurred random ellipses and lines over a smooth ramp, seeded).

Conditions (each trial draws its photograph, position and photometric change from a seeded
generator; every method runs on the same trials, alternating, in the same process):

* ``bm_noiseN`` (N in 0, 8, 16): the Baker-Matthews protocol on photographs: a 100x100 template
  at a random position whose grey-level std is >= 20 (textureless patches -- sky, walls -- are
  ill-posed for every method and are not drawn), its 4 corners moved by sigma = 8 px per
  coordinate (Gaussian) -> the true homography; the template then gets gain U(0.7, 1.3), bias
  U(-20, 20), gamma U(0.8, 1.25) and both images Gaussian noise of N grey levels. Start: the
  unperturbed placement + 0.5 px. Methods: ``warpsvc`` (``align(t, i, "homography", init)``,
  default options), ``ecc_ms`` (``cv2.findTransformECCMultiScale``, 3 levels).
* ``large``: a 240x240 template taken from a 640x480 photograph through a random homography
  (rotation U(-180, 180) deg, scale U(0.6, 1.6), corners jittered by 6 % of the side, centre
  placed so that >= 50 % of the template lies in the image), gain/bias/gamma as above, noise 4
  on both, both JPEG-encoded at quality 85. No start. Methods: ``warpsvc`` (``align(t, i,
  "homography")``, default ``search="auto"``), ``sift_magsac`` (SIFT, ratio test 0.8,
  ``cv2.findHomography(..., cv2.USAC_MAGSAC)``: the anchor), ``sift_magsac_ecc`` (the same +
  ECC refinement, ``cv2.findTransformECC``).
* ``colour``: the ``large`` trials in RGB: warpsvc time on the colour pair / on the grey pair.

Success: corner RMS error <= 1 px. ``agree``: ``converged`` equals success (warpsvc only), with
both kinds of disagreement counted (``converged_but_wrong``, ``not_converged_but_right``) and
the count of each ``reason``; the 95 % Wilson interval of each rate is given. Timing: one OpenCV / BLAS thread (``--threads``),
``perf_counter`` around each call, mean and median; load average recorded (the machine is
shared: treat times as +-15 %).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import warpsvc

TUNING = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins")
HELD_OUT = ("brick", "immunohistochemistry", "hubble_deep_field", "made")
MIN_STD = 20.0


def made_photo(seed=11, shape=(480, 640)):
    """A synthetic 'photograph': ramp + blurred random ellipses and lines, RGB uint8."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.zeros((h, w, 3), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    img += (60 + 80 * xx / w + 40 * yy / h)[:, :, None]
    for _ in range(260):
        colour = rng.uniform(0, 255, 3).tolist()
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.7:
            axes = (int(rng.integers(3, 40)), int(rng.integers(3, 40)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            end = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, centre, end, colour, int(rng.integers(1, 5)))
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.2), 0, 255).astype(np.uint8)


def photo(name):
    img = made_photo() if name == "made" else getattr(data, name)()
    if img.ndim == 2:
        img = np.dstack([img] * 3)
    return img[:, :, :3]


def grey(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)


def photometric(t, rng):
    g, b, gam = rng.uniform(0.7, 1.3), rng.uniform(-20, 20), rng.uniform(0.8, 1.25)
    return (255.0 * (np.clip(t, 0, 255) / 255.0) ** gam * g + b).astype(np.float32)


def corners(n):
    return np.array([[0, 0], [n - 1, 0], [n - 1, n - 1], [0, n - 1]], np.float64)


def rms(W, tp, truth_pts):
    q = np.column_stack([tp, np.ones(len(tp))]) @ np.asarray(W, np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        d = q[:, :2] / q[:, 2:] - truth_pts
    e = float(np.sqrt(np.mean(d ** 2)))
    return e if np.isfinite(e) else float("inf")


def bm_trial(photos, k, noise, seed, noise_rng=None):
    """Trial ``k`` of condition ``bm_noise{noise}``. ``noise_rng``: draw the two noise fields from
    this generator instead (same photograph, position, warp and photometric change: another
    noise realisation of the same trial, for ``bound_status_agreement.py``)."""
    rng = np.random.default_rng([seed, k, int(noise)])
    name = photos[k % len(photos)]
    im = grey(photo(name))
    h, w = im.shape
    while True:
        x0, y0 = int(rng.integers(40, w - 140)), int(rng.integers(40, h - 140))
        if im[y0:y0 + 100, x0:x0 + 100].std() >= MIN_STD:
            break
    tp = corners(100)
    truth_pts = tp + [x0, y0] + 8.0 * rng.normal(size=(4, 2))
    truth = warpsvc.HomographyTransform.from_points(tp, truth_pts).matrix.copy()
    t = cv2.warpPerspective(im, truth, (100, 100), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    t = photometric(t, rng)
    nrng = rng if noise_rng is None else noise_rng
    t = t + nrng.normal(0, noise, t.shape).astype(np.float32)
    img = im + nrng.normal(0, noise, im.shape).astype(np.float32)
    start = np.array([[1, 0, x0 + 0.5], [0, 1, y0 + 0.5], [0, 0, 1.0]])
    return dict(template=t, image=img, tp=tp, truth_pts=truth_pts, start=start, photo=name)


def jpeg(img, q=85):
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def large_trial(photos, k, seed, colour=False):
    rng = np.random.default_rng([seed, k, 99])
    name = photos[k % len(photos)]
    rgb = cv2.resize(photo(name), (640, 480), interpolation=cv2.INTER_AREA).astype(np.float32)
    n = 240
    theta, s = np.deg2rad(rng.uniform(-180, 180)), rng.uniform(0.6, 1.6)
    tp = corners(n)
    c = (n - 1) / 2.0
    R = s * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    while True:  # centre such that >= 50 % of the template lands inside the image
        centre = np.array([rng.uniform(80, 560), rng.uniform(80, 400)])
        pts = (tp - c) @ R.T + centre + rng.normal(0, 0.06 * n, (4, 2))
        truth = warpsvc.HomographyTransform.from_points(tp, pts).matrix.copy()
        g = np.mgrid[0:n:8, 0:n:8].reshape(2, -1).T[:, ::-1].astype(np.float64)
        q = np.column_stack([g, np.ones(len(g))]) @ truth.T
        q = q[:, :2] / q[:, 2:]
        if np.mean((q[:, 0] >= 0) & (q[:, 0] <= 639) & (q[:, 1] >= 0) & (q[:, 1] <= 479)) >= 0.5:
            break
    t = cv2.warpPerspective(rgb, truth, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    t = photometric(t, rng)
    t = t + rng.normal(0, 4, t.shape).astype(np.float32)
    img = rgb + rng.normal(0, 4, rgb.shape).astype(np.float32)
    t8 = jpeg(np.clip(t, 0, 255).astype(np.uint8))
    i8 = jpeg(np.clip(img, 0, 255).astype(np.uint8))
    if not colour:
        t8, i8 = cv2.cvtColor(t8, cv2.COLOR_RGB2GRAY), cv2.cvtColor(i8, cv2.COLOR_RGB2GRAY)
    return dict(template=t8, image=i8, tp=tp, truth_pts=pts, photo=name)


_SIFT = cv2.SIFT_create()


def sift_magsac(t, i):
    kt, dt = _SIFT.detectAndCompute(t, None)
    ki, di = _SIFT.detectAndCompute(i, None)
    if dt is None or di is None or len(kt) < 4 or len(ki) < 4:
        return None
    m = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dt, di, k=2)
    good = [a for a, *b in m if b and a.distance < 0.8 * b[0].distance]
    if len(good) < 4:
        return None
    src = np.float32([kt[g.queryIdx].pt for g in good])
    dst = np.float32([ki[g.trainIdx].pt for g in good])
    H, _ = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 3.0, maxIters=5000, confidence=0.999)
    return None if H is None else np.asarray(H, np.float64)


def run(method, tr):
    t, i = tr["template"], tr["image"]
    if method == "warpsvc":
        init = None if "start" not in tr else np.linalg.inv(tr["start"])
        r = warpsvc.align(t, i, "homography", init)
        return r.inverse, r
    if method == "ecc_ms":
        p = cv2.ECCParameters()
        p.motionType, p.nlevels = cv2.MOTION_HOMOGRAPHY, 3
        _, w = cv2.findTransformECCMultiScale(t, i, tr["start"].astype(np.float32), p)
        return np.asarray(w, np.float64), None
    H = sift_magsac(t, i)
    if H is None:
        return np.eye(3), None
    if method == "sift_magsac_ecc":
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-6)
        _, w = cv2.findTransformECC(t.astype(np.float32), i.astype(np.float32), H.astype(np.float32),
                                    cv2.MOTION_HOMOGRAPHY, crit, None, 5)
        H = np.asarray(w, np.float64)
    return H, None


def wilson(k, n, z=1.96):
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (100 * (c - h), 100 * (c + h))


def measure(make, methods, n):
    acc = {m: {"err": [], "time": [], "agree": [], "start": [], "reason": []} for m in methods}
    for m in methods:  # warm-up
        try:
            run(m, make(0))
        except cv2.error:
            pass
    for k in range(n):
        tr = make(k)
        for m in methods:
            t0 = time.perf_counter()
            try:
                W, res = run(m, tr)
            except cv2.error:
                W, res = np.eye(3), None
            dt = time.perf_counter() - t0
            e = rms(W, tr["tp"], tr["truth_pts"])
            a = acc[m]
            a["err"].append(e)
            a["time"].append(dt)
            if res is not None:
                a["agree"].append(bool(res.converged) == (e <= 1.0))
                a["start"].append(str(res.start))
                a["reason"].append(str(res.reason))
    out = {}
    for m, a in acc.items():
        e = np.array(a["err"])
        ok = e <= 1.0
        row = {"n": len(e), "success_pct": 100 * ok.mean(), "success_ci95": wilson(int(ok.sum()), len(e)),
               "median_error": float(np.median(e[ok])) if ok.any() else None,
               "mean_ms": 1e3 * float(np.mean(a["time"])), "median_ms": 1e3 * float(np.median(a["time"]))}
        if a["agree"]:
            conv = np.array([ag == s for ag, s in zip(a["agree"], ok)])  # converged flag (agree == success)
            row["converged_but_wrong"] = int(np.sum(conv & ~ok))
            row["not_converged_but_right"] = int(np.sum(~conv & ok))
            row["agree_pct"] = 100 * float(np.mean(a["agree"]))
            row["agree_ci95"] = wilson(int(np.sum(a["agree"])), len(a["agree"]))
            row["starts"] = {s: a["start"].count(s) for s in sorted(set(a["start"]))}
            row["reasons"] = {s: a["reason"].count(s) for s in sorted(set(a["reason"]))}
        out[m] = row
    return out


def colour_ratio(photos, n, seed):
    times = {"grey": [], "colour": []}
    errs = {"grey": [], "colour": []}
    for k in range(n):
        g, c = large_trial(photos, k, seed), large_trial(photos, k, seed, colour=True)
        for kind, tr in (("grey", g), ("colour", c)):
            t0 = time.perf_counter()
            r = warpsvc.align(tr["template"], tr["image"], "homography")
            times[kind].append(time.perf_counter() - t0)
            errs[kind].append(rms(r.inverse, tr["tp"], tr["truth_pts"]))
    eg, ec = np.array(errs["grey"]), np.array(errs["colour"])
    return {"n": n, "mean_ms_grey": 1e3 * np.mean(times["grey"]), "mean_ms_colour": 1e3 * np.mean(times["colour"]),
            "ratio_mean": float(np.mean(times["colour"]) / np.mean(times["grey"])),
            "ratio_median": float(np.median(times["colour"]) / np.median(times["grey"])),
            "success_pct_grey": 100 * float((eg <= 1).mean()), "success_pct_colour": 100 * float((ec <= 1).mean()),
            "median_error_grey": float(np.median(eg[eg <= 1])) if (eg <= 1).any() else None,
            "median_error_colour": float(np.median(ec[ec <= 1])) if (ec <= 1).any() else None}


def table(res):
    lines = ["| set | condition | method | n | success % (95 % CI) | agree % (95 % CI) | converged but wrong | "
             "not converged but right | median err px | mean ms | median ms | starts | reasons |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, rows in res["conditions"].items():
        subset, cond = key.split("/")
        for m, r in rows.items():
            ag = f"{r['agree_pct']:.1f} ({r['agree_ci95'][0]:.1f}-{r['agree_ci95'][1]:.1f})" if "agree_pct" in r else ""
            med = f"{r['median_error']:.3f}" if r["median_error"] is not None else "-"
            cw, nr = r.get("converged_but_wrong", ""), r.get("not_converged_but_right", "")
            lines.append(f"| {subset} | {cond} | {m} | {r['n']} | {r['success_pct']:.1f} ({r['success_ci95'][0]:.1f}-"
                         f"{r['success_ci95'][1]:.1f}) | {ag} | {cw} | {nr} | {med} | {r['mean_ms']:.1f} | {r['median_ms']:.1f} | "
                         f"{r.get('starts', '')} | {r.get('reasons', '')} |")
    anchors = {"large": "sift_magsac"}
    for key, rows in res["conditions"].items():
        anchor = anchors.get(key.split("/")[1], "ecc_ms")
        if "warpsvc" in rows and anchor in rows:
            lines.append(f"\n{key}: mean time warpsvc / {anchor} = "
                         f"{rows['warpsvc']['mean_ms'] / rows[anchor]['mean_ms']:.2f} (medians "
                         f"{rows['warpsvc']['median_ms'] / rows[anchor]['median_ms']:.2f})")
    for subset, c in res["colour"].items():
        lines.append(f"\ncolour/grey ({subset}, n={c['n']}): mean {c['mean_ms_colour']:.1f} / {c['mean_ms_grey']:.1f} ms = "
                     f"{c['ratio_mean']:.2f} (medians {c['ratio_median']:.2f}); success {c['success_pct_colour']:.1f} / "
                     f"{c['success_pct_grey']:.1f} %; median error {c['median_error_colour']} / {c['median_error_grey']} px")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--large-trials", type=int, default=None)
    ap.add_argument("--colour-trials", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tuning set only")
    ap.add_argument("--only", default="bm,large,colour",
                    help="comma-separated rows to run: bm (bm_noise0/8/16), large, colour (default: all)")
    ap.add_argument("--json", default=str(pathlib.Path(__file__).parent / "results" / "align_real.json"))
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    only = set(args.only.split(","))
    if not only or only - {"bm", "large", "colour"}:
        ap.error(f"--only takes bm, large, colour; got {args.only!r}")
    sets = {"tuning": TUNING} if args.quick else {"tuning": TUNING, "held_out": HELD_OUT}
    res = {"threads": args.threads, "loadavg_start": os.getloadavg(), "trials": args.trials, "conditions": {},
           "colour": {}, "opencv": cv2.__version__}
    for subset, photos in sets.items():
        for noise in (0, 8, 16) if "bm" in only else ():
            res["conditions"][f"{subset}/bm_noise{noise}"] = measure(
                lambda k, p=photos, nz=noise: bm_trial(p, k, nz, args.seed), ("warpsvc", "ecc_ms"), args.trials)
            print(subset, noise, json.dumps(res["conditions"][f"{subset}/bm_noise{noise}"]), flush=True)
        if "large" in only:
            res["conditions"][f"{subset}/large"] = measure(
                lambda k, p=photos: large_trial(p, k, args.seed), ("warpsvc", "sift_magsac", "sift_magsac_ecc"),
                args.large_trials or args.trials)
            print(subset, "large", json.dumps(res["conditions"][f"{subset}/large"]), flush=True)
        if "colour" in only:
            res["colour"][subset] = colour_ratio(photos, args.colour_trials, args.seed)
    res["loadavg_end"] = os.getloadavg()
    text = table(res)
    print(text)
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=float))
    path.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
