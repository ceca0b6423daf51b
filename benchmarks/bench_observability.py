"""Cost of the observability interceptors on real loopback gRPC calls, against a bare server
measured in the same run.

    python benchmarks/bench_observability.py [--rounds 9] [--json benchmarks/results/observability.json]

Three servers, each its own process (so the client does not share their GIL), identical but for
the interceptors:

* ``bare``: none (the anchor);
* ``metrics``: ``MetricsInterceptor`` in multiprocess mode (mmap-file values, as ``--workers N``
  runs it), tracing off (``OTEL_TRACES_EXPORTER=none``: no tracing interceptor, ``stage`` is a
  shared null context): the production default;
* ``metrics+tracing``: the same plus the OpenTelemetry server interceptor and a child span per
  stage, exported by the SDK's simple span processor into memory (an upper bound of the export
  cost in the RPC thread; OTLP uses a batch processor off the RPC threads).

Three calls, each handler timing its stages (decode / compute / encode) through both modules:
``echo`` (64 bytes in and out: the fixed per-call cost), ``warp`` (a 512x512 uint8 image, raw
bytes in, ``warpsvc.warp`` with an affine transform, raw bytes out: a small Warp round trip) and
``align`` (``warpsvc.align`` of two 128x128 float32 images, translation model: Align
throughput). The handlers use the library directly, not the warpsvc servicer (being rewritten),
so the figures are the interceptors' cost, not the servicer's.

Method: one warm-up batch per (call, server); then ``--rounds`` rounds; in each round every call
runs one batch of sequential calls against each server, in a rotating order; a batch's figure is
its median call time, and the server process's CPU time per call over the batch (all its
threads, from ``/proc/<pid>/task/*/schedstat``: waiting for a core shared with other jobs does not
count, so it is the steadier figure here); the reported figures are medians over rounds, the
ratios against ``bare`` of the same call. The servers cap BLAS at one thread, as workers do. Run twice: the servers with OpenCV's default threads and with
``cv2.setNumThreads(1)``. The machine is shared (load average recorded): ratios within a few
percent of 1 are within the noise of a single run; the per-call overhead in microseconds
(difference of medians) is the steadier figure.
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
import time
from concurrent import futures

CONFIGS = ("bare", "metrics", "metrics+tracing")
CALLS = {"echo": 400, "warp": 60, "align": 30}  # calls per batch
WARP_SHAPE = (512, 512)
ALIGN_SHAPE = (128, 128)
SERVICE = "bench.Bench"


def _serve(config: str, cv_threads: int | None) -> None:
    """Server process: print the port, serve until stdin closes."""
    import cv2
    import grpc
    import numpy as np
    from threadpoolctl import threadpool_limits

    import warpsvc
    from warpsvc.server import metrics as wm
    from warpsvc.server import tracing as wt

    if cv_threads is not None:
        cv2.setNumThreads(cv_threads)
    threadpool_limits(limits=1, user_api="blas")  # as the server's workers do (runner.run_worker)
    interceptors, metrics, tracing, mp_dir = [], None, wt.OFF, None
    if config != "bare":
        mp_dir = wm.MultiprocessDir.prepare()
        metrics = wm.Metrics()
        interceptors.append(wm.MetricsInterceptor(metrics))
    spans = None
    if config == "metrics+tracing":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        spans = InMemorySpanExporter()
        tracing = wt.setup_tracing(wt.TracingConfig(), exporters=(spans,))
    else:
        tracing = wt.setup_tracing(wt.TracingConfig.from_env({}))
    interceptors += tracing.server_interceptors()

    def stage(name):
        if metrics is None:
            return wt._NULL
        return _Both(metrics.stage(name), tracing.stage(name))

    transform = warpsvc.AffineTransform.from_components(rotation=0.2, scale=(0.9, 1.1), translation=(5, -3))

    def echo(request, context):
        return request

    def warp(request, context):
        with stage("decode"):
            image = np.frombuffer(request, np.uint8).reshape(WARP_SHAPE)
        if metrics is not None:
            metrics.pixels("input", image.size)
        with stage("compute"):
            out = warpsvc.warp(image, transform)
        with stage("encode"):
            return out.tobytes()

    def align(request, context):
        with stage("decode"):
            pair = np.frombuffer(request, np.float32).reshape((2, *ALIGN_SHAPE))
        with stage("compute"):
            result = warpsvc.align(pair[0], pair[1], "translation")
        if metrics is not None:
            metrics.align_outcome(result.reason)
        if spans is not None:
            spans.clear()  # keep the in-memory exporter small
        with stage("encode"):
            return np.asarray(result.matrix, np.float64).tobytes()

    handlers = {f"/{SERVICE}/{n}": grpc.unary_unary_rpc_method_handler(f)
                for n, f in (("echo", echo), ("warp", warp), ("align", align))}

    class Generic(grpc.GenericRpcHandler):
        def service(self, details):
            return handlers.get(details.method)

    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Generic()],
                         interceptors=interceptors, options=options)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(None).wait()
    tracing.shutdown()
    if mp_dir is not None:
        mp_dir.close()


class _Both:
    def __init__(self, a, b):
        self._a, self._b = a, b

    def __enter__(self):
        self._a.__enter__()
        self._b.__enter__()

    def __exit__(self, *exc):
        self._b.__exit__(*exc)
        self._a.__exit__(*exc)


def _requests():
    import numpy as np

    rng = np.random.default_rng(20261201)
    image = (rng.random(WARP_SHAPE) * 255).astype(np.uint8)
    yy, xx = np.mgrid[: ALIGN_SHAPE[0], : ALIGN_SHAPE[1]].astype(np.float32)
    template = np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.1 * rng.standard_normal(ALIGN_SHAPE).astype(np.float32)
    moved = np.roll(template, (2, 3), axis=(0, 1))
    return {"echo": b"x" * 64, "warp": image.tobytes(),
            "align": np.stack([template, moved]).astype(np.float32).tobytes()}


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (``/proc/<pid>/task/*/schedstat``, ns resolution)."""
    run_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                run_ns += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            pass
    return run_ns / 1e9


