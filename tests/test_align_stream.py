"""The AlignStream RPC against a real server on loopback: results equal ``align_sequence``
in-process, errors mid-stream name the frame, the deadline and the stream-length limit hold.

Oracle: frames cut from a photograph (skimage camera, blurred) through known camera positions,
so ``reference_from_frame`` is known exactly; the in-process ``align_sequence`` on the same frames
and options is the equality oracle (alignment is deterministic)."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import cv2
import grpc
import numpy as np
import pytest
from interop.harness import REPO, inprocess_server, node_ready
from scipy import ndimage as ndi
from skimage import data
from warpsvc_client import WarpClient

import warpsvc
from warpsvc.core.errors import ResourceExhaustedError
from warpsvc.core.sequence import SequenceOptions, align_sequence

PHOTO = ndi.gaussian_filter(data.camera().astype(np.float32), 1.0)
SHAPE = (96, 128)


def camera_at(dx, dy, angle=0.0):
    """photo_from_frame of a camera looking at (150 + dx, 150 + dy), rolled by ``angle`` rad."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 150 + dx], [s, c, 150 + dy], [0, 0, 1.0]])


PATH = [camera_at(1.7 * k, 0.6 * k, 0.004 * k) for k in range(10)]


def frames():
    return [warpsvc.warp(PHOTO, warpsvc.HomographyTransform(m).inverse(), SHAPE, antialias=True) for m in PATH]


FRAMES = frames()


@pytest.fixture(scope="module")
def server():
    with inprocess_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with WarpClient(f"127.0.0.1:{server.port}", timeout=60, retries=1) as c:
        yield c


def _same(remote, local):
    assert (remote.index, remote.method, remote.reason, remote.registered, remote.hops) == \
        (local.index, local.method, local.reason, local.registered, local.hops)
    assert (remote.anchor, remote.previous, remote.alignments) == (local.anchor, local.previous, local.alignments)
    np.testing.assert_array_equal(remote.matrix, local.matrix)
    np.testing.assert_array_equal(remote.inverse, local.inverse)
    assert (remote.step is None) == (local.step is None)
    if remote.step is not None:
        np.testing.assert_array_equal(remote.step, local.step)
    np.testing.assert_array_equal(remote.covariance, local.covariance)
    np.testing.assert_array_equal(remote.zncc, local.zncc)
    assert remote.reference_shape == local.reference_shape
    assert remote.to_dict().keys() == local.to_dict().keys()
    remote_sd, local_sd = remote.to_dict()["corner_sd"], local.to_dict()["corner_sd"]
    if local_sd is None:  # no covariance (an unregistered frame)
        assert remote_sd is None
    else:
        assert remote_sd == pytest.approx(local_sd, rel=1e-12, abs=0)


@pytest.mark.parametrize("model,options", [
    ("homography", {}), ("affine", {"motion_prior": "constant_velocity", "max_keyframes": 0, "levels": 2})])
def test_stream_equals_align_sequence(client, model, options):
    remote = list(client.align_stream(iter(FRAMES), 0, model, **options))
    seq = {k: v for k, v in options.items() if k in ("motion_prior", "max_keyframes")}
    align = {k: v for k, v in options.items() if k == "levels"}
    opts = SequenceOptions(**seq, align=SequenceOptions().align_options(model).replace(**align) if align else None)
    local = list(align_sequence(FRAMES, model, options=opts))
    assert len(remote) == len(local) == len(FRAMES)
    for r, loc in zip(remote, local):
        _same(r, loc)
    truth = np.linalg.inv(PATH[0]) @ PATH[-1]  # reference_from_frame of the last frame
    assert np.abs(remote[-1].matrix - truth).max() < 0.05
    assert remote[0].method == "reference" and all(r.registered for r in remote)


