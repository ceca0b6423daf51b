"""warpsvc.server.metrics in multiprocess mode: two real processes drive the API, the endpoint
merges their files, the test scrapes it over HTTP and checks every count exactly.

Oracles: the counts are the ones the driver processes were told to make; per-worker RSS is
checked against ``VmRSS`` of ``/proc/<pid>/status`` (another kernel file than the one the
collector reads) and CPU time against ``/proc/<pid>/task/*/schedstat`` (nanosecond run time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from warpsvc.server import metrics as wm

WARP = "/warpsvc.v1.WarpService/Warp"

DRIVER = textwrap.dedent("""
    import json, sys
    from warpsvc.server import metrics as wm
    spec = json.loads(sys.argv[1])
    m = wm.Metrics()
    assert m.multiprocess and m.registry is None
    M = spec["method"]
    first = True
    for code, n in spec["finished"].items():
        for k in range(n):
            if k % 2:  # the helpers of other servers and tests
                m.rpc_started(M)
                m.message_received(M, spec["req_bytes"])
                m.message_sent(M, spec["resp_bytes"])
                m.rpc_finished(M, code, 0.003)
                continue
            call = m.begin_call(M)  # the interceptor's path: reports go to the current call
            m.message_received(M, spec["req_bytes"])
            if first:
                m.pixels("input", spec["pixels"])
                m.stage_observe("decode", 0.02)
                for reason in spec["reasons"]:
                    m.align_outcome(reason)
                first = False
            m.end_call(call, code, seconds=0.003)
            m.message_sent(M, spec["resp_bytes"])
    for _ in range(spec["shed"]):
        m.shed(M)
    for _ in range(spec["open"]):
        m.rpc_started(M)
    print("ready", flush=True)
    sys.stdin.readline()
