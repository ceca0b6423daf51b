"""The client distributions in fresh virtual environments: ``warpsvc[client]`` and
``warpsvc[batch]`` install without OpenCV or numba, ``import warpsvc_client`` loads neither, the
client still talks to a real server, and ``warpsvc-batch warp|align|jacobian --target`` runs a
folder of PNG/JPEG/TIFF (grey and colour, 8/16-bit, float) against a real server (started from
the main environment, on loopback), with outputs equal to the library's own results computed
here, a report, and neither cv2 nor numba in ``sys.modules`` at the end.

Each venv is built once per run in a temp dir from one wheel of this tree (``pip wheel`` of a
copy, so the work tree gets no ``build/``); dependencies come through the machine's pip
configuration and its cache, so the module costs ~1-2 min (marked ``venv``: ``-m 'not venv'``
deselects it; ``WARPSVC_SKIP_VENV_TEST=1`` skips it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
from interop.harness import REPO, ServerProcess, wait_serving
from test_batch_helpers import make_align_folder, read_manifest

import warpsvc
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose

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
def wheel(tmp_path_factory):
    """A wheel of this tree (built from a copy)."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist = root / "src", root / "dist"
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)])
    return next(dist.glob("warpsvc-*.whl"))


def _venv(root, wheel, extra: str):
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[{extra}]"])
    return python


@pytest.fixture(scope="module")
def client_python(tmp_path_factory, wheel):
    """The python of a fresh venv holding only ``warpsvc[client]`` (built from this tree)."""
    return _venv(tmp_path_factory.mktemp("client-venv"), wheel, "client")


@pytest.fixture(scope="module")
def batch_python(tmp_path_factory, wheel):
    """The python of a fresh venv holding only ``warpsvc[batch]``."""
    return _venv(tmp_path_factory.mktemp("batch-venv"), wheel, "batch")


def _no_compute_stack(python):
    installed = {line.split("==")[0].lower() for line in _run([str(python), "-m", "pip", "freeze"]).split()}
    assert not installed & {"opencv-python-headless", "opencv-python", "numba", "llvmlite", "scikit-image"}
    probe = subprocess.run([str(python), "-I", "-c", "import cv2"], capture_output=True, text=True, cwd="/",
                           check=False)
    assert probe.returncode != 0 and "No module named 'cv2'" in probe.stderr
    shown = subprocess.run([str(python), "-m", "pip", "show", "opencv-python-headless"], capture_output=True,
                           text=True, cwd="/", check=False)
    assert shown.returncode != 0
    return installed


def test_client_install_has_no_compute_stack(client_python):
    installed = _no_compute_stack(client_python)
    assert {"grpcio", "protobuf", "numpy", "warpsvc"} <= installed


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


# -- warpsvc-batch against a server, from the batch venv -------------------------------------------
H = "0.95,0.05,4,-0.03,1.02,2,2e-4,-1e-4,1"
HOMOGRAPHY = HomographyTransform(np.array(H.split(","), float).reshape(3, 3))
# cli.main in the venv's python, then what the run loaded (lazy imports count): no OpenCV, numba,
# resampler or server (warpsvc.core.align is loaded for its AlignResult value type, no compute)
FORBIDDEN = ("cv2", "numba", "warpsvc.core.warp", "warpsvc.core.sampling", "warpsvc.core.antialias",
             "warpsvc.core.align.api", "warpsvc.core.align.gauss_newton", "warpsvc.server")
BATCH_RUN = textwrap.dedent(f"""
    import json, sys
    from warpsvc_client.batch.cli import main
    rc = main(sys.argv[1:])
    print("LOADED " + json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".")
                                                                      for f in {FORBIDDEN!r}))))
    sys.exit(rc)
""")


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--port", "0") as srv:
        wait_serving(srv.target)
        yield srv


def _mixed_folder(root) -> dict[str, np.ndarray]:
    """PNG, JPEG and TIFF files, grey and colour, 8/16-bit and float; returns each one's pixels
    as OpenCV reads it (the server's decoder)."""
    y, x = np.mgrid[0:48, 0:64]
    base = (np.sin(x / 6.0) + np.cos(y / 5.0) + 2) / 4
    bgr = np.dstack([base, base[::-1], base[:, ::-1]])
    images = {
        "png/grey.png": (base * 255).astype(np.uint8), "png/colour.png": (bgr * 255).astype(np.uint8),
        "png/colour16.png": (bgr * 65535).astype(np.uint16), "jpeg/grey.jpg": (base * 255).astype(np.uint8),
        "jpeg/colour.jpg": (bgr * 255).astype(np.uint8), "tiff/grey16.tif": (base * 65535).astype(np.uint16),
        "tiff/colour.tif": (bgr * 255).astype(np.uint8), "tiff/float.tif": base.astype(np.float32),
    }
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), img)
    return {rel: cv2.imread(str(root / rel), cv2.IMREAD_UNCHANGED) for rel in images}


