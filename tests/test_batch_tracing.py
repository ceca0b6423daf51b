"""``warpsvc-batch`` traces: one span per image whose context reaches the server, so each image is
one trace across client and server. A real ``warpsvc serve`` subprocess and real ``warpsvc-batch``
runs, both configured by the standard variables (``OTEL_TRACES_EXPORTER=console``), their spans
read back from what each process printed. Oracles: the span ids each side recorded (the
server's RPC span is a child of the batch span, by ``traceparent``), the images given, the
manifest; off (no ``OTEL_*``) the SDK is never imported and nothing is printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cv2
import pytest
from interop.harness import REPO, ServerProcess, wait_serving
from test_batch_helpers import make_align_folder, make_mixed_folder, read_manifest
from warpsvc_client import tracing

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the OpenTelemetry SDK ('warpsvc[observability]')")
H = "0.95,0.05,4,-0.03,1.02,2,2e-4,-1e-4,1"
CONSOLE = {"OTEL_TRACES_EXPORTER": "console"}
BATCH_SPAN = "warpsvc-batch.image"


def spans_in(text: str) -> list[dict]:
    """The spans a ``ConsoleSpanExporter`` printed (indented JSON objects) among other output."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    while (start := text.find("{\n", pos)) != -1:
        try:
            obj, pos = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        if isinstance(obj, dict) and {"name", "context", "kind"} <= obj.keys():
            out.append(obj)
    return out


def run_batch(*args, env: dict | None = None, wrapper: str | None = None) -> subprocess.CompletedProcess:
    """``warpsvc-batch`` as a subprocess with exactly ``env``'s OTEL variables."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | (env or {})
    head = ["-c", wrapper] if wrapper else ["-m", "warpsvc_client.batch.cli"]
    return subprocess.run([sys.executable, *head, *map(str, args), "--no-progress", "--no-report"], cwd=REPO,
                          env=full, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def traced_server():
    with ServerProcess("--port", "0", env={**CONSOLE, "OTEL_SERVICE_NAME": "warpsvc-under-test"}) as srv:
        wait_serving(srv.target)
        yield srv


def server_spans(srv, trace_ids: set[str], count: int, timeout: float = 20.0) -> list[dict]:
    """The server's SERVER spans in ``trace_ids`` once ``count`` of them were printed."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for s in spans_in("".join(srv.stdout)) if s["kind"] == "SpanKind.SERVER"
                 and s["context"]["trace_id"] in trace_ids]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_each_image_is_one_trace_across_client_and_server(traced_server, tmp_path):
    src = tmp_path / "in"
    names = make_mixed_folder(src, 3)
    res = run_batch("warp", src, tmp_path / "out", "--matrix", H, "--target", traced_server.target, env=CONSOLE)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    batch = [s for s in spans_in(res.stdout) if s["name"] == BATCH_SPAN]
    assert sorted(s["attributes"]["warpsvc.batch.input"] for s in batch) == names
    traces = {s["context"]["trace_id"] for s in batch}
    assert len(traces) == 3  # one trace per image
    for s in batch:
        assert s["parent_id"] is None and s["kind"] == "SpanKind.INTERNAL"  # a root: the image is the trace
        assert s["attributes"] | {"warpsvc.batch.input": None} == {
            "warpsvc.batch.job": "warp", "warpsvc.batch.input": None, "warpsvc.batch.outcome": "ok",
            "warpsvc.batch.attempts": 1, "warpsvc.batch.target": traced_server.target}
        assert s["resource"]["attributes"]["service.name"] == "warpsvc-batch"
    rpc = server_spans(traced_server, traces, 3)
    assert len(rpc) == 3 and {s["context"]["trace_id"] for s in rpc} == traces
    by_trace = {s["context"]["trace_id"]: s for s in batch}
    for s in rpc:  # the server span's parent is the image's span (its traceparent), in the same trace
        assert s["name"] == "/warpsvc.v1.WarpService/Warp"
        assert s["parent_id"] == by_trace[s["context"]["trace_id"]]["context"]["span_id"]
        assert s["resource"]["attributes"]["service.name"] == "warpsvc-under-test"
    manifest = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert {r["input"] for r in manifest if r["status"] == "ok"} == set(names)


