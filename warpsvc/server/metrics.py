"""Prometheus metrics of the gRPC server: one ``/metrics`` endpoint for all ``--workers N``.

Pieces (the parent of the workers owns the first two, each worker the last two)::

    MultiprocessDir.prepare()    parent, BEFORE forking: PROMETHEUS_MULTIPROC_DIR (a fresh temp dir,
                                 or the operator's, wiped); removed on close()
    MetricsEndpoint.start(...)   parent, after forking: GET /metrics on its own port and thread
                                 (never the RPC pool); add_worker(index, pid) / worker_exited(pid)
    Metrics()                    worker: the metric objects and the small API the servicer calls
    MetricsInterceptor(metrics)  worker: started / handled / handling seconds / bytes / shed
                                 (:mod:`.metrics_interceptor`)

Multiprocess mode (prometheus-client): every worker writes its values to memory-mapped files
``<dir>/<type>_<pid>.db``; the endpoint merges the files at scrape time, so N workers report as one
server: counters and histograms are summed over every process that ever ran (a dead worker's
counts stay, so totals stay monotonic), the in-flight gauge is summed over live processes only
(``mark_process_dead`` drops a dead worker's live-gauge file). Multiprocess mode has no default
process collector, so :class:`WorkerProcessCollector` reads ``/proc/<pid>/stat`` of each worker at
scrape time: CPU seconds, RSS, threads, start time, labelled ``worker`` (index) and ``pid``.

Metric names (the grpc-ecosystem go-grpc-prometheus names, so existing dashboards work)::

    grpc_server_started_total{grpc_type,grpc_service,grpc_method}
    grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
    grpc_server_handling_seconds_bucket{grpc_type,grpc_service,grpc_method,le}   (histogram)
    grpc_server_msg_received_total / grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
    warpsvc_rpcs_in_flight{grpc_service,grpc_method}                 handlers running now
    warpsvc_rpcs_shed_total{grpc_service,grpc_method}                refused by the concurrency limit
    warpsvc_request_bytes_total / warpsvc_response_bytes_total{grpc_service,grpc_method}  wire bytes
    warpsvc_pixels_total{grpc_method,kind}                           kind: input | output
    warpsvc_stage_seconds{grpc_method,stage}                         (histogram) decode/compute/encode
    warpsvc_align_outcomes_total{reason}                             AlignResult.reason
    warpsvc_worker_cpu_seconds_total / _resident_memory_bytes / _threads / _start_time_seconds
                                                                     {worker,pid}

Identities the counters keep: ``started = sum(handled) + in_flight`` per method; a shed call counts
once in ``started``, ``handled{grpc_code="RESOURCE_EXHAUSTED"}`` and ``shed`` (it has no handling
time). Unknown methods (UNIMPLEMENTED) are not counted: arbitrary names would be unbounded labels.

This module imports neither grpc nor prometheus-client at import time: the parent imports it
before forking, when no grpc object may exist yet (see :mod:`.runner`).
"""

from __future__ import annotations

import contextvars
import glob
import os
import shutil
import tempfile
import threading
import time
from typing import Self

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DEFAULT_METRICS_PORT = 9464
# Seconds. Prometheus' defaults stop at 10 s; big antialiased warps and alignments take longer.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"
RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

# The call this thread is serving (a Call: its method's cells and its pending updates), set by the
# interceptor, read by stage_observe(), pixels() and align_outcome() so they need no method argument.
_CURRENT_CALL: contextvars.ContextVar = contextvars.ContextVar("warpsvc_metrics_call", default=None)


