"""Antialiased warp vs astropy ``reproject_adaptive``, its parallel efficiency and a per-stage profile.

    python benchmarks/bench_antialias.py [--repeats 15] [--threads default,1] [--clock wall|cpu]
                                         [--json benchmarks/results/antialias.json]

The cases of ``bench_warp.py`` (``antialias_case`` and the antialias rows of
``kernel_efficiency``), same inputs, same anchor, same method, on their own:

1. ``warp(img, T, (230, 230), intensity="conserve", antialias=True)`` vs ``reproject_adaptive``'s
   engine (DeForest 2004; Gaussian kernel, flux-conserving) given our pixel transform, for a
   600x600 field of point sources and a 600x600 photograph (``camera`` zoomed), ``T`` =
   ``tests.oracles.shrink3_homography`` (a perspective shrink by ~3): target >= 50x faster, at
   every thread count of ``--threads`` set on *both* sides (``reproject`` runs its own
   single-threaded loop). Accuracy: RMSE against a 16x-supersampled reference (% of its range)
   and, for the point sources, the worst flux error in a 7x7 window around every source.
2. Parallel efficiency ``T1 / (n Tn)`` (target >= 0.8 from 1 to 2 threads) of the scatter alone
   (``antialias.scatter`` of the padded photograph) and of the whole call.
3. Per-stage times of the photograph call at each thread count: ``setup`` (validation, block
   layout, plan: ``warp._antialias_setup``), ``window`` (the padded float64 source), ``scatter``
   (window + kernel launches: ``antialias.scatter``), ``finish`` (``warp._finish_antialiased``);
   ``whole`` is the public call. Each stage runs in blocks of ``STAGE_BLOCK`` calls per round and
   thread count, the first untimed (its steady state at a fixed setting; the efficiency rows
   come from these).

Method: one warm-up call each (numba loads its cache on first use), then ``--repeats`` rounds;
each round runs every thread count and, within it, ours then the anchor, so drifts in the
machine's load hit both sides alike; medians reported. The load average is recorded before and
after. ``--clock cpu`` times with the process's CPU time instead of the wall clock: on a
machine shared with other work it leaves out the time the process waits for a core (a proxy
for a quiet machine at 1 thread; at n threads it sums the threads, so only the wall clock
measures parallel speed-up).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np
from scipy import ndimage as ndi
from skimage import data

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tests.oracles import point_field, shrink3_homography, supersampled_reference, window_flux  # noqa: E402
from bench_warp import reproject_adaptive_anchor  # noqa: E402  (the same anchor as bench_warp)
from warpsvc import warp  # noqa: E402
from warpsvc.core import antialias, threads  # noqa: E402

warp_module = importlib.import_module("warpsvc.core.warp")  # the module (``warpsvc.core.warp`` is also the function)

N, SHAPE = 600, (230, 230)
CLOCK = [time.perf_counter]  # set by main(): wall clock or process CPU time


def photograph() -> np.ndarray:
    return ndi.zoom(data.camera().astype(np.float64), N / 512, order=1)[:N, :N]


STAGE_BLOCK = 4  # calls per stage per round in stages() (the first untimed)


def interleaved(fns: dict, counts, repeats, block: int = 1) -> dict:
    """``{threads: {name: median ms}}``: a warm-up of each, then ``repeats`` rounds, each running
    every thread count and, within it, every function in order: ``block`` calls of it, all but
    the first timed when ``block > 1`` (the per-stage rows: each stage in its own steady state
    at a fixed thread count, as ``bench_warp.timed_threads``; the first call after the switch
    from the other count, or from another stage, also wakes the idle CPU). The anchor rows use
    ``block=1`` (its calls take seconds)."""
    times = {n: {name: [] for name in fns} for n in counts}
    for n in counts:
        threads.set_threads(n)
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for n in counts:
            threads.set_threads(n)
            for name, fn in fns.items():
                if block > 1:
                    fn()
                for _ in range(max(1, block - 1)):
                    t0 = CLOCK[0]()
                    fn()
                    times[n][name].append(CLOCK[0]() - t0)
    return {n: {name: 1e3 * statistics.median(v) for name, v in row.items()} for n, row in times.items()}


def speed_vs_anchor(counts, repeats) -> dict:
    t = shrink3_homography(N)
    anchor = reproject_adaptive_anchor(t)
    points, src_pts = point_field((N, N))
    rows = {}
    for name, img in [("point sources", points), ("photograph", photograph())]:
        ref = supersampled_reference(img, t, SHAPE)
        span = ref.max() - ref.min()
        ours_out = warp(img, t, SHAPE, intensity="conserve", antialias=True)
        anchor_out = anchor(img, SHAPE)
        ms = interleaved({"ours": lambda img=img: warp(img, t, SHAPE, intensity="conserve", antialias=True),
                          "anchor": lambda img=img: anchor(img, SHAPE)}, counts, repeats)
        row = {"target": "speedup >= 50", "by_threads": {
            n: {"ours_ms": r["ours"], "anchor_ms": r["anchor"], "speedup": r["anchor"] / r["ours"]}
            for n, r in ms.items()}}
        row["rmse_vs_reference_pct_of_range"] = {
            "ours": 100 * float(np.sqrt(((ours_out - ref) ** 2).mean()) / span),
            "reproject_adaptive": 100 * float(np.sqrt(((anchor_out - ref) ** 2).mean()) / span)}
        if name == "point sources":
            pos = t.map(src_pts)
            row["max_window_flux_error_pct"] = {
                "ours": 100 * float(np.abs(window_flux(ours_out, pos) / 1000.0 - 1).max()),
                "reproject_adaptive": 100 * float(np.abs(window_flux(anchor_out, pos) / 1000.0 - 1).max())}
            row["total_flux_error_rel"] = float(abs(ours_out.sum() / points.sum() - 1))
        rows[f"antialias {name} {N}x{N} -> {SHAPE[0]}x{SHAPE[1]}"] = row
    return rows


def stages(counts, repeats) -> dict:
    """Per-stage medians (ms) of the photograph call, and the efficiency rows of bench_warp."""
    from warpsvc.core.validate import check_image

    t = shrink3_homography(N)
    img = photograph()
    img3 = check_image(img)
    inv = t.inverse()
    opts = warp_module.SampleOptions("linear", "constant", 0.0)

    def setup():
        return warp_module._antialias_setup(img3, t, inv, SHAPE, opts, "conserve", None)

    p, source, _, coverage, _ = setup()
    padded = antialias.padded_source(img3, False)  # bench_warp's kernel_efficiency input
    acc = antialias.scatter(padded, p, t, SHAPE)
    fns = {
        "whole": lambda: warp(img, t, SHAPE, intensity="conserve", antialias=True),
        "setup": setup,
        "window": lambda: source.window(0, source.h),
        "scatter": lambda: antialias.scatter(source, p, t, SHAPE),
        "scatter (padded source)": lambda: antialias.scatter(padded, p, t, SHAPE),
        "finish": lambda: warp_module._finish_antialiased(acc, 1, coverage, inv, SHAPE, opts, "conserve",
                                                          np.float64, None),
    }
    ms = interleaved(fns, counts, repeats, block=STAGE_BLOCK)
    eff = {}
    for name, key in [("antialias scatter (photograph 600x600 -> 230x230)", "scatter (padded source)"),
                      ("antialias whole call (photograph)", "whole")]:
        row = {"ms": {n: ms[n][key] for n in counts}}
        if 1 in ms:
            row["efficiency_vs_1"] = {n: ms[1][key] / (n * ms[n][key]) for n in counts if n != 1}
        eff[name] = row
    return {"stages_ms": ms, "kernel_efficiency": eff, "nodes": p.nodes}


def markdown(rows, prof, counts) -> str:
    lines = ["| case | threads | ours (ms) | reproject_adaptive (ms) | speed-up | target |", "|---|---:|---:|---:|---:|---|"]
    for name, r in rows.items():
        for n, b in r["by_threads"].items():
            lines.append(f"| {name} | {n} | {b['ours_ms']:.2f} | {b['anchor_ms']:.1f} | {b['speedup']:.1f}x | >= 50x |")
    lines += ["", "| case | accuracy | warpsvc | reproject_adaptive |", "|---|---|---:|---:|"]
    for name, r in rows.items():
        rm = r["rmse_vs_reference_pct_of_range"]
        lines.append(f"| {name} | RMSE vs 16x reference (% of range) | {rm['ours']:.4f} | {rm['reproject_adaptive']:.3f} |")
        if "max_window_flux_error_pct" in r:
            fe = r["max_window_flux_error_pct"]
            lines.append(f"| {name} | worst 7x7 window flux error (%) | {fe['ours']:.2e} | {fe['reproject_adaptive']:.3f} |")
    lines += ["", "| stage (photograph) | " + " | ".join(f"{n} thr (ms)" for n in counts) + " |",
              "|---|" + "---:|" * len(counts)]
    for stage in next(iter(prof["stages_ms"].values())):
        lines.append(f"| {stage} | " + " | ".join(f"{prof['stages_ms'][n][stage]:.2f}" for n in counts) + " |")
    lines += ["", "| kernel | " + " | ".join(f"{n} thr (ms)" for n in counts) + " | efficiency (T1 / n Tn) |",
              "|---|" + "---:|" * (len(counts) + 1)]
    for name, r in prof["kernel_efficiency"].items():
        e = ", ".join(f"{n}: {v:.2f}" for n, v in r.get("efficiency_vs_1", {}).items())
        lines.append(f"| {name} | " + " | ".join(f"{r['ms'][n]:.2f}" for n in counts) + f" | {e} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", default="default,1",
                    help="comma-separated thread counts for both sides ('default' = the CPUs this process may use)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall clock (default) or the process's CPU time (see the docstring)")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("benchmarks/results/antialias.json"))
    args = ap.parse_args(argv)
    CLOCK[0] = time.perf_counter if args.clock == "wall" else time.process_time
    counts = list(dict.fromkeys(threads.available_cpus() if x.strip() == "default" else int(x)
                                for x in args.threads.split(",")))
    antialias.compile_tier1()  # as a server's warm-up: every scatter runs the compiled kernels (tier 1)
    load_before = os.getloadavg()
    rows = speed_vs_anchor(counts, max(3, args.repeats // 3))
    prof = stages(counts, args.repeats)
    load_after = os.getloadavg()
    print(markdown(rows, prof, counts))
    print(f"\nload average before / after: {load_before} / {load_after} ({os.cpu_count()} CPUs)")
    meta = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine(),
            "threads": counts, "default_threads": threads.available_cpus(), "repeats": args.repeats, "clock": args.clock,
            "loadavg_before": load_before, "loadavg_after": load_after}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": rows, **prof}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
