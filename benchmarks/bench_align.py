"""warpsvc.align against OpenCV 5's ECC on the Baker-Matthews perturbation protocol.

    python benchmarks/bench_align.py                       # final table: 1000 trials per sigma
    python benchmarks/bench_align.py --trials 50 --sigmas 2,10,15 --quick   # smoke run

Protocol ("Lucas-Kanade 20 Years On", ``../shared/data/lk20/README.md``, their ``test_affine.m``
/ ``test_homo.m``), in 0-based pixel coordinates:

* ``takeo.mat`` / ``simon.mat``: template rectangle x 30..129, y 70..169 (100x100). Canonical
  points: affine, the 3 points (30, 70), (129, 70), (79, 169) (template points (0, 0), (99, 0),
  (49, 99)); homography, the 4 corners. Trial ``k`` moves every coordinate of every point by
  ``sigma * pt_offset[k]`` (the pre-drawn offsets of ``affine_pt_offset.mat`` /
  ``homo_pt_offset.mat``, rows 0..trials-1, the same rows for every sigma).
* The warp through the perturbed points is the truth ``image_from_template``; the template is
  the image sampled through it bilinearly (pixels that fall outside the image are 0, as their
  ``quadtobox`` does).
* Every method starts from the unperturbed placement plus 0.5 px (their ``p_init``).
* Error: RMS over all point coordinates between estimated and true points. Converged: error
  <= 1 px. "within 0.1 px": error <= 0.1 px.
* skimage: the same, on 100x100 rectangles at seeded random positions in bundled photographs
  (camera, astronaut, coffee, chelsea, rocket, coins, moon, motorcycle_left; grey), one
  photograph and position per trial.

Conditions: ``noise_free``; ``noise8`` (Gaussian noise of 8 grey levels on image and template);
``gain_bias`` (template * U[0.6, 1.4] + U[-30, 30]; warpsvc with ``photometric="gain_bias"``);
``occlusion`` (a 50x50 block = 25 % of the template replaced by texture from an unrelated
photograph; warpsvc with ``robust="tukey"``). Methods on the same trials:
``warpsvc`` (``align`` with default options), ``ecc_ms3`` / ``ecc_ms4``
(``cv2.findTransformECCMultiScale``, 3 / 4 levels, default criteria), ``ecc``
(``cv2.findTransformECC``, default criteria, gaussFiltSize 5). An exception counts as a
failure at the start point.

``--frame``: full 640x480 frames (``coffee`` resized), homography with corners perturbed by
sigma = 4 px, start at the identity: warpsvc vs ECC multi-scale time and error.

Timing: ``cv2.setNumThreads(--threads)`` (1 by default: the server runs one single-threaded
OpenCV per process) and ``OPENBLAS_NUM_THREADS=1`` (set before numpy loads; multi-threaded BLAS
on 8x8 systems and 10^4-row products only adds hand-off cost), a warm-up of 5 trials per method, then every trial timed with
``perf_counter`` around the single call; methods alternate trial by trial so load changes hit
all equally. Means and medians are reported; ratios are warpsvc / anchor in the same run.
Output: JSON (``--json``) and a markdown table on stdout (also saved next to the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

# Single-threaded BLAS, like OpenCV below (cv2.setNumThreads): both sides get one core. Must be
# set before numpy loads OpenBLAS; an explicit environment setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", os.environ.get("BENCH_BLAS_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import scipy.io as sio
from skimage import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import warpsvc

# The Baker-Matthews data sit in ``shared/data/lk20`` beside the checkout (``$WARPSVC_LK20``
# overrides): looked up in the checkout's parents, so a git worktree one level deeper finds it.
LK20 = pathlib.Path(os.environ["WARPSVC_LK20"]) if "WARPSVC_LK20" in os.environ else next(
    (p / "shared" / "data" / "lk20" for p in pathlib.Path(__file__).resolve().parents[1].parents
     if (p / "shared" / "data" / "lk20").is_dir()),
    pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lk20")
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon")
TEMPLATE = 100
NAN = float("nan")
CHI2_2DOF_95 = 5.991464547107979
CONDITIONS = ("noise_free", "noise8", "gain_bias", "occlusion")
METHODS = ("warpsvc", "ecc_ms3", "ecc_ms4", "ecc")


# -- data -------------------------------------------------------------------------------------

def grey(img):
    img = np.asarray(img)
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)
    return img.astype(np.float32)


def load_lk20(name):
    tdata = sio.loadmat(str(LK20 / f"{name}.mat"))["tdata"]
    img = tdata["img"][0, 0].astype(np.float32)
    x0, y0, x1, y1 = (int(v) - 1 for v in tdata["tmplt"][0, 0].ravel())  # MATLAB 1-based -> 0-based
    return img, (x0, y0, x1, y1)


def load_offsets(model):
    name = "affine_pt_offset.mat" if model == "affine" else "homo_pt_offset.mat"
    return sio.loadmat(str(LK20 / name))["pt_offset"]


def canonical_points(model, rect):
    """(template points, image points) of the unperturbed placement (0-based)."""
    x0, y0, x1, y1 = rect
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    if model == "affine":
        # test_affine.m: (1,1), (nx,1), (nx/2, ny) in the template; target x0 + (x1-x0)/2 - 0.5 at the bottom
        tp = np.array([[0, 0], [nx - 1, 0], [nx / 2 - 1, ny - 1]], np.float64)
        ip = np.array([[x0, y0], [x1, y0], [x0 + (x1 - x0) / 2 - 0.5, y1]], np.float64)
    else:
        tp = np.array([[0, 0], [0, ny - 1], [nx - 1, ny - 1], [nx - 1, 0]], np.float64)
        ip = np.array([[x0, y0], [x0, y1], [x1, y1], [x1, y0]], np.float64)
    return tp, ip


def warp_through(tp, ip, model):
    """``image_from_template`` through the point pairs (exact: 3 points affine, 4 homography)."""
    if model == "affine":
        a = np.column_stack([tp, np.ones(3)])  # float64 solve (cv2.getAffineTransform is float32)
        m = np.linalg.solve(a, ip).T
        return np.vstack([m, [0, 0, 1.0]])
    return warpsvc.HomographyTransform.from_points(tp, ip).matrix.copy()


def cut_template(image, image_from_template, size=TEMPLATE):
    """Bilinear samples of ``image`` through the warp; outside the image -> 0 (quadtobox)."""
    t = cv2.warpPerspective(image, image_from_template, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=NAN)
    t[np.isnan(t)] = 0.0
    return t


class Trials:
    """Deterministic trials for (dataset, model, condition, sigma)."""

    def __init__(self, dataset, model, seed=0):
        self.dataset, self.model = dataset, model
        self.offsets = load_offsets(model)
        self.seed = seed
        if dataset in ("takeo", "simon"):
            self.image, self.rect = load_lk20(dataset)
        else:
            self.photos = [grey(getattr(data, n)()) for n in PHOTOS] + [grey(data.stereo_motorcycle()[0])]
        self.texture = grey(data.brick())  # unrelated texture for occlusion

    def trial(self, k, sigma, condition):
        rng = np.random.default_rng([self.seed, k, int(sigma * 1000), CONDITIONS.index(condition)])
        if self.dataset in ("takeo", "simon"):
            image, rect = self.image, self.rect
        else:
            prng = np.random.default_rng([self.seed, k, 7])
            image = self.photos[k % len(self.photos)]
            h, w = image.shape
            margin = 50
            x0 = int(prng.integers(margin, w - TEMPLATE - margin))
            y0 = int(prng.integers(margin, h - TEMPLATE - margin))
            rect = (x0, y0, x0 + TEMPLATE - 1, y0 + TEMPLATE - 1)
        tp, ip = canonical_points(self.model, rect)
        n = len(ip)
        truth_pts = ip + sigma * self.offsets[k][: 2 * n].reshape(n, 2)
        truth = warp_through(tp, truth_pts, self.model)
        template = cut_template(image, truth)
        if condition == "noise8":
            template = template + rng.normal(0, 8, template.shape).astype(np.float32)
            image = image + rng.normal(0, 8, image.shape).astype(np.float32)
        elif condition == "gain_bias":
            template = template * np.float32(rng.uniform(0.6, 1.4)) + np.float32(rng.uniform(-30, 30))
        elif condition == "occlusion":
            th, tw = self.texture.shape
            ty, tx = int(rng.integers(0, th - 50)), int(rng.integers(0, tw - 50))
            oy, ox = int(rng.integers(0, TEMPLATE - 50 + 1)), int(rng.integers(0, TEMPLATE - 50 + 1))
            template = template.copy()
            template[oy:oy + 50, ox:ox + 50] = self.texture[ty:ty + 50, tx:tx + 50]
        start = np.array([[1, 0, rect[0] + 0.5], [0, 1, rect[1] + 0.5], [0, 0, 1.0]])  # image_from_template
        return {"template": np.ascontiguousarray(template, np.float32), "image": np.ascontiguousarray(image, np.float32),
                    "tp": tp, "truth_pts": truth_pts, "start": start}


# -- methods ----------------------------------------------------------------------------------

def map_pts(m, pts):
    h = np.column_stack([pts, np.ones(len(pts))]) @ np.asarray(m, np.float64).T
    return h[:, :2] / h[:, 2:]


def run_warpsvc(t, model, condition):
    kw = {}
    if condition == "gain_bias":
        kw["photometric"] = "gain_bias"
    if condition == "occlusion":
        kw["robust"] = "tukey"
    r = warpsvc.align(t["template"], t["image"], model, np.linalg.inv(t["start"]), **kw)
    return r.inverse, r


def run_ecc(t, model, levels):
    motion = cv2.MOTION_AFFINE if model == "affine" else cv2.MOTION_HOMOGRAPHY
    w0 = t["start"].astype(np.float32)
    if model == "affine":
        w0 = w0[:2].copy()
    if levels:
        p = cv2.ECCParameters()
        p.motionType = motion
        p.nlevels = levels
        _, w = cv2.findTransformECCMultiScale(t["template"], t["image"], w0, p)
    else:
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-6)
        _, w = cv2.findTransformECC(t["template"], t["image"], w0, motion, criteria, None, 5)
    w = np.asarray(w, np.float64)
    if w.shape == (2, 3):
        w = np.vstack([w, [0, 0, 1.0]])
    return w, None


def run(method, t, model, condition):
    if method == "warpsvc":
        return run_warpsvc(t, model, condition)
    return run_ecc(t, model, {"ecc_ms3": 3, "ecc_ms4": 4, "ecc": 0}[method])


def coverage(result, t):
    """Fraction of reference points inside their 95 % covariance ellipse."""
    if result is None or result.covariance is None:
        return None
    cov = result.point_covariance(t["tp"])  # (n, 2, 2)
    d = map_pts(result.inverse, t["tp"]) - t["truth_pts"]
    try:
        m2 = np.einsum("ni,nij,nj->n", d, np.linalg.inv(cov), d)
    except np.linalg.LinAlgError:
        return None
    return float(np.mean(m2 <= CHI2_2DOF_95))


def measure(trials, sigma, condition, methods, n, warmup=5):
    model = trials.model
    stats = {m: {"err": [], "time": [], "cpu": [], "exc": 0, "agree": [], "cover": [], "conv_flag": []} for m in methods}
    for k in range(min(warmup, n)):  # warm-up, not recorded
        t = trials.trial(k, sigma, condition)
        for m in methods:
            try:
                run(m, t, model, condition)
            except cv2.error:
                pass
    for k in range(n):
        t = trials.trial(k, sigma, condition)
        for m in methods:
            c0 = time.process_time()
            t0 = time.perf_counter()
            try:
                w, res = run(m, t, model, condition)
                exc = False
            except cv2.error:
                w, res, exc = t["start"], None, True
            except Exception:  # noqa: BLE001 - ours must not raise: count it loudly
                w, res, exc = t["start"], None, True
            dt = time.perf_counter() - t0
            dc = time.process_time() - c0
            err = float(np.sqrt(np.mean((map_pts(w, t["tp"]) - t["truth_pts"]) ** 2)))
            s = stats[m]
            s["err"].append(err)
            s["time"].append(dt)
            s["cpu"].append(dc)
            s["exc"] += exc
            if res is not None:
                s["agree"].append(bool(res.converged) == (err <= 1.0))
                s["conv_flag"].append(bool(res.converged))
                if condition == "noise8" and err <= 1.0:
                    c = coverage(res, t)
                    if c is not None:
                        s["cover"].append(c)
    out = {}
    for m, s in stats.items():
        e = np.array(s["err"])
        conv = e <= 1.0
        out[m] = {
            "n": len(e), "converged_pct": 100 * conv.mean(), "within_0_1_pct": 100 * (e <= 0.1).mean(),
            "mean_ms": 1e3 * float(np.mean(s["time"])), "median_ms": 1e3 * float(np.median(s["time"])),
            "mean_cpu_ms": 1e3 * float(np.mean(s["cpu"])),
            "median_error_converged": float(np.median(e[conv])) if conv.any() else None,
            "median_error": float(np.median(e)), "exceptions": s["exc"],
        }
        if s["agree"]:
            out[m]["status_agreement_pct"] = 100 * float(np.mean(s["agree"]))
            out[m]["reported_converged_pct"] = 100 * float(np.mean(s["conv_flag"]))
        if s["cover"]:
            out[m]["coverage95_pct"] = 100 * float(np.mean(s["cover"]))
    return out


def frame_case(n, sigma=4.0, seed=0, warmup=2):
    """640x480 frames, homography (corners perturbed by sigma), start at identity."""
    frame = cv2.resize(grey(data.coffee()), (640, 480), interpolation=cv2.INTER_AREA)
    h, w = frame.shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    res = {m: {"err": [], "time": [], "cpu": [], "exc": 0} for m in ("warpsvc", "ecc_ms3", "ecc_ms4")}
    for k in range(-warmup, n):
        rng = np.random.default_rng([seed, k + 100])
        moved = corners + rng.normal(0, sigma, corners.shape)
        truth = warpsvc.HomographyTransform.from_points(corners, moved).matrix  # image_from_template
        image = cv2.warpPerspective(frame, truth, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        t = {"template": frame, "image": image, "start": np.eye(3), "tp": corners, "truth_pts": moved}
        for m, acc in res.items():
            c0 = time.process_time()
            t0 = time.perf_counter()
            try:
                if m == "warpsvc":
                    wm = warpsvc.align(frame, image, "homography").inverse
                else:
                    wm, _ = run_ecc(t, "homography", 3 if m == "ecc_ms3" else 4)
                exc = False
            except cv2.error:
                wm, exc = np.eye(3), True
            dt = time.perf_counter() - t0
            dc = time.process_time() - c0
            if k < 0:
                continue
            acc["cpu"].append(dc)
            # interior error: the frame's border is reflected content, so score the corners
            acc["err"].append(float(np.sqrt(np.mean((map_pts(wm, corners) - moved) ** 2))))
            acc["time"].append(dt)
            acc["exc"] += exc
    return {m: {"n": len(s["err"]), "mean_ms": 1e3 * float(np.mean(s["time"])),
                    "mean_cpu_ms": 1e3 * float(np.mean(s["cpu"])),
                    "median_ms": 1e3 * float(np.median(s["time"])), "median_error": float(np.median(s["err"])),
                    "converged_pct": 100 * float(np.mean(np.array(s["err"]) <= 1.0)), "exceptions": s["exc"]}
            for m, s in res.items()}


# -- report -----------------------------------------------------------------------------------

def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summary(results):
    """Whole-run figures for warpsvc: exceptions, status agreement, and time against ecc_ms3."""
    n = exc = 0
    agree = 0.0
    t_ours = t_anchor = c_ours = c_anchor = 0.0
    for block in results["blocks"]:
        for row in block["rows"]:
            o, a = row["methods"].get("warpsvc"), row["methods"].get("ecc_ms3")
            if not o:
                continue
            n += o["n"]
            exc += o["exceptions"]
            agree += o.get("status_agreement_pct", 0.0) * o["n"] / 100
            if a:
                t_ours += o["mean_ms"] * o["n"]
                t_anchor += a["mean_ms"] * a["n"]
                c_ours += o["mean_cpu_ms"] * o["n"]
                c_anchor += a["mean_cpu_ms"] * a["n"]
    return {"trials": n, "exceptions": exc, "status_agreement_pct": 100 * agree / n if n else None,
                "mean_time_ratio_vs_ecc_ms3": t_ours / t_anchor if t_anchor else None,
                "cpu_time_ratio_vs_ecc_ms3": c_ours / c_anchor if c_anchor else None}


def markdown(results):
    lines = []
    if results.get("summary"):
        s = results["summary"]
        lines.append(f"\n**warpsvc over the whole run**: {s['trials']} alignments, {s['exceptions']} exceptions, "
                     f"`converged` agrees with the truth (error <= 1 px) in {fmt(s['status_agreement_pct'], '.2f')} %; "
                     f"time / ecc_ms3 time: {fmt(s['mean_time_ratio_vs_ecc_ms3'], '.2f')} (wall), "
                     f"{fmt(s['cpu_time_ratio_vs_ecc_ms3'], '.2f')} (CPU).")
    for block in results["blocks"]:
        lines.append(f"\n### {block['dataset']} · {block['model']} · {block['condition']} "
                     f"({block['trials']} trials per sigma)\n")
        lines.append("| sigma | method | converged % | within 0.1 px % | median error (conv.) px | mean ms | "
                     "median ms | mean vs ecc_ms3 | CPU ms | CPU vs ecc_ms3 | exceptions | status agrees % | "
                     "95% coverage % |")
        lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in block["rows"]:
            anchor = row["methods"].get("ecc_ms3", {})
            for m, s in row["methods"].items():
                ratio = s["mean_ms"] / anchor["mean_ms"] if anchor else None
                cpu_ratio = s["mean_cpu_ms"] / anchor["mean_cpu_ms"] if anchor else None
                lines.append(
                    f"| {row['sigma']:g} | {m} | {s['converged_pct']:.1f} | {s['within_0_1_pct']:.1f} | "
                    f"{fmt(s['median_error_converged'], '.4f')} | {s['mean_ms']:.2f} | {s['median_ms']:.2f} | "
                    f"{fmt(ratio, '.2f')} | {s['mean_cpu_ms']:.2f} | {fmt(cpu_ratio, '.2f')} | {s['exceptions']} | "
                    f"{fmt(s.get('status_agreement_pct'), '.1f')} | {fmt(s.get('coverage95_pct'), '.1f')} |")
    if results.get("frame"):
        f = results["frame"]
        lines.append("\n### 640x480 frames · homography · corners sigma = 4 px · start at identity\n")
        lines.append("| method | mean ms | median ms | mean vs ecc_ms3 | CPU ms | CPU vs ecc_ms3 | "
                     "median corner error px | converged % |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for m, s in f.items():
            lines.append(f"| {m} | {s['mean_ms']:.1f} | {s['median_ms']:.1f} | "
                         f"{s['mean_ms'] / f['ecc_ms3']['mean_ms']:.2f} | {s['mean_cpu_ms']:.1f} | "
                         f"{s['mean_cpu_ms'] / f['ecc_ms3']['mean_cpu_ms']:.2f} | {s['median_error']:.4f} | "
                         f"{s['converged_pct']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=1000, help="trials per sigma (1000 for the final table)")
    ap.add_argument("--sigmas", default="1,2,4,6,8,10,12,15", help="comma list for the noise-free sweep")
    ap.add_argument("--condition-sigmas", default="noise8:4,8,10;gain_bias:8;occlusion:5",
                    help="sigmas of the other conditions, 'cond:s1,s2;cond:...'")
    ap.add_argument("--models", default="affine,homography")
    ap.add_argument("--datasets", default="takeo,simon,skimage",
                    help="takeo, simon, skimage (the conditions other than noise_free run on the first)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--frame", type=int, default=20, help="640x480 frame trials (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="noise-free on takeo only (smoke)")
    ap.add_argument("--json", default=str(pathlib.Path(__file__).resolve().parent / "results" / "align.json"))
    args = ap.parse_args(argv)
    cv2.setNumThreads(args.threads)
    methods = args.methods.split(",")
    conditions = args.conditions.split(",")
    datasets = args.datasets.split(",")
    if args.quick:
        conditions, datasets = ["noise_free"], ["takeo"]
    cond_sigmas = {"noise_free": [float(s) for s in args.sigmas.split(",")]}
    for part in filter(None, args.condition_sigmas.split(";")):
        c, s = part.split(":")
        cond_sigmas[c] = [float(v) for v in s.split(",")]
    results = {
        "command": " ".join(["python", "benchmarks/bench_align.py"] + (argv if argv is not None else sys.argv[1:])),
        "python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__, "threads": args.threads,
        "machine": platform.machine(), "cpus": __import__("os").cpu_count(), "blocks": [],
    }
    t_start = time.time()
    for dataset in datasets:
        for model in args.models.split(","):
            trials = Trials(dataset, model, args.seed)
            for condition in conditions:
                # the noise / gain-bias / occlusion conditions run on the first dataset only
                if dataset != datasets[0] and condition != "noise_free":
                    continue
                block = {"dataset": dataset, "model": model, "condition": condition, "trials": args.trials, "rows": []}
                for sigma in cond_sigmas.get(condition, []):
                    row = {"sigma": sigma, "methods": measure(trials, sigma, condition, methods, args.trials)}
                    block["rows"].append(row)
                    s = row["methods"]
                    print(f"[{time.time() - t_start:7.0f}s] {dataset} {model} {condition} sigma={sigma:g} " + " ".join(
                        f"{m}:{v['converged_pct']:.1f}%/{v['mean_ms']:.2f}ms" for m, v in s.items()), flush=True)
                results["blocks"].append(block)
    if args.frame:
        results["frame"] = frame_case(args.frame, seed=args.seed)
    results["summary"] = summary(results)
    table = markdown(results)
    print(table)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
