"""The Align RPC: equal to ``warpsvc.align`` in-process, deadlines stop the iterations, bad
requests name their field."""

from __future__ import annotations

import time

import cv2
import grpc
import numpy as np
import pytest
from interop.harness import inprocess_server
from warpsvc_client import WarpClient

import warpsvc
from warpsvc_api import convert
from warpsvc_api.v1 import warp_pb2 as pb
from warpsvc_api.v1 import warp_pb2_grpc


def scene(seed: int, shape=(120, 160)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random(shape), (0, 0), 3.0)
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.float32)


IMAGE = scene(21)
TEMPLATE = np.ascontiguousarray(IMAGE[20:100, 30:130])
INIT = np.array([[1.0, 0.0, -28.0], [0.0, 1.0, -18.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def server():
    with inprocess_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with WarpClient(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c


def _same(remote, local):
    np.testing.assert_array_equal(remote.matrix, local.matrix)
    np.testing.assert_array_equal(remote.inverse, local.inverse)
    assert (remote.converged, remote.reason, remote.iterations) == (local.converged, local.reason, local.iterations)
    assert remote.rms_error == local.rms_error and remote.zncc == local.zncc
    assert remote.cost_history == tuple(tuple(float(c) for c in lv) for lv in local.cost_history)
    assert (remote.model, remote.levels, remote.overlap) == (local.model, local.levels, local.overlap)
    for name in ("covariance", "corner_covariance", "chart"):
        a, b = getattr(remote, name), getattr(local, name)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model", ["translation", "euclidean", "similarity", "affine", "homography"])
def test_align_equals_library(client, model):
    remote = client.align(TEMPLATE, IMAGE, model, init=INIT)
    local = warpsvc.align(TEMPLATE, IMAGE, model, init=INIT)
    assert isinstance(remote, type(local))
    _same(remote, local)
    assert remote.converged
    np.testing.assert_allclose(remote.matrix[:2, 2], [-30.0, -20.0], atol=0.01)


def test_align_options_and_encoded_inputs(client):
    tmpl8 = np.clip(TEMPLATE, 0, 255).astype(np.uint8)
    img8 = np.clip(IMAGE, 0, 255).astype(np.uint8)
    mask = np.ones(TEMPLATE.shape, bool)
    mask[:10] = False
    kwargs = dict(init=INIT, levels=2, template_mask=mask, robust="huber", photometric="gain_bias",
                  max_iterations=30, tolerance=1e-3)
    remote = client.align(cv2.imencode(".png", tmpl8)[1].tobytes(), cv2.imencode(".png", img8)[1].tobytes(),
                          "affine", **kwargs)
    local = warpsvc.align(tmpl8, img8, "affine", **{**kwargs, "template_mask": mask.astype(np.uint8)})
    _same(remote, local)
    assert len(remote.gain) == 1 and remote.levels == 2


def _rotated_pair(angle_deg=150.0, side=160):
    """A ``side`` square template sampled from a photograph (skimage astronaut, grey) through a
    known similarity (rotation ``angle_deg``, scale 1.1): (template, image, image_from_template)."""
    from skimage import data

    photo = cv2.cvtColor(cv2.resize(data.astronaut(), (480, 360), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_RGB2GRAY).astype(np.float32)
    c = (side - 1) / 2.0
    t = np.deg2rad(angle_deg)
    R = 1.1 * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    W = np.eye(3)
    W[:2, :2], W[:2, 2] = R, np.array([240.0, 180.0]) - R @ [c, c]
    tmpl = cv2.warpPerspective(photo, W, (side, side), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return tmpl, photo, W


@pytest.mark.parametrize("search", ["local", "global", "auto"])
def test_search_equals_library_on_a_large_rotation(client, search):
    """``search`` travels: the remote result equals the in-process one field for field, its
    ``start`` included; the global (and auto) search recovers a 150-degree rotation, the local
    one, from the identity, does not."""
    tmpl, photo, W = _rotated_pair()
    remote = client.align(tmpl, photo, "similarity", search=search)
    local = warpsvc.align(tmpl, photo, "similarity", search=search)
    _same(remote, local)
    assert remote.start == local.start
    if search == "local":
        assert remote.start == "identity" and not remote.converged
    else:
        assert remote.start == "features" and remote.converged
        corners = np.array([[0, 0, 1], [159, 0, 1], [159, 159, 1], [0, 159, 1]], np.float64)
        got, truth = corners @ remote.inverse.T, corners @ W.T  # image_from_template
        assert np.abs(got[:, :2] / got[:, 2:] - truth[:, :2] / truth[:, 2:]).max() < 0.05
    with pytest.raises(warpsvc.InvalidArgumentError) as info:
        client.align(tmpl, photo, "similarity", init=np.eye(3), search="global")
    assert info.value.field == "search"


def test_max_corner_error_travels(client):
    """``max_corner_error`` reaches the library: a bound below any achievable corner error makes
    a good alignment ``uncertain``, ``inf`` turns the check off, the default (field 0) is the
    library's 1 px; each equals the in-process call field for field."""
    default = client.align(TEMPLATE, IMAGE, "homography", init=INIT)
    assert default.converged and default.reason == "converged"
    _same(default, warpsvc.align(TEMPLATE, IMAGE, "homography", init=INIT))
    strict = client.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=1e-12)
    assert not strict.converged and strict.reason == "uncertain"
    _same(strict, warpsvc.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=1e-12))
    off = client.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=float("inf"))
    _same(off, warpsvc.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=None))
    _same(client.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=None), off)
    assert off.converged
    with pytest.raises(warpsvc.InvalidArgumentError) as info:  # the library refuses 0; so does the client
        client.align(TEMPLATE, IMAGE, "homography", init=INIT, max_corner_error=0.0)
    assert info.value.field == "max_corner_error"
    np.testing.assert_array_equal(off.matrix, strict.matrix)  # the check changes the status only


def test_min_zncc_travels(client):
    """``min_zncc`` reaches the library in both directions, and its absence is the library's
    0.97: a template blurred by sigma 1.5 px (noise-corrected ZNCC ~0.994 at the right warp) is
    ``converged`` by default and ``low_correlation`` at 0.999; blurred by 3 px (~0.946) it is
    ``low_correlation`` by default and ``converged`` at 0.9 and at 0 (0 is a threshold, not
    "default": the field has presence). Each equals the in-process call field for field."""
    import cv2

    soft, blurred = (cv2.GaussianBlur(TEMPLATE, (0, 0), s) for s in (1.5, 3.0))
    default = client.align(soft, IMAGE, "homography", init=INIT)
    assert default.converged
    _same(default, warpsvc.align(soft, IMAGE, "homography", init=INIT))
    strict = client.align(soft, IMAGE, "homography", init=INIT, min_zncc=0.999)
    assert not strict.converged and strict.reason == "low_correlation"
    _same(strict, warpsvc.align(soft, IMAGE, "homography", init=INIT, min_zncc=0.999))
    assert client.align(blurred, IMAGE, "homography", init=INIT).reason == "low_correlation"
    for lenient in (0.9, 0.0):
        remote = client.align(blurred, IMAGE, "homography", init=INIT, min_zncc=lenient)
        assert remote.converged, lenient
        _same(remote, warpsvc.align(blurred, IMAGE, "homography", init=INIT, min_zncc=lenient))


def test_denoise_travels(client):
    """``denoise`` reaches the library: on a noise-dominated template (a bar on flat ground, noise
    8) the server's result equals the in-process one with the same option, and the two options
    give different results (so the field is not dropped on the way)."""
    rng = np.random.default_rng(5)
    image = np.full((160, 200), 60.0, np.float32)
    image[:, 70:86] = 190.0  # a vertical bar ...
    image[40:44, 70:86] = 120.0  # ... with two rungs
    image[110:113, 70:86] = 120.0
    noisy = image + rng.normal(0, 8, image.shape).astype(np.float32)
    template = np.ascontiguousarray(noisy[30:130, 50:150] + rng.normal(0, 8, (100, 100)).astype(np.float32))
    init = np.array([[1.0, 0.0, -49.0], [0.0, 1.0, -31.0], [0.0, 0.0, 1.0]])
    results = {}
    for denoise in ("auto", None):
        remote = client.align(template, noisy, "homography", init=init, denoise=denoise)
        _same(remote, warpsvc.align(template, noisy, "homography", init, denoise=denoise))
        results[denoise] = remote
    assert not np.array_equal(results["auto"].matrix, results[None].matrix)
    _same(client.align(template, noisy, "homography", init=init), results["auto"])  # the default


def test_deadline_reaches_the_alignment_as_should_stop(monkeypatch):
    """The servicer hands the library a ``should_stop`` built from the call's deadline: a slow
    alignment ends soon after the deadline and frees its handler thread."""
    real = warpsvc.align
    polls = []

    def slow_align(template, image, *args, should_stop=None, **kwargs):
        t0 = time.perf_counter()
        while not should_stop():  # what the Gauss-Newton loop does between iterations
            polls.append(time.perf_counter() - t0)
            assert polls[-1] < 10, "should_stop never turned true"
            time.sleep(0.01)
        return real(template, image, *args, max_iterations=1, **kwargs)

    monkeypatch.setattr(warpsvc, "align", slow_align)
    with inprocess_server(threads=1) as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as info:
            client.align(TEMPLATE, IMAGE, "affine", init=INIT, timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The only handler thread is free again right after: the alignment stopped.
        out = client.warp(TEMPLATE, warpsvc.AffineTransform.identity(), timeout=5)
        assert out.shape == TEMPLATE.shape
        assert time.perf_counter() - t0 < 3
    assert 0.15 < polls[-1] < 1.0


def _tensor(arr) -> pb.Image:
    return convert.image_message(arr)


BAD = [
    ("no-template", dict(template=None), "template"),
    ("no-image", dict(image=None), "image"),
    ("model-unknown", dict(model=42), "model"),
    ("robust-unknown", dict(robust=9), "robust"),
    ("photometric-unknown", dict(photometric=9), "photometric"),
    ("search-unknown", dict(search=9), "search"),
    ("denoise-unknown", dict(denoise=9), "denoise"),
    ("init-7-values", dict(init=[1.0] * 7), "init"),
    ("init-singular", dict(init=[0.0] * 9), "init"),
    ("levels-negative", dict(levels=-1), "levels"),
    ("iterations-negative", dict(max_iterations=-5), "max_iterations"),
    ("tolerance-negative", dict(tolerance=-1.0), "tolerance"),
    ("budget-nan", dict(time_budget_seconds=float("nan")), "time_budget_seconds"),
    ("corner-negative", dict(max_corner_error=-1.0), "max_corner_error"),
    ("corner-nan", dict(max_corner_error=float("nan")), "max_corner_error"),
    ("zncc-above-1", dict(min_zncc=1.5), "min_zncc"),
    ("zncc-nan", dict(min_zncc=float("nan")), "min_zncc"),
    ("channels-differ", dict(image=_tensor(np.dstack([IMAGE, IMAGE]))), "image"),
    ("mask-shape", dict(template_mask=_tensor(np.ones((5, 5), np.uint8))), "template_mask"),
]


@pytest.mark.parametrize("fields,field", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_align_bad_request(server, fields, field):
    request = pb.AlignRequest(**{"template": _tensor(TEMPLATE), "image": _tensor(IMAGE), **fields})
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as info:
        warp_pb2_grpc.WarpServiceStub(channel).Align(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert info.value.details().startswith(field + ":"), info.value.details()