def test_stream_against_an_image_reference_and_encoded_frames(client):
    """An image reference (frames numbered from 0), frames sent as PNG files."""
    ref = FRAMES[3]
    png = [cv2.imencode(".png", np.clip(f, 0, 255).astype(np.uint8))[1].tobytes() for f in FRAMES[:5]]
    remote = list(client.align_stream(png, ref, "homography"))
    decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_UNCHANGED) for p in png]
    local = list(align_sequence(decoded, "homography", reference=ref))
    assert [r.index for r in remote] == [0, 1, 2, 3, 4]
    for r, loc in zip(remote, local):
        _same(r, loc)


def test_bad_frame_mid_stream_names_it(client):
    """Results before the bad frame arrive; then INVALID_ARGUMENT naming frame[i].image."""
    bad = np.dstack([FRAMES[3], FRAMES[3]])  # 2 channels, the reference has 1
    got = []
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        for r in client.align_stream([*FRAMES[:3], bad, FRAMES[4]], 0):
            got.append(r.index)
    assert got == [0, 1, 2]
    assert info.value.field == "frame[3].image" and "channels" in str(info.value)
    truncated = np.zeros(SHAPE, np.uint8).tobytes()[:-1]
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        list(client.align_stream([FRAMES[0], FRAMES[1], truncated], 0))
    assert info.value.field == "frame[2].image.encoded.data", info.value


def test_bad_setup_names_the_option(client):
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        list(client.align_stream(FRAMES[:2], 0, trust_overlap=1.5))
    assert info.value.field == "setup.options.trust_overlap"
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        list(client.align_stream(FRAMES[:2], 0, motion_prior="wobbly"))
    assert info.value.field == "motion_prior"  # refused by the client before sending


@pytest.mark.parametrize("blur, min_zncc, registered", [
    (2.0, None, True), (2.0, 0.99, False),  # noise-corrected ZNCC ~0.986: over the default, under 0.99
    (3.0, None, False), (3.0, 0.5, True),  # ~0.966: under the default 0.97, over 0.5
])
def test_min_zncc_travels(client, blur, min_zncc, registered):
    """``min_zncc`` reaches every pairwise alignment of the stream: frames blurred against a
    sharp reference pass or fail the correlation check by the threshold sent; each result equals
    ``align_sequence`` in-process with the same ``AlignOptions``, and registered frames match the
    known camera path."""
    frames = [FRAMES[0]] + [ndi.gaussian_filter(f, blur) for f in FRAMES[1:5]]
    options = {} if min_zncc is None else {"min_zncc": min_zncc}
    remote = list(client.align_stream(iter(frames), 0, "homography", **options))
    align = SequenceOptions().align_options("homography").replace(**options) if options else None
    local = list(align_sequence(frames, "homography", options=SequenceOptions(align=align)))
    assert len(remote) == len(local) == len(frames)
    for r, loc in zip(remote, local):
        _same(r, loc)
    assert all(r.registered == registered for r in remote[1:])
    if registered:
        truth = np.linalg.inv(PATH[0]) @ PATH[4]
        assert np.abs(remote[-1].matrix - truth).max() < 0.5
    else:
        assert {r.reason for r in remote[1:]} == {"low_correlation"}


@pytest.mark.parametrize("value", [1.5, float("nan")])
def test_bad_min_zncc_names_the_option(client, value):
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        list(client.align_stream(FRAMES[:2], 0, min_zncc=value))
    assert info.value.field == "setup.options.min_zncc", info.value


def test_frame_over_the_pixel_limit():
    with inprocess_server(max_input_pixels=SHAPE[0] * SHAPE[1]) as srv, \
            WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        big = cv2.resize(FRAMES[1], (SHAPE[1] + 1, SHAPE[0]))
        with pytest.raises(ResourceExhaustedError) as info:
            list(client.align_stream([FRAMES[0], big], 0))
        assert info.value.field == "frame[1].image"


def test_stream_length_limit():
    with inprocess_server(max_stream_frames=3) as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        got = []
        with pytest.raises(ResourceExhaustedError) as info:
            for r in client.align_stream(FRAMES[:6], 0):
                got.append(r.index)
        assert got == [0, 1, 2, 3] and info.value.field == "frame"  # reference + 3 frames
        assert "max_stream_frames" in str(info.value)


