"""The client distribution in a fresh virtual environment: ``warpsvc[client]`` installs without
OpenCV or numba, ``import warpsvc_client`` loads neither, and the client still talks to a real
server (started from the main environment, on loopback).

The venv is built once per run in a temp dir from a wheel of this tree (``pip wheel`` of a copy,
so the work tree gets no ``build/``); dependencies come through the machine's pip configuration
and its cache, so the module costs ~20-40 s (marked ``venv``: ``-m 'not venv'`` deselects it;
``WARPSVC_SKIP_VENV_TEST=1`` skips it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from interop.harness import REPO, ServerProcess

import warpsvc
from warpsvc import AffineTransform, PolarTransform, compose

pytestmark = [pytest.mark.venv,
              pytest.mark.skipif(os.environ.get("WARPSVC_SKIP_VENV_TEST") == "1", reason="WARPSVC_SKIP_VENV_TEST=1")]
SOURCES = ("pyproject.toml", "README.md", "warpsvc", "warpsvc_api", "clients")
IMG = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
SHIFT = AffineTransform.from_components(rotation=0.1, translation=(3.0, -2.0))
POLAR = compose(SHIFT, PolarTransform((32.0, 24.0), 20.0, (60, 30)))

CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import warpsvc_client
    loaded_at_import = sorted(m for m in ("cv2", "numba", "warpsvc.core.warp", "warpsvc.server") if m in sys.modules)
    from warpsvc import AffineTransform, PolarTransform, compose
    from warpsvc_client import WarpClient
    img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    shift = AffineTransform.from_components(rotation=0.1, translation=(3.0, -2.0))
    polar = compose(shift, PolarTransform((32.0, 24.0), 20.0, (60, 30)))
    with WarpClient(sys.argv[1], timeout=30) as client:
        warped = client.warp(img, shift)
        det = client.jacobian_determinant(polar, (60, 30))
        try:
            client.warp(img, shift, interpolation="bicubic")
            refused = None
        except Exception as err:  # the library's own error class, raised client-side
            refused = [type(err).__name__, err.field]
    print(json.dumps({
        "loaded_at_import": loaded_at_import, "warpsvc_from": warpsvc_client.__file__,
        "loaded_after_calls": sorted(m for m in ("cv2", "numba") if m in sys.modules),
        "warped": warped.tolist(), "warped_dtype": str(warped.dtype), "det": det.tolist(), "refused": refused,
    }))
""")
ALIGN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from warpsvc_client import WarpClient
    y, x = np.mgrid[0:64, 0:64]
    img = (np.sin(x / 5.0) + np.cos(y / 7.0) + np.sin((x + y) / 9.0)).astype(np.float32)  # smooth, no OpenCV
    with WarpClient(sys.argv[1], timeout=60) as client:
        result = client.align(img[8:56, 8:56], img, model="translation", init=[[1, 0, 8], [0, 1, 8]])
    print(result.converged, sorted(m for m in ("cv2", "numba") if m in sys.modules))
""")


def _run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=kw.pop("cwd", "/"), **kw)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def client_python(tmp_path_factory):
    """The python of a fresh venv holding only ``warpsvc[client]`` (built from this tree)."""
    root = tmp_path_factory.mktemp("client-venv")
    src, dist, venv = root / "src", root / "dist", root / "venv"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)])
    wheel = next(dist.glob("warpsvc-*.whl"))
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[client]"])
    return python


def test_client_install_has_no_compute_stack(client_python):
    installed = {line.split("==")[0].lower() for line in _run([str(client_python), "-m", "pip", "freeze"]).split()}
    assert {"grpcio", "protobuf", "numpy", "warpsvc"} <= installed
    assert not installed & {"opencv-python-headless", "opencv-python", "numba", "llvmlite", "scikit-image"}
    probe = subprocess.run([str(client_python), "-I", "-c", "import cv2"], capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0 and "No module named 'cv2'" in probe.stderr


def test_client_talks_to_a_real_server(client_python):
    with ServerProcess("--port", "0") as srv:
        out = json.loads(_run([str(client_python), "-I", "-c", CLIENT_SCRIPT, srv.target]).splitlines()[-1])
    assert out["loaded_at_import"] == [] and out["loaded_after_calls"] == []
    assert out["warpsvc_from"].startswith(str(client_python.parents[1])), out["warpsvc_from"]  # the installed copy
    expected = warpsvc.warp(IMG, SHIFT)  # the library in this (full) environment is the oracle
    assert out["warped_dtype"] == str(expected.dtype)
    np.testing.assert_array_equal(np.array(out["warped"], dtype=expected.dtype), expected)
    np.testing.assert_allclose(out["det"], warpsvc.jacobian_determinant(POLAR, (60, 30)), rtol=1e-12)
    assert out["refused"] == ["InvalidArgumentError", "interpolation"]


def test_client_align_without_the_compute_stack(client_python):
    with ServerProcess("--port", "0") as srv:
        out = _run([str(client_python), "-I", "-c", ALIGN_SCRIPT, srv.target])
    assert out.split()[0] == "True" and out.strip().endswith("[]")
