"""A real Prometheus (Debian's ``prometheus`` package) scrapes the metrics endpoint on loopback
and reads back exactly the counts recorded; ``promtool`` accepts the compose scrape config.

Skipped, saying so, where the package is not installed (``apt-get install prometheus``)."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from warpsvc.server import metrics as wm

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "prometheus" / "prometheus.yml"
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                      reason="PROMETHEUS NOT INSTALLED (apt-get install prometheus): scrape test not run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port: int, expr: str) -> list:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


@needs_prometheus
def test_compose_scrape_config_is_valid():
    out = subprocess.run([PROMTOOL, "check", "config", str(COMPOSE_CONFIG)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    import yaml

    (job,) = yaml.safe_load(COMPOSE_CONFIG.read_text())["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert sd["names"] == ["warpsvc"] and "warpsvc" in compose["services"]
    assert sd["port"] == wm.DEFAULT_METRICS_PORT and job["metrics_path"] == "/metrics"


@needs_prometheus
def test_prometheus_scrapes_the_endpoint(tmp_path):
    metrics = wm.Metrics()
    method = "/warpsvc.v1.WarpService/Warp"
    for code in ("OK", "OK", "OK", "INVALID_ARGUMENT"):
        metrics.rpc_started(method)
        metrics.rpc_finished(method, code, 0.004)
    metrics.shed(method)
    endpoint = wm.MetricsEndpoint.start("127.0.0.1", 0, registry=metrics.registry)
    web = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: warpsvc\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{endpoint.port}']}}]\n")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                started = _query(web, 'grpc_server_started_total{grpc_method="Warp"}')
                if started:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus never scraped the endpoint"
            time.sleep(0.5)
        (up,) = _query(web, 'up{job="warpsvc"}')
        assert up["value"][1] == "1"
        assert [float(s["value"][1]) for s in started] == [5.0]
        handled = {s["metric"]["grpc_code"]: float(s["value"][1])
                   for s in _query(web, 'grpc_server_handled_total{grpc_method="Warp"}')}
        assert handled == {"OK": 3.0, "INVALID_ARGUMENT": 1.0, "RESOURCE_EXHAUSTED": 1.0}
        (count,) = _query(web, 'grpc_server_handling_seconds_count{grpc_method="Warp"}')
        assert float(count["value"][1]) == 4.0
        (workers,) = _query(web, "count(warpsvc_worker_resident_memory_bytes) or vector(0)")
        assert float(workers["value"][1]) == 0.0  # none announced: no per-worker series
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        endpoint.close()
