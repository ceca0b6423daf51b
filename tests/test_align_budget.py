"""Cost control of ``warpsvc.align`` (issue 13): the clock is checked during the set-up (crop,
pyramid levels, Jacobians, feature search), and the working memory follows the pixels actually
used (the 20 000 sampled per level), with whole-grid Jacobians in a cache bounded in bytes.

Oracles: the set-up's stages are counted through the real ``should_stop`` (a stop at call ``k``
leaves exactly ``k`` calls and returns the start unmeasured); memory is numpy's own accounting
(tracemalloc) of a real alignment, against the ~500 B per template pixel it cost before; the
sampled-pixel Jacobians against the rows of the whole-grid ones, bit for bit.
"""

from __future__ import annotations

import threading
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from warpsvc import align
from warpsvc.core.align import pyramid
from warpsvc.core.align.cache import ByteLRU
from warpsvc.core.align.chart import make_chart
from warpsvc.core.align.options import AlignOptions

MODELS = ("translation", "euclidean", "similarity", "affine", "homography")


def _scene(side: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((side, side)).astype(np.float32), (0, 0), 1.5)


class StopAt:
    """``should_stop`` returning true from call ``k`` on; records when each call came."""

    def __init__(self, k):
        self.k, self.calls, self.t0 = k, [], time.perf_counter()

    def __call__(self):
        self.calls.append(time.perf_counter() - self.t0)
        return len(self.calls) >= self.k


def test_the_set_up_is_polled_and_a_stop_there_returns_the_start():
    """Before its first iteration an alignment of a 1000^2 template checks its clock at every
    set-up stage (two crops, each pyramid level of both images, the Jacobian stages of the
    finest level); a stop at any of them returns the start (``init``) with nothing measured and
    no further check."""
    scene = _scene(1100)
    template = np.ascontiguousarray(scene[50:1050, 50:1050])
    init = np.array([[1.0, 0, -50], [0, 1, -50], [0, 0, 1]])
    free = StopAt(10**9)
    align(template, scene, "affine", init=init, should_stop=free)
    first_iteration = free.calls
    assert len(first_iteration) >= 10  # set-up checks, then one per iteration
    for k in (1, 2, 5, 9):
        stop = StopAt(k)
        result = align(template, scene, "affine", init=init, should_stop=stop)
        assert len(stop.calls) == k  # nothing polled after the stop
        assert result.reason == "cancelled" and not result.converged
        assert result.iterations == () and result.levels == 0
        assert np.isnan(result.rms_error) and np.isnan(result.zncc) and np.isnan(result.overlap)
        np.testing.assert_allclose(result.matrix, init, atol=1e-12)  # the start, untouched
    budget = align(template, scene, "affine", init=init, time_budget=1e-9)
    assert budget.reason == "time_budget" and budget.iterations == ()


def test_set_up_checks_are_close_together():
    """The longest stretch between two clock checks of the set-up is a small part of it (a 2 Mpx
    image, a 1.4 Mpx template: before, the whole-grid Jacobians alone took ~0.5 s unpolled)."""
    scene = _scene(1600, seed=3)
    template = np.ascontiguousarray(scene[200:1400, 200:1400])
    probe = StopAt(10**9)
    t0 = time.perf_counter()
    align(template, scene, "affine", init=[[1, 0, -200], [0, 1, -200]], should_stop=probe, max_iterations=1)
    total = time.perf_counter() - t0
    gaps = np.diff([0.0] + probe.calls)
    assert len(gaps) >= 10
    assert gaps.max() < max(0.5 * total, 0.05), (gaps.max(), total)


def test_search_stage_is_polled():
    """``search="global"``: the feature stage checks the clock between its OpenCV calls; a stop
    at its first check ends the call without any refinement."""
    scene = _scene(400, seed=5)
    template = np.ascontiguousarray(scene[100:300, 120:320])
    free = StopAt(10**9)
    align(template, scene, "affine", search="global", should_stop=free)
    assert len(free.calls) >= 4
    stop = StopAt(2)  # the first check inside feature_start (before any SIFT)
    result = align(template, scene, "affine", search="global", should_stop=stop)
    assert result.reason == "cancelled" and result.iterations == ()
    assert len(stop.calls) == 2


def test_memory_follows_the_sampled_pixels():
    """A 640^2 float32 template in 700^2 (the hostile test's case): the numpy peak is the images
    and one level's gradients, not the grid's Jacobians (before: 148 MiB, ~380 B per template
    pixel, and the grid Jacobians kept per shape)."""
    scene = _scene(700)
    template = np.ascontiguousarray(scene[30:670, 30:670])
    init = [[1, 0, -30], [0, 1, -30]]
    small = _scene(120)
    align(small[10:110, 10:110], small, "affine", init=[[1, 0, -10], [0, 1, -10]])  # imports, first allocations
    pyramid._JACOBIANS.clear()
    tracemalloc.start()
    result = align(template, scene, "affine", init=init)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.converged
    per_pixel = peak / template.size
    assert per_pixel < 80, f"{per_pixel:.0f} B per template pixel"
    options = AlignOptions(model="affine")
    for (_, _, h, w, *_), _ in pyramid._JACOBIANS._entries.items():
        assert h * w <= options.max_pixels  # only levels small enough to use every pixel
    assert pyramid._JACOBIANS.nbytes <= pyramid.JACOBIAN_CACHE_BYTES


@pytest.mark.parametrize("model", MODELS)
def test_sampled_pixel_jacobians_are_the_grid_rows(model):
    """The Jacobians computed at the sampled pixels only equal the whole grid's rows bit for bit
    (so sampling changes no result), at every pyramid factor."""
    rng = np.random.default_rng(1)
    for h, w, factor in [(161, 163, 1.0), (320, 300, 2.0), (37, 50, 4.0)]:
        chart = make_chart((int(h * factor), int(w * factor)))
        jx, jy = pyramid._grid_jacobian(model, h, w, factor, tuple(chart.ravel()))
        sel = np.sort(rng.choice(h * w, size=1000, replace=False))
        px, py = pyramid._pixel_jacobian(model, sel % w, sel // w, factor, chart)
        np.testing.assert_array_equal(px, jx[sel])
        np.testing.assert_array_equal(py, jy[sel])


def test_byte_lru_is_bounded_in_bytes():
    cache = ByteLRU(1000)
    made = []

    def make(n):
        def f():
            made.append(n)
            return (np.zeros(n, np.uint8),)
        return f

    a = cache.get("a", make(400))
    assert cache.get("a", make(400)) is a and made == [400]  # a hit returns the same arrays
    assert not a[0].flags.writeable  # shared: read-only
    cache.get("b", make(400))
    cache.get("a", make(400))  # "a" becomes the most recent
    cache.get("c", make(400))  # over 1000 B: the least recent ("b") goes
    assert cache.nbytes == 800 and len(cache) == 2
    cache.get("b", make(400))
    assert made == [400, 400, 400, 400]  # "b" was recomputed
    big = cache.get("big", make(5000))  # larger than the budget: returned, not kept
    assert big[0].nbytes == 5000 and cache.nbytes <= 1000 and "big" not in cache._entries


def test_byte_lru_under_threads():
    cache = ByteLRU(10_000)
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                n = int(rng.integers(0, 40))
                value = cache.get(n, lambda n=n: (np.full(n * 10, n, np.int8),))
                assert value[0].size == n * 10 and (value[0] == n).all()
                assert cache.nbytes <= 10_000
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.nbytes == sum(size for _, size in cache._entries.values()) <= 10_000
