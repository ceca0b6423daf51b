"""Warp speed and antialiasing quality, each against its anchor measured in the same run.

    python benchmarks/bench_warp.py [--repeats 15] [--threads default,1] [--json benchmarks/results/warp.json]

1. Plain warps of a 1920x1080 RGB uint8 image vs the OpenCV call each wraps
   (``warpAffine``, ``warpPerspective``, ``warpPolar``): target ratio <= 1.2.
2. ``intensity="conserve"`` vs the plain OpenCV warp: target <= 1.3 (issue 12).
3. ``antialias=True, intensity="conserve"`` vs astropy ``reproject_adaptive`` (DeForest 2004;
   Gaussian kernel, flux-conserving, the gather-type anchor) on the local-conservation case
   (point sources, a homography shrinking ~3x), and on a dense photograph under the same
   warp: target >= 50x faster at equal or better accuracy. Accuracy: worst flux error in a
   7x7 window around every source, and RMSE against a 16x-supersampled reference.
4. Parallel efficiency of the compiled kernels alone (``T1 / (n Tn)``, target >= 0.8 from 1 to 2
   threads): the determinant scaling of the 1080p homography and the antialias scatter of the
   photograph case, plus the whole calls' speed-up. Timed like the pairs: per round and thread
   count a block of ``BLOCK`` calls, the first untimed (``timed_threads``).

Tiers: the projective conserve factor has a numpy tier 0 and a numba tier 1 (see
``warpsvc.core._scale_kernels``); the benchmark compiles tier 1 first
(``_scale_kernels.compile_tier1()``, as the warm-up of a server does), so every timed
``conserve homography`` call runs tier 1 (checked and recorded as ``projective_tier``);
tier 0 alone is timed among the kernel rows. The 1080p results (25 MB) use the streaming
stores of ``warpsvc.core._stream_kernels`` (compiled first too, as the warm-up does); the
kernel rows time both stores. The antialias scatter's tier 1 is compiled first
too (``antialias.compile_tier1()``): on a fresh install, without it, the timed antialias calls
ran tier 0 while numba's cache filled in the background (point sources 16x instead of ~160x).

Threads: every thread count in ``--threads`` (``default`` = ``warpsvc.core.threads.available_cpus()``)
is set on *both* sides (``warpsvc.core.threads.set_threads(n)`` also sets ``cv2.setNumThreads``;
``reproject`` runs its own single-threaded loop). Method: one warm-up call each (numba loads
its cache on first use), then ``--repeats`` rounds; each round runs every thread count, and
within it one untimed anchor call (the first OpenCV call after ``cv2.setNumThreads`` changes
the count restarts OpenCV's pool: measured ~1 ms at 2 threads, which before this call fell on
whichever side ran first, always ours), then a block of ``BLOCK`` calls of each side (ours
first in even rounds, second in odd ones; the first call of a block untimed), so each side is
timed in its own steady state and drifts in the machine's load hit both alike; medians of
the timed calls reported. Ratios are ours / anchor time; "CPU ratio" is the same with process CPU time (at one
thread the load-robust figure). The load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import warpsvc  # noqa: E402
from tests.oracles import point_field, shrink3_homography, supersampled_reference, window_flux  # noqa: E402
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, warp  # noqa: E402
from warpsvc.core import threads  # noqa: E402

THREADS = [1]  # set by main(): the thread counts every pair is timed at


BLOCK = 4  # calls per side per round in timed_pair; the first of each block is not timed


def timed_pair(ours, anchor, repeats, block=BLOCK):
    """``{threads: {ours_ms, anchor_ms, ratio, ours_cpu_ms, anchor_cpu_ms, cpu_ratio}}``, rounds
    alternating thread counts and sides. Each round runs a *block* of :data:`BLOCK` calls of one
    side, then of the other (which side first alternates by round), and times every call of
    a block but its first: each side is measured in its own steady state, as a caller running
    it in a loop sees it. (Alternating single calls let our 25 MB float32 result evict the
    anchor's source from the cache, so the anchor ran up to 1.3x slower after ours than in
    its own loop and the ratio looked better than a user's loop; measured, see
    docs/warping.md.) ``*_cpu_ms``: process CPU time (all threads), less sensitive than wall
    time to other jobs on a shared box; at 1 thread its ratio is the wall ratio an idle
    machine would show (at n threads it sums the threads' time). ``block=1``: single calls
    alternating, every one timed (the antialias rows: seconds-long anchor calls, small results)."""
    times = {n: ([], [], [], []) for n in THREADS}
    for n in THREADS:
        threads.set_threads(n)
        ours(), anchor()  # warm-up
    for r in range(repeats):
        for n in THREADS:
            threads.set_threads(n)
            anchor()  # untimed: the first OpenCV call after a thread-count change restarts its pool
            order = ((0, ours), (1, anchor)) if r % 2 == 0 else ((1, anchor), (0, ours))
            for side, fn in order:
                if block > 1:
                    fn()  # untimed: the switch from the other side's cache state
                for _ in range(max(1, block - 1)):
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    c1, t1 = time.process_time(), time.perf_counter()
                    times[n][side].append(t1 - t0)
                    times[n][side + 2].append(c1 - c0)
    out = {}
    for n, series in times.items():
        mo, ma, co, ca = (statistics.median(s) for s in series)
        out[n] = {"ours_ms": mo * 1e3, "anchor_ms": ma * 1e3, "ratio": mo / ma,
                  "ours_cpu_ms": co * 1e3, "anchor_cpu_ms": ca * 1e3, "cpu_ratio": co / ca if ca else None}
    return out


def timed_threads(fn, repeats, block=BLOCK):
    """Median seconds of ``fn()`` at each thread count: rounds alternate the counts, and each
    round runs a *block* of :data:`BLOCK` calls at one count, the first untimed (as
    :func:`timed_pair`: each count measured in its own steady state, as a caller at a fixed
    setting sees it). With single calls alternating (``block=1``), every 2-thread call came
    right after a 1-thread one, whose ~5 ms left the second CPU idle, and paid waking it from
    deep idle (~0.2-0.3 ms on this VM, docs/warping.md, seventh session): the antialias
    scatter's efficiency read 0.66 that way against 0.81 in bench_antialias.py."""
    times = {n: [] for n in THREADS}
    for n in THREADS:
        threads.set_threads(n)
        fn()
    for _ in range(repeats):
        for n in THREADS:
            threads.set_threads(n)
            if block > 1:
                fn()  # untimed: the switch from the other thread count
            for _ in range(max(1, block - 1)):
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def speed_cases(repeats):
    rgb = cv2.resize(data.astronaut(), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    h, w = rgb.shape[:2]
    aff = AffineTransform.from_components(scale=(0.9, 0.8), rotation=0.2, shear=0.1, translation=(100, 50))
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    hom = HomographyTransform.from_points(corners, [[80, 40], [1800, 120], [1700, 1000], [150, 1060]])
    pol = PolarTransform((w / 2, h / 2), h / 2, (1080, 960))
    cv_aff = lambda: cv2.warpAffine(rgb, aff.matrix[:2], (w, h), flags=cv2.INTER_LINEAR)  # noqa: E731
    cv_hom = lambda: cv2.warpPerspective(rgb, hom.matrix, (w, h), flags=cv2.INTER_LINEAR)  # noqa: E731
    cv_pol = lambda: cv2.warpPolar(rgb, (960, 1080), (w / 2, h / 2), h / 2,  # noqa: E731
                                   cv2.INTER_LINEAR | cv2.WARP_FILL_OUTLIERS)
    rows = {}
    for name, t, anchor in [("affine", aff, cv_aff), ("homography", hom, cv_hom), ("polar", pol, cv_pol)]:
        rows[f"plain {name}"] = {"target": "<= 1.2", "by_threads": timed_pair(lambda t=t: warp(rgb, t), anchor, repeats)}
        rows[f"conserve {name}"] = {"target": "<= 1.3", "by_threads": timed_pair(
            lambda t=t: warp(rgb, t, intensity="conserve"), anchor, repeats)}
    return rows


def kernel_efficiency(repeats):
    """Kernel-only times at each thread count: the 1080p homography determinant scaling and the
    antialias scatter (photograph, 600x600 -> 230x230), plus the whole antialias call."""
    from warpsvc.core import _scale_kernels, antialias
    from warpsvc.core.strips import run_strips

    rgb = cv2.resize(data.astronaut(), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    h, w = rgb.shape[:2]
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    hom = HomographyTransform.from_points(corners, [[80, 40], [1800, 120], [1700, 1000], [150, 1060]])
    m = np.ascontiguousarray(hom.inverse().matrix)
    sampled = warp(rgb, hom)
    out = np.empty(sampled.shape, np.float32)
    det_m = abs(float(np.linalg.det(m)))
    assert _scale_kernels.projective_tier(sampled, m, out) == 1, "tier 1 not compiled"
    assert _scale_kernels.stream_kernels(sampled, out, True) is not None, "streaming tier not compiled"
    n, shape = 600, (230, 230)
    t = shrink3_homography(n)
    photo = ndi.zoom(data.camera().astype(np.float64), n / 512, order=1)[:n, :n][:, :, None]
    p = antialias.plan(t, photo.shape[:2], shape, 1, with_coverage=False)
    src = antialias.padded_source(photo, False)
    cols = np.ones(sampled.shape[1] * sampled.shape[2], np.float32)
    out2 = np.empty_like(out)
    # Bandwidth anchor: the same bytes (uint8 in, float32 out) converted over the same strips,
    # no arithmetic: the machine's own 1 -> 2 thread scaling of this traffic.
    cases = {
        "bandwidth anchor: strip copy uint8 -> float32 1920x1080x3":
            lambda: run_strips(lambda a, b: np.copyto(out[a:b], sampled[a:b]), h, sampled.size),
        # The streaming rows' anchor: a 25 MB float32 copy (memcpy) over the same strips, a
        # result-sized stream through memory with no arithmetic: how far 2 threads raise the
        # memory traffic of one on this machine.
        "bandwidth anchor, result-sized: strip memcpy float32 25 MB":
            lambda: run_strips(lambda a, b: np.copyto(out2[a:b], out[a:b]), h, out.size),
        "scale_by_constant 1920x1080x3": lambda: _scale_kernels.scale_by_constant(sampled, np.float32(0.7), out),
        "scale_by_columns 1920x1080x3": lambda: _scale_kernels.scale_by_columns(sampled, cols, out),
        "scale_by_projective_det 1920x1080x3 (tier 1, numba)":
            lambda: _scale_kernels.scale_by_projective_det(sampled, m, det_m, 0, out),
        "scale_by_projective_det 1920x1080x3 tier 0 (numpy strips)":
            lambda: _scale_kernels._projective_numpy(sampled, m, det_m, 0, out),
        "scale_by_constant 1920x1080x3, streaming stores (what a 25 MB result uses)":
            lambda: _scale_kernels.scale_by_constant(sampled, np.float32(0.7), out, stream=True),
        "scale_by_columns 1920x1080x3, streaming stores":
            lambda: _scale_kernels.scale_by_columns(sampled, cols, out, stream=True),
        "scale_by_projective_det 1920x1080x3, streaming stores":
            lambda: _scale_kernels.scale_by_projective_det(sampled, m, det_m, 0, out, stream=True),
        "antialias scatter (photograph 600x600 -> 230x230)": lambda: antialias.scatter(src, p, t, shape),
        "antialias whole call (photograph)": lambda: warp(photo[:, :, 0], t, shape, intensity="conserve", antialias=True),
    }
    rows = {}
    for name, fn in cases.items():
        tm = timed_threads(fn, repeats)
        row = {"ms": {n_: v * 1e3 for n_, v in tm.items()}}
        if 1 in tm:
            row["efficiency_vs_1"] = {n_: tm[1] / (n_ * v) for n_, v in tm.items() if n_ != 1}
            row["speedup_vs_1"] = {n_: tm[1] / v for n_, v in tm.items() if n_ != 1}
        rows[name] = row
    return rows


def reproject_adaptive_anchor(t):
    """``reproject_adaptive``'s engine with our pixel transform (it takes any output->input map)."""
    from reproject.adaptive.deforest import map_coordinates

    inv = t.inverse()

    def transformer(pixel_out):
        x, y = pixel_out[:, :, 0], pixel_out[:, :, 1]
        p = inv.map(np.column_stack([x.ravel(), y.ravel()]))
        return np.stack([p[:, 0].reshape(x.shape), p[:, 1].reshape(x.shape)], -1)

    def run(img, shape):
        out = np.zeros((1, *shape))
        map_coordinates(img[None].astype(np.float64), out, transformer, out_of_range_nan=True, conserve_flux=True,
                        kernel="Gaussian", kernel_width=1.3, sample_region_width=4, boundary_mode="strict")
        return np.nan_to_num(out[0])

    return run


def antialias_case(repeats):
    n, shape = 600, (230, 230)
    t = shrink3_homography(n)
    anchor = reproject_adaptive_anchor(t)
    rows = {}
    points, src_pts = point_field((n, n))
    photo = ndi.zoom(data.camera().astype(np.float64), n / 512, order=1)[:n, :n]
    for name, img in [("point sources", points), ("photograph", photo)]:
        ref = supersampled_reference(img, t, shape)
        span = ref.max() - ref.min()
        ours_out = warp(img, t, shape, intensity="conserve", antialias=True)
        anchor_out = anchor(img, shape)
        opencv_out = cv2.warpPerspective(img, t.matrix, shape[::-1]) * warpsvc.jacobian_determinant(t, shape)
        row = {"by_threads": timed_pair(lambda img=img: warp(img, t, shape, intensity="conserve", antialias=True),
                                        lambda img=img: anchor(img, shape), repeats, block=1), "target": "speedup >= 50"}
        for r in row["by_threads"].values():
            r["speedup"] = 1 / r["ratio"]
        row["rmse_vs_reference_pct_of_range"] = {
            "ours": 100 * float(np.sqrt(((ours_out - ref) ** 2).mean()) / span),
            "reproject_adaptive": 100 * float(np.sqrt(((anchor_out - ref) ** 2).mean()) / span),
            "opencv_times_det": 100 * float(np.sqrt(((opencv_out - ref) ** 2).mean()) / span),
        }
        if name == "point sources":
            pos = t.map(src_pts)
            row["max_window_flux_error_pct"] = {
                "ours": 100 * float(np.abs(window_flux(ours_out, pos) / 1000.0 - 1).max()),
                "reproject_adaptive": 100 * float(np.abs(window_flux(anchor_out, pos) / 1000.0 - 1).max()),
                "opencv_times_det": 100 * float(np.abs(window_flux(opencv_out, pos) / 1000.0 - 1).max()),
            }
        rows[f"antialias {name} 600x600 -> 230x230"] = row
    return rows


def markdown(rows, efficiency=None):
    lines = ["| case | threads | ours (ms) | anchor (ms) | ours/anchor | CPU ratio | target |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        for n, b in r["by_threads"].items():
            ratio = f"1/{1 / b['ratio']:.1f}" if b["ratio"] < 0.2 else f"{b['ratio']:.3f}"
            cpu = b.get("cpu_ratio")
            cpu = "" if cpu is None else (f"1/{1 / cpu:.1f}" if cpu < 0.2 else f"{cpu:.3f}")
            lines.append(f"| {name} | {n} | {b['ours_ms']:.2f} | {b['anchor_ms']:.2f} | {ratio} | {cpu} | {r['target']} |")
    extra = []
    for name, r in rows.items():
        if "rmse_vs_reference_pct_of_range" in r:
            rm = r["rmse_vs_reference_pct_of_range"]
            extra.append(f"| {name} | RMSE vs 16x reference (% of range) | {rm['ours']:.3f} | "
                         f"{rm['reproject_adaptive']:.3f} | {rm['opencv_times_det']:.3f} |")
        if "max_window_flux_error_pct" in r:
            fe = r["max_window_flux_error_pct"]
            extra.append(f"| {name} | worst 7x7 window flux error (%) | {fe['ours']:.2e} | "
                         f"{fe['reproject_adaptive']:.3f} | {fe['opencv_times_det']:.1f} |")
    if extra:
        lines += ["", "| case | accuracy | warpsvc | reproject_adaptive | OpenCV x det J |", "|---|---|---:|---:|---:|"]
        lines += extra
    if efficiency:
        lines += ["", "| kernel | " + " | ".join(f"{n} thr (ms)" for n in THREADS) + " | efficiency (T1 / n Tn) |",
                  "|---|" + "---:|" * (len(THREADS) + 1)]
        for name, r in efficiency.items():
            eff = ", ".join(f"{n}: {e:.2f}" for n, e in r.get("efficiency_vs_1", {}).items())
            lines.append(f"| {name} | " + " | ".join(f"{r['ms'][n]:.2f}" for n in THREADS) + f" | {eff} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", default="default,1",
                    help="comma-separated thread counts for both sides ('default' = the CPUs this process may use)")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("benchmarks/results/warp.json"))
    ap.add_argument("--skip-antialias", action="store_true")
    args = ap.parse_args(argv)
    counts = [threads.available_cpus() if x.strip() == "default" else int(x) for x in args.threads.split(",")]
    THREADS[:] = list(dict.fromkeys(counts))
    from warpsvc.core import _scale_kernels

    _scale_kernels.compile_tier1()  # as a server's warm-up: conserving homographies run tier 1
    _scale_kernels.compile_stream_tier1()  # and results >= 8 MB the streaming stores (._stream_kernels)
    if not args.skip_antialias:
        from warpsvc.core import antialias

        antialias.compile_tier1()  # and every timed scatter runs the compiled kernels, not tier 0
    load_before = os.getloadavg()
    rows = speed_cases(args.repeats)
    if not args.skip_antialias:
        rows |= antialias_case(max(3, args.repeats // 3))
    efficiency = kernel_efficiency(args.repeats)
    load_after = os.getloadavg()
    print(markdown(rows, efficiency))
    print(f"\nload average before / after: {load_before} / {load_after} ({os.cpu_count()} CPUs)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__,
            "machine": platform.machine(), "threads": THREADS, "default_threads": threads.available_cpus(),
            "repeats": args.repeats, "loadavg_before": load_before, "loadavg_after": load_after,
            "projective_tier": _scale_kernels.projective_tier(np.empty((1, 1, 3), np.uint8), np.eye(3),
                                                              np.empty((1, 1, 3), np.float32))}
    args.json.write_text(json.dumps({"meta": meta, "results": rows, "kernel_efficiency": efficiency}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
