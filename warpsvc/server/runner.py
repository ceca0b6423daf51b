"""``warpsvc serve``: worker processes, signals and graceful shutdown.

Python runs one core's worth of Python per process (the GIL), so ``--workers N`` forks N
processes that each bind the same port with ``SO_REUSEPORT``; the kernel spreads *connections*
across them (clients use ``round_robin`` over ``dns:///host:port`` to spread requests). The fork
happens before any grpc object exists (gRPC's threads do not survive a fork), and each worker
sets ``cv2.setNumThreads(settings.cv_threads)``, the compiled kernels' threads per call
(``settings.kernel_thread_count``: ``--kernel-threads``, default ``--cv-threads``; ``--threads``
is the number of calls computing at once, never a per-call thread count) and caps BLAS threads
(``settings.blas_threads``, through threadpoolctl) so N workers do not oversubscribe the cores.

Metrics (``settings.metrics_port``, 0 disables; :mod:`.metrics`): the multiprocess folder is
prepared before any fork, so every worker writes its values there; ``GET /metrics`` is served by
the parent (after forking, on its own HTTP thread: never a worker's RPC pool) and merges them.
With one worker the process is both. Tracing (:mod:`.tracing`, ``OTEL_*``) is set up in each
worker after the fork (its exporter thread would not survive one).

Shutdown (SIGTERM or SIGINT): health turns NOT_SERVING at once, new calls are answered
UNAVAILABLE (the drain gate), accepted calls get up to ``grace_seconds`` to finish, then the
process exits 0. The parent of several
workers forwards the signal and exits 0 when every worker did.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time

from .heap_trim import HeapTrimmer
from .settings import Settings

log = logging.getLogger("warpsvc.server")

# Seconds a worker that drained calls stays up after gRPC stopped, for the transport to flush
# their last responses (see _serve_until_signal). 0.5 s was too short for 25 MB responses to a
# client reading 24 of them from two replicas on a loaded 2-core box (the compose test's stop
# with calls in flight: one call lost UNAVAILABLE "GOAWAY: Server shutdown" 0.56 s after the
# last handler ended, though every handler had ended OK).
EXIT_LINGER = 2.0


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep multi-megabyte message buffers in the malloc heap instead of fresh ``mmap`` pages.

    Every request and response is a new multi-MB buffer (gRPC's bytes, the parsed message, the
    warped array). glibc serves blocks above its mmap threshold with fresh pages and returns them
    on free, so each call pays page faults and kernel zeroing for every buffer: measured here,
    parsing a 6 MB WarpRequest took 3-9 ms instead of 0.4 ms and receiving it ~2x longer. Raising
    the mmap and trim thresholds above the message limit lets the heap recycle those blocks (the
    price: the process keeps its peak heap). No-op where glibc is absent. Returns True if applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 256 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30)
                and mallopt(M_TOP_PAD, 64 << 20))


def run_worker(settings: Settings, index: int = 0) -> int:
    """Run one server process until SIGTERM/SIGINT, then drain. Returns the exit code."""
    from .image_probe import configure_opencv_io

    try:
        configure_opencv_io(settings.max_input_pixels)  # OpenCV's own decode cap: before cv2 loads
    except RuntimeError as err:  # cv2 imported already (embedding code): the probe still applies
        log.warning("%s", err)
    from .app import build_server  # first grpc import of a worker: after any fork
    from .tracing import setup_tracing

    configure_threads(settings)
    if settings.tune_malloc:
        tune_allocator()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tracing = setup_tracing()
    try:
        srv = build_server(settings, tracing=tracing)
        warming, mark = _begin_warm_up(index) if settings.warm_up else (None, None)
        try:
            srv.start()
        except BaseException:
            if mark is not None:
                mark.close()
            raise
        if warming is not None:
            warming.start()
        trimmer = HeapTrimmer(lambda: srv.gate.arrivals, srv.gate.load, settings.trim_idle_seconds,
                              name=f"worker {index}").start()
        try:
            return _serve_until_signal(srv, settings, index, stop)
        finally:
            trimmer.stop()
    finally:
        tracing.shutdown()


def configure_threads(settings: Settings) -> None:
    """The thread pools of a worker: OpenCV (``cv_threads``), the compiled kernels' threads per
    call (``kernel_thread_count``: ``--kernel-threads``, default ``--cv-threads``; never
    ``--threads``, the compute slots: :mod:`warpsvc.core.threads` reads ``WARPSVC_KERNEL_THREADS``
    only) and BLAS (``blas_threads``)."""
    import cv2
    from threadpoolctl import threadpool_limits

    from warpsvc.core import threads

    cv2.setNumThreads(settings.cv_threads)
    threads.set_threads(settings.kernel_thread_count, opencv=False)
    # numpy's OpenBLAS starts one spinning thread per core in every process: with N workers the
    # cores are oversubscribed, and alignment throughput per CPU-second halves (measured).
    threadpool_limits(limits=settings.blas_threads, user_api="blas")


def _begin_warm_up(index: int):
    """``(thread, mark)``: the worker's warm-up thread, not started yet, and the mark that says a
    warm-up is under way, set already (``mark.close()`` clears it; the thread does when done).

    It runs after SERVING, off the critical path: the first conserving / antialiased calls then
    find the compiled kernels loaded (:func:`warpsvc.core.warmup.warm`; numba's on-disk cache).
    Antialiased calls made while a warm-up runs wait for it (``antialias.warming_up``) instead of
    starting a second, concurrent load; the mark is set *here*, before the server starts, so a
    request that arrives before the thread is scheduled waits too (it used to run the numpy tier
    and start the background upgrade beside the warm-up). The thread clears the mark when done."""
    import contextlib

    from warpsvc.core import antialias

    mark = contextlib.ExitStack()
    mark.enter_context(antialias.warming_up())
    return threading.Thread(target=_warm_up, args=(index, mark), name="warpsvc-warm-up", daemon=True), mark


def _warm_up(index: int, mark=None) -> None:
    from warpsvc.core.warmup import warm

    try:
        log.info("worker %d warmed the compiled kernels in %.2f s", index, warm())
    except Exception:  # pragma: no cover - a warm-up failure must not stop serving
        log.exception("worker %d: warm-up failed (first calls will compile)", index)
    finally:
        if mark is not None:
            mark.close()


def _serve_until_signal(srv, settings: Settings, index: int, stop: threading.Event) -> int:
    scheme = "tls" if settings.tls_cert else "insecure"
    line = (f"warpsvc worker {index} (pid {os.getpid()}) serving on {settings.host}:{srv.port} "
            f"({scheme}, auth={'token' if settings.token else 'off'})\n")
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line.encode())  # one write(2): workers' lines never interleave
    while not stop.wait(0.2):
        pass
    log.info("worker %d draining: health NOT_SERVING, up to %.1f s for in-flight calls", index,
             settings.grace_seconds)
    had_calls = srv.gate.active > 0
    srv.stop().wait()
    if had_calls:
        # gRPC counts a call done once its response is queued on the transport, not sent: exiting
        # at once closed the socket under a large unsent response (the client saw a connection
        # reset instead of its 8 MB JacobianDeterminant, ~1 run in 20). Let the transport flush.
        time.sleep(EXIT_LINGER)
    log.info("worker %d stopped", index)
    return 0


def _reserve_port(host: str) -> socket.socket:
    """Bind (not listen) a SO_REUSEPORT socket on a free port so every worker can share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), 0))
    return sock


