"""AlignStream in operations, against ``warpsvc serve`` as a subprocess on loopback (the way an
operator runs it): the stream-length limit from the flag and the environment, the access-log line
of a stream, and graceful drain (SIGTERM) with a stream open.

Oracle: frames cut from a photograph through known camera translations, so every registered
``reference_from_frame`` is known (the translation between the crops, to 0.05 px); the access-log
counts are the frames and bytes this test sent and received."""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from interop.harness import ServerProcess, wait_serving
from scipy import ndimage as ndi
from skimage import data
from warpsvc_client import WarpClient

import warpsvc
from warpsvc.core.errors import ResourceExhaustedError
from warpsvc_api import stream as stream_api

PHOTO = ndi.gaussian_filter(data.camera().astype(np.float32), 1.0)
SHAPE = (96, 128)
SHIFTS = [(1.5 * k, 0.75 * k) for k in range(12)]  # (dx, dy) of the camera, frame k


def crop(dx: float, dy: float) -> np.ndarray:
    """The frame of a camera whose top-left corner is at (150 + dx, 150 + dy) of the photograph."""
    return warpsvc.warp(PHOTO, warpsvc.AffineTransform.from_components(translation=(-150 - dx, -150 - dy)), SHAPE)


FRAMES = [crop(dx, dy) for dx, dy in SHIFTS]


def check_registered(result) -> None:
    """reference_from_frame of frame k maps frame pixel p to p + shift_k - shift_0."""
    dx, dy = SHIFTS[result.index]
    assert result.registered, result.to_dict()
    np.testing.assert_allclose(result.matrix[:2, 2], [dx, dy], atol=0.05)
    np.testing.assert_allclose(result.matrix[:2, :2], np.eye(2), atol=2e-3)


def access_lines(server: ServerProcess, method: str = "/warpsvc.v1.WarpService/AlignStream") -> list[dict]:
    lines = []
    for line in list(server.stderr):
        if " warpsvc.access " in line:
            entry = json.loads(line.split(" warpsvc.access ", 1)[1])
            if entry["method"] == method:
                lines.append(entry)
    return lines


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("how", ["flag", "env"])
def test_stream_length_limit_from_the_flag_and_the_environment(how):
    """--max-stream-frames 4 (or WARPSVC_MAX_STREAM_FRAMES=4): the reference's result and 4 frames
    are answered, frame 5 is refused RESOURCE_EXHAUSTED naming ``frame``."""
    args, env = (("--max-stream-frames", "4"), None) if how == "flag" else ((), {"WARPSVC_MAX_STREAM_FRAMES": "4"})
    with ServerProcess(*args, env=env) as server, WarpClient(server.target, retries=1, timeout=60) as client:
        got = []
        with pytest.raises(ResourceExhaustedError) as info:
            for r in client.align_stream(FRAMES[:8], 0):
                got.append(r)  # noqa: PERF402 - the results before the error are kept
        assert [r.index for r in got] == [0, 1, 2, 3, 4]
        for r in got[1:]:
            check_registered(r)
        assert info.value.field == "frame" and "more than 4 frames" in str(info.value)
        line = wait_for(lambda: access_lines(server))[0]
        assert line["status"] == "RESOURCE_EXHAUSTED" and line["results"] == 5
        assert line["frames"] >= 5  # frame 5 was read (and refused); gRPC may have sent more


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("grpc_method") == "AlignStream":
                key = (sample.name, sample.labels.get("grpc_code"), sample.labels.get("kind"))
                out[key] = out.get(key, 0) + sample.value
    return out


def test_a_stream_gets_one_access_log_line():
    """status, frames, results, bytes both ways and decoded pixels equal what the client sent; the
    server's /metrics counts the same stream (bidi_stream type) with the same numbers."""
    metrics_port = _free_port()
    with ServerProcess(env={"WARPSVC_METRICS_PORT": str(metrics_port)}) as server, \
            WarpClient(server.target, retries=1, timeout=60) as client:
        frames = FRAMES[:7]
        results = list(client.align_stream(frames, 0))
        assert len(results) == 7
        for r in results[1:]:
            check_registered(r)
        line = wait_for(lambda: access_lines(server))
        assert len(line) == 1
        line = line[0]
        setup = stream_api.setup_request(frames[0], "homography", reference_index=0)
        sent = _size(setup) + sum(_size(stream_api.frame_request(f)) for f in frames[1:])
        assert line["status"] == "OK" and line["frames"] == 6 and line["results"] == 7
        assert line["in_bytes"] == sent
        assert line["in_px"] == 7 * SHAPE[0] * SHAPE[1]
        assert line["out_bytes"] > 7 * 9 * 8  # 7 responses, each with at least a 3x3 float64 matrix
        assert line["ms"] > 0 and line["peer"].startswith("ipv4:127.0.0.1:")
        m = _scrape(metrics_port)
        assert m[("grpc_server_started_total", None, None)] == 1
        assert m[("grpc_server_handled_total", "OK", None)] == 1
        assert m[("grpc_server_msg_received_total", None, None)] == 7  # setup + 6 frames
        assert m[("grpc_server_msg_sent_total", None, None)] == 7
        assert m[("warpsvc_request_bytes_total", None, None)] == sent
        assert m[("warpsvc_response_bytes_total", None, None)] == line["out_bytes"]
        assert m[("warpsvc_pixels_total", None, "input")] == line["in_px"]
        assert m[("warpsvc_rpcs_in_flight", None, None)] == 0


