"""RGBA files in sequences: a file's alpha is where its colour is defined, so AlignStream and
``warpsvc-batch stack`` register the colour with the transparent pixels missing.

Oracle: frames cut from a photograph (skimage astronaut) through known camera positions, so
``reference_from_frame`` is known exactly. Each frame's left ~30 % is transparent (alpha 0) and
holds random colour there, different in every frame (what a rendered or rectified frame's
border may hold). Aligned on as a fourth intensity, that colour makes the frames unregistrable
(checked below, so the cases can fail: some frames unregistered, others registered 2-5 px
off); masked, every frame is within 0.1 px."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from interop.harness import inprocess_server
from skimage import data
from test_batch_helpers import run_batch
from warpsvc_client import WarpClient

from warpsvc.core.sequence import align_sequence
from warpsvc_api.alpha_warp import alpha_as_nan

H, W, N = 240, 300, 8
TOL_PX = 0.1
PHOTO = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _camera(k: int, rng) -> np.ndarray:
    """photo_from_frame of frame ``k``: drifting and rolling."""
    a = np.deg2rad(0.7 * k)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 80 + 3.0 * k + rng.uniform(-1, 1)], [s, c, 60 + 2.0 * k + rng.uniform(-1, 1)],
                     [0, 0, 1.0]])


def _make():
    rng = np.random.default_rng(7)
    cams, rgba, clean = [], [], []
    for k in range(N):
        cam = _camera(k, rng)
        bgr = cv2.warpPerspective(PHOTO, np.linalg.inv(cam), (W, H), flags=cv2.INTER_LINEAR)
        clean.append(bgr.copy())
        x0 = int(W * 0.3) + int(rng.integers(-15, 15))
        alpha = np.full((H, W), 255, np.uint8)
        alpha[:, :x0] = 0
        bgr[:, :x0] = rng.integers(0, 256, (H, x0, 3))
        cams.append(cam)
        rgba.append(np.dstack([bgr, alpha]))
    return cams, rgba, clean


CAMS, RGBA, CLEAN = _make()


def _png(img) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _corner_error(ref_from_frame, k: int) -> float:
    truth = np.linalg.inv(CAMS[0]) @ CAMS[k]
    corners = np.array([[0, 0], [W, 0], [W, H], [0, H]], float)

    def mapped(m):
        p = np.c_[corners, np.ones(4)] @ np.asarray(m, np.float64).T
        return p[:, :2] / p[:, 2:]

    return float(np.sqrt(np.mean((mapped(ref_from_frame) - mapped(truth)) ** 2)))


def _errors(results) -> list[float]:
    return [_corner_error(r.matrix, k) if r.registered else float("inf") for k, r in enumerate(results)]


def test_alpha_as_nan_masks_transparent_pixels_and_leaves_the_input():
    px = RGBA[1]
    before = px.copy()
    out = alpha_as_nan(px, True)
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    seen = px[:, :, 3] > 0
    assert np.isnan(out[~seen]).all() and not np.isnan(out[seen]).any()
    np.testing.assert_array_equal(out[seen], px[:, :, :3][seen].astype(np.float32))
    np.testing.assert_array_equal(px, before)
    assert alpha_as_nan(px, False) is px                      # no alpha in the header: as given
    grey = np.dstack([CLEAN[0][:, :, 0]] * 3 + [px[:, :, 3]])  # grey + alpha as OpenCV decodes it
    assert alpha_as_nan(grey, True, like=CLEAN[0][:, :, 0]).shape == (H, W)


def test_the_case_needs_the_mask():
    raw = list(align_sequence(RGBA, "homography"))
    # the transparent colour misleads: frames unregistered, or registered pixels off
    assert sum(e < TOL_PX for e in _errors(raw)[1:]) <= N // 2, _errors(raw)
    masked = list(align_sequence([alpha_as_nan(f, True) for f in RGBA], "homography"))
    assert max(_errors(masked)) < TOL_PX, _errors(masked)


@pytest.fixture(scope="module")
def client():
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}", timeout=120, retries=1) as c:
        yield c


def test_align_stream_registers_rgba_files_on_their_colour(client):
    results = list(client.align_stream([_png(f) for f in RGBA], 0, "homography"))
    assert len(results) == N and results[0].method == "reference"
    assert max(_errors(results)) < TOL_PX, _errors(results)


def test_align_stream_rgba_frames_against_an_rgb_reference(client):
    results = list(client.align_stream([_png(f) for f in RGBA], _png(CLEAN[0]), "homography"))
    assert len(results) == N
    assert max(_errors(results)) < TOL_PX, _errors(results)


def test_align_stream_tensors_keep_every_channel(client):
    """Pixels are not files: a 4-channel tensor is four intensities, as in the library."""
    remote = list(client.align_stream(RGBA, 0, "homography"))
    local = list(align_sequence(RGBA, "homography"))
    assert [r.registered for r in remote] == [r.registered for r in local]


@pytest.mark.parametrize("where, reference", [("local", None), ("server", None), ("local", "f03.png"),
                                              ("server", "f03.png")])
def test_batch_stack_registers_an_rgba_folder(tmp_path, where, reference):
    """A middle frame as the reference goes to a server as an image: its alpha is a mask too."""
    src = tmp_path / "in"
    src.mkdir()
    for k, f in enumerate(RGBA):
        (src / f"f{k:02d}.png").write_bytes(_png(f))
    out = tmp_path / "out"
    extra = [] if reference is None else ["--reference", reference]
    if where == "server":
        srv_ctx = inprocess_server()
        srv = srv_ctx.__enter__()
        extra += ["--target", f"127.0.0.1:{srv.port}"]
    try:
        res = run_batch("stack", src, out, "--no-report", *extra)
    finally:
        if where == "server":
            srv_ctx.__exit__(None, None, None)
    assert res.returncode == 0, res.stderr + res.stdout
    rows = json.loads((out / "trajectory.json").read_text())["frames"]
    assert len(rows) == N and all(r["registered"] for r in rows), [r["method"] for r in rows]
    ref = 0 if reference is None else 3
    frame0_from_ref = np.linalg.inv(CAMS[0]) @ CAMS[ref]  # rows hold ref_from_frame; the oracle is frame 0's
    errors = [_corner_error(frame0_from_ref @ np.asarray(r["matrix"]), k) for k, r in enumerate(rows)]
    assert max(errors) < TOL_PX, errors
