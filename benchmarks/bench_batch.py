"""Batch throughput: ``warpsvc-batch warp`` over 200 images of 1024x768, against anchors
measured in the same run.

    python benchmarks/bench_batch.py [--images 200] [--repeats 3] [--json benchmarks/results/batch.json]

1. Through the server: ``warpsvc serve --workers 2`` and ``warpsvc-batch --target 127.0.0.1:PORT``
   vs an in-process pool of 2 processes (the anchor below): target >= 0.8x the pool's rate.
2. ``--target local`` (the embedded default) vs a hand-written ``ProcessPoolExecutor`` loop
   (``imread`` -> ``warpsvc.warp`` -> ``imwrite``, 2 processes, ``cv2.setNumThreads(1)``):
   target >= 0.9x.

The job: RGB uint8 PNGs (smooth noise, so PNG sizes are realistic), one homography, linear
interpolation, PNG outputs. The batch runs do their full work (atomic writes with fsync,
SHA-256, manifest records; no report): the anchor does none of it. ``--no-fsync`` variants are
measured too, to show what durability costs. Each batch run is the CLI in a subprocess; its
rate is the one the CLI prints (images / seconds from the first submission to the last record,
pool start included), the anchor's is timed the same way (pool start included).
Method: one warm-up of every case on 20 images, then ``--repeats`` rounds, the cases
interleaved in each round; medians reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import pathlib
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from interop.harness import ServerProcess, wait_serving  # noqa: E402

import warpsvc  # noqa: E402

H = [[0.97, 0.04, 12.0], [-0.03, 1.01, 6.0], [2e-5, -1e-5, 1.0]]
H_ARG = ",".join(str(v) for row in H for v in row)
RATE = re.compile(r"in ([0-9.]+) s \(([0-9.]+) images/s\)")


def make_images(folder: pathlib.Path, n: int, shape=(768, 1024)) -> None:
    rng = np.random.default_rng(2026)
    base = cv2.GaussianBlur(rng.random((shape[0] + 64, shape[1] + 64, 3)).astype(np.float32), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    for i in range(n):
        dy, dx = rng.integers(0, 64, 2)
        sub = folder / f"part{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sub / f"frame{i:04d}.png"), base[dy:dy + shape[0], dx:dx + shape[1]])


# -- the anchor: a hand-written pool loop -----------------------------------------------------------
def _init():
    cv2.setNumThreads(1)


def _one(args):
    src, dst = args
    img = cv2.imread(src, cv2.IMREAD_UNCHANGED)
    out = warpsvc.warp(img, warpsvc.HomographyTransform(np.array(H)))
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    cv2.imwrite(dst, out)


def pool_loop(src: pathlib.Path, dst: pathlib.Path, processes: int = 2) -> float:
    jobs = [(str(p), str(dst / p.relative_to(src))) for p in sorted(src.rglob("*.png"))]
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"), initializer=_init) as pool:
        list(pool.map(_one, jobs))
    return len(jobs) / (time.perf_counter() - t0)


# -- the batch client --------------------------------------------------------------------------------
def batch(src: pathlib.Path, dst: pathlib.Path, *extra: str) -> float:
    cmd = [sys.executable, "-m", "warpsvc_client.batch.cli", "warp", str(src), str(dst), "--matrix", H_ARG,
           "--no-progress", "--no-report", *extra]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    m = RATE.search(res.stdout)
    if res.returncode != 0 or not m:
        raise RuntimeError(f"batch run failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return float(m.group(2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    args = ap.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench_batch_"))
    try:
        src, warm = work / "in", work / "warm"
        make_images(src, args.images)
        make_images(warm, 20)
        with ServerProcess("--port", "0", "--workers", "2") as srv:
            wait_serving(srv.target)
            cases = {
                "pool_loop": lambda s, d: pool_loop(s, d),
                "local": lambda s, d: batch(s, d, "--jobs", "2"),
                "local_nofsync": lambda s, d: batch(s, d, "--jobs", "2", "--no-fsync"),
                "server_2_workers": lambda s, d: batch(s, d, "--target", srv.target, "--server-workers", "2"),
                "server_2_workers_nofsync": lambda s, d: batch(s, d, "--target", srv.target, "--server-workers", "2",
                                                               "--no-fsync"),
            }
            for name, fn in cases.items():  # warm-up
                fn(warm, work / f"warm_{name}")
            samples = {name: [] for name in cases}
            for r in range(args.repeats):
                for name, fn in cases.items():
                    out = work / f"out_{name}_{r}"
                    samples[name].append(fn(src, out))
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(v) for name, v in samples.items()}
    anchor = med["pool_loop"]
    rows = [
        ("in-process pool loop (anchor, 2 processes)", "pool_loop", None),
        ("`--target local` (2 processes)", "local", 0.9),
        ("`--target local --no-fsync`", "local_nofsync", 0.9),
        ("server `--workers 2`, `--target host:port`", "server_2_workers", 0.8),
        ("server `--workers 2`, `--no-fsync`", "server_2_workers_nofsync", 0.8),
    ]
    result = {
        "benchmark": "warpsvc-batch warp, RGB uint8 PNG 1024x768, homography, linear",
        "command": "python benchmarks/bench_batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "images": args.images, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "opencv": cv2.__version__},
        "images_per_s_median": med, "samples": samples,
        "ratio_vs_pool": {name: med[name] / anchor for name in med},
        "targets": {"server_2_workers": 0.8, "local": 0.9},
        "met": {"server_2_workers": med["server_2_workers"] / anchor >= 0.8, "local": med["local"] / anchor >= 0.9},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.images} images 1024x768 RGB PNG, homography warp, median of {args.repeats} "
          f"({os.cpu_count()} cores)\n")
    print("| case | images/s | vs pool loop | target |")
    print("|---|---:|---:|---:|")
    for label, key, target in rows:
        print(f"| {label} | {med[key]:.1f} | {med[key] / anchor:.2f}x | {'' if target is None else f'>= {target}x'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