def split_method(full_method: str) -> tuple[str, str]:
    """``"/warpsvc.v1.WarpService/Warp"`` -> ``("warpsvc.v1.WarpService", "Warp")``."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service, method) if service else ("unknown", method)


def _refresh_value_class() -> None:
    """prometheus-client picks in-memory or mmap-file values when ``values`` is first imported;
    choose again now that the environment variable is (un)set (metrics made later use it)."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def _multiprocess_active() -> bool:
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class MultiprocessDir:
    """The folder of the workers' metric files; the parent prepares it before forking.

    ``prepare()`` uses ``$PROMETHEUS_MULTIPROC_DIR`` if the operator set it (its stale ``*.db``
    files from an earlier run are removed: they would be summed into this run), otherwise makes a
    private temporary folder and exports it. ``close()``, at exit, closes this process's metric
    files, removes what ``prepare`` made (or wipes the operator's folder) and restores the
    environment. Safe to call twice.
    """

    def __init__(self, path: str, owned: bool):
        self.path = path
        self.owned = owned
        self._closed = False

    @classmethod
    def prepare(cls) -> MultiprocessDir:
        given = os.environ.get(MULTIPROC_ENV)
        if given:
            os.makedirs(given, exist_ok=True)
            _wipe(given)
            made = cls(given, owned=False)
        else:
            made = cls(tempfile.mkdtemp(prefix="warpsvc-metrics-"), owned=True)
            os.environ[MULTIPROC_ENV] = made.path
        _refresh_value_class()
        return made

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        from prometheus_client import values

        values.close_all_multiprocess_files()  # this process's mmap files (at exit: no metric is used after)
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
            if os.environ.get(MULTIPROC_ENV) == self.path:
                del os.environ[MULTIPROC_ENV]
                _refresh_value_class()
        else:
            _wipe(self.path)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wipe(path: str) -> None:
    for name in glob.glob(os.path.join(path, "*.db")):
        os.remove(name)


class _MethodChildren:
    """The cells of one (type, method), resolved once (``labels()`` and the cell look-ups are
    paid by the first call of each method, status code, stage and pixel kind; see
    :mod:`.metric_cells`)."""

    __slots__ = ("_cells", "_m", "_method", "_rpc_labels", "end_pair", "handled", "handling", "in_flight", "pixels",
                 "received", "request_bytes", "response_bytes", "sent", "shed", "stages", "start_pairs", "started")

    def __init__(self, m: Metrics, grpc_type: str, full_method: str):
        service, method = split_method(full_method) if full_method else ("", "")
        cells = m.cells
        self._m, self._cells, self._method = m, cells, method
        self._rpc_labels = (grpc_type, service, method)
        if full_method:
            self.started = cells.cell(m.started.labels(*self._rpc_labels))
            self.handling = cells.histogram(m.handling_seconds.labels(*self._rpc_labels))
            self.received = cells.cell(m.msg_received.labels(*self._rpc_labels))
            self.sent = cells.cell(m.msg_sent.labels(*self._rpc_labels))
            self.request_bytes = cells.cell(m.request_bytes.labels(service, method))
            self.response_bytes = cells.cell(m.response_bytes.labels(service, method))
            self.in_flight = cells.cell(m.in_flight.labels(service, method))
            self.shed = cells.cell(m.shed_total.labels(service, method))
            self.start_pairs = ((self.started, 1.0), (self.in_flight, 1.0))
            self.end_pair = (self.in_flight, -1.0)
        self.handled: dict[str, object] = {}
        self.stages: dict[str, object] = {}
        self.pixels: dict[str, object] = {}

    def handled_cell(self, code: str):
        return self.handled_pair(code)[0]

    def handled_pair(self, code: str):
        """``(cell, 1.0)``: one more call handled with ``code``."""
        pair = self.handled.get(code)
        if pair is None:
            pair = self.handled[code] = (self._cells.cell(self._m.handled.labels(*self._rpc_labels, code)), 1.0)
        return pair

    def stage_cells(self, name: str):
        cells = self.stages.get(name)
        if cells is None:
            cells = self.stages[name] = self._cells.histogram(self._m.stage_seconds.labels(self._method, name))
        return cells

    def pixel_cell(self, kind: str):
        cell = self.pixels.get(kind)
        if cell is None:
            cell = self.pixels[kind] = self._cells.cell(self._m.pixels_total.labels(self._method, kind))
        return cell


class Call:
    """One RPC being recorded (:meth:`Metrics.begin_call` .. :meth:`Metrics.end_call`): the
    updates reported during it (stages, pixels, align outcomes, unary request bytes) wait in
    ``pending`` and are written with the call's end, in one batch."""

    __slots__ = ("children", "pending", "previous", "t0")

    def __init__(self, children: _MethodChildren, previous):
        self.children = children
        self.pending: list = []
        self.previous = previous
        self.t0 = 0.0


