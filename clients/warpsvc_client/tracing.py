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

A batch run wraps each image in a span of its own, parent of that image's RPCs (one trace per
image across client and server)::

    with tracing.span("batch.image", {"path": str(path)}, tracer_provider=provider):
        client.warp(...)

``traceparent`` is ``00-<trace id: 32 hex>-<parent span id: 16 hex>-<flags>``; the server's
instrumentation extracts it and makes its span a child of the caller's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

INSTRUMENTATION_NAME = "warpsvc_client"
_NULL = contextlib.nullcontext()


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
