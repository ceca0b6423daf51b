"""Client side of the traces: W3C ``traceparent`` on every call of ``WarpClient`` (and of
``warpsvc-batch``), so the server's RPC span joins the caller's trace.

OpenTelemetry is optional here (``warpsvc[client]`` does not install it): every function imports
it lazily and does nothing without it. Two levels:

* **propagation only** (``WarpClient(...)`` default): each call carries the *current* span's
  context (``propagate.inject``: ``traceparent``, plus ``tracestate``/baggage when set) in its
  metadata; no client span. Costs one dictionary per call; nothing when no span is current;
* **client spans** (``WarpClient(..., tracer_provider=provider)``): the channel goes through
  opentelemetry-instrumentation-grpc's client interceptor: a CLIENT span per call, child of the
  current span, whose context goes out as ``traceparent``.

**Batch runs** (``warpsvc-batch``): :func:`start_batch` reads the standard variables and, when
they ask for traces, makes this process's ``TracerProvider``; :func:`image_span` then wraps each
image's work in a span ``warpsvc-batch.image`` (attributes ``warpsvc.batch.job``, ``.input``, and
at its end ``.outcome`` = ``ok``/``failed``, ``.attempts``, ``.target``, ``.converged``; status
ERROR with the error text on failure), current while that image's RPCs are made, so each image
is **one trace** across client and server (the server's RPC span is the image span's child)::

    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 \
        warpsvc-batch warp in/ out/ --matrix ... --target warpsvc:50051

=================================  ===============  ===============================================
variable                           default          meaning
=================================  ===============  ===============================================
OTEL_TRACES_EXPORTER               none             ``otlp``, ``console``, ``none`` (comma-separated)
OTEL_SERVICE_NAME                  warpsvc-batch    ``service.name`` (the SDK's Resource reads it,
                                                    with OTEL_RESOURCE_ATTRIBUTES)
OTEL_EXPORTER_OTLP_(TRACES_)*      the exporter's   endpoint, protocol (``grpc``, or ``http/protobuf``
                                                    if its package is installed), headers: read by
                                                    the OTLP exporter itself
=================================  ===============  ===============================================

Off (the default) costs nothing: OpenTelemetry is not imported and :func:`image_span` returns one
shared null context. Set on but without the SDK installed, or with an unknown exporter or
protocol, a warning says so and the run goes on untraced. The span ends when the output is
computed (the atomic write follows in another thread, or for ``--target local`` in the parent
of the pool process that made the span); ``--engine dask`` runs are not traced.

``traceparent`` is ``00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags>``; the server's
instrumentation extracts it and makes its span a child of the caller's.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping

INSTRUMENTATION_NAME = "warpsvc_client"
BATCH_SERVICE_NAME = "warpsvc-batch"
BATCH_SPAN = "warpsvc-batch.image"
_NULL = contextlib.nullcontext()  # reusable and reentrant: the whole cost of an image span when off
_batch_tracer = None              # this process's batch tracer (start_batch), None when off


def available() -> bool:
    """True if the OpenTelemetry API is importable (else every helper here is a no-op)."""
    try:
        import opentelemetry.propagate  # noqa: F401
    except ImportError:
        return False
    return True


def traceparent_metadata(metadata=()) -> tuple[tuple[str, str], ...]:
    """``metadata`` plus the current span context's propagation entries (``traceparent``, ...);
    ``metadata`` unchanged without OpenTelemetry or without a current valid span."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return tuple(metadata or ())
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return (*(metadata or ()), *carrier.items())


def instrument_channel(channel, tracer_provider):
    """``channel`` with a CLIENT span per call (from ``tracer_provider``) sent as ``traceparent``.

    Needs opentelemetry-instrumentation-grpc (``warpsvc[observability]``)."""
    try:
        from opentelemetry.instrumentation.grpc import client_interceptor
        from opentelemetry.instrumentation.grpc.grpcext import intercept_channel
    except ImportError as err:
        raise ImportError("client spans need opentelemetry-instrumentation-grpc "
                          "(pip install 'warpsvc[observability]')") from err
    return intercept_channel(channel, client_interceptor(tracer_provider=tracer_provider))


