"""Compiled kernels work even where no on-disk cache can be written."""

from __future__ import annotations

from warpsvc.core._compiled import compiled


def test_falls_back_to_uncached_compilation_without_a_cache_location():
    namespace = {}
    # A function whose source file does not exist has no cache locator: numba would raise.
    exec(compile("def add_one(x):\n    return x + 1\n", "<generated>", "exec"), namespace)
    fast = compiled()(namespace["add_one"])
    assert fast(41) == 42
    assert fast.py_func is namespace["add_one"]