def check_port_free(host: str, port: int) -> None:
    """``OSError`` when something already listens on ``host:port``.

    The workers bind with ``SO_REUSEPORT`` (gRPC's ``grpc.so_reuseport``) to share their port, and
    so would a second ``warpsvc serve`` of the same user on the same port: it started without an
    error and took part of the connections (a new-user audit: a server with a token on the port
    of one without answered 6 of 12 calls UNAUTHENTICATED). A socket bound *without*
    ``SO_REUSEPORT`` (with ``SO_REUSEADDR``, so a previous server's TIME_WAIT connections do not
    count) fails exactly when another socket listens there. Checked once, before any worker binds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, family, socket.SOCK_STREAM)
    except socket.gaierror:
        return  # gRPC's own bind reports the address
    for fam, kind, proto, _, addr in infos[:1]:
        with socket.socket(fam, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(addr)
            except OSError as err:
                raise OSError(f"cannot bind {host}:{port}: {err.strerror or err} (another server listens there; "
                              "stop it, or pick another --port / WARPSVC_PORT)") from None


def serve(settings: Settings) -> int:
    """Serve until a signal; ``settings.workers`` processes (forked here) share the port; the
    metrics endpoint (unless ``metrics_port`` is 0) reports them as one server."""
    from . import metrics

    if settings.port:
        check_port_free(settings.host, settings.port)

    mp = metrics.MultiprocessDir.prepare() if settings.metrics_port else None  # before any fork
    endpoint = None
    try:
        if settings.workers == 1:
            if mp is not None:
                endpoint = _metrics_endpoint(settings)
                endpoint.add_worker(0, os.getpid())
            return run_worker(settings)
        return _serve_workers(settings)
    finally:
        if endpoint is not None:
            endpoint.close()
        if mp is not None:
            mp.close()


def _metrics_endpoint(settings: Settings):
    from .metrics import MetricsEndpoint

    try:
        endpoint = MetricsEndpoint.start(settings.host, settings.metrics_port)
    except OSError as err:
        raise OSError(f"metrics endpoint: cannot bind {settings.host}:{settings.metrics_port} ({err.strerror or err}); "
                      "pick another --metrics-port / WARPSVC_METRICS_PORT, or 0 to disable") from None
    log.info("metrics on http://%s:%d/metrics", settings.host, endpoint.port)
    return endpoint


def _serve_workers(settings: Settings) -> int:
    """Fork the workers, then serve /metrics for them; wait for them, retiring each from the metrics."""
    reserved = None
    if settings.port == 0:
        reserved = _reserve_port(settings.host)
        settings = dataclasses.replace(settings, port=reserved.getsockname()[1])
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[int] = []
    for index in range(settings.workers):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                code = run_worker(settings, index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # never back into the parent's finally (endpoint, metrics folder)
        children.append(pid)

    stopping = threading.Event()

    def forward(signum, _frame):
        stopping.set()
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    endpoint = None
    try:
        if settings.metrics_port:
            endpoint = _metrics_endpoint(settings)
            for index, pid in enumerate(children):
                endpoint.add_worker(index, pid)
    except OSError:
        forward(signal.SIGTERM, None)
        for _ in children:
            os.wait()
        raise
    ok = True
    remaining = set(children)
    try:
        while remaining:
            try:
                pid, status = os.wait()
            except ChildProcessError:  # pragma: no cover
                break
            remaining.discard(pid)
            if endpoint is not None:
                endpoint.worker_exited(pid)
            code = os.waitstatus_to_exitcode(status)
            if code != 0:
                ok = False
                if not stopping.is_set():
                    log.error("worker pid %d exited with %d; stopping the others", pid, code)
                    forward(signal.SIGTERM, None)
    finally:
        if endpoint is not None:
            endpoint.close()
        if reserved is not None:
            reserved.close()
    return 0 if ok else 1