def _size(message) -> int:
    """Serialized size of a request (a message or the client's pre-serialised ``wire.Parts``)."""
    return message.size if hasattr(message, "size") else len(message.SerializeToString())


class FrameFeed:
    """A frame iterable fed from the test: ``put(frame)`` sends one, ``end()`` half-closes."""

    _END = object()

    def __init__(self):
        self._q: queue.Queue = queue.Queue()

    def put(self, frame) -> None:
        self._q.put(frame)

    def end(self) -> None:
        self._q.put(self._END)

    def __iter__(self):
        while (item := self._q.get(timeout=60)) is not self._END:
            yield item


def _consume(client, feed: FrameFeed, out: list, errors: list, got_one: threading.Semaphore):
    try:
        for r in client.align_stream(feed, 0):
            out.append(r)
            got_one.release()
    except Exception as err:  # noqa: BLE001 - inspected by the test
        errors.append(err)
        got_one.release()


def test_sigterm_lets_an_open_stream_finish_within_the_grace():
    """SIGTERM with a stream open: health turns NOT_SERVING and new streams are refused
    UNAVAILABLE, but the open stream's frames still in flight (sent after the signal) are all
    registered and answered; the stream ends OK when the client half-closes; the server exits 0
    well within the grace."""
    grace = 8.0
    with ServerProcess("--grace-seconds", str(grace)) as server, \
            WarpClient(server.target, retries=1, timeout=60) as client:
        feed, out, errors, got_one = FrameFeed(), [], [], threading.Semaphore(0)
        for frame in FRAMES[:3]:
            feed.put(frame)
        consumer = threading.Thread(target=_consume, args=(client, feed, out, errors, got_one), daemon=True)
        consumer.start()
        for _ in range(3):
            assert got_one.acquire(timeout=30)
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        wait_for(lambda: any("draining" in line for line in server.stderr))
        with WarpClient(server.target, retries=0, timeout=10) as other:  # a new stream: refused
            with pytest.raises(grpc.RpcError) as info:
                list(other.align_stream(FRAMES[:2], 0))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
        for frame in FRAMES[3:10]:  # in flight after the signal
            feed.put(frame)
        feed.end()
        consumer.join(30)
        assert not errors, errors
        assert [r.index for r in out] == list(range(10))
        for r in out[1:]:
            check_registered(r)
        assert server.wait(grace) == 0
        assert time.monotonic() - t0 < grace
        lines = access_lines(server)
        assert [(x["status"], x["frames"], x["results"]) for x in lines if x["status"] == "OK"] == [("OK", 9, 10)]


def test_a_stream_still_open_at_the_end_of_the_grace_is_cancelled_with_a_clear_status():
    """The client keeps its stream open and idle past the grace: the server ends it UNAVAILABLE
    with a message naming the drain grace and the frames registered, then exits 0 on time."""
    grace = 2.0
    with ServerProcess("--grace-seconds", str(grace)) as server, \
            WarpClient(server.target, retries=1, timeout=60) as client:
        wait_serving(server.target)
        feed, out, errors, got_one = FrameFeed(), [], [], threading.Semaphore(0)
        for frame in FRAMES[:4]:
            feed.put(frame)
        consumer = threading.Thread(target=_consume, args=(client, feed, out, errors, got_one), daemon=True)
        consumer.start()
        for _ in range(4):
            assert got_one.acquire(timeout=30)
        t0 = time.monotonic()
        server.signal(signal.SIGTERM)
        assert got_one.acquire(timeout=grace + 5)  # the error, near the end of the grace
        elapsed = time.monotonic() - t0
        assert len(errors) == 1, (errors, out)
        err = errors[0]
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "drain grace" in err.details() and "after 3 frames" in err.details(), err.details()
        assert grace * 0.8 <= elapsed <= grace + 1.0, elapsed
        assert [r.index for r in out] == [0, 1, 2, 3]
        assert server.wait(10) == 0
        assert time.monotonic() - t0 < grace + 1.5
        feed.end()
        consumer.join(10)
        line = wait_for(lambda: access_lines(server))[0]
        assert line["status"] == "UNAVAILABLE" and line["frames"] == 3 and line["results"] == 4
