"""Build one gRPC server: WarpService + standard health + reflection, limits and interceptors.

``build_server(settings)`` returns a started-ready :class:`WarpServer`; ``serve`` in
:mod:`.runner` adds signals and worker processes around it. Tests use it in-process::

    srv = build_server(Settings(port=0)); srv.start(); ...; srv.stop(grace=1)
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from warpsvc_api.v1 import warp_pb2

from . import admission, transport_flush
from .interceptors import AccessLogInterceptor, BearerTokenInterceptor, DrainGate
from .observe import Observer
from .servicer import WarpServicer, add_to_server
from .settings import Settings
from .stream_gate import StreamGate
from .tracing import OFF, Tracing

log = logging.getLogger("warpsvc.server")

SERVICE_NAME = warp_pb2.DESCRIPTOR.services_by_name["WarpService"].full_name  # warpsvc.v1.WarpService


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc core options of the server. ``http2_bdp_probe=False`` sets ``grpc.http2.bdp_probe=0``:
    without the bandwidth-delay probe core never grows a stream's receive window past its initial
    64 KiB, so the body of a call refused from its metadata (no token) is not taken in: 20 refused
    60 MiB messages left the server +12 MiB (flat after the first) instead of +41 MiB
    (tests/test_hostile_amplification.py), at the cost of slower medium uploads (8 MiB over
    loopback: 15 -> 29 ms; 60 MiB unchanged)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1),
    ]
    if not settings.http2_bdp_probe:
        options.append(("grpc.http2.bdp_probe", 0))
    if settings.max_connection_age_seconds > 0:
        # gRPC re-resolves a dns:/// target only when a connection drops: without an age, a
        # long-lived client never sends a call to a replica added after it connected. Core adds
        # +-10 % jitter; the grace (calls in flight on the old connection) is unlimited.
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)))
    return options


@dataclass
class WarpServer:
    """A configured server, its health servicer and the port it is bound to."""

    server: grpc.Server
    health: health.HealthServicer
    gate: DrainGate
    port: int
    settings: Settings
    metrics: object | None = None  # the worker's metrics.Metrics (None when metrics_port is 0)
    streams: StreamGate | None = None  # AlignStream calls: access log, admission, drain

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> threading.Event:
        """Drain, then stop: health NOT_SERVING at once; new calls and streams answered UNAVAILABLE
        (retry elsewhere); unary calls already accepted finish within ``grace`` seconds (default
        ``settings.grace_seconds``); open streams go on (frames in flight are registered and
        answered) until they end or the grace is :func:`stream_cancel_margin` from its end, when
        each is ended UNAVAILABLE saying how many frames it registered; then, once the kernel has
        delivered every response byte to its client (:mod:`.transport_flush`, within the grace),
        gRPC stops. Returns an event set when stopped."""
        grace = self.settings.grace_seconds if grace is None else grace
        t0 = time.monotonic()
        self.health.enter_graceful_shutdown()
        streams = self.streams
        margin = stream_cancel_margin(grace)
        if streams is not None:
            streams.close()
        if not self.gate.drain(grace if streams is None or not streams.open else grace - margin):
            log.warning("drain: %d calls still running near the end of the %.1f s grace", self.gate.active, grace)
        if streams is not None and not streams.wait(max(0.0, grace - margin - (time.monotonic() - t0))):
            count = streams.cancel(grace)
            log.warning("drain: grace over with %d streams open: cancelled them (UNAVAILABLE)", count)
            streams.wait(max(0.0, grace - (time.monotonic() - t0)))
        if not transport_flush.wait_sent(grace - (time.monotonic() - t0), local_port=self.port):
            log.warning("drain: grace over with responses still unsent to a client that stopped reading")
        return self.server.stop(max(0.0, grace - (time.monotonic() - t0)))


def stream_cancel_margin(grace: float) -> float:
    """Seconds before the end of the grace when open streams are cancelled (min(0.5, grace / 10)):
    time for their handlers to stop and send the UNAVAILABLE status before gRPC's own stop."""
    return min(0.5, grace / 10)


def build_server(settings: Settings, *, tracing: Tracing = OFF) -> WarpServer:
    """The server of one worker. Metrics are recorded when ``settings.metrics_port`` is set (the
    values go to the multiprocess folder if one is prepared, see :mod:`.runner`, else to
    ``WarpServer.metrics.registry``); ``tracing`` (from :func:`.tracing.setup_tracing`) adds a span
    per RPC and per stage."""
    from .metrics import Metrics
    from .metrics_interceptor import MetricsInterceptor

    metrics = Metrics() if settings.metrics_port else None
    # Admission (see .admission): a thread per admitted work call plus threads kept for health and
    # reflection; `threads` of the admitted calls compute at once, the others wait for a slot.
    executor = futures.ThreadPoolExecutor(max_workers=admission.pool_threads(settings.max_concurrent_rpcs),
                                          thread_name_prefix="warpsvc")
    gate = DrainGate(executor, limit=settings.max_concurrent_rpcs)
    # Outermost the metrics (every refusal below is counted with its code), then the RPC span (the
    # access log runs inside it and logs its trace id). The gate sits before the token check, so
    # refused calls are counted out as well as in (a token refusal that skipped the gate's
    # decrement kept SIGTERM waiting the full grace).
    metrics_interceptor = MetricsInterceptor(metrics) if metrics is not None else None
    streams = StreamGate(limit=settings.max_concurrent_rpcs, load=gate.load, metrics=metrics, tracing=tracing)
    interceptors = [*([metrics_interceptor] if metrics_interceptor else []), *tracing.server_interceptors(),
                    AccessLogInterceptor(metrics, tracing), gate, streams]
    if settings.token:
        interceptors.append(BearerTokenInterceptor(settings.token))
    interceptors.append(admission.ComputeSlots(settings.threads))
    server = grpc.server(
        executor,
        interceptors=interceptors,
        options=channel_options(settings),
        maximum_concurrent_rpcs=admission.grpc_limit(settings.max_concurrent_rpcs),  # a backstop
    )
    gate.attach(server)
    if metrics_interceptor is not None:
        # counts the calls shed (both probes read and clear their flag: evaluate both)
        metrics_interceptor.attach(server, shed_probe=lambda: any([gate.took_shed(), streams.took_shed()]))
    add_to_server(WarpServicer(settings, Observer(metrics, tracing)), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    if settings.tls_cert:
        key = pathlib.Path(settings.tls_key).read_bytes()
        cert = pathlib.Path(settings.tls_cert).read_bytes()
        port = server.add_secure_port(settings.address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(settings.address)
    if port == 0:
        raise OSError(f"could not bind {settings.address}")
    return WarpServer(server=server, health=health_servicer, gate=gate, port=port, settings=settings,
                      metrics=metrics, streams=streams)
