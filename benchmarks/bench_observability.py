"""Cost of the observability interceptors on real loopback gRPC calls, against a bare server
measured in the same run.

    python benchmarks/bench_observability.py [--rounds 9] [--json benchmarks/results/observability.json]

Four ``warpsvc`` servers (the real ``build_server``: servicer, codecs, access log, drain gate),
each its own process (so the client does not share their GIL), identical but for observability:

* ``bare``: metrics off (``metrics_port=0``), tracing off (the anchor);
* ``metrics``: metrics on in multiprocess mode (mmap-file values, as ``warpsvc serve`` runs
  them), tracing off (``OTEL_TRACES_EXPORTER=none``: no tracing interceptor, stages record one
  histogram observation each): the production default;
* ``metrics+tracing``: the same plus the OpenTelemetry server interceptor and a child span per
  stage, through the SDK's simple span processor (in the RPC thread) into an exporter that drops
  them (span creation and ending measured, not a collector's network; OTLP uses a batch
  processor off the RPC threads);
* ``bare-control``: a second ``bare`` server, the noise control: its ratio to ``bare`` is what
  two identical servers differ by in the same run (placement on the shared cores, cache
  neighbours), the floor under which the other ratios say nothing.

Four calls through ``WarpClient``: ``small`` (``jacobian_determinant`` of a 4x4 grid: the fixed
per-call cost), ``warp`` (a 512x512 uint8 image, raw tensor in and out, an affine transform: a
small Warp round trip), ``warp1080`` (the same with a 1920x1080 RGB uint8 image) and ``align``
(two 128x128 float32 images, translation model: Align throughput).

Method: one warm-up batch per (call, server); then ``--rounds`` rounds; in each round every call
runs one batch of sequential calls against each server, the servers' calls interleaved one by one
(in an order rotating with the round), so a change of the shared machine's load hits all four
alike; a batch's figure is its median call time, and the server process's CPU time per call over the batch (all its
threads, from ``/proc/<pid>/task/*/schedstat``: waiting for a core shared with other jobs does not
count, so it is the steadier figure here); the reported figures are medians over rounds, the
ratios against ``bare`` of the same call. The servers cap BLAS at one thread, as workers do. Run twice: the servers with OpenCV's default threads and with
one thread everywhere (``warpsvc.set_threads(1)``: OpenCV and the compiled kernels); the
``one_thread`` / ``align`` row is the issue-14 "Align throughput at 1 thread" figure. The machine is shared (load average recorded): ratios within a few
percent of 1 are within the noise of a single run; the per-call overhead in microseconds
(difference of medians) is the steadier figure. Then the same calls against three servers in
*one* process (``bare``, ``metrics``, ``bare-control``: :func:`run_pair`, wall only), free of
the between-process placement noise; and steadier still the in-process cost of the
metrics path alone (:func:`path_cost`: the interceptor wrapper and observer on an Align-shaped
call, minus the same handler without metrics, with the same updates through prometheus-client's
public API as the reference), printed first.
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

CONFIGS = ("bare", "metrics", "metrics+tracing", "bare-control")
BARE = ("bare", "bare-control")  # metrics and tracing off
CALLS = {"small": 300, "warp": 60, "warp1080": 12, "align": 30}  # calls per batch
WARP_SHAPE = (512, 512)
WARP_1080P = (1080, 1920, 3)
ALIGN_SHAPE = (128, 128)
SERVICE = "bench.Bench"


def _serve(config: str, cv_threads: int | None) -> None:
    """Server process: the real ``build_server`` (servicer, interceptors), print the port, serve
    until stdin closes."""
    import cv2
    from threadpoolctl import threadpool_limits

    from warpsvc.server import Settings, build_server
    from warpsvc.server import metrics as wm
    from warpsvc.server import tracing as wt

    if cv_threads is not None:
        cv2.setNumThreads(cv_threads)
        from warpsvc.core import threads

        threads.set_threads(cv_threads)  # the compiled kernels too: every thread pool of the server at 1
    threadpool_limits(limits=1, user_api="blas")  # as the server's workers do (runner.run_worker)
    mp_dir = wm.MultiprocessDir.prepare() if config not in BARE else None  # mmap values, as `serve` runs them
    # metrics_port only switches the worker's metrics on here: the endpoint is not started.
    settings = Settings(port=0, metrics_port=0 if config in BARE else wm.DEFAULT_METRICS_PORT)
    tracing = wt.OFF
    if config == "metrics+tracing":
        tracing = wt.setup_tracing(wt.TracingConfig(), exporters=(_DropSpans(),))
    srv = build_server(settings, tracing=tracing)
    srv.start()
    print(srv.port, flush=True)
    sys.stdin.read()
    srv.stop(0).wait()
    tracing.shutdown()
    if mp_dir is not None:
        mp_dir.close()


PAIR = ("bare", "metrics", "bare-control")


def _serve_pair(cv_threads: int | None) -> None:
    """One process, three servers on their own ports, identical but for metrics (tracing off):
    ``bare``, ``metrics`` (multiprocess mode) and ``bare-control``. Their calls share the process's
    placement on the cores and its caches, so the one-process wall ratios are free of the
    between-process noise the control of :func:`run` shows."""
    import cv2
    from threadpoolctl import threadpool_limits

    from warpsvc.server import Settings, build_server
    from warpsvc.server import metrics as wm

    if cv_threads is not None:
        cv2.setNumThreads(cv_threads)
        from warpsvc.core import threads

        threads.set_threads(cv_threads)
    threadpool_limits(limits=1, user_api="blas")
    mp_dir = wm.MultiprocessDir.prepare()
    servers = [build_server(Settings(port=0, metrics_port=wm.DEFAULT_METRICS_PORT if c == "metrics" else 0))
               for c in PAIR]
    assert [s.metrics is not None for s in servers] == [False, True, False]
    for srv in servers:
        srv.start()
    print(" ".join(str(srv.port) for srv in servers), flush=True)
    sys.stdin.read()
    for srv in servers:
        srv.stop(0).wait()
    mp_dir.close()


def run_pair(rounds: int, cv_threads: int | None) -> dict:
    """The calls of :func:`run` against the three servers of :func:`_serve_pair` (one process),
    interleaved one by one; wall medians only (the CPU of one process cannot be split by server)."""
    from warpsvc_client import WarpClient

    here = pathlib.Path(__file__).resolve()
    args = [sys.executable, str(here), "--serve", "pair"] + (["--cv-threads", str(cv_threads)] if cv_threads else [])
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=dict(env, OTEL_TRACES_EXPORTER="none"))
    clients = {}
    try:
        ports = proc.stdout.readline().split()
        clients = {c: WarpClient(f"127.0.0.1:{p}", timeout=60, retries=1) for c, p in zip(PAIR, ports)}
        requests = _requests()
        pids = dict.fromkeys(PAIR, proc.pid)
        for name, n in CALLS.items():  # warm-up
            _interleaved(clients, requests[name], max(2, n // 4), pids)
        samples = {name: {c: [] for c in PAIR} for name in CALLS}
        for r in range(rounds):
            order = PAIR[r % len(PAIR):] + PAIR[: r % len(PAIR)]
            for name, n in CALLS.items():
                batch = _interleaved({c: clients[c] for c in order}, requests[name], n, pids)
                for c in order:
                    samples[name][c].append(batch[c][0])
    finally:
        for client in clients.values():
            client.close()
        proc.communicate("", timeout=30)
    out = {}
    for name, per in samples.items():
        wall = {c: statistics.median(v) for c, v in per.items()}
        out[name] = {c: {"median_ms": round(wall[c] * 1e3, 4), "ratio_vs_bare": round(wall[c] / wall["bare"], 4),
                         "overhead_us": round((wall[c] - wall["bare"]) * 1e6, 1)} for c in PAIR}
    return out


def _DropSpans():
    """A span exporter that drops what it gets (in the RPC thread, simple processor): the SDK's
    span creation and ending are measured, not a collector's network."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    return Drop()