class Metrics:
    """The server's metric objects and the calls that update them (one per worker process).

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, see :class:`MultiprocessDir`) the
    metrics are registered nowhere: their values live in the folder and the endpoint reads them
    there (so several ``Metrics`` in one process, e.g. tests, never clash). Otherwise they go in
    ``registry`` (a fresh ``CollectorRegistry`` by default), which ``MetricsEndpoint`` can serve.

    Cost per call (the interceptor's path): three batches of cell updates (start: started and
    in-flight; end: in-flight, handled, handling time, request bytes and everything reported during
    the call; response: sent and bytes), each one lock acquisition and a 16-byte store per value
    (:mod:`.metric_cells`); two ``perf_counter`` reads; no dict is built. Values are visible to a
    scrape as soon as their batch is written: a call's stages and pixels when it ends.
    """

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from .metric_cells import Cells

        self.multiprocess = _multiprocess_active()
        if self.multiprocess:
            registry = None
        elif registry is None:
            registry = CollectorRegistry()
        self.registry = registry
        self.cells = Cells()
        svc = ("grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", RPC_LABELS,
                               registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               RPC_LABELS + ("grpc_code",), registry=registry)
        self.handling_seconds = Histogram("grpc_server_handling_seconds",
                                          "Handler time of RPCs on the server (seconds).", RPC_LABELS,
                                          buckets=LATENCY_BUCKETS, registry=registry)
        self.msg_received = Counter("grpc_server_msg_received_total", "Messages received on the server.",
                                    RPC_LABELS, registry=registry)
        self.msg_sent = Counter("grpc_server_msg_sent_total", "Messages sent by the server.", RPC_LABELS,
                                registry=registry)
        self.in_flight = Gauge("warpsvc_rpcs_in_flight", "RPC handlers running now.", svc,
                               multiprocess_mode="livesum", registry=registry)
        self.shed_total = Counter("warpsvc_rpcs_shed_total",
                                  "RPCs refused RESOURCE_EXHAUSTED by the concurrency limit.", svc, registry=registry)
        self.request_bytes = Counter("warpsvc_request_bytes_total", "Serialized request bytes received.", svc,
                                     registry=registry)
        self.response_bytes = Counter("warpsvc_response_bytes_total", "Serialized response bytes sent.", svc,
                                      registry=registry)
        self.pixels_total = Counter("warpsvc_pixels_total", "Pixels (H*W) decoded from inputs / produced.",
                                    ("grpc_method", "kind"), registry=registry)
        self.stage_seconds = Histogram("warpsvc_stage_seconds", "Time per handler stage (seconds).",
                                       ("grpc_method", "stage"), buckets=LATENCY_BUCKETS, registry=registry)
        self.align_outcomes = Counter("warpsvc_align_outcomes_total", "Align results by AlignResult.reason.",
                                      ("reason",), registry=registry)
        self._children: dict[tuple[str, str], _MethodChildren] = {}
        self._outcomes: dict[str, object] = {}

    def _method(self, full_method: str, grpc_type: str = UNARY) -> _MethodChildren:
        key = (grpc_type, full_method)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = _MethodChildren(self, grpc_type, full_method)
        return children

    # -- the RPC lifecycle (the interceptor calls these) -----------------------------------------
    def begin_call(self, full_method: str, grpc_type: str = UNARY, children: _MethodChildren | None = None) -> Call:
        """Count the call started and in flight; make it the current call of this context (what
        :meth:`stage_observe`, :meth:`pixels` and :meth:`align_outcome` report to). ``children``:
        the method's, when the caller has them already (the interceptor)."""
        if children is None:
            children = self._method(full_method, grpc_type)
        self.cells.add(children.start_pairs)
        call = Call(children, _CURRENT_CALL.get())
        _CURRENT_CALL.set(call)
        call.t0 = time.perf_counter()
        return call

    def end_call(self, call: Call, code: str, seconds: float | None = None) -> None:
        """The call ended with status ``code`` (``"OK"``, ``"INVALID_ARGUMENT"``, ...): its
        handling time (measured since :meth:`begin_call` unless given), its code and everything
        reported during it, in one batch."""
        if seconds is None:
            seconds = time.perf_counter() - call.t0
        _CURRENT_CALL.set(call.previous)  # not reset(token): a stream may end in another context
        children = call.children
        pending = call.pending
        pending.append(children.end_pair)
        pending.append(children.handled_pair(code))
        pending.extend(children.handling.pairs(seconds))
        self.cells.add(pending)

    def rpc_started(self, full_method: str, grpc_type: str = UNARY) -> None:
        """Started and in flight, outside a :meth:`begin_call` scope (tests, other servers)."""
        children = self._method(full_method, grpc_type)
        self.cells.add(((children.started, 1.0), (children.in_flight, 1.0)))

    def rpc_finished(self, full_method: str, code: str, seconds: float, grpc_type: str = UNARY) -> None:
        """``code``: the status name (``"OK"``, ``"INVALID_ARGUMENT"``, ...)."""
        children = self._method(full_method, grpc_type)
        self.cells.add(((children.in_flight, -1.0), (children.handled_cell(code), 1.0),
                        *children.handling.pairs(seconds)))

    def message_received(self, full_method: str, nbytes: int, grpc_type: str = UNARY) -> None:
        children = self._method(full_method, grpc_type)
        self.cells.add(((children.received, 1.0), (children.request_bytes, nbytes)))

    def message_sent(self, full_method: str, nbytes: int, grpc_type: str = UNARY) -> None:
        children = self._method(full_method, grpc_type)
        self.cells.add(((children.sent, 1.0), (children.response_bytes, nbytes)))

    def shed(self, full_method: str, grpc_type: str = UNARY) -> None:
        """A call refused by the concurrency limit: started, handled RESOURCE_EXHAUSTED, shed."""
        children = self._method(full_method, grpc_type)
        self.cells.add(((children.started, 1.0), (children.handled_cell("RESOURCE_EXHAUSTED"), 1.0),
                        (children.shed, 1.0)))

    # -- what the servicer reports (to the current call; written when it ends) ------------------
    def stage(self, name: str):
        """Time the block as stage ``name`` (decode, compute, encode) of the current call."""
        return _StageTimer(self, name)

    def stage_observe(self, name: str, seconds: float) -> None:
        call = _CURRENT_CALL.get()
        if call is None:
            self.cells.add(self._method("").stage_cells(name).pairs(seconds))
        else:
            call.pending.extend(call.children.stage_cells(name).pairs(seconds))

    def pixels(self, kind: str, n: int) -> None:
        """Add ``n`` pixels (H*W) of ``kind`` (``"input"`` decoded, ``"output"`` produced)."""
        call = _CURRENT_CALL.get()
        if call is None:
            self.cells.add1(self._method("").pixel_cell(kind), n)
        else:
            call.pending.append((call.children.pixel_cell(kind), n))

    def align_outcome(self, reason: str) -> None:
        cell = self._outcomes.get(reason)
        if cell is None:
            cell = self._outcomes[reason] = self.cells.cell(self.align_outcomes.labels(reason))
        call = _CURRENT_CALL.get()
        if call is None:
            self.cells.add1(cell, 1.0)
        else:
            call.pending.append((cell, 1.0))


