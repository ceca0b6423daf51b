"""Service overhead and worker scaling, measured in one run.

1. **Transport floor.** A Warp round trip of a 1920x1080 RGB uint8 raw tensor through the real
   server (``warpsvc serve`` subprocess, ``WarpClient`` numpy in / numpy out) against its anchor:
   the same warp in-process plus a plain gRPC echo of the same bytes (a generic handler with no
   protobuf at all, in its own subprocess, same message limits). ``ratio = service / (warp + echo)``
   is what our service code adds over the transport; target <= 1.15. The in-process warp runs
   with ``cv2.setNumThreads(1)``, as every server worker does.
2. **Workers.** Alignment throughput (homography, 160x200 template in a 240x320 image, start 2-3 px
   off) from 8 concurrent closed-loop clients, each on its own connection, against
   ``--workers 1`` and ``--workers 2``; target >= 1.6x on a 2-core machine.

Method: warm-up calls first; part 1 interleaves the three measurements call by call and takes
medians of ``--reps``; part 2 alternates ``--rounds`` windows of ``--seconds`` between the two
servers (both started up front) and takes medians. Other load on the machine is recorded
(``load_average_at_end``). Results: stdout + ``benchmarks/results/service.json``.

    .venv/bin/python benchmarks/bench_service.py            # ~45 s
    .venv/bin/python benchmarks/bench_service.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "service.json"
MIB = 1 << 20
OPTIONS = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]


# -- subprocess servers --------------------------------------------------------------------------
def run_echo_server() -> None:
    """The transport floor: a generic unary handler returning its request bytes untouched."""
    import grpc

    from warpsvc.server.runner import tune_allocator

    tune_allocator()  # the floor gets the same allocator settings as the server
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(4), options=OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    server.wait_for_termination()


class Server:
    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "WARPSVC_LOG_LEVEL": "warning"})
        for line in self.proc.stdout:
            m = re.search(r"serving on \S+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError(f"{args} did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def wait_serving(target: str) -> None:
    from warpsvc.healthcheck import check

    for _ in range(200):
        if check(target, timeout=1) == "SERVING":
            return
        time.sleep(0.05)
    raise TimeoutError(target)


def median_ms(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


# -- part 1 ---------------------------------------------------------------------------------------
def transport_floor(reps: int, warmup: int, tune: bool = True) -> dict:
    import grpc
    from warpsvc_client import WarpClient

    import warpsvc

    cv2.setNumThreads(1)
    if tune:
        from warpsvc.server.runner import tune_allocator

        tune_allocator()  # the same allocator settings as the server, for every path of this process
    image = np.random.default_rng(61).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    transform = warpsvc.AffineTransform.from_components(scale=(1.05, 1.05), rotation=0.1, translation=(20, -30))
    payload = image.tobytes()

    echo = Server([str(pathlib.Path(__file__).resolve()), "--echo-server"])
    service = Server(["-m", "warpsvc.cli", "serve", "--port", "0", "--metrics-port", "0"])
    try:
        wait_serving(f"127.0.0.1:{service.port}")
        with grpc.insecure_channel(f"127.0.0.1:{echo.port}", options=OPTIONS) as channel, \
                WarpClient(f"127.0.0.1:{service.port}", timeout=60) as client:
            call = channel.unary_unary("/bench.Echo/Echo")
            assert call(payload) == payload
            np.testing.assert_array_equal(client.warp(image, transform), warpsvc.warp(image, transform))
            # Interleave the three measurements so machine noise hits them alike.
            rounds = {"warp_inprocess": [], "echo": [], "service": []}
            for _ in range(warmup):
                warpsvc.warp(image, transform), call(payload), client.warp(image, transform)
            for _ in range(reps):
                rounds["warp_inprocess"].append(median_ms(lambda: warpsvc.warp(image, transform), 1, 0))
                rounds["echo"].append(median_ms(lambda: call(payload), 1, 0))
                rounds["service"].append(median_ms(lambda: client.warp(image, transform), 1, 0))
    finally:
        echo.close()
        service.close()
    med = {k: statistics.median(v) for k, v in rounds.items()}
    floor = med["warp_inprocess"] + med["echo"]
    return {
        "image": "1920x1080x3 uint8 raw tensor (6.2 MB each way)", "transform": "affine, linear, constant border",
        "reps": reps, "median_ms": {k: round(v, 3) for k, v in med.items()}, "floor_ms": round(floor, 3),
        "ratio": round(med["service"] / floor, 4), "target": 1.15,
    }


# -- part 2 ---------------------------------------------------------------------------------------
def align_inputs():
    rng = np.random.default_rng(62)
    scene = cv2.GaussianBlur(rng.random((240, 320)), (0, 0), 3).astype(np.float32) * 255
    template = np.ascontiguousarray(scene[40:200, 60:260])
    init = np.array([[1, 0.02, -58], [0.01, 1, -41], [1e-5, 0, 1]])
    return template, scene, init


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (the workers), from /proc."""
    total = 0.0
    try:
        kids = [int(k) for k in pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        kids = []
    for p in (pid, *kids):
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _window(conns, template, scene, init, seconds: float, pid: int) -> tuple[float, float]:
    """(calls per second, server CPU cores used) for ``conns`` (one closed-loop thread each)
    over ``seconds``."""
    start, stop = threading.Event(), threading.Event()
    counts = [0] * len(conns)

    def loop(i):
        start.wait()
        while not stop.is_set():
            conns[i].align(template, scene, "homography", init=init)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    start.set()
    time.sleep(0.3)  # ramp-up, not counted
    base, t0, cpu0 = sum(counts), time.perf_counter(), cpu_seconds(pid)
    time.sleep(seconds)
    done, elapsed, cpu = sum(counts) - base, time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    stop.set()
    for t in threads:
        t.join()
    return done / elapsed, cpu / elapsed


def throughput(clients: int, seconds: float, rounds: int) -> dict:
    """Both servers run side by side (idle while not measured); windows alternate 1, 2, 1, 2, ...
    so load from elsewhere on the machine hits both alike; medians per configuration."""
    from warpsvc_client import WarpClient

    template, scene, init = align_inputs()
    servers = {w: Server(["-m", "warpsvc.cli", "serve", "--port", "0", "--metrics-port", "0", "--workers", str(w)]) for w in (1, 2)}
    rates = {1: [], 2: []}
    cores = {1: [], 2: []}
    try:
        conns = {}
        for w, server in servers.items():
            target = f"127.0.0.1:{server.port}"
            wait_serving(target)
            # one connection per client (a local subchannel pool), as separate client processes have
            conns[w] = [WarpClient(target, timeout=60, options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(clients)]
            for c in conns[w]:
                assert c.align(template, scene, "homography", init=init).converged
        for _ in range(rounds):
            for w in (1, 2):
                rate, used = _window(conns[w], template, scene, init, seconds, servers[w].proc.pid)
                rates[w].append(rate)
                cores[w].append(used)
        for cs in conns.values():
            for c in cs:
                c.close()
    finally:
        for server in servers.values():
            server.close()
    med = {w: statistics.median(r) for w, r in rates.items()}
    med_cores = {w: statistics.median(c) for w, c in cores.items()}
    return {"clients": clients, "window_s": seconds, "rounds": rounds,
            "calls_per_s": {f"workers_{w}": [round(x, 2) for x in r] for w, r in rates.items()},
            "median_calls_per_s": {f"workers_{w}": round(m, 2) for w, m in med.items()},
            "median_server_cores_used": {f"workers_{w}": round(c, 2) for w, c in med_cores.items()},
            "calls_per_cpu_second": {f"workers_{w}": round(med[w] / max(med_cores[w], 1e-9), 2) for w in med},
            "scaling": round(med[2] / med[1], 3), "target": 1.6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=4.0, help="throughput window")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per configuration")
    parser.add_argument("--quick", action="store_true", help="few reps, short windows (smoke test)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    if args.echo_server:
        run_echo_server()
        return 0
    reps, seconds, rounds = (5, 1.0, 1) if args.quick else (args.reps, args.seconds, args.rounds)

    floor = transport_floor(reps, warmup=3)
    m = floor["median_ms"]
    print(f"Warp 1920x1080x3 uint8 round trip, median of {reps}:")
    print(f"  service (WarpClient.warp) {m['service']:8.2f} ms")
    print(f"  in-process warp           {m['warp_inprocess']:8.2f} ms")
    print(f"  plain gRPC bytes echo     {m['echo']:8.2f} ms")
    print(f"  ratio service / (warp + echo) = {floor['ratio']:.3f}  (target <= 1.15)")

    scale = throughput(8, seconds, rounds)
    med = scale["median_calls_per_s"]
    print(f"Align throughput, 8 concurrent clients, median of {rounds} alternating {seconds:g} s windows:")
    used = scale["median_server_cores_used"]
    print(f"  --workers 1: {med['workers_1']:8.2f} calls/s  ({used['workers_1']:.2f} cores busy)")
    print(f"  --workers 2: {med['workers_2']:8.2f} calls/s  ({used['workers_2']:.2f} cores busy)")
    print(f"  scaling = {scale['scaling']:.3f}  (target >= 1.6)")

    result = {
        "command": "python benchmarks/bench_service.py" + (" --quick" if args.quick else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "transport_floor": floor,
        "workers": {"align": "homography, 160x200 template in 240x320 image", **scale},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
