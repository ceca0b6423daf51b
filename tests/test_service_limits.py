"""Limits the servicer checks before the library allocates anything (issue 13, server side).

Oracle: the library's ``warp`` is replaced by a recorder, so "refused before any work" is a fact
(the recorder never ran), not a timing.
"""

from __future__ import annotations

import numpy as np
import pytest
from warpsvc_client import WarpClient

import warpsvc
from warpsvc import AffineTransform
from warpsvc.server import Settings, build_server


@pytest.fixture
def server():
    srv = build_server(Settings(port=0, metrics_port=0))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(0).wait()


@pytest.mark.parametrize("form", ["png", "jpeg", "tiff"])
def test_many_channels_with_an_encoded_form_refused_before_warping(server, monkeypatch, form):
    """A tiny tensor with 512 channels, a 4096x4096 grid and an encoded response form: the
    result (8 GiB of uint8) could never be encoded, so it is refused before it is computed."""
    calls = []
    monkeypatch.setattr(warpsvc, "warp", lambda *a, **k: calls.append(a))
    tiny = np.zeros((1, 1, 512), np.uint8)
    with WarpClient(f"127.0.0.1:{server.port}", retries=1, timeout=10) as client, \
            pytest.raises(warpsvc.InvalidArgumentError) as info:
        client.warp(tiny, AffineTransform.identity(), (4096, 4096), response_form=form)
    assert info.value.field == "response_form" and "512 channels" in str(info.value)
    assert calls == []


def test_encodable_results_still_encode(server):
    img = (np.arange(20 * 30 * 3) % 251).astype(np.uint8).reshape(20, 30, 3)
    with WarpClient(f"127.0.0.1:{server.port}", retries=1, timeout=10) as client:
        png = client.warp(img, AffineTransform.identity(), response_form="png")
    import cv2

    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), img)


def test_float_result_with_png_refused_before_warping(server, monkeypatch):
    calls = []
    monkeypatch.setattr(warpsvc, "warp", lambda *a, **k: calls.append(a))
    img = np.zeros((8, 8), np.float32)
    with WarpClient(f"127.0.0.1:{server.port}", retries=1, timeout=10) as client, \
            pytest.raises(warpsvc.InvalidArgumentError) as info:
        client.warp(img, AffineTransform.identity(), response_form="png")
    assert info.value.field == "response_form" and calls == []
