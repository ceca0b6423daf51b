"""First call of each kernel in a fresh process (issue 12 item 3: <= 150 ms).

    python benchmarks/bench_cold_start.py [--runs 7] [--json benchmarks/results/cold_start.json]

The conserve and polar kernels are numpy / OpenCV over strips (nothing to compile); the antialias
scatter starts on its numpy tier 0 (``warpsvc.core._splat_numpy``) and hands over to numba
(tier 1) once a background thread has loaded it (from its 2nd tier-0 call). Runs
``python -m warpsvc.core.warmup`` first (the install / Docker build step that fills numba's
cache), then for each case spawns ``--runs`` fresh interpreters, alternating cases, each of which
imports warpsvc, builds its inputs, and times the first and the second call of one warp
(1920x1080 RGB uint8 for the scaling kernels, 600x600 -> 230x230 float64 for antialias). The
first-minus-second difference is the one-time cost (numba import, cache load, dispatch set-up).
``numba_loaded_by_import`` / ``numba_loaded_by_call``: whether numba is in ``sys.modules`` after
``import warpsvc`` and after the first call. A separate probe times ``import numba`` alone (the
floor of any numba kernel's first call). Medians are printed.

The conserving homography's first call runs tier 0 of the projective factor (numpy; no numba:
see ``numba_loaded_by_call``); its second warp is the 3rd tier-0 call (a 1080p warp is two
scaling bands), which starts the background compile of tier 1 (``warpsvc.core._scale_kernels``),
so that row's second call includes the numba import running in the other thread. The antialias
rows' second call is their 2nd tier-0 scatter (it starts the upgrade when it ends). The
"photograph" rows (every source value non-zero: no node skipped, 2M nodes in the polar case)
show what tier 0 costs on dense sources.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

PRELUDE = """
import time, json, sys
t0 = time.perf_counter()
import numpy as np
import warpsvc
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, warp
t_import = time.perf_counter() - t0
numba_after_import = "numba" in sys.modules
rgb = (np.arange(1080 * 1920 * 3, dtype=np.uint32) % 251).astype(np.uint8).reshape(1080, 1920, 3)
w, h = 1920, 1080
aff = AffineTransform.from_components(scale=(0.9, 0.8), rotation=0.2, shear=0.1, translation=(100, 50))
hom = HomographyTransform.from_points([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]],
                                      [[80, 40], [1800, 120], [1700, 1000], [150, 1060]])
pol = PolarTransform((w / 2, h / 2), h / 2, (1080, 960))
pts = np.zeros((600, 600)); pts[20:580:24, 20:580:24] = 1000.0
shrink = HomographyTransform.from_points([[0, 0], [599, 0], [599, 599], [0, 599]],
                                         [[10, 20], [190, 10], [200, 215], [5, 190]])
small_pol = PolarTransform((300.0, 300.0), 280.0, (360, 200))
photo = (np.arange(600 * 600) % 251 + 1.0).reshape(600, 600)
"""

CASES = {
    "conserve affine (scale_by_constant, strips)": "warp(rgb, aff, intensity='conserve')",
    "conserve homography (scale_by_projective_det, strips)": "warp(rgb, hom, intensity='conserve')",
    "conserve polar (warpPolar + scale_by_columns, strips)": "warp(rgb, pol, intensity='conserve')",
    "plain polar (warpPolar)": "warp(rgb, pol)",
    "conserve polar with poll (outer_maps bands, strips)": "warp(rgb, pol, intensity='conserve', poll=lambda: None)",
    "antialias homography (scatter_matrix)": "warp(pts, shrink, (230, 230), intensity='conserve', antialias=True)",
    "antialias polar (list_nodes, tent_sums, scatter_points)":
        "warp(pts, small_pol, intensity='conserve', antialias=True)",
    "antialias homography, photograph": "warp(photo, shrink, (230, 230), intensity='conserve', antialias=True)",
    "antialias polar, photograph": "warp(photo, small_pol, intensity='conserve', antialias=True)",
}

CASE_SCRIPT = PRELUDE + """
t1 = time.perf_counter(); {call}; t2 = time.perf_counter()
numba_after_call = "numba" in sys.modules
{call}; t3 = time.perf_counter()
print(json.dumps({{"import_ms": t_import * 1e3, "first_ms": (t2 - t1) * 1e3, "second_ms": (t3 - t2) * 1e3,
                  "numba_loaded_by_import": numba_after_import, "numba_loaded_by_call": numba_after_call}}))
"""

PROBE = """
import time, json
t0 = time.perf_counter(); import numba; t1 = time.perf_counter()
print(json.dumps({"import_numba_ms": (t1 - t0) * 1e3}))
"""


def run(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks/results/cold_start.json")
    args = ap.parse_args(argv)
    subprocess.run([sys.executable, "-m", "warpsvc.core.warmup", "-q"], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))
    samples = {name: [] for name in CASES}
    probes = []
    load = [os.getloadavg()]
    for _ in range(args.runs):  # alternate the cases within each round
        for name, call in CASES.items():
            samples[name].append(run(CASE_SCRIPT.format(call=call)))
        probes.append(run(PROBE))
    load.append(os.getloadavg())
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    results = {name: {k: med(rows, k) for k in ("import_ms", "first_ms", "second_ms")}
               | {"target_first_ms": 150, "numba_loaded_by_import": any(r["numba_loaded_by_import"] for r in rows),
                  "numba_loaded_by_call": any(r["numba_loaded_by_call"] for r in rows)}
               for name, rows in samples.items()}
    probe = {k: med(probes, k) for k in probes[0]}
    print("| kernel (first call in a fresh process) | import warpsvc (ms) | first call (ms) | second call (ms) "
          "| numba imported by the call |")
    print("|---|---:|---:|---:|---|")
    for name, r in results.items():
        print(f"| {name} | {r['import_ms']:.0f} | {r['first_ms']:.0f} | {r['second_ms']:.1f} | "
              f"{r['numba_loaded_by_call']} |")
    print(f"\nnumba floor: import numba alone {probe['import_numba_ms']:.0f} ms")
    print(f"load average before / after: {load[0]} / {load[1]}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "runs": args.runs, "loadavg_before": load[0],
            "loadavg_after": load[1], "cpus": os.cpu_count()}
    args.json.write_text(json.dumps({"meta": meta, "results": results, "numba_probe": probe}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
