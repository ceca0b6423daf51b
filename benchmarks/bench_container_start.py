"""A replica's cold start in the Docker image: SERVING, then its first antialiased Warps.

    docker build --network host --build-arg BASE_IMAGE=warpsvc-base:bookworm -t warpsvc:latest .
    python benchmarks/bench_container_start.py --image warpsvc:latest --runs 3

Each run starts a fresh container (``--cpus 2``, its port published on 127.0.0.1), polls the
health service every 20 ms until SERVING, then times three conserving antialiased Warps of a
600x600 RGB uint8 image shrunk to 230x230 by a homography (the compiled scatter kernels; the
first one waits for the replica's warm-up if that is still loading them), and reads the
replica's "warmed the compiled kernels in X s" log line. Medians over the runs; JSON with
``--json``. Issue 12 item 3: first call <= 150 ms, SERVING <= 2 s after start.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import subprocess
import sys
import time

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

import warpsvc
from warpsvc_client import WarpClient


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one_run(image: str) -> dict:
    port = free_port()
    t0 = time.monotonic()
    cid = subprocess.check_output(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:50051",
                                   "--cpus", "2", image], text=True).strip()
    try:
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() - t0 > 120:
                raise TimeoutError("no SERVING within 120 s")
            time.sleep(0.02)
        serving = time.monotonic() - t0
        img = (np.random.default_rng(0).random((600, 600, 3)) * 255).astype(np.uint8)
        H = warpsvc.HomographyTransform(np.array([[0.38, 0.02, 3], [0.01, 0.4, 2], [1e-4, 2e-4, 1.0]]))
        client = WarpClient(f"127.0.0.1:{port}")
        calls = []
        for _ in range(3):
            t = time.monotonic()
            client.warp(img, H, (230, 230), intensity="conserve", antialias=True, timeout=120)
            calls.append(time.monotonic() - t)
        time.sleep(0.2)
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True)
        m = re.search(r"warmed the compiled kernels in ([0-9.]+) s", logs.stdout + logs.stderr)
        return {"serving_s": serving, "calls_ms": [c * 1e3 for c in calls],
                "warm_up_s": float(m.group(1)) if m else None}
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", action="append", help="image tag (repeat to compare; runs alternate)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    images = args.image or ["warpsvc:latest"]
    runs = {im: [] for im in images}
    for _ in range(args.runs):
        for im in images:
            runs[im].append(one_run(im))
    out = {}
    for im, rs in runs.items():
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        out[im] = {"runs": rs, "serving_s": med([r["serving_s"] for r in rs]),
                   "first_call_ms": med([r["calls_ms"][0] for r in rs]),
                   "third_call_ms": med([r["calls_ms"][2] for r in rs]),
                   "warm_up_s": med([r["warm_up_s"] for r in rs if r["warm_up_s"] is not None])}
        o = out[im]
        print(f"{im}: SERVING {o['serving_s']:.2f} s, first antialiased Warp {o['first_call_ms']:.0f} ms, "
              f"third {o['third_call_ms']:.0f} ms, replica warm-up {o['warm_up_s']} s (medians of {len(rs)})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
