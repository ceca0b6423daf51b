"""warpsvc.server.tracing with warpsvc_client.tracing: a client span and the server span share
one trace id across a real loopback gRPC call (in-memory exporters, one per side as if in two
processes); OTLP export to a real loopback collector carries OTEL_SERVICE_NAME; off means no
interceptor and no span. The same through the real servicer and WarpClient: tests/test_service_tracing.py."""

from __future__ import annotations

import re
import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from warpsvc_client import tracing as ct

from warpsvc.server import tracing as wt

SERVICE = "test.Echo"
# version 00, trace id, parent span id, flags (01 sampled; the SDK also sets 02, "random trace id")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


class EchoHandler(grpc.GenericRpcHandler):
    """Echo with two stage spans; remembers the traceparent and trace id it saw."""

    def __init__(self, tracing: wt.Tracing):
        self.tracing = tracing
        self.seen: list[dict] = []

    def unary(self, request: bytes, context) -> bytes:
        with self.tracing.stage("decode"):
            pass
        with self.tracing.stage("compute"):
            out = request[::-1]
        self.seen.append({"traceparent": dict(context.invocation_metadata()).get("traceparent"),
                          "trace_id": self.tracing.trace_id()})
        return out

    def service(self, details):
        if details.method == f"/{SERVICE}/Unary":
            return grpc.unary_unary_rpc_method_handler(self.unary)
        return None


def _serve(tracing: wt.Tracing):
    handler = EchoHandler(tracing)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[handler],
                         interceptors=tracing.server_interceptors())
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, handler


def test_client_and_server_spans_share_one_trace():
    server_spans, client_spans = InMemorySpanExporter(), InMemorySpanExporter()
    server_side = wt.setup_tracing(wt.TracingConfig(), exporters=(server_spans,))
    client_side = wt.setup_tracing(wt.TracingConfig(), exporters=(client_spans,))
    assert server_side.enabled and len(server_side.server_interceptors()) == 1
    server, port, handler = _serve(server_side)
    channel = ct.instrument_channel(grpc.insecure_channel(f"127.0.0.1:{port}"), client_side.provider)
    try:
        call = channel.unary_unary(f"/{SERVICE}/Unary")
        with ct.span("batch.image", {"path": "a.png"}, tracer_provider=client_side.provider):
            assert call(b"abc", timeout=10) == b"cba"
        assert call(b"second", timeout=10) == b"dnoces"  # no parent: a trace of its own
    finally:
        channel.close()
        server.stop(None).wait()
        server_side.shutdown()
        client_side.shutdown()

    client = {s.name: s for s in client_spans.get_finished_spans() if s.name == "batch.image"}
    rpc_client = [s for s in client_spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    rpc_server = [s for s in server_spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    stages = [s for s in server_spans.get_finished_spans() if s.name in ("decode", "compute")]
    assert len(rpc_client) == 2 and len(rpc_server) == 2 and len(stages) == 4
    image = client["batch.image"]
    first_client, first_server = rpc_client[0], rpc_server[0]
    trace_id = image.context.trace_id
    # one trace: image span -> client RPC span -> server RPC span -> stage spans
    assert first_client.context.trace_id == trace_id and first_client.parent.span_id == image.context.span_id
    assert first_server.context.trace_id == trace_id
    assert first_server.parent.span_id == first_client.context.span_id and first_server.parent.is_remote
    for stage in stages[:2]:
        assert stage.context.trace_id == trace_id and stage.parent.span_id == first_server.context.span_id
    assert first_server.name == f"/{SERVICE}/Unary"
    assert first_server.resource.attributes["service.name"] == wt.DEFAULT_SERVICE_NAME
    # the wire: W3C traceparent carrying the client span; the handler's trace id is the same
    header = TRACEPARENT.match(handler.seen[0]["traceparent"])
    assert header and header.group(1) == format(trace_id, "032x")
    assert header.group(2) == format(first_client.context.span_id, "016x")
    assert handler.seen[0]["trace_id"] == format(trace_id, "032x")
    # the second call started its own trace
    assert rpc_server[1].context.trace_id == rpc_client[1].context.trace_id != trace_id
    assert handler.seen[1]["trace_id"] == format(rpc_client[1].context.trace_id, "032x")


def test_traceparent_metadata_and_current_trace_id():
    spans = InMemorySpanExporter()
    side = wt.setup_tracing(wt.TracingConfig(), exporters=(spans,))
    assert wt.current_trace_id() is None
    assert ct.traceparent_metadata([("authorization", "Bearer x")]) == (("authorization", "Bearer x"),)
    with ct.span("outer", tracer_provider=side.provider):
        trace_id = wt.current_trace_id()
        metadata = dict(ct.traceparent_metadata([("authorization", "Bearer x")]))
    side.shutdown()
    (outer,) = spans.get_finished_spans()
    assert trace_id == format(outer.context.trace_id, "032x")
    header = TRACEPARENT.match(metadata["traceparent"])
    assert header.group(1) == trace_id and header.group(2) == format(outer.context.span_id, "016x")
    assert metadata["authorization"] == "Bearer x"


def test_off_installs_nothing():
    off = wt.setup_tracing(wt.TracingConfig.from_env({}))
    assert off is wt.OFF and not off.enabled
    assert off.server_interceptors() == []
    assert off.stage("decode") is off.stage("encode")  # one shared null context
    with off.stage("decode"):
        assert off.trace_id() is None
    off.shutdown()


@pytest.mark.parametrize("env, expected", [
    ({}, wt.TracingConfig()),
    ({"OTEL_TRACES_EXPORTER": "none"}, wt.TracingConfig()),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "warp-a"},
     wt.TracingConfig(exporters=("console",), service_name="warp-a")),
    ({"OTEL_TRACES_EXPORTER": "OTLP, console,otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
     wt.TracingConfig(exporters=("otlp", "console"), endpoint="http://c:4317")),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     wt.TracingConfig(exporters=("otlp",), endpoint="http://b:4317", protocol="http/protobuf")),
])
def test_config_from_env(env, expected):
    assert wt.TracingConfig.from_env(env) == expected


@pytest.mark.parametrize("env, field", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
])
def test_config_refuses_unknown_values_naming_the_variable(env, field):
    with pytest.raises(ValueError, match=field):
        wt.TracingConfig.from_env(env)


def test_console_exporter_prints_the_spans(capsys):
    side = wt.setup_tracing(wt.TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "console"}))
    with side.stage("printed"):
        trace_id = wt.current_trace_id()
    side.shutdown()
    out = capsys.readouterr().out
    assert '"name": "printed"' in out and f'"trace_id": "0x{trace_id}"' in out


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A loopback OTLP/gRPC collector keeping what it receives."""

    def __init__(self):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = threading.Event()

    def Export(self, request, context):
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_export_reaches_a_collector_with_the_service_name():
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_SERVICE_NAME": "warpsvc-test"}
    side = wt.setup_tracing(wt.TracingConfig.from_env(env))
    try:
        with side.stage("exported"):
            trace_id = wt.current_trace_id()
        side.shutdown()  # flushes the batch processor
        assert collector.received.wait(10)
    finally:
        server.stop(None).wait()
    spans = [(rs.resource, span) for req in collector.requests for rs in req.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    assert [span.name for _, span in spans] == ["exported"]
    resource, span = spans[0]
    assert span.trace_id.hex() == trace_id
    attrs = {kv.key: kv.value.string_value for kv in resource.attributes}
    assert attrs["service.name"] == "warpsvc-test"
