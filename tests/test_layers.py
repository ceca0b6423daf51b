"""The layers, checked on real imports: each entry point is imported in a fresh interpreter and
``sys.modules`` must not hold what its layer may not use (lazy imports included, unlike a scan
of import statements).

    warpsvc.core (library)  <- warpsvc.server
    warpsvc_api (protocol)  <- warpsvc.server, warpsvc_client
    geometry (warpsvc.core.transforms, .errors): numpy only
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COMPUTE = ("cv2", "numba", "skimage", "warpsvc.core.warp", "warpsvc.core.sampling", "warpsvc.core.antialias",
           "warpsvc.core.align", "warpsvc.core._compiled", "warpsvc.core._scale_kernels",
           "warpsvc.core._splat_kernels")
TRANSPORT = ("grpc", "google.protobuf", "google.rpc", "grpc_status", "warpsvc_api", "warpsvc.v1")
SERVER = ("warpsvc.server",)
CLIENT = ("warpsvc_client",)

# (what is imported, what it must not pull in)
CONTRACTS = [
    ("import warpsvc, warpsvc.core.transforms, warpsvc.core.errors; warpsvc.AffineTransform; warpsvc.PolarTransform",
     COMPUTE + TRANSPORT + SERVER + CLIENT),
    ("import warpsvc; warpsvc.warp; warpsvc.jacobian_determinant; warpsvc.align", TRANSPORT + SERVER + CLIENT),
    ("import warpsvc_api.convert, warpsvc_api.status, warpsvc_api.vocab, warpsvc_api.wire, warpsvc_api.image_probe, "
     "warpsvc_api.stream",
     COMPUTE + SERVER + CLIENT),
    ("import warpsvc_client, warpsvc_client.convert, warpsvc_client.wire; from warpsvc_client import WarpClient",
     COMPUTE + SERVER),
    ("import warpsvc_client.batch.cli, warpsvc_client.batch.backends, warpsvc_client.batch.report", COMPUTE + SERVER),
    ("import warpsvc.server.servicer, warpsvc.server.app", CLIENT),
]


def _modules(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys, json; {code}; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize("code,forbidden", CONTRACTS, ids=[c[0].split(";")[0] for c in CONTRACTS])
def test_layer_imports(code, forbidden):
    loaded = _modules(code)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"`{code}` imports {bad}"


def test_the_check_sees_lazy_imports():
    """The oracle works: using a resampling name does bring OpenCV in."""
    assert "cv2" in _modules("import warpsvc; warpsvc.warp")
