"""The API contract: generated code is up to date, buf lint is clean, the proto stays wire
compatible with main's (buf breaking), the core names no transport."""

from __future__ import annotations

import ast
import filecmp
import pathlib
import subprocess
import sys

import pytest
from interop.harness import REPO, buf_binary

GENERATED = ("__init__.py", "warp_pb2.py", "warp_pb2.pyi", "warp_pb2_grpc.py")


def test_generated_code_matches_the_proto(tmp_path):
    subprocess.run(["bash", "scripts/gen_protos.sh", str(tmp_path)], cwd=REPO, check=True,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    fresh, committed = tmp_path / "warpsvc_api" / "v1", REPO / "warpsvc_api" / "v1"
    assert sorted(p.name for p in fresh.iterdir()) == sorted(GENERATED)
    stale = [name for name in GENERATED if not filecmp.cmp(fresh / name, committed / name, shallow=False)]
    assert not stale, f"regenerate with `bash scripts/gen_protos.sh`: {stale} differ"


def test_buf_lint_is_clean():
    buf = buf_binary()
    if buf is None:
        pytest.skip("node_modules/.bin/buf missing (scripts/test.sh runs `npm ci` when node exists)")
    result = subprocess.run([str(buf), "lint"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_imports_no_transport():
    for path in (REPO / "warpsvc" / "core").rglob("*.py"):
        bad = {n for n in _imports(path) if n.split(".")[0] in ("grpc", "google", "grpc_status", "grpc_health")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_buf_breaking_against_main(tmp_path):
    """Wire and source compatibility (buf's FILE rules) with the proto on the main branch."""
    buf = buf_binary()
    if buf is None:
        pytest.skip("node_modules/.bin/buf missing (scripts/test.sh runs `npm ci` when node exists)")
    if subprocess.run(["git", "rev-parse", "--verify", "-q", "main"], cwd=REPO, capture_output=True).returncode:
        pytest.skip("no `main` branch in this clone to compare with")
    archive = subprocess.run(["git", "archive", "main", "protos", "buf.yaml"], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    result = subprocess.run([str(buf), "breaking", "--against", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
