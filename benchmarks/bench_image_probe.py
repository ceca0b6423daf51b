"""Cost of the header probe (``warpsvc_api.image_probe.probe_image``, server and batch client) against the decode it guards.

Ordinary files (1920x1080 RGB: PNG, baseline and progressive JPEG, LZW TIFF, each made by OpenCV /
Pillow from the same smooth image): median probe time and its ratio to the median
``cv2.imdecode(IMREAD_UNCHANGED)`` time of the same bytes (the anchor, measured in the same run,
alternating). Worst cases for the probe itself (64 MiB each; the probe walks JPEG entropy data
for markers): a JPEG whose scan is 64 MiB of random bytes, of 0xFF fill, of 0xFF00 stuffing, and a
JPEG of 16 000 comment segments. OpenCV threads: default and 1 (``cv2.setNumThreads``).

Results: ``benchmarks/results/image_probe.json`` (with ``os.getloadavg()``: the machine is shared)
and a table on stdout.

    .venv/bin/python benchmarks/bench_image_probe.py            # ~1 minute
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import cv2
import numpy as np
from PIL import Image

from warpsvc_api.image_probe import ProbeLimits, probe_image

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "image_probe.json"
LIMITS = ProbeLimits(max_pixels=1 << 25, max_segments=1 << 20)


def ordinary_files() -> dict[str, bytes]:
    y, x = np.mgrid[0:1080, 0:1920]
    img = np.dstack([(x + y) % 256, (x * 2) % 256, (y * 3) % 256]).astype(np.uint8)
    out = {"png": cv2.imencode(".png", img)[1].tobytes(), "jpeg": cv2.imencode(".jpg", img)[1].tobytes(),
           "tiff-lzw": cv2.imencode(".tiff", img)[1].tobytes()}
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", progressive=True, quality=90)
    out["jpeg-progressive"] = buf.getvalue()
    return out


def worst_cases() -> dict[str, bytes]:
    base = cv2.imencode(".jpg", np.zeros((16, 16), np.uint8))[1].tobytes()
    eoi = base.rindex(b"\xff\xd9")
    noise = np.random.default_rng(3).integers(0, 255, 64 << 20, dtype=np.uint8)  # no 0xFF: no markers
    return {"jpeg-64MiB-random-scan": base[:eoi] + noise.tobytes() + base[eoi:],
            "jpeg-64MiB-ff-fill": base[:eoi] + b"\xff" * (64 << 20) + base[eoi:],
            "jpeg-64MiB-ff00": base[:eoi] + b"\xff\x00" * (32 << 20) + base[eoi:],
            "jpeg-16000-comments": base[:2] + b"\xff\xfe\x00\x02" * 16000 + base[2:]}


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def run(threads: int | None, repeats: int) -> dict:
    if threads is not None:
        cv2.setNumThreads(threads)
    rows = {}
    for name, data in ordinary_files().items():
        probe_s, decode_s = [], []
        for _ in range(repeats):  # alternate probe and decode
            probe_s.append(timed(lambda d=data: probe_image(d, LIMITS), 1))
            decode_s.append(timed(lambda d=data: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_UNCHANGED), 1))
        p, d = statistics.median(probe_s), statistics.median(decode_s)
        rows[name] = {"bytes": len(data), "probe_ms": p * 1e3, "decode_ms": d * 1e3, "probe_over_decode": p / d}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    default_threads = cv2.getNumThreads()
    ordinary = {"default": run(None, args.repeats), "1": run(1, args.repeats)}
    cv2.setNumThreads(default_threads)
    worst = {}
    for name, data in worst_cases().items():
        worst[name] = {"bytes": len(data), "probe_ms": timed(lambda d=data: probe_image(d, LIMITS), 3) * 1e3}
    result = {"ordinary": ordinary, "opencv_default_threads": default_threads, "worst_case": worst,
              "loadavg": os.getloadavg(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "opencv": cv2.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("| file | bytes | probe ms | imdecode ms (default threads) | probe / decode | same, 1 thread |")
    print("|---|---|---|---|---|---|")
    for name, row in ordinary["default"].items():
        one = ordinary["1"][name]
        print(f"| {name} | {row['bytes']} | {row['probe_ms']:.3f} | {row['decode_ms']:.2f} | "
              f"{row['probe_over_decode']:.4f} | {one['probe_over_decode']:.4f} |")
    for name, row in worst.items():
        print(f"| {name} | {row['bytes']} | {row['probe_ms']:.1f} | | | |")
    print(f"load average {result['loadavg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