def test_align_image_trace_holds_both_calls_and_failures_are_marked(traced_server, tmp_path):
    src = tmp_path / "in"
    tmpl, truth = make_align_folder(src, 1, seed=3)
    (good,) = truth
    (src / "broken.png").write_bytes((src / good).read_bytes()[:60])  # header intact, data cut: the server refuses
    ref = tmp_path / "reference.png"
    cv2.imwrite(str(ref), tmpl)
    res = run_batch("align", src, tmp_path / "out", "--reference", ref, "--model", "affine",
                    "--target", traced_server.target, env=CONSOLE)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]  # one image failed
    batch = {s["attributes"]["warpsvc.batch.input"]: s for s in spans_in(res.stdout) if s["name"] == BATCH_SPAN}
    assert sorted(batch) == sorted([good, "broken.png"])
    ok, bad = batch[good], batch["broken.png"]
    assert ok["attributes"]["warpsvc.batch.outcome"] == "ok" and ok["attributes"]["warpsvc.batch.converged"] is True
    assert ok["status"]["status_code"] == "UNSET"
    assert bad["attributes"]["warpsvc.batch.outcome"] == "failed" and bad["status"]["status_code"] == "ERROR"
    assert bad["status"]["description"].startswith("InvalidArgumentError: image.encoded.data")  # the server said
    rpc = server_spans(traced_server, {ok["context"]["trace_id"], bad["context"]["trace_id"]}, 3)
    calls = sorted((s["context"]["trace_id"] == ok["context"]["trace_id"], s["name"].rsplit("/", 1)[1]) for s in rpc)
    assert calls == [(False, "Align"), (True, "Align"), (True, "Warp")]  # align + warp under the good image
    for s in rpc:
        image = ok if s["context"]["trace_id"] == ok["context"]["trace_id"] else bad
        assert s["parent_id"] == image["context"]["span_id"]


def test_local_pool_images_are_traced_too(tmp_path):
    src = tmp_path / "in"
    names = make_mixed_folder(src, 2)
    res = run_batch("jacobian", src, tmp_path / "out", "--matrix", H, "--jobs", "1", env=CONSOLE)
    assert res.returncode == 0, res.stderr[-2000:]
    batch = [s for s in spans_in(res.stdout) if s["name"] == BATCH_SPAN]  # printed by the pool process
    assert sorted(s["attributes"]["warpsvc.batch.input"] for s in batch) == names
    assert len({s["context"]["trace_id"] for s in batch}) == 2
    assert {s["attributes"]["warpsvc.batch.target"] for s in batch} == {"local"}


OFF_WRAPPER = ("import sys; from warpsvc_client.batch.cli import main; rc = main(sys.argv[1:]); "
               "print('SDK', any(m.startswith('opentelemetry.sdk') for m in sys.modules)); sys.exit(rc)")


def test_off_imports_no_sdk_and_prints_no_span(traced_server, tmp_path):
    src = tmp_path / "in"
    make_mixed_folder(src, 2)
    res = run_batch("warp", src, tmp_path / "out", "--matrix", H, "--target", traced_server.target,
                    wrapper=OFF_WRAPPER)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().endswith("SDK False") and spans_in(res.stdout) == []
    assert tracing.image_span("warp", "a.png") is tracing.image_span("align", "b.png")  # one shared null context


def test_bad_setting_warns_and_runs_untraced(tmp_path):
    src = tmp_path / "in"
    make_mixed_folder(src, 1)
    res = run_batch("jacobian", src, tmp_path / "out", "--matrix", H, env={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert res.returncode == 0 and spans_in(res.stdout) == []
    assert "not traced: OTEL_TRACES_EXPORTER: unsupported exporter 'zipkin'" in res.stderr


def test_in_memory_exporter_and_shutdown():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    spans = InMemorySpanExporter()
    side = tracing.start_batch({}, exporters=(spans,))
    try:
        with tracing.image_span("warp", "x.png") as span:
            tracing.image_outcome(span, None, attempts=2, target="h:1")
    finally:
        side.shutdown()
    (s,) = spans.get_finished_spans()
    assert dict(s.attributes) == {"warpsvc.batch.job": "warp", "warpsvc.batch.input": "x.png",
                                  "warpsvc.batch.outcome": "ok", "warpsvc.batch.attempts": 2,
                                  "warpsvc.batch.target": "h:1"}
    assert tracing.image_span("warp", "y.png") is tracing.image_span("warp", "z.png")  # off again
