"""``warpsvc-batch stack`` against the bare library loop, on the sequence of ``bench_sequence.py``.

    python benchmarks/bench_batch_stack.py                    # 60 frames, 3 alternating rounds
    python benchmarks/bench_batch_stack.py --frames 120 --server

Frames: ``bench_sequence.make_frames(N, 2026)`` (192x256 float32 TIFFs: the astronaut seen by
a shaky camera, noise, flicker). Every case is a fresh subprocess (interpreter start-up and
imports included), alternating, medians of ``--repeats`` rounds:

* ``library``: the anchor, a script that reads the TIFFs (OpenCV), runs
  ``align_sequence(frames, "homography")`` and ``stack(..., combine="mean")`` and writes
  ``stack.tiff``; no aligned frames, no manifest, no atomic writes, no report.
* ``batch``: ``warpsvc-batch stack IN OUT --no-report`` (aligned frames written and hashed,
  weights recomputed, manifest fsync-ed, trajectory files); ``batch+report`` with the report;
  ``resume``: ``--resume`` on the complete output (nothing registered: the stack from the
  verified frames).
* ``--server``: ``batch`` through ``warpsvc serve --workers 1`` on loopback (started once, warmed
  by one run that is not counted).

Also the corner error of every frame against the truth (max, median), from the batch run's
``trajectory.json``. JSON on stdout (and ``--json FILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))
import bench_sequence as bench

ANCHOR = """
import sys, glob, cv2, numpy as np
from warpsvc.core.sequence import align_sequence, stack
names = sorted(glob.glob(sys.argv[1] + "/*.tif"))
frames = [cv2.imread(n, cv2.IMREAD_UNCHANGED) for n in names]
results = list(align_sequence(iter(frames), "homography"))
s = stack(frames, [r.matrix for r in results], frames[0].shape[:2], combine="mean")
cv2.imwrite(sys.argv[2] + "/stack.tiff", s.image.astype(np.float32))
"""


def timed(cmd) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{cmd}: {res.returncode}\n{res.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--server", action="store_true")
    ap.add_argument("--json", type=pathlib.Path)
    args = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_stack_"))
    src = tmp / "in"
    src.mkdir()
    _, noisy, truth, _ = bench.make_frames(args.frames, 2026)
    for i, f in enumerate(noisy):
        cv2.imwrite(str(src / f"f{i:04d}.tif"), f)
    batch = [sys.executable, "-m", "warpsvc_client.batch.cli", "stack", str(src)]
    cases = {
        "library": lambda out: [sys.executable, "-c", ANCHOR, str(src), str(out)],
        "batch": lambda out: batch + [str(out), "--no-progress", "--no-report"],
        "batch+report": lambda out: batch + [str(out), "--no-progress"],
    }
    server = None
    if args.server:
        from interop.harness import ServerProcess, wait_serving

        server = ServerProcess("--port", "0", "--workers", "1")
        wait_serving(server.target)
        cases["server"] = lambda out: batch + [str(out), "--no-progress", "--no-report", "--target", server.target]
        timed(cases["server"](tmp / "warm"))
    times: dict[str, list[float]] = {k: [] for k in cases}
    times["resume"] = []
    try:
        for _ in range(args.repeats):
            for name, make in cases.items():
                out = tmp / f"out_{name}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                times[name].append(timed(make(out)))
            times["resume"].append(timed(batch + [str(tmp / "out_batch"), "--no-progress", "--no-report", "--resume"]))
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    doc = json.loads((tmp / "out_batch" / "trajectory.json").read_text())
    errors = [bench.corner_error(np.asarray(r["matrix"]), t) for r, t in zip(doc["frames"], truth)]
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"frames": args.frames, "frame_shape": bench.FRAME, "repeats": args.repeats,
              "load_average": os.getloadavg(), "seconds_median": med, "seconds": times,
              "vs_library": {k: med[k] / med["library"] for k in med},
              "frames_per_second": {k: args.frames / med[k] for k in med},
              "corner_error_px": {"max": max(errors), "median": statistics.median(errors)}}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