def _requests():
    """name -> (WarpClient method name, args, kwargs)."""
    import numpy as np

    import warpsvc

    rng = np.random.default_rng(20261201)
    image = (rng.random(WARP_SHAPE) * 255).astype(np.uint8)
    yy, xx = np.mgrid[: ALIGN_SHAPE[0], : ALIGN_SHAPE[1]].astype(np.float32)
    template = np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.1 * rng.standard_normal(ALIGN_SHAPE).astype(np.float32)
    moved = np.roll(template, (2, 3), axis=(0, 1))
    transform = warpsvc.AffineTransform.from_components(rotation=0.2, scale=(0.9, 1.1), translation=(5, -3))
    return {"small": ("jacobian_determinant", (warpsvc.AffineTransform.identity(), (4, 4)), {}),
            "warp": ("warp", (image, transform), {}),
            "warp1080": ("warp", ((rng.random(WARP_1080P) * 255).astype(np.uint8), transform), {}),
            "align": ("align", (template, moved, "translation"), {})}


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


def _batch(call, request, n: int, pid: int) -> tuple[float, float]:
    """(median wall seconds per call, server CPU seconds per call) of ``n`` sequential calls."""
    method, args, kwargs = request
    times = []
    cpu0 = _cpu_seconds(pid)
    for _ in range(n):
        t0 = time.perf_counter()
        getattr(call, method)(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (_cpu_seconds(pid) - cpu0) / n


def _interleaved(clients: dict, request, n: int, pids: dict) -> dict:
    """One batch per server, the servers' calls interleaved one by one (bare, metrics, tracing,
    bare, ...: a load change on the shared machine hits every server alike): {config: (median
    wall seconds per call, server CPU seconds per call)}."""
    method, args, kwargs = request
    times = {c: [] for c in clients}
    cpu0 = {c: _cpu_seconds(pids[c]) for c in clients}
    for _ in range(n):
        for config, client in clients.items():
            t0 = time.perf_counter()
            getattr(client, method)(*args, **kwargs)
            times[config].append(time.perf_counter() - t0)
    return {c: (statistics.median(times[c]), (_cpu_seconds(pids[c]) - cpu0[c]) / n) for c in clients}


def run(rounds: int, cv_threads: int | None) -> dict:
    from warpsvc_client import WarpClient

    servers, clients = {}, {}
    here = pathlib.Path(__file__).resolve()
    try:
        for config in CONFIGS:
            args = [sys.executable, str(here), "--serve", config]
            if cv_threads is not None:
                args += ["--cv-threads", str(cv_threads)]
            env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            servers[config] = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                               env=dict(env, OTEL_TRACES_EXPORTER="none"))
        for config, proc in servers.items():
            port = int(proc.stdout.readline())
            clients[config] = WarpClient(f"127.0.0.1:{port}", timeout=60, retries=1)
        requests = _requests()
        for config in CONFIGS:  # warm-up
            for name, n in CALLS.items():
                _batch(clients[config], requests[name], max(2, n // 4), servers[config].pid)
        samples = {name: {config: [] for config in CONFIGS} for name in CALLS}
        for r in range(rounds):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[: r % len(CONFIGS)]
            for name, n in CALLS.items():
                batch = _interleaved({c: clients[c] for c in order}, requests[name], n,
                                     {c: servers[c].pid for c in order})
                for config in order:
                    samples[name][config].append(batch[config])
    finally:
        for client in clients.values():
            client.close()
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


class _Context:
    """The two things the metrics interceptor asks of a servicer context (no call is made)."""

    def code(self):
        return None

    def is_active(self) -> bool:
        return True


def path_cost(n: int = 20000, repeats: int = 7) -> dict:
    """The per-call cost of the metrics path alone, in this process, multiprocess mode (mmap
    files in a temporary folder, as ``warpsvc serve`` runs): an Align-shaped unary call (request
    bytes, three stages, an align outcome, two pixel counts, response bytes) through the real
    ``MetricsInterceptor`` wrapper and ``Observer``, minus the same handler without metrics; and,
    as the reference in the same run, the same ~19 updates through prometheus-client's public
    ``inc`` / ``observe`` on pre-bound children (the per-call path before the cells). Best of
    ``repeats`` runs of ``n`` calls each (the steady figure on a shared machine)."""
    import timeit

    import grpc

    from warpsvc.server import metrics as wm
    from warpsvc.server import metrics_interceptor as wmi
    from warpsvc.server.observe import OBSERVER_OFF, Observer

    method = "/warpsvc.v1.WarpService/Align"
    mp_dir = wm.MultiprocessDir.prepare()
    try:
        m = wm.Metrics()
        assert m.multiprocess
        ctx, raw = _Context(), b"x" * 100

        def servicer(observer):
            def behavior(request, context):
                with observer.stage("decode"):
                    pass
                with observer.stage("compute"):
                    pass
                observer.align_outcome("converged")
                observer.pixels("input", 100)
                with observer.stage("encode"):
                    return request

            return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=bytes,
                                                       response_serializer=bytes)

        bare_handler, on_observer = servicer(OBSERVER_OFF), Observer(m)

        def bare():
            h = bare_handler
            h.response_serializer(h.unary_unary(h.request_deserializer(raw), ctx))

        def instrumented():  # a new wrapper per call, as the interceptor makes one per call
            h = wmi._instrumented(grpc, m, servicer(on_observer), method, wm.UNARY)
            h.response_serializer(h.unary_unary(h.request_deserializer(raw), ctx))

        def bare_wrapped():  # the per-call handler construction without metrics (subtracted)
            h = servicer(OBSERVER_OFF)
            h.response_serializer(h.unary_unary(h.request_deserializer(raw), ctx))

        service, name = wm.split_method(method)
        labels = (wm.UNARY, service, name)
        ch = {"started": m.started.labels(*labels), "in_flight": m.in_flight.labels(service, name),
              "received": m.msg_received.labels(*labels), "req": m.request_bytes.labels(service, name),
              "stages": [m.stage_seconds.labels(name, s) for s in ("decode", "compute", "encode")],
              "handled": m.handled.labels(*labels, "OK"), "handling": m.handling_seconds.labels(*labels),
              "sent": m.msg_sent.labels(*labels), "resp": m.response_bytes.labels(service, name),
              "px": m.pixels_total.labels(name, "input"), "outcome": m.align_outcomes.labels("converged")}

        def public_api():
            ch["received"].inc()
            ch["req"].inc(100)
            ch["started"].inc()
            ch["in_flight"].inc()
            for child in ch["stages"]:
                child.observe(time.perf_counter() - time.perf_counter() + 1e-4)
            ch["outcome"].inc()
            ch["px"].inc(100)
            ch["in_flight"].dec()
            ch["handled"].inc()
            ch["handling"].observe(1e-3)
            ch["sent"].inc()
            ch["resp"].inc(100)

        def best(fn):
            return min(timeit.repeat(fn, number=n, repeat=repeats)) / n * 1e6

        bare_us, wrapped_us, on_us, public_us = best(bare), best(bare_wrapped), best(instrumented), best(public_api)
    finally:
        mp_dir.close()
    return {"calls": n, "repeats": repeats, "handler_without_metrics_us": round(bare_us, 2),
            "handler_built_per_call_without_metrics_us": round(wrapped_us, 2),
            "handler_with_metrics_us": round(on_us, 2),
            "metrics_path_us_per_call": round(on_us - wrapped_us, 2),
            "public_api_same_updates_us_per_call": round(public_us, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("benchmarks/results/observability.json"))
    parser.add_argument("--serve", choices=(*CONFIGS, "pair"), help=argparse.SUPPRESS)
    parser.add_argument("--cv-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve == "pair":
        _serve_pair(args.cv_threads)
        return 0
    if args.serve:
        _serve(args.serve, args.cv_threads)
        return 0
    load_before = os.getloadavg()
    path = path_cost()
    print(f"metrics path per call (in-process, multiprocess mode): {path['metrics_path_us_per_call']:.1f} us; "
          f"the same updates through prometheus-client's public API: {path['public_api_same_updates_us_per_call']:.1f} us")
    results = {}
    for label, threads in (("default_threads", None), ("one_thread", 1)):
        results[label] = run(args.rounds, threads)
        for name, per_config in results[label].items():
            for config, fig in per_config.items():
                print(f"{label:15s} {name:6s} {config:16s} median {fig['median_ms']:9.4f} ms  "
                      f"ratio {fig['ratio_vs_bare']:.4f}  overhead {fig['overhead_us']:8.1f} us  "
                      f"server CPU {fig['server_cpu_us_per_call']:9.1f} us/call (ratio {fig['cpu_ratio_vs_bare']:.4f})")
    one_process = {}
    for label, threads in (("default_threads", None), ("one_thread", 1)):
        one_process[label] = run_pair(args.rounds, threads)
        for name, per in one_process[label].items():
            for config, fig in per.items():
                print(f"one process {label:15s} {name:8s} {config:13s} median {fig['median_ms']:9.4f} ms  "
                      f"ratio {fig['ratio_vs_bare']:.4f}  overhead {fig['overhead_us']:8.1f} us")
    report = {
        "benchmark": "bench_observability", "rounds": args.rounds, "calls_per_batch": CALLS,
        "warp_shape": WARP_SHAPE, "warp1080_shape": WARP_1080P, "align_shape": ALIGN_SHAPE, "results": results,
        "metrics_path": path, "one_process": one_process,
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
