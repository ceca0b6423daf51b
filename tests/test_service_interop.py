"""A non-Python client calls the server: Node (@grpc/grpc-js + @grpc/proto-loader) and buf curl
through server reflection. scripts/test.sh runs `npm ci` so these run in CI."""

from __future__ import annotations

import base64
import json
import subprocess

import numpy as np
import pytest
from interop.harness import REPO, ServerProcess, buf_binary, node_ready, wait_serving

import warpsvc
from warpsvc import AffineTransform, PolarTransform


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0") as srv:
        wait_serving(srv.target)
        yield srv


def _array(tensor: dict, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(tensor["data"]), dtype=dtype).reshape([int(s) for s in tensor["shape"]])


@pytest.mark.skipif(node_ready() is not None, reason=str(node_ready()))
def test_node_grpc_js_client(server):
    img = (np.arange(30 * 40 * 3) * 7 % 256).astype(np.uint8).reshape(30, 40, 3)
    matrix = [0.9, 0.1, 3.0, -0.1, 0.95, 2.0]
    request = {"image": {"shape": list(img.shape), "data": base64.b64encode(img.tobytes()).decode()},
               "matrix": matrix}
    proc = subprocess.run(["node", "tests/interop/node_client.js", server.target], cwd=REPO, input=json.dumps(request),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["warp"]["dtype"] == "DTYPE_UINT8"
    expected = warpsvc.warp(img, AffineTransform(np.reshape(matrix, (2, 3))))
    np.testing.assert_array_equal(_array(out["warp"], np.uint8), expected)
    polar = PolarTransform((20, 15), 14.0, (36, 20))
    np.testing.assert_array_equal(_array(out["determinant"], "<f4"),
                                  warpsvc.jacobian_determinant(polar, (36, 20), dtype=np.float32))
    assert out["error"]["code"] == 3 and out["error"]["details"].startswith("image.tensor.data:")


def _buf_curl(target: str, method: str, body: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(buf_binary()), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--data", json.dumps(body),
         f"http://{target}/{method}"], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(buf_binary() is None, reason="node_modules/.bin/buf missing (npm ci)")
def test_buf_curl_through_reflection(server):
    health = _buf_curl(server.target, "grpc.health.v1.Health/Check", {})
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"
    body = {"transforms": [{"homography": {"matrix": [1, 0.1, 2, 0, 1, 3, 0.001, 0, 1]}}],
            "outputShape": {"height": 6, "width": 8}}
    res = _buf_curl(server.target, "warpsvc.v1.WarpService/JacobianDeterminant", body)
    assert res.returncode == 0, res.stderr
    det = json.loads(res.stdout)["determinant"]
    assert det["dtype"] == "DTYPE_FLOAT64" and det["shape"] == ["6", "8"]
    t = warpsvc.HomographyTransform(np.reshape(body["transforms"][0]["homography"]["matrix"], (3, 3)))
    np.testing.assert_array_equal(_array(det, "<f8"), warpsvc.jacobian_determinant(t, (6, 8)))
    bad = _buf_curl(server.target, "warpsvc.v1.WarpService/JacobianDeterminant", {"transforms": []})
    assert bad.returncode != 0 and "invalid_argument" in bad.stderr.lower() and "transforms" in bad.stderr
