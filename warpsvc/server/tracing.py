"""OpenTelemetry tracing: a span per RPC (opentelemetry-instrumentation-grpc), child spans per
stage, W3C ``traceparent`` from clients, configured by the standard ``OTEL_*`` variables.

=================================  ==========================  ====================================
variable                           default                     meaning
=================================  ==========================  ====================================
OTEL_TRACES_EXPORTER               none                        ``otlp``, ``console`` or ``none``
                                                               (comma-separated: several at once)
OTEL_EXPORTER_OTLP_ENDPOINT        http://localhost:4317       collector (``_TRACES_ENDPOINT`` wins)
OTEL_EXPORTER_OTLP_PROTOCOL        grpc                        ``grpc`` (``http/protobuf`` if its
                                                               exporter package is installed)
OTEL_SERVICE_NAME                  warpsvc                     ``service.name`` of the spans
OTEL_TRACES_SAMPLER(_ARG)          parentbased_always_on       read by the SDK itself
OTEL_PROPAGATORS                   tracecontext,baggage        read by the API itself (W3C)
=================================  ==========================  ====================================

Off (``none``, the default) costs nothing on the hot path: no interceptor is installed, no SDK is
imported, :meth:`Tracing.stage` returns one shared ``nullcontext`` and :meth:`Tracing.trace_id`
returns None without touching OpenTelemetry (benchmarks/bench_observability.py measures it).

Where things go (server)::

    tracing = setup_tracing()                     # in each worker, after the fork (the batch
                                                  # span processor starts a thread)
    interceptors = [..., *tracing.server_interceptors(), AccessLogInterceptor(), ...]
    with tracing.stage("decode"): ...             # child span of the RPC's span
    access line: {"trace_id": current_trace_id(), ...}   # 32 hex digits, or absent
    tracing.shutdown()                            # flush on exit

The client side (``traceparent`` from ``WarpClient`` and ``warpsvc-batch``, client spans) is
``clients/warpsvc_client/tracing.py``: clients never import the server. A client span's context
travels in the ``traceparent`` metadata entry (``00-<trace id: 32 hex>-<parent span id: 16
hex>-<flags>``); the server instrumentation extracts it, so the server span is a child of the
client span and shares its trace id.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_SERVICE_NAME = "warpsvc"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_OTLP_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
INSTRUMENTATION_NAME = "warpsvc.server"
_NULL = contextlib.nullcontext()  # reusable and reentrant: the whole cost of a stage when off


@dataclass(frozen=True)
class TracingConfig:
    """What ``OTEL_*`` asks for. ``exporters`` is empty when tracing is off."""

    exporters: tuple[str, ...] = ()
    endpoint: str | None = None
    protocol: str = "grpc"
    service_name: str = DEFAULT_SERVICE_NAME

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TracingConfig:
        env = os.environ if environ is None else environ
        names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
        unknown = [n for n in names if n not in EXPORTERS]
        if unknown:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {unknown[0]!r} (one of {', '.join(EXPORTERS)})")
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "grpc").strip().lower()
        if protocol not in PROTOCOLS:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r} (one of {', '.join(PROTOCOLS)})")
        return cls(
            exporters=tuple(dict.fromkeys(n for n in names if n != "none")),
            endpoint=env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            protocol=protocol,
            service_name=env.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        )


class Tracing:
    """Tracing of one process: on (an SDK ``TracerProvider``) or off (``provider`` None)."""

    def __init__(self, provider=None, exporters: tuple = ()):
        self.provider = provider
        self.exporters = exporters
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME) if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def server_interceptors(self) -> list:
        """The server span interceptor (health checks excluded), or [] when off."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.grpc import filters, server_interceptor

        return [server_interceptor(tracer_provider=self.provider, filter_=filters.negate(filters.health_check()))]

    def stage(self, name: str):
        """A child span ``name`` of the current span (decode, compute, encode); nothing when off."""
        if self._tracer is None:
            return _NULL
        return self._tracer.start_as_current_span(name)

    def trace_id(self) -> str | None:
        return current_trace_id() if self.enabled else None

    def shutdown(self) -> None:
        """Flush and stop the exporters (at worker exit)."""
        if self.provider is not None:
            self.provider.shutdown()


OFF = Tracing()


def setup_tracing(config: TracingConfig | None = None, *, exporters: tuple = (), set_global: bool = False) -> Tracing:
    """Build this process's tracing from ``config`` (default: ``TracingConfig.from_env()``).

    ``exporters``: span exporter objects to use in addition (tests pass an in-memory one; any
    given turns tracing on). ``set_global``: also install the provider as OpenTelemetry's global
    one (the servers and clients of this module never need it; third-party code might). OTLP uses
    a batch span processor (export off the RPC threads), console and given exporters a simple one.
    """
    config = TracingConfig.from_env() if config is None else config
    if not config.enabled and not exporters:
        return OFF
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: config.service_name}))
    made = []
    for name in config.exporters:
        if name == "otlp":
            exporter = _otlp_exporter(config)
            provider.add_span_processor(BatchSpanProcessor(exporter))
        else:  # console
            exporter = ConsoleSpanExporter(service_name=config.service_name, out=sys.stdout)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        made.append(exporter)
    for exporter in exporters:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        made.append(exporter)
    if set_global:
        trace.set_tracer_provider(provider)
    return Tracing(provider, tuple(made))


def _otlp_exporter(config: TracingConfig):
    # Pass the endpoint always: the exporter would read an empty OTEL_EXPORTER_OTLP_ENDPOINT (as
    # docker-compose passes an unset one) as the endpoint itself.
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=config.endpoint or DEFAULT_OTLP_GRPC_ENDPOINT)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ValueError("OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf needs the package "
                         "opentelemetry-exporter-otlp-proto-http") from None
    return OTLPSpanExporter(endpoint=config.endpoint or DEFAULT_OTLP_HTTP_ENDPOINT)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 lowercase hex digits (the access log's ``trace_id``),
    or None outside a recorded span or without OpenTelemetry installed."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - the observability extra is absent
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
