"""Frames/s of the AlignStream RPC against local ``align_sequence`` on the same frames.

    python benchmarks/bench_stream.py                # 60 frames, 3 alternating rounds
    python benchmarks/bench_stream.py --frames 20 --repeats 1   # smoke run

Data: ``bench_sequence.make_frames`` (the shaky 192x256 sequence cut from the astronaut
photograph through known random-walk homographies, exposure flicker and noise; frame 0 the
reference), float32 frames sent raw.

Methods, alternating, ``--repeats`` rounds per thread setting, medians:

* ``local`` (the anchor): ``list(align_sequence(frames, "homography"))`` in this process;
* ``stream``: ``list(WarpClient.align_stream(frames, 0, "homography"))`` against ``warpsvc serve``
  started as a subprocess on 127.0.0.1 (one worker, metrics on) with the same OpenCV / BLAS thread counts as
  the local run: frames serialised by the client in gRPC's sending thread while the server
  registers the previous ones.

Also checked: every stream matrix equals the local one exactly. Results in
``benchmarks/results/stream.json`` with ``os.getloadavg()`` (the 2-core machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_sequence import make_frames
from warpsvc_client import WarpClient

from warpsvc.core.sequence import align_sequence


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cv_threads: int, blas_threads: int):
    """``warpsvc serve`` on 127.0.0.1 with one worker (the stream is one call: one worker serves
    it), the production defaults otherwise (metrics on, on a free port; tracing off)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0", "--workers", "1",
         "--metrics-port", str(_free_port()), "--cv-threads", str(cv_threads),
         "--blas-threads", str(blas_threads)], cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        m = re.search(r"serving on (\S+):(\d+)", line)
        if m:
            return proc, f"127.0.0.1:{m.group(2)}"
    raise RuntimeError("server did not start")


def stop_server(proc):
    proc.terminate()
    proc.wait(30)
    proc.stdout.close()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "stream.json"))
    args = ap.parse_args(argv)
    _, frames, _, _ = make_frames(args.frames, seed=7)
    default_cv = cv2.getNumThreads()
    out = {"frames": args.frames, "frame_shape": list(frames[0].shape), "dtype": "float32", "settings": {}}
    for label, cv_threads, blas in (("default_threads", default_cv, os.cpu_count()), ("one_thread", 1, 1)):
        cv2.setNumThreads(cv_threads)
        proc, target = start_server(cv_threads, blas)
        local_fps, stream_fps = [], []
        try:
            with WarpClient(target, timeout=600, retries=1) as client, threadpool_limits(limits=blas):
                list(client.align_stream(frames[:3], 0))  # warm-up (server JIT, connection)
                list(align_sequence(frames[:3], "homography"))
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    local = list(align_sequence(iter(frames), "homography"))
                    local_fps.append(len(frames) / (time.perf_counter() - t0))
                    t0 = time.perf_counter()
                    remote = list(client.align_stream(iter(frames), 0, "homography"))
                    stream_fps.append(len(frames) / (time.perf_counter() - t0))
                    assert all(np.array_equal(r.matrix, lo.matrix) for r, lo in zip(remote, local, strict=True))
        finally:
            stop_server(proc)
        out["settings"][label] = {
            "opencv_threads": cv_threads, "blas_threads": blas, "local_fps": float(np.median(local_fps)),
            "stream_fps": float(np.median(stream_fps)), "local_fps_runs": local_fps, "stream_fps_runs": stream_fps,
            "stream_over_local": float(np.median(stream_fps) / np.median(local_fps))}
    cv2.setNumThreads(default_cv)
    out["loadavg"] = os.getloadavg()
    pathlib.Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for label, r in out["settings"].items():
        print(f"{label:16s} local {r['local_fps']:6.1f} fps  stream {r['stream_fps']:6.1f} fps  "
              f"ratio {r['stream_over_local']:.3f}  (runs: local {[round(v, 1) for v in r['local_fps_runs']]}, "
              f"stream {[round(v, 1) for v in r['stream_fps_runs']]})")
    print(f"load average {out['loadavg']}")


if __name__ == "__main__":
    main()
