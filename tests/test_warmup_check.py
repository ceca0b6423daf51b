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