def _batch(call, request: bytes, n: int, pid: int) -> tuple[float, float]:
    """(median wall seconds per call, server CPU seconds per call) of ``n`` sequential calls."""
    times = []
    cpu0 = _cpu_seconds(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        call(request, timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (_cpu_seconds(pid) - cpu0) / n


def run(rounds: int, cv_threads: int | None) -> dict:
    import grpc

    servers, channels, stubs = {}, {}, {}
    here = pathlib.Path(__file__).resolve()
    try:
        for config in CONFIGS:
            args = [sys.executable, str(here), "--serve", config]
            if cv_threads is not None:
                args += ["--cv-threads", str(cv_threads)]
            servers[config] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                               env=dict(os.environ, OTEL_TRACES_EXPORTER="none"))
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
        for config, proc in servers.items():
            port = int(proc.stdout.readline())
            channels[config] = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
            stubs[config] = {name: channels[config].unary_unary(f"/{SERVICE}/{name}") for name in CALLS}
        requests = _requests()
        for config in CONFIGS:  # warm-up
            for name, n in CALLS.items():
                _batch(stubs[config][name], requests[name], max(2, n // 4), servers[config].pid)
        samples = {name: {config: [] for config in CONFIGS} for name in CALLS}
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
            for name, n in CALLS.items():
                for config in order:
                    samples[name][config].append(_batch(stubs[config][name], requests[name], n, servers[config].pid))
    finally:
        for channel in channels.values():
            channel.close()
        for proc in servers.values():
            proc.communicate("", timeout=30)
    out = {}
    for name, per_config in samples.items():
        wall = {c: statistics.median(w for w, _ in v) for c, v in per_config.items()}
        cpu = {c: statistics.median(u for _, u in v) for c, v in per_config.items()}
        out[name] = {config: {"median_ms": round(wall[config] * 1e3, 4),
                              "ratio_vs_bare": round(wall[config] / wall["bare"], 4),
                              "overhead_us": round((wall[config] - wall["bare"]) * 1e6, 1),
                              "server_cpu_us_per_call": round(cpu[config] * 1e6, 1),
                              "cpu_ratio_vs_bare": round(cpu[config] / cpu["bare"], 4)}
                     for config in per_config}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("benchmarks/results/observability.json"))
    parser.add_argument("--serve", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--cv-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        _serve(args.serve, args.cv_threads)
        return 0
    load_before = os.getloadavg()
    results = {}
    for label, threads in (("default_threads", None), ("one_thread", 1)):
        results[label] = run(args.rounds, threads)
        for name, per_config in results[label].items():
            for config, fig in per_config.items():
                print(f"{label:15s} {name:6s} {config:16s} median {fig['median_ms']:9.4f} ms  "
                      f"ratio {fig['ratio_vs_bare']:.4f}  overhead {fig['overhead_us']:8.1f} us  "
                      f"server CPU {fig['server_cpu_us_per_call']:9.1f} us/call (ratio {fig['cpu_ratio_vs_bare']:.4f})")
    report = {
        "benchmark": "bench_observability", "rounds": args.rounds, "calls_per_batch": CALLS,
        "warp_shape": WARP_SHAPE, "align_shape": ALIGN_SHAPE, "results": results,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(),
        "note": "shared 2-core machine; ratios are medians of per-batch medians, servers in their own processes",
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"load average before {load_before}, after {report['loadavg_after']}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