def span(name: str, attributes: Mapping | None = None, *, tracer_provider=None):
    """A current span ``name`` for the block (parent of the calls made in it), from
    ``tracer_provider`` (default: OpenTelemetry's global one); a null context without
    OpenTelemetry."""
    try:
        from opentelemetry import trace
    except ImportError:
        return _NULL
    tracer = trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
    return tracer.start_as_current_span(name, attributes=dict(attributes or {}))


# -- batch runs ------------------------------------------------------------------------------------
def batch_exporter_names(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The exporters ``OTEL_TRACES_EXPORTER`` asks for (``otlp``, ``console``; empty: off)."""
    env = os.environ if environ is None else environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "none").split(",") if n.strip()]
    unknown = [n for n in names if n not in ("otlp", "console", "none")]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {unknown[0]!r} (otlp, console or none)")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


class BatchTracing:
    """This process's batch tracing: a ``TracerProvider`` (``provider``), or off (``None``)."""

    def __init__(self, provider=None):
        self.provider = provider

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Flush the exporters and stop making image spans."""
        global _batch_tracer
        if self.provider is not None:
            _batch_tracer = None
            self.provider.shutdown()
            self.provider = None


def start_batch(environ: Mapping[str, str] | None = None, *, exporters: tuple = ()) -> BatchTracing:
    """Turn image spans on in this process if ``OTEL_TRACES_EXPORTER`` (of ``environ``, default
    ``os.environ``) asks for traces or ``exporters`` (span exporter objects: tests pass an
    in-memory one) are given; call it in the process that makes the spans (after any fork: the
    OTLP exporter's batch processor runs a thread) and :meth:`BatchTracing.shutdown` at the end."""
    global _batch_tracer
    env = os.environ if environ is None else environ
    try:
        names = batch_exporter_names(env)
        if not names and not exporters:
            return BatchTracing()
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

        processors = [SimpleSpanProcessor(e) for e in exporters]
        if "console" in names:
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter()))
        if "otlp" in names:
            processors.append(BatchSpanProcessor(_otlp_exporter(env)))
    except (ImportError, ValueError) as err:  # telemetry never stops a batch run: say so, run untraced
        hint = " (pip install 'warpsvc[observability]')" if isinstance(err, ImportError) else ""
        print(f"warpsvc-batch: not traced: {err}{hint}", file=sys.stderr)
        return BatchTracing()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME")
                                                        or BATCH_SERVICE_NAME}))
    for processor in processors:
        provider.add_span_processor(processor)
    _batch_tracer = provider.get_tracer(INSTRUMENTATION_NAME)
    return BatchTracing(provider)


def _otlp_exporter(env: Mapping[str, str]):
    """The OTLP span exporter of ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` (endpoint, headers and
    the rest are read from the environment by the exporter itself)."""
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol!r} (grpc or http/protobuf)")
    return OTLPSpanExporter()


def image_span(job: str, name: str):
    """The span of one image's work (current for the block: its RPCs carry it), or the shared
    null context when batch tracing is off. ``as`` gives the span (``None`` when off)."""
    if _batch_tracer is None:
        return _NULL
    return _batch_tracer.start_as_current_span(BATCH_SPAN, attributes={"warpsvc.batch.job": job,
                                                                      "warpsvc.batch.input": name})


def image_outcome(span, error: str | None, *, attempts: int, target: str | None, converged=None) -> None:
    """Record how the image went on its span: outcome, tries, who answered; ERROR status on failure."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("warpsvc.batch.outcome", "failed" if error else "ok")
    span.set_attribute("warpsvc.batch.attempts", attempts)
    if target:
        span.set_attribute("warpsvc.batch.target", target)
    if converged is not None:
        span.set_attribute("warpsvc.batch.converged", bool(converged))
    if error:
        span.set_status(Status(StatusCode.ERROR, error[:500]))
