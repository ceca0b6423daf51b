"""Two forked gRPC worker processes sharing one port (SO_REUSEPORT), wired the way ``warpsvc
serve --workers 2`` will be: the parent prepares the multiprocess folder before forking, serves
``/metrics`` after, and retires workers as they exit. Calls (OK, INVALID_ARGUMENT, shed) go to
both workers; one scrape of the parent shows the exact totals of both.

The server runs in a subprocess of its own: forking the pytest process, where grpc objects
exist, is what the design forbids."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import grpc
from test_metrics import scrape, status_of, total, value

SERVER = textwrap.dedent("""
    import os, pathlib, signal, sys, threading
    from warpsvc.server import metrics as wm
    from warpsvc.server import metrics_interceptor as wmi
    from warpsvc.server.runner import _reserve_port

    release = pathlib.Path(sys.argv[1])
    LIMIT = 2
    mp_dir = wm.MultiprocessDir.prepare()            # 1. before any fork
    reserved = _reserve_port("127.0.0.1")
    port = reserved.getsockname()[1]

    def worker(index):
        from concurrent import futures
        import grpc

        metrics = wm.Metrics()

        def unary(request, context):
            if request == b"bad":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
            if request.startswith(b"block"):
                (release.parent / f"running-{os.getpid()}-{request.decode()}").touch()
                while not release.exists():
                    threading.Event().wait(0.01)
            return str(os.getpid()).encode()  # tells the test which worker served the call

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):
                if details.method == "/test.Echo/Unary":
                    return grpc.unary_unary_rpc_method_handler(unary)

        interceptor = wmi.MetricsInterceptor(metrics)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[Generic()],
                             interceptors=[interceptor], maximum_concurrent_rpcs=LIMIT,
                             options=[("grpc.so_reuseport", 1)])
        interceptor.attach(server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        (release.parent / f"ready-{os.getpid()}").touch()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        while not stop.wait(0.05):
            pass
        server.stop(1).wait()
        return 0

    sys.stdout.flush()
    pids = []
    for index in range(2):
        pid = os.fork()
        if pid == 0:
            os._exit(worker(index))
        pids.append(pid)
    while len(list(release.parent.glob("ready-*"))) < 2:
        threading.Event().wait(0.02)
    endpoint = wm.MetricsEndpoint.start("127.0.0.1", 0)  # 2. after forking, own thread
    for index, pid in enumerate(pids):
        endpoint.add_worker(index, pid)
    print(port, endpoint.port, mp_dir.path, *pids, flush=True)

    def forward(signum, frame):
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    codes = []
    for _ in pids:
        pid, status = os.wait()
        endpoint.worker_exited(pid)                    # 3. as each worker ends
        codes.append(os.waitstatus_to_exitcode(status))
        print("exited", pid, flush=True)
    endpoint.close()
    mp_dir.close()                                     # 4. on exit
    reserved.close()
    sys.exit(max(codes))
""")


def _until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)




def test_two_forked_workers_report_as_one_server(tmp_path):
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(release)], stdout=subprocess.PIPE, text=True, env=env)
    channels = []
    try:
        fields = proc.stdout.readline().split()
        port, metrics_port, mp_path = int(fields[0]), int(fields[1]), fields[2]
        workers = [int(p) for p in fields[3:]]
        assert len(workers) == 2 and pathlib.Path(mp_path).is_dir()

        # New channels (connections) until both workers have served: the kernel picks per connection.
        served_by: dict[int, grpc.Channel] = {}
        oks = bads = 0
        for _ in range(60):
            channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            call = channel.unary_unary("/test.Echo/Unary")
            owner = int(call(b"ok", timeout=10))
            oks += 1
            assert owner in workers
            assert status_of(call, b"bad") == grpc.StatusCode.INVALID_ARGUMENT
            bads += 1
            served_by.setdefault(owner, channel)
            if len(served_by) == 2:
                break
        assert len(served_by) == 2, "the kernel never spread connections over both workers"
        s = scrape(metrics_port)
        assert {lab["pid"] for lab, _ in s["warpsvc_worker_cpu_seconds_total"]} == {str(p) for p in workers}

        # On one connection (one worker, limit 2): two blocking calls, then a call that is shed.
        # gRPC counts a call out in a callback after its response went: let the last ones settle
        # first, or the worker may still count one and shed a blocking call.
        time.sleep(0.3)
        shed_channel = next(iter(served_by.values()))
        call = shed_channel.unary_unary("/test.Echo/Unary")
        blocked = [call.future(f"block{i}".encode(), timeout=20) for i in range(2)]
        _until(lambda: len(list(tmp_path.glob("running-*"))) == 2)
        assert status_of(call, b"shed") == grpc.StatusCode.RESOURCE_EXHAUSTED
        busy = scrape(metrics_port)
        release.touch()
        assert [int(f.result()) for f in blocked] == [next(iter(served_by))] * 2

        s = scrape(metrics_port)
        u = {"grpc_type": "unary", "grpc_service": "test.Echo", "grpc_method": "Unary"}
        assert value(busy, "warpsvc_rpcs_in_flight", grpc_method="Unary") == 2
        assert value(s, "warpsvc_rpcs_in_flight", grpc_method="Unary") == 0
        assert value(s, "grpc_server_started_total", **u) == oks + bads + 3
        assert value(s, "grpc_server_handled_total", grpc_code="OK", **u) == oks + 2
        assert value(s, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **u) == bads
        assert value(s, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED", **u) == 1
        assert value(s, "warpsvc_rpcs_shed_total", grpc_method="Unary") == 1
        assert total(s, "grpc_server_handled_total", **u) == value(s, "grpc_server_started_total", **u)
        assert value(s, "grpc_server_handling_seconds_count", **u) == oks + bads + 2

        # One worker ends: its counts stay, its process series goes.
        gone = workers[0]
        os.kill(gone, signal.SIGTERM)
        assert proc.stdout.readline().split() == ["exited", str(gone)]
        s = scrape(metrics_port)
        assert value(s, "grpc_server_started_total", **u) == oks + bads + 3
        assert {lab["pid"] for lab, _ in s["warpsvc_worker_cpu_seconds_total"]} == {str(workers[1])}

        proc.send_signal(signal.SIGTERM)  # the parent forwards it to the other worker
        assert proc.stdout.readline().split() == ["exited", str(workers[1])]
        assert proc.wait(timeout=30) == 0
        assert not pathlib.Path(mp_path).exists()  # the folder went with the server
    finally:
        for channel in channels:
            channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
