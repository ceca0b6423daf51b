"""Soak and overload: a CLI-started server under sustained mixed load, then beyond its limit.

1. **Soak.** ``--clients`` (32) closed-loop clients, each with its own channel, spread over
   ``--procs`` client processes (so the client side's GIL is not the bottleneck), call a mix of
   Warp (256x256x3 uint8, affine), JacobianDeterminant (256x256 homography) and Align (affine,
   96x128 template in a 128x160 image, start 3 px off) for ``--seconds`` (120). The server is
   ``warpsvc serve --port 0 --workers 1 --max-concurrent-rpcs <clients + 8>`` so the soak itself is
   never shed. Recorded: every call's RPC, start, latency and status; the server's VmRSS every
   second from ``/proc/<pid>/status``. Pass: zero non-OK answers, RSS growth between minute 1 and
   the end < 10 %.
2. **Overload.** ``--overload-clients`` (128) concurrent closed-loop callers send Align to the same
   server (limit ``clients + 8`` = 40) for ``--overload-seconds`` (15). Calls over the limit must
   come back RESOURCE_EXHAUSTED quickly (median < 100 ms), not time out (deadline 30 s).

Results: ``benchmarks/results/soak.json`` and a markdown table on stdout.

    .venv/bin/python benchmarks/bench_soak.py                 # ~2.5 minutes
    .venv/bin/python benchmarks/bench_soak.py --seconds 20 --overload-seconds 5 --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import platform
import re
import subprocess
import sys
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "soak.json"
RPCS = ("Warp", "JacobianDeterminant", "Align")


# -- the server ------------------------------------------------------------------------------------
class Server:
    """``warpsvc serve`` as a subprocess; stderr (access log) drained and counted."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WARPSVC_LOG_LEVEL": "warning"}
        self.proc = subprocess.Popen([sys.executable, "-m", "warpsvc.cli", "serve", "--port", "0", "--metrics-port", "0", *args], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        for line in self.proc.stdout:
            m = re.search(r"serving on \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError("server did not start: " + self.proc.stderr.read())
        self._pumps = [threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True),
                       threading.Thread(target=lambda: [self.stderr.append(x) for x in self.proc.stderr], daemon=True)]
        for t in self._pumps:
            t.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(60)
        for t in self._pumps:
            t.join(10)  # EOF once the process is gone
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in KiB, from /proc/<pid>/status."""
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def wait_serving(target: str) -> None:
    from warpsvc.healthcheck import check

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if check(target, timeout=1) == "SERVING":
            return
        time.sleep(0.1)
    raise TimeoutError(target)


# -- client processes ------------------------------------------------------------------------------
def _inputs():
    import cv2

    import warpsvc

    rng = np.random.default_rng(71)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    affine = warpsvc.AffineTransform.from_components(scale=(0.9, 1.1), rotation=0.2, translation=(8, -5))
    hom = warpsvc.HomographyTransform([[0.95, 0.05, 4.0], [-0.03, 1.02, 2.0], [2e-4, -1e-4, 1.0]])
    scene = (cv2.GaussianBlur(rng.random((128, 160)), (0, 0), 3) * 255).astype(np.float32)
    template = np.ascontiguousarray(scene[16:112, 16:144])
    init = np.array([[1, 0, -13.0], [0, 1, -14.0], [0, 0, 1]])  # truth (-16, -16): 3 px off
    return image, affine, hom, template, scene, init


def client_process(target: str, threads: int, seconds: float, start_at: float, mix: tuple[str, ...], seed: int,
                   queue) -> None:
    """``threads`` closed-loop callers; puts a list of (rpc, wall start, latency s, status) on ``queue``."""
    import grpc
    from warpsvc_client import WarpClient

    image, affine, hom, template, scene, init = _inputs()
    records: list[tuple[str, float, float, str]] = []
    lock = threading.Lock()

    def loop(i: int) -> None:
        rng = np.random.default_rng(seed * 1000 + i)
        local = []
        with WarpClient(target, timeout=30, retries=1) as client:
            # connect before the clock starts (other callers may already be shedding: not counted)
            for _ in range(100):
                try:
                    client.jacobian_determinant(affine, (4, 4))
                    break
                except grpc.RpcError:
                    time.sleep(0.05)
            while time.time() < start_at:
                time.sleep(0.005)
            while time.time() < start_at + seconds:
                rpc = mix[int(rng.integers(len(mix)))]
                t0 = time.time()
                p0 = time.perf_counter()
                try:
                    if rpc == "Warp":
                        client.warp(image, affine)
                    elif rpc == "JacobianDeterminant":
                        client.jacobian_determinant(hom, (256, 256))
                    else:
                        client.align(template, scene, "affine", init=init)
                    status = "OK"
                except grpc.RpcError as err:
                    status = err.code().name
                except Exception as err:  # noqa: BLE001 - translated client errors count as failures
                    status = type(err).__name__
                local.append((rpc, t0, time.perf_counter() - p0, status))
        with lock:
            records.extend(local)

    ts = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    queue.put(records)


def run_clients(target: str, clients: int, procs: int, seconds: float, mix, seed: int, ramp: float = 8.0) -> list:
    ctx = mp.get_context("spawn")  # the parent holds grpc objects: never fork it
    queue = ctx.Queue()
    start_at = time.time() + ramp  # time for the spawned processes to import and connect
    per = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    ps = [ctx.Process(target=client_process, args=(target, n, seconds, start_at, mix, seed + k, queue))
          for k, n in enumerate(per) if n]
    for p in ps:
        p.start()
    records = []
    for _ in ps:
        records.extend(queue.get(timeout=seconds + 300))
    for p in ps:
        p.join(60)
    return records, start_at


# -- statistics ------------------------------------------------------------------------------------
def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if values else float("nan")


def summarise(records, seconds: float) -> dict:
    out = {}
    for rpc in (*RPCS, "all"):
        rs = [r for r in records if rpc in ("all", r[0])]
        ok = [r[2] for r in rs if r[3] == "OK"]
        statuses: dict[str, int] = {}
        for r in rs:
            statuses[r[3]] = statuses.get(r[3], 0) + 1
        out[rpc] = {"calls": len(rs), "per_s": round(len(rs) / seconds, 2), "statuses": statuses,
                    "p50_ms": round(pct(ok, 50), 2), "p99_ms": round(pct(ok, 99), 2),
                    "max_ms": round(max(ok) * 1e3, 2) if ok else None}
    return out


def soak(args) -> dict:
    srv = Server("--workers", "1", "--max-concurrent-rpcs", str(args.clients + 8), "--grace-seconds", str(args.grace))
    try:
        wait_serving(srv.target)
        pid = srv.proc.pid
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                st = proc_status(pid)
                samples.append((time.time(), st["VmRSS"], st["VmHWM"]))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        records, t0 = run_clients(srv.target, args.clients, args.procs, args.seconds, RPCS, seed=1, ramp=args.ramp)
        soak_rss = [(t - t0, rss, hwm) for t, rss, hwm in samples]
        # Overload: far more concurrent Align callers than the server's limit.
        o_records, _o_t0 = run_clients(srv.target, args.overload_clients, args.procs, args.overload_seconds,
                                      ("Align",), seed=100, ramp=args.ramp)
        stop.set()
        sampler.join()
        final = proc_status(pid)
        t_stop = time.monotonic()
        code = srv.close()  # SIGTERM: drain, then exit
        shutdown_s = time.monotonic() - t_stop
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.close()
    during = [s for s in soak_rss if 0 <= s[0] <= args.seconds]
    minute = min(60.0, args.seconds / 2)
    at_minute = min(during, key=lambda s: abs(s[0] - minute))
    at_end = during[-1]
    growth = (at_end[1] - at_minute[1]) / at_minute[1]
    shed = [r for r in o_records if r[3] == "RESOURCE_EXHAUSTED"]
    unexpected = [r for r in records if r[3] != "OK"]
    o_unexpected = [r for r in o_records if r[3] not in ("OK", "RESOURCE_EXHAUSTED")]
    return {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "server": {"args": f"--workers 1 --max-concurrent-rpcs {args.clients + 8} --grace-seconds {args.grace} "
                           "(threads 4)",
                   "exit_code": code, "shutdown_s_after_sigterm": round(shutdown_s, 2),
                   "drain_warnings": [line.strip() for line in srv.stderr if "grace period over" in line]},
        "soak": {
            "seconds": args.seconds, "clients": args.clients, "client_processes": args.procs,
            "workload": {"Warp": "256x256x3 uint8 raw tensor, affine, linear",
                         "JacobianDeterminant": "256x256 float64, homography",
                         "Align": "affine, 96x128 float32 template in 128x160, 3 px off"},
            "rpc": summarise(records, args.seconds),
            "unexpected_errors": len(unexpected),
            "unexpected_examples": sorted({r[3] for r in unexpected}),
            "rss_kib": {"at_minute_1": at_minute[1], "minute_mark_s": round(at_minute[0], 1), "at_end": at_end[1],
                        "peak_vmhwm": max(s[2] for s in during), "growth_minute1_to_end": round(growth, 4),
                        "target_growth": 0.10,
                        "trace": [(round(t, 1), rss) for t, rss, _ in during[:: max(1, len(during) // 30)]]},
        },
        "overload": {
            "seconds": args.overload_seconds, "callers": args.overload_clients, "limit": args.clients + 8,
            "rpc": "Align", "deadline_s": 30,
            "ok": sum(r[3] == "OK" for r in o_records), "resource_exhausted": len(shed),
            "unexpected": len(o_unexpected), "unexpected_examples": sorted({r[3] for r in o_unexpected}),
            "shed_latency_ms": {"p50": round(pct([r[2] for r in shed], 50), 2),
                                "p99": round(pct([r[2] for r in shed], 99), 2),
                                "max": round(max(r[2] for r in shed) * 1e3, 2) if shed else None},
            "ok_latency_ms": {"p50": round(pct([r[2] for r in o_records if r[3] == "OK"], 50), 2),
                              "p99": round(pct([r[2] for r in o_records if r[3] == "OK"], 99), 2)},
            "target_shed_p50_ms": 100,
        },
        "final_rss_kib": final,
    }


def table(res: dict) -> str:
    s = res["soak"]
    lines = [(f"Soak: {s['clients']} clients, {s['seconds']:.0f} s, 1 worker on {res['machine']['cpus']} cores "
             f"(load average at end {res['machine']['load_average_at_end']})"), "",
             "| RPC | calls | calls/s | p50 ms | p99 ms | non-OK |", "|---|---:|---:|---:|---:|---:|"]
    for rpc in (*RPCS, "all"):
        r = s["rpc"][rpc]
        bad = sum(v for k, v in r["statuses"].items() if k != "OK")
        lines.append(f"| {rpc} | {r['calls']} | {r['per_s']} | {r['p50_ms']} | {r['p99_ms']} | {bad} |")
    rss = s["rss_kib"]
    o = res["overload"]
    lines += ["", (f"RSS: {rss['at_minute_1'] / 1024:.1f} MiB at {rss['minute_mark_s']} s, "
              f"{rss['at_end'] / 1024:.1f} MiB at the end: growth {rss['growth_minute1_to_end'] * 100:+.2f} % "
              f"(target < 10 %); peak VmHWM {rss['peak_vmhwm'] / 1024:.1f} MiB"), "",
              (f"Overload: {o['callers']} Align callers vs limit {o['limit']} for {o['seconds']} s: "
              f"{o['ok']} OK, {o['resource_exhausted']} RESOURCE_EXHAUSTED, {o['unexpected']} other; "
              f"shed latency p50 {o['shed_latency_ms']['p50']} ms, p99 {o['shed_latency_ms']['p99']} ms "
              f"(target p50 < 100 ms); OK latency p50 {o['ok_latency_ms']['p50']} ms"), "",
              (f"Shutdown (SIGTERM) after the run: {res['server']['shutdown_s_after_sigterm']} s, exit code "
               f"{res['server']['exit_code']}; drain warnings: {res['server']['drain_warnings'] or 'none'}")]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="soak duration (default 120)")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--procs", type=int, default=4, help="client processes the clients are spread over")
    p.add_argument("--overload-clients", type=int, default=128)
    p.add_argument("--overload-seconds", type=float, default=15.0)
    p.add_argument("--grace", type=float, default=30.0, help="the server's --grace-seconds (default 30)")
    p.add_argument("--ramp", type=float, default=8.0,
                   help="seconds for client processes to start and connect before the clock starts")
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args(argv)
    res = soak(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))
    ok = (res["soak"]["unexpected_errors"] == 0 and res["soak"]["rss_kib"]["growth_minute1_to_end"] < 0.10
          and res["overload"]["unexpected"] == 0 and res["overload"]["resource_exhausted"] > 0
          and res["overload"]["shed_latency_ms"]["p50"] < 100)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
