"""Time from ``warpsvc serve`` to a SERVING health answer (issue 12 item 3: <= 2 s).

    python benchmarks/bench_startup.py [--runs 7] [--json benchmarks/results/startup.json]

Each run picks a free loopback port, starts ``warpsvc serve --port P`` in a fresh
process (default settings, and ``--workers 1``), and polls the standard health service
(``grpc.health.v1.Health/Check`` on ``""``) every 20 ms over one channel (reconnect backoff set to 20-40 ms, so a refused
connection is retried at once), each poll with a
250 ms deadline, until it answers SERVING; the time from ``Popen`` to that answer is the
start-up time. The server is then stopped with SIGTERM and reaped. Runs alternate the settings.

Anchor, measured in the same run the same way: a bare Python gRPC server (``grpc.server`` with
the health servicer set to SERVING, nothing else): the floor of interpreter start + grpc import
+ bind on this machine. Medians are printed, with the ratio to the anchor and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

ANCHOR = """
import sys, grpc
from concurrent import futures
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(4))
h = health.HealthServicer()
h.set("", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(h, server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

# The console script a user runs (``warpsvc serve``), else the same entry point through -c.
_SCRIPT = pathlib.Path(sys.executable).with_name("warpsvc")
SERVE = [str(_SCRIPT), "serve"] if _SCRIPT.exists() else [
    sys.executable, "-c", "import sys; from warpsvc.cli import main; sys.exit(main())", "serve"]

SETTINGS = {
    "warpsvc serve (defaults)": [],
    "warpsvc serve --workers 1": ["--workers", "1"],
}


# A refused connection puts a channel in reconnect backoff (1 s at first, by default): the poll
# would measure the backoff, not the server. Retry every 20 ms instead.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
                  ("grpc.max_reconnect_backoff_ms", 40)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_serving(argv: list[str], port: int, limit_s: float = 30.0) -> float:
    """Seconds from starting ``argv`` to the first SERVING health answer on ``port``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = {**os.environ, "WARPSVC_LOG_LEVEL": "warning"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=FAST_RECONNECT) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - t0 < limit_s:
                if proc.poll() is not None:
                    raise RuntimeError(f"{argv} exited with {proc.returncode} before SERVING")
                try:
                    resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.25)
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - t0
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        raise TimeoutError(f"{argv}: not SERVING within {limit_s} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", type=pathlib.Path, default=ROOT / "benchmarks/results/startup.json")
    args = ap.parse_args(argv)

    cases = {"anchor: bare grpc server + health": None, **SETTINGS}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    load_before = os.getloadavg()
    for _ in range(args.runs):
        for name, extra in cases.items():
            port = free_port()
            if extra is None:
                cmd = [sys.executable, "-c", ANCHOR, str(port)]
            else:
                cmd = [*SERVE, "--port", str(port), *extra]
            samples[name].append(time_to_serving(cmd, port))
    load_after = os.getloadavg()

    anchor = statistics.median(samples["anchor: bare grpc server + health"])
    rows = {}
    print("| start-up | median s | min s | max s | / anchor | target |")
    print("|---|---:|---:|---:|---:|---|")
    for name, s in samples.items():
        med = statistics.median(s)
        rows[name] = {"median_s": med, "min_s": min(s), "max_s": max(s), "ratio_vs_anchor": med / anchor,
                      "samples_s": s}
        target = "" if name.startswith("anchor") else "<= 2 s"
        print(f"| {name} | {med:.2f} | {min(s):.2f} | {max(s):.2f} | {med / anchor:.2f} | {target} |")
    print(f"\nload average before / after: {load_before} / {load_after} ({os.cpu_count()} CPUs)")
    meta = {"python": sys.version.split()[0], "runs": args.runs, "cpus": os.cpu_count(),
            "loadavg_before": load_before, "loadavg_after": load_after}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