def test_deadline_stops_the_stream_and_frees_the_thread(monkeypatch):
    """A stream longer than its deadline ends DEADLINE_EXCEEDED soon after it, with the frames
    registered so far delivered; the single handler thread is free again at once."""
    with inprocess_server(threads=1) as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        endless = (FRAMES[1 + k % 9] for k in range(100_000))
        got = []
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            got.extend(client.align_stream(endless, FRAMES[0], timeout=1.0))
        elapsed = time.perf_counter() - t0
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 2.5 and len(got) >= 1 and all(r.registered for r in got)
        out = client.warp(FRAMES[0], warpsvc.AffineTransform.identity(), timeout=5)
        assert out.shape == SHAPE
        assert time.perf_counter() - t0 < 4


def test_client_refuses_a_late_index_reference(client):
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        list(client.align_stream(FRAMES, 2))
    assert info.value.field == "reference"


@pytest.mark.skipif(node_ready() is not None, reason=str(node_ready()))
@pytest.mark.parametrize("bad", [False, True])
def test_node_bidi_stream(server, bad):
    """@grpc/grpc-js drives AlignStream (tests/interop/node_client.js): the same matrices as the
    Python client; a bad last frame ends the stream INVALID_ARGUMENT after the good results."""
    frames8 = [np.clip(f, 0, 255).astype(np.uint8) for f in FRAMES[:5]]
    spec = {"frames": [{"shape": list(f.shape), "data": base64.b64encode(f.tobytes()).decode()} for f in frames8],
            "bad": bad}
    proc = subprocess.run(["node", "tests/interop/node_client.js", f"127.0.0.1:{server.port}"], cwd=REPO,
                          input=json.dumps({"stream": spec}), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    local = list(align_sequence(frames8, "homography"))
    assert [r["index"] for r in out["stream"]] == [r.index for r in local]
    for r, loc in zip(out["stream"], local):
        assert r["method"] == loc.method and r["registered"] == loc.registered
        np.testing.assert_array_equal(np.reshape(r["matrix"], (3, 3)), loc.matrix)
    if bad:
        assert out["error"]["code"] == 3 and out["error"]["details"].startswith("frame[5].image.tensor.data:")
    else:
        assert "error" not in out


@pytest.mark.parametrize("how", ["deadline", "cancel"])
def test_a_stream_the_client_ends_while_idle_is_logged_with_its_real_status(how, caplog):
    """A client that sends the setup and a frame, then neither sends nor half-closes, and ends
    the call by its deadline or by cancelling it: the server's access log (and metrics) said OK,
    or INTERNAL with a traceback when the request iterator raised (found by a hostile-client
    test). Now DEADLINE_EXCEEDED / CANCELLED."""
    import logging
    import threading

    release = threading.Event()

    def frames():
        yield FRAMES[1]
        release.wait(10)  # idle: no frame, no half-close

    caplog.set_level(logging.INFO, logger="warpsvc.access")
    with inprocess_server(threads=2) as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        if how == "deadline":
            with pytest.raises(grpc.RpcError) as info:
                list(client.align_stream(frames(), FRAMES[0], timeout=1.0))
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            it = client.align_stream(frames(), FRAMES[0], timeout=30)
            assert next(it).registered  # frame 1's result: the stream is set up, now idle
            time.sleep(0.3)
            it.close()  # the client generator's finally cancels the call
        release.set()
        deadline = time.monotonic() + 5
        lines = []
        while time.monotonic() < deadline and not lines:
            lines = [json.loads(r.getMessage()) for r in caplog.records
                     if r.name == "warpsvc.access" and "AlignStream" in r.getMessage()]
            time.sleep(0.05)
    assert lines, "no access-log line for the stream"
    assert lines[-1]["status"] == ("DEADLINE_EXCEEDED" if how == "deadline" else "CANCELLED"), lines[-1]