class _StageTimer:
    """``with metrics.stage(name):`` (a plain class: a generator context manager costs ~2 us)."""

    __slots__ = ("_metrics", "_name", "_t0")

    def __init__(self, metrics: Metrics, name: str):
        self._metrics, self._name = metrics, name

    def __enter__(self):
        self._t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        seconds = time.perf_counter() - self._t0
        call = _CURRENT_CALL.get()
        if call is None:
            self._metrics.stage_observe(self._name, seconds)
        else:
            call.pending.extend(call.children.stage_cells(self._name).pairs(seconds))


# -- per-worker process metrics, read from /proc at scrape time --------------------------------------
def read_proc_stat(pid: int | str, proc: str = "/proc") -> dict | None:
    """CPU seconds (user+system), RSS bytes, threads and start time (Unix s) of ``pid`` from
    ``/proc/<pid>/stat`` (fields 14, 15, 20, 22, 24 of proc(5)); None if the process is gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
            text = f.read().decode()
        with open(os.path.join(proc, "stat"), "rb") as f:
            btime = next(float(line.split()[1]) for line in f.read().decode().splitlines()
                         if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is fields[0]
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "cpu_seconds": (int(fields[11]) + int(fields[12])) / ticks,
        "threads": int(fields[17]),
        "start_time_seconds": btime + int(fields[19]) / ticks,
        "resident_memory_bytes": int(fields[21]) * os.sysconf("SC_PAGE_SIZE"),
    }


class WorkerProcessCollector:
    """``warpsvc_worker_*{worker,pid}`` gauges for every registered worker process."""

    def __init__(self, proc: str = "/proc"):
        self._proc = proc
        self._workers: dict[int, int] = {}  # pid -> worker index
        self._lock = threading.Lock()

    def add(self, index: int, pid: int) -> None:
        with self._lock:
            self._workers[pid] = index

    def remove(self, pid: int) -> None:
        with self._lock:
            self._workers.pop(pid, None)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ("worker", "pid")
        cpu = CounterMetricFamily("warpsvc_worker_cpu_seconds", "CPU time (user+system) of each worker.", labels=labels)
        rss = GaugeMetricFamily("warpsvc_worker_resident_memory_bytes", "Resident memory of each worker.", labels=labels)
        threads = GaugeMetricFamily("warpsvc_worker_threads", "OS threads of each worker.", labels=labels)
        start = GaugeMetricFamily("warpsvc_worker_start_time_seconds", "Start time of each worker (Unix s).",
                                  labels=labels)
        with self._lock:
            workers = sorted(self._workers.items(), key=lambda item: item[1])
        for pid, index in workers:
            stat = read_proc_stat(pid, self._proc)
            if stat is None:
                continue
            values = (str(index), str(pid))
            cpu.add_metric(values, stat["cpu_seconds"])
            rss.add_metric(values, stat["resident_memory_bytes"])
            threads.add_metric(values, stat["threads"])
            start.add_metric(values, stat["start_time_seconds"])
        return [cpu, rss, threads, start]


class MetricsEndpoint:
    """``GET /metrics`` (Prometheus text format) served by its own HTTP thread.

    ``start(host, port)`` binds (``port=0``: a free one, see ``.port``). In multiprocess mode
    (``multiproc_dir`` given, or ``$PROMETHEUS_MULTIPROC_DIR``) it merges every worker's files;
    otherwise it serves ``registry`` (e.g. ``Metrics().registry`` of an in-process server). Worker
    processes are announced with :meth:`add_worker` and retired with :meth:`worker_exited`.
    """

    def __init__(self, httpd, thread, workers: WorkerProcessCollector, multiproc_dir: str | None):
        self._httpd = httpd
        self._thread = thread
        self._workers = workers
        self.multiproc_dir = multiproc_dir

    @classmethod
    def start(cls, host: str, port: int, *, registry=None, multiproc_dir: str | None = None) -> MetricsEndpoint:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        workers = WorkerProcessCollector()
        serving = CollectorRegistry()
        if registry is None:
            multiproc_dir = multiproc_dir or os.environ.get(MULTIPROC_ENV)
            if not multiproc_dir:
                raise ValueError("metrics endpoint: give a registry or a multiprocess folder "
                                 f"(${MULTIPROC_ENV} is not set)")
            MultiProcessCollector(serving, path=multiproc_dir)
        else:
            serving.register(_Forward(registry))
        serving.register(workers)
        httpd, thread = start_http_server(port, addr=host.strip("[]"), registry=serving)
        thread.name = "warpsvc-metrics"
        return cls(httpd, thread, workers, multiproc_dir if registry is None else None)

    @property
    def port(self) -> int:
        return self._httpd.server_port

    def add_worker(self, index: int, pid: int) -> None:
        self._workers.add(index, pid)

    def worker_exited(self, pid: int) -> None:
        """A worker ended: drop its live gauges (in-flight) and its process metrics."""
        self._workers.remove(pid)
        if self.multiproc_dir:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, self.multiproc_dir)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Forward:
    """Expose another registry's metrics through the endpoint's registry."""

    def __init__(self, registry):
        self._registry = registry

    def collect(self):
        return self._registry.collect()
