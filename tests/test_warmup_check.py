"""``python -m warpsvc.core.warmup --check``: exit 1 when kernels had to be compiled, 0 once they
load from numba's cache (the Dockerfile's build gate; the shipped image used to have an empty
cache, so every replica compiled for ~17 s and its first antialiased Warp waited ~16 s)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")


def _check(cache_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    return subprocess.run([sys.executable, "-m", "warpsvc.core.warmup", "--check"], env=env,
                          capture_output=True, text=True, timeout=600)


def test_check_fails_on_an_empty_cache_then_passes_once_it_is_filled(tmp_path):
    first = _check(tmp_path)  # compiles everything (and writes the cache)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "compiled, not loaded" in first.stderr
    assert "_splat_kernels.scatter_matrix" in first.stderr and "_scale_kernels._projective_rows" in first.stderr
    assert any(tmp_path.rglob("*.nbi")), "the compile wrote no cache index"
    second = _check(tmp_path)  # a new process: everything loads
    assert second.returncode == 0, second.stdout + second.stderr
    assert "loaded from numba's cache" in second.stdout


def test_cache_use_lists_nothing_before_numba_is_imported():
    code = ("import warpsvc, sys; from warpsvc.core.warmup import kernel_cache_use; "
            "assert 'numba' not in sys.modules; print(kernel_cache_use())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "([], [])"


def test_warm_up_writes_the_packages_bytecode(tmp_path, monkeypatch):
    """``compile_bytecode`` (run by the warm-up) writes a package's missing ``.pyc`` files even
    with ``PYTHONDONTWRITEBYTECODE`` on (as ``pip install`` does for a wheel), so a new process
    imports the bytecode instead of compiling the sources; the oracle is the import system's
    own cache path, and a second import of the fresh copy reads that file."""
    import importlib.util

    from warpsvc.core import warmup

    pkg = tmp_path / "warm_pkg_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 41 + 1\n")
    (pkg / "inner.py").write_text("def f():\n    return 'inner'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(warmup, "PACKAGES", ("warm_pkg_probe", "no_such_package_here"))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    caches = [importlib.util.cache_from_source(str(pkg / n)) for n in ("__init__.py", "inner.py")]
    assert not any(os.path.exists(c) for c in caches)
    assert warmup.compile_bytecode() == [str(pkg)]
    assert all(os.path.exists(c) for c in caches)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1", PYTHONVERBOSE="1")
    out = subprocess.run([sys.executable, "-c", "import warm_pkg_probe.inner as m; print(m.f())"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.stdout.strip() == "inner"
    assert f"matches {pkg / 'inner.py'}" in out.stderr  # imported from the .pyc the warm-up wrote