def _sheet_columns(out) -> int:
    sheet = cv2.imread(str(out / "contact_sheet.png"), cv2.IMREAD_UNCHANGED)
    assert sheet is not None and sheet.shape[1] % 128 == 0
    return sheet.shape[1] // 128


def test_batch_install_has_no_compute_stack(batch_python):
    installed = _no_compute_stack(batch_python)
    assert {"grpcio", "warpsvc", "pillow", "tifffile", "matplotlib", "tqdm"} <= installed


def test_batch_warp_and_jacobian_without_the_compute_stack(batch_python, server, tmp_path):
    src, out, maps = tmp_path / "in", tmp_path / "warped", tmp_path / "maps"
    inputs = _mixed_folder(src)
    run = subprocess.run([str(batch_python), "-I", "-c", BATCH_RUN, "warp", str(src), str(out), "--matrix", H,
                          "--target", server.target, "--no-progress"], capture_output=True, text=True, timeout=600,
                         cwd="/", check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout.rsplit("LOADED ", 1)[1]) == []  # no cv2, numba, compute or server module
    assert f"{len(inputs)} ok, 0 failed" in run.stdout and "; report " in run.stdout
    _run([str(batch_python.parent / "warpsvc-batch"), "jacobian", str(src), str(maps), "--matrix", H,
          "--target", server.target, "--no-progress"])  # the console script itself
    for rel, img in inputs.items():
        want = warpsvc.warp(img, HOMOGRAPHY)  # the library in this (full) environment is the oracle
        if rel.endswith(".jpg"):  # the server's JPEG of the library's result (OpenCV, quality 95)
            want = cv2.imdecode(cv2.imencode(".jpg", want, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_UNCHANGED)
        got = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert got is not None and (got.dtype, got.shape) == (want.dtype, want.shape), rel
        np.testing.assert_array_equal(got, want, err_msg=rel)
        det = cv2.imread(str(maps / rel.rpartition(".")[0]) + ".tif", cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(det, warpsvc.jacobian_determinant(HOMOGRAPHY, img.shape[:2], dtype=np.float32))
    html = (out / "report.html").read_text()
    assert html.count("<details>") == len(inputs) and "no pictures" not in html and "report failed" not in run.stdout
    assert _sheet_columns(out) == 3  # input, output, log2 |det J|
    assert (maps / "report.html").is_file()


def test_batch_align_without_the_compute_stack(batch_python, server, tmp_path):
    src, out = tmp_path / "in", tmp_path / "aligned"
    tmpl, truth = make_align_folder(src, 6, seed=5)
    ref = tmp_path / "reference.png"
    cv2.imwrite(str(ref), tmpl)
    run = subprocess.run([str(batch_python), "-I", "-c", BATCH_RUN, "align", str(src), str(out), "--reference",
                          str(ref), "--model", "affine", "--target", server.target, "--no-progress"],
                         capture_output=True, text=True, timeout=600, cwd="/", check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout.rsplit("LOADED ", 1)[1]) == []
    records = {r["input"]: r for r in read_manifest(out / "manifest.jsonl")}
    assert sorted(records) == sorted(truth)
    for rel in truth:
        img = cv2.imread(str(src / rel), cv2.IMREAD_UNCHANGED)
        # the library here, with the options the batch passes (its defaults otherwise)
        result = warpsvc.align(tmpl, img, model="affine", robust=None, photometric=None, levels="auto")
        rec = records[rel]
        assert rec["status"] == "ok" and rec["convergence"]["converged"] is bool(result.converged) is True, rec
        np.testing.assert_allclose(rec["matrix"], result.matrix, rtol=0, atol=1e-9)
        got = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, warpsvc.warp(img, result.transform, tmpl.shape[:2]), err_msg=rel)
    html = (out / "report.html").read_text()
    assert "residual after" in html and "no pictures" not in html
    assert _sheet_columns(out) == 5  # input, output, |det J|, residual before, residual after
