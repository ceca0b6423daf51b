"""Traces through the real servicer: ``WarpClient`` -> ``warpsvc.v1.WarpService`` on loopback.

One in-memory exporter per side (as if in two processes). Oracles: the span ids each side
recorded; the W3C ``traceparent`` relation (server span's remote parent = the client's span);
the access-log line's ``trace_id``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from warpsvc_client import WarpClient
from warpsvc_client import tracing as ct

from warpsvc import AffineTransform
from warpsvc.server import Settings, build_server
from warpsvc.server import tracing as wt

WARP = "/warpsvc.v1.WarpService/Warp"


@pytest.fixture
def traced_server():
    spans = InMemorySpanExporter()
    tracing = wt.setup_tracing(wt.TracingConfig(), exporters=(spans,))
    srv = build_server(Settings(port=0, metrics_port=0), tracing=tracing)
    srv.start()
    try:
        yield srv, spans
    finally:
        srv.stop(0).wait()
        tracing.shutdown()


def _access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "warpsvc.access"]


def test_client_span_and_server_spans_share_one_trace(traced_server, caplog):
    srv, server_spans = traced_server
    client_spans = InMemorySpanExporter()
    client_side = wt.setup_tracing(wt.TracingConfig(), exporters=(client_spans,))  # stands in for the app's SDK
    image = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    caplog.set_level(logging.INFO, logger="warpsvc.access")
    with WarpClient(f"127.0.0.1:{srv.port}", timeout=10, tracer_provider=client_side.provider) as client:
        with ct.span("batch.image", {"path": "a.png"}, tracer_provider=client_side.provider):
            out = client.warp(image, AffineTransform.identity())
    client_side.shutdown()
    np.testing.assert_array_equal(out, image)

    (image_span,) = [s for s in client_spans.get_finished_spans() if s.name == "batch.image"]
    (rpc_client,) = [s for s in client_spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    (rpc_server,) = [s for s in server_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    stages = {s.name: s for s in server_spans.get_finished_spans() if s.kind == SpanKind.INTERNAL}
    trace_id = image_span.context.trace_id
    assert rpc_client.context.trace_id == rpc_server.context.trace_id == trace_id
    assert rpc_client.parent.span_id == image_span.context.span_id
    assert rpc_server.parent.span_id == rpc_client.context.span_id and rpc_server.parent.is_remote
    assert rpc_server.name == WARP
    assert set(stages) == {"decode", "compute", "encode"}
    for stage in stages.values():
        assert stage.context.trace_id == trace_id and stage.parent.span_id == rpc_server.context.span_id
    (line,) = [x for x in _access_lines(caplog) if x["method"] == WARP]
    assert line["trace_id"] == format(trace_id, "032x") and line["status"] == "OK"


def test_without_client_spans_the_current_span_still_propagates(traced_server, caplog):
    """Propagation only (``WarpClient`` without a provider): the caller's span is the server
    span's parent."""
    srv, server_spans = traced_server
    app_spans = InMemorySpanExporter()
    app = wt.setup_tracing(wt.TracingConfig(), exporters=(app_spans,))
    caplog.set_level(logging.INFO, logger="warpsvc.access")
    with WarpClient(f"127.0.0.1:{srv.port}", timeout=10) as client:
        with ct.span("caller", tracer_provider=app.provider):
            client.jacobian_determinant(AffineTransform.identity(), (4, 5))
        client.jacobian_determinant(AffineTransform.identity(), (4, 5))  # no current span: a new trace
    app.shutdown()
    (caller,) = app_spans.get_finished_spans()
    first, second = [s for s in server_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert first.context.trace_id == caller.context.trace_id and first.parent.span_id == caller.context.span_id
    assert second.parent is None and second.context.trace_id != caller.context.trace_id
    ids = [x["trace_id"] for x in _access_lines(caplog)]
    assert ids == [format(first.context.trace_id, "032x"), format(second.context.trace_id, "032x")]


def test_tracing_off_logs_no_trace_id(caplog):
    srv = build_server(Settings(port=0, metrics_port=0))
    srv.start()
    caplog.set_level(logging.INFO, logger="warpsvc.access")
    try:
        with WarpClient(f"127.0.0.1:{srv.port}", timeout=10) as client:
            client.jacobian_determinant(AffineTransform.identity(), (4, 5))
    finally:
        srv.stop(0).wait()
    (line,) = _access_lines(caplog)
    assert "trace_id" not in line and line["status"] == "OK"
