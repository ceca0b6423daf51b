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


def test_background_upgrade_with_a_load_function_works_through_its_keys_in_order():
    """``BackgroundUpgrade(load=...)``: one daemon thread loads every wanted key, in the order
    asked (the first call's key, then the others given with it), once each; a failing key is
    dropped (tier 0 stays for it) and the others still load."""
    import threading

    from warpsvc.core._compiled import BackgroundUpgrade, set_kernel_upgrade

    loaded, gate = [], threading.Event()

    def load(key):
        gate.wait(10)
        if key == "bad":
            raise RuntimeError("no")
        loaded.append(key)

    up = BackgroundUpgrade(None, None, after_calls=2, load=load, name="probe.")
    set_kernel_upgrade(True)
    try:
        up.tier0_used("a", "bad", "b")
        if "numba" not in __import__("sys").modules:
            assert not up.running()  # the 1st call of a process without numba: no thread yet
            up.tier0_used("a", "bad", "b")
        assert up.running()
        up.tier0_used("c", "a")  # asked for later: queued behind the others, "a" not twice
        gate.set()
        up.join(10)
    finally:
        set_kernel_upgrade(None)
    assert loaded == ["a", "b", "c"]
    assert up.ready("a") and up.ready("c") and up.failed("bad") and not up.ready("bad")
    assert not up.running()