""")


def scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    """GET /metrics and parse it: sample name -> [(labels, value), ...]."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples, name: str, **labels) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (0 if absent: never reported)."""
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def status_of(call, request: bytes):
    """The status code a unary call ends with (OK when it returns)."""
    import grpc

    try:
        call(request, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def total(samples, name: str, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def _start_driver(spec: dict, env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "ready", line
    return proc


def _vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _schedstat_seconds(pid: int) -> float:
    """Run time of every thread of ``pid`` (``/proc/<pid>/task/*/schedstat``, nanoseconds)."""
    run_ns = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            run_ns += int(f.read().split()[0])
    return run_ns / 1e9


@pytest.fixture
def mp_dir(tmp_path, monkeypatch):
    """An operator-style PROMETHEUS_MULTIPROC_DIR for the driver processes (not this process)."""
    path = tmp_path / "prom"
    path.mkdir()
    return str(path)


def test_two_processes_report_as_one_server(mp_dir):
    env = dict(os.environ, **{wm.MULTIPROC_ENV: mp_dir})
    a_spec = {"method": WARP, "finished": {"OK": 3, "INVALID_ARGUMENT": 1}, "shed": 0, "open": 1, "req_bytes": 1000,
                  "resp_bytes": 700, "pixels": 1200, "reasons": ["converged", "converged"]}
    b_spec = {"method": WARP, "finished": {"OK": 2}, "shed": 1, "open": 0, "req_bytes": 10, "resp_bytes": 20, "pixels": 300,
                  "reasons": ["max_iterations"]}
    a = _start_driver(a_spec, env)
    b = _start_driver(b_spec, env)
    endpoint = wm.MetricsEndpoint.start("127.0.0.1", 0, multiproc_dir=mp_dir)
    try:
        endpoint.add_worker(0, a.pid)
        endpoint.add_worker(1, b.pid)
        s = scrape(endpoint.port)
        rpc = {"grpc_type": "unary", "grpc_service": "warpsvc.v1.WarpService", "grpc_method": "Warp"}
        # 4 finished + 1 open in A, 2 finished + 1 shed in B
        assert value(s, "grpc_server_started_total", **rpc) == 8
        assert value(s, "grpc_server_handled_total", grpc_code="OK", **rpc) == 5
        assert value(s, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **rpc) == 1
        assert value(s, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED", **rpc) == 1
        assert value(s, "warpsvc_rpcs_shed_total", grpc_method="Warp") == 1
        assert value(s, "warpsvc_rpcs_in_flight", grpc_method="Warp") == 1
        # started = handled + in flight
        assert total(s, "grpc_server_handled_total", **rpc) + 1 == 8
        # the histogram: 6 observations of 3 ms
        assert value(s, "grpc_server_handling_seconds_count", **rpc) == 6
        assert value(s, "grpc_server_handling_seconds_bucket", le="0.0025", **rpc) == 0
        assert value(s, "grpc_server_handling_seconds_bucket", le="0.005", **rpc) == 6
        assert value(s, "grpc_server_handling_seconds_sum", **rpc) == pytest.approx(6 * 0.003)
        assert value(s, "grpc_server_msg_received_total", **rpc) == 6
        assert value(s, "grpc_server_msg_sent_total", **rpc) == 6
        assert value(s, "warpsvc_request_bytes_total", grpc_method="Warp") == 4 * 1000 + 2 * 10
        assert value(s, "warpsvc_response_bytes_total", grpc_method="Warp") == 4 * 700 + 2 * 20
        assert value(s, "warpsvc_pixels_total", grpc_method="Warp", kind="input") == 1500
        assert value(s, "warpsvc_stage_seconds_count", grpc_method="Warp", stage="decode") == 2
        assert value(s, "warpsvc_stage_seconds_bucket", grpc_method="Warp", stage="decode", le="0.01") == 0
        assert value(s, "warpsvc_stage_seconds_bucket", grpc_method="Warp", stage="decode", le="0.025") == 2
        assert value(s, "warpsvc_align_outcomes_total", reason="converged") == 2
        assert value(s, "warpsvc_align_outcomes_total", reason="max_iterations") == 1
        # per-worker process metrics, one series per live worker
        for index, proc in ((0, a), (1, b)):
            who = {"worker": str(index), "pid": str(proc.pid)}
            rss = value(s, "warpsvc_worker_resident_memory_bytes", **who)
            assert rss == pytest.approx(_vm_rss(proc.pid), rel=0.05)
            cpu = value(s, "warpsvc_worker_cpu_seconds_total", **who)
            assert cpu > 0
            assert cpu == pytest.approx(_schedstat_seconds(proc.pid), abs=0.05, rel=0.1)
            assert value(s, "warpsvc_worker_threads", **who) >= 1
            started = value(s, "warpsvc_worker_start_time_seconds", **who)
            assert abs(started - os.stat(f"/proc/{proc.pid}").st_mtime) < 5

        # A exits: its counts stay (monotonic totals), its live gauge and process series go.
        a.communicate("\n", timeout=20)
        assert a.returncode == 0
        endpoint.worker_exited(a.pid)
        s = scrape(endpoint.port)
        assert value(s, "grpc_server_started_total", **rpc) == 8
        assert value(s, "grpc_server_handled_total", grpc_code="OK", **rpc) == 5
        assert value(s, "warpsvc_rpcs_in_flight", grpc_method="Warp") == 0
        assert {lab["pid"] for lab, _ in s["warpsvc_worker_resident_memory_bytes"]} == {str(b.pid)}
    finally:
        endpoint.close()
        for proc in (a, b):
            if proc.poll() is None:
                proc.communicate("\n", timeout=20)


def test_endpoint_refuses_without_registry_or_folder(monkeypatch):
    monkeypatch.delenv(wm.MULTIPROC_ENV, raising=False)
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR"):
        wm.MetricsEndpoint.start("127.0.0.1", 0)


def test_multiprocess_dir_private_folder_is_made_exported_and_removed(monkeypatch):
    from prometheus_client import values

    monkeypatch.delenv(wm.MULTIPROC_ENV, raising=False)
    before = values.ValueClass
    made = wm.MultiprocessDir.prepare()
    try:
        assert made.owned and os.path.isdir(made.path)
        assert os.environ[wm.MULTIPROC_ENV] == made.path
        m = wm.Metrics()  # made after prepare(): values go to files in the folder
        assert m.multiprocess
        m.rpc_started(WARP)
        assert any(name.startswith("counter_") for name in os.listdir(made.path))
    finally:
        made.close()
    assert not os.path.exists(made.path)
    assert wm.MULTIPROC_ENV not in os.environ
    assert not getattr(values.ValueClass, "_multiprocess", False)
    assert values.ValueClass is before or values.ValueClass.__name__ == before.__name__
    made.close()  # twice is harmless


def test_multiprocess_dir_operator_folder_is_wiped_not_removed(tmp_path, monkeypatch):
    folder = tmp_path / "given"
    folder.mkdir()
    (folder / "counter_99999.db").write_bytes(b"stale run")
    (folder / "keep.txt").write_text("not ours")
    monkeypatch.setenv(wm.MULTIPROC_ENV, str(folder))
    made = wm.MultiprocessDir.prepare()
    try:
        assert not made.owned and made.path == str(folder)
        assert sorted(os.listdir(folder)) == ["keep.txt"]
    finally:
        made.close()
        monkeypatch.delenv(wm.MULTIPROC_ENV)
        wm._refresh_value_class()
    assert sorted(os.listdir(folder)) == ["keep.txt"]


def test_split_method():
    assert wm.split_method("/warpsvc.v1.WarpService/Warp") == ("warpsvc.v1.WarpService", "Warp")
    assert wm.split_method("/grpc.health.v1.Health/Check") == ("grpc.health.v1.Health", "Check")
    assert wm.split_method("Bare") == ("unknown", "Bare")


def test_read_proc_stat_of_a_gone_process_is_none():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert wm.read_proc_stat(proc.pid) is None
    assert wm.read_proc_stat("self")["resident_memory_bytes"] == pytest.approx(_vm_rss(os.getpid()), rel=0.2)
