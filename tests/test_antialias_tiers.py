"""The two tiers of the antialiased scatter (issue 12 item 3): tier 0 (numpy,
``warpsvc.core._splat_numpy``) and tier 1 (numba, ``warpsvc.core._splat_kernels``, no fast-math)
give bit-identical results on every path (matrix and generic scatters, uniform and mixed node
lattices, windows, bands, borders, colour, non-finite values); which tier runs when (numba not
imported by the first calls of a fresh process, the background upgrade, turning it off, a failed
load); tier 0 conserves flux and lets other threads run.

Tolerance: none; tier 0 repeats tier 1's IEEE operations in its order (see the docstring of
``_splat_numpy``), so the outputs are compared with ``assert_array_equal`` (NaN where NaN)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from tests.oracles import point_field, shrink3_homography
from tests.test_antialias_speed_paths import CASES as MATRIX_CASES
from tests.test_antialias_speed_paths import reference_scatter
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose, warp
from warpsvc.core import _compiled, _splat_numpy, _splat_numpy_tiers, antialias, strips, threads


@pytest.fixture(scope="module", autouse=True)
def tier1_loaded():
    antialias.compile_tier1()


def tier0(monkeypatch):
    monkeypatch.setattr(antialias, "_use_tier1", lambda *names: False)


def both(monkeypatch, *args, **kwargs):
    """``(tier 0 result, tier 1 result)`` of ``warp(*args, antialias=True, **kwargs)``."""
    assert antialias.scatter_tier() == 1
    one = warp(*args, antialias=True, **kwargs)
    with monkeypatch.context() as m:
        tier0(m)
        zero = warp(*args, antialias=True, **kwargs)
    return zero, one


RNG = np.random.default_rng(21)
PHOTO = RNG.random((130, 150)) * 255
SPARSE = np.zeros((130, 150))
SPARSE[5::11, 7::13] = 1000.0
RGB8 = (RNG.random((90, 110, 3)) * 255).astype(np.uint8)
MULTI = (RNG.standard_normal((70, 80, 7)) * 10).astype(np.float32)
SPECIAL = RNG.random((120, 130)) * 10
SPECIAL[40, 50], SPECIAL[80, 20], SPECIAL[10, 100], SPECIAL[60, 60] = np.inf, -np.inf, np.nan, 1e300
POLAR = PolarTransform((75.0, 65.0), 60.0, (180, 80))
LOGPOLAR = PolarTransform((75.0, 65.0), 60.0, (160, 90), log=True)
HOM = HomographyTransform([[0.9, 0.08, 6.0], [-0.05, 1.05, 3.0], [4e-4, -3e-4, 1.0]])

WARPS = {
    "homography shrink, point field": ((SPARSE, shrink3_homography(150), (50, 50)), {"intensity": "conserve"}),
    "homography shrink, photo, plain": ((PHOTO, shrink3_homography(150), (50, 50)), {}),
    "enlarging affine, mixed m": ((PHOTO, AffineTransform.from_components(scale=(1.7, 1.3), rotation=0.3,
                                                                           translation=(30, 5)), (230, 260)), {}),
    "anisotropic affine (m up to 8)": ((PHOTO, AffineTransform.from_components(scale=(5.0, 0.4), rotation=0.1),
                                        (80, 700)), {"intensity": "conserve"}),
    "strong enlargement (m = 18: blocks in pieces of node rows)": ((PHOTO[:14, :40], AffineTransform.from_components(
        scale=(12.0, 11.0), rotation=0.2), (170, 480)), {}),
    "edges beyond the output, reflect": ((PHOTO, AffineTransform.from_components(scale=(0.5, 0.5),
                                                                                  translation=(-20, -15)), (40, 50)),
                                         {"border": "reflect"}),
    "wrap border, colour uint8": ((RGB8, HOM, (100, 120)), {"border": "wrap"}),
    "constant border value (coverage), 7 channels": ((MULTI, HOM, (80, 90)),
                                                     {"border_value": 3.0, "intensity": "conserve"}),
    "non-finite values, matrix": ((SPECIAL, MATRIX_CASES["shrinking homography (2x2 fast path)"][0], (46, 46)), {}),
    "polar, photo": ((PHOTO, POLAR), {"intensity": "conserve"}),
    "polar, point field": ((SPARSE, POLAR), {"intensity": "conserve"}),
    "log-polar, colour uint8": ((RGB8, LOGPOLAR), {}),
    "polar inverse": ((MULTI[:, :, :2], POLAR.inverse(), (60, 70)), {}),
    "homography then polar, replicate border": ((PHOTO, compose(HOM, POLAR)), {"border": "replicate"}),
    "non-finite values, polar": ((SPECIAL, POLAR), {}),
}


@pytest.mark.parametrize("case", list(WARPS))
def test_tier0_gives_the_same_bits_as_tier1(monkeypatch, case):
    args, kwargs = WARPS[case]
    zero, one = both(monkeypatch, *args, **kwargs)
    assert np.abs(np.nan_to_num(one, posinf=0, neginf=0)).max() > 0
    np.testing.assert_array_equal(zero, one)


@pytest.mark.parametrize("case", ["enlarging affine, mixed m", "polar, photo", "anisotropic affine (m up to 8)"])
def test_windows_and_bands_same_bits_in_both_tiers(monkeypatch, case):
    """Small windows (several per source, tent sums per window) and small bands (a poll each)."""
    args, kwargs = WARPS[case]
    whole = warp(*args, antialias=True, **kwargs)
    monkeypatch.setattr(antialias, "WINDOW_BYTES", 1 << 14)
    monkeypatch.setattr(antialias, "NODES_PER_BAND", 3000)
    polls = []
    zero, one = both(monkeypatch, *args, poll=lambda: polls.append(1), **kwargs)
    assert len(polls) > 10
    np.testing.assert_array_equal(zero, whole)
    np.testing.assert_array_equal(one, whole)


@pytest.mark.parametrize("case", ["polar, photo", "non-finite values, polar", "polar inverse",
                                  "homography then polar, replicate border"])
def test_generic_path_same_bits_with_many_strips_in_both_tiers(monkeypatch, case):
    """The generic path's map runs over runs of nodes in parallel (``strips.run_strips``), and
    tier 1's scatter over strips: 7 runs and 7 strips give the bits of one, in both tiers."""
    args, kwargs = WARPS[case]
    with monkeypatch.context() as m:
        m.setattr(strips, "strip_count", lambda work=None: 1)
        m.setattr(antialias, "kernel_threads", lambda work=None: 1)
        one = warp(*args, antialias=True, **kwargs)
    runs = []
    monkeypatch.setattr(strips, "strip_count", lambda work=None: runs.append(work) or 7)
    monkeypatch.setattr(antialias, "kernel_threads", lambda work=None: 7)  # tier 1's
    zero, many = both(monkeypatch, *args, **kwargs)
    assert runs  # the map was split
    np.testing.assert_array_equal(zero, one)
    np.testing.assert_array_equal(many, one)


@pytest.mark.parametrize("case", ["shrinking homography (2x2 fast path)", "enlarging affine (m = 2..3, 3x3 windows)",
                                  "horizon in the source (w <= 0 nodes)", "edges beyond the output"])
def test_tier0_matches_the_reference_scatter(monkeypatch, case):
    """Tier 0 against the scatter written from its definition (tests/test_antialias_speed_paths),
    and against tier 1 bit for bit (the horizon case has far too many nodes for a warp's budget)."""
    t, shape = MATRIX_CASES[case]
    img = RNG.random((120, 130)) * 100
    img[RNG.random(img.shape) < 0.3] = 0.0
    p = antialias.plan(t, img.shape, shape, 1, with_coverage=False)
    one = antialias.scatter(antialias.padded_source(img[:, :, None], False), p, t, shape)[:, :, 0]
    tier0(monkeypatch)
    assert antialias.plan(t, img.shape, shape, 1, with_coverage=False).nodes == p.nodes
    ours = antialias.scatter(antialias.padded_source(img[:, :, None], False), p, t, shape)[:, :, 0]
    np.testing.assert_array_equal(ours, one)
    ref = reference_scatter(img, np.asarray(t.matrix, float), p.blocks[:, 2], shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_non_finite_values_behind_the_horizon_deposit_nothing(monkeypatch):
    """Nodes with ``w <= 0`` (beyond the horizon: not part of the source's image) are skipped
    whatever their value. Here the straddling block's row-0 nodes behind the horizon map to
    ``py = 0`` inside the output; tier 1 used to send a non-finite value of such a node to the
    general deposits, which spread NaN over 65 output pixels. Oracle: the same source with those
    pixels finite, bit for bit, in both tiers."""
    t = HomographyTransform([[-1, 0, 60], [0, 1, 0], [-0.02, 0, 1]])  # horizon at x = 50
    h, w, shape = 6, 90, (40, 200)
    img = np.random.default_rng(3).random((h, w)) * 100
    side = antialias.source_side_matrix(t, h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    behind = side[2, 0] * xx + side[2, 1] * yy + side[2, 2] <= 0
    bad = img.copy()
    bad[behind] = np.where(np.arange(behind.sum()) % 2, np.nan, np.inf)
    p = antialias.plan(t, img.shape, shape, 1, with_coverage=False)

    def scatter(a):
        return antialias.scatter(antialias.padded_source(a[:, :, None], False), p, t, shape)[:, :, 0]

    finite = scatter(img)
    assert np.isfinite(finite).all() and finite.max() > 0
    np.testing.assert_array_equal(scatter(bad), finite)
    tier0(monkeypatch)
    np.testing.assert_array_equal(scatter(bad), finite)


@pytest.mark.parametrize("matrix", [[[1, 0, 0], [0, 1, 0], [0.2, 0.2, 0.01]], [[1, 0, 0], [0, 1, 0], [1, 0, -4]]])
def test_every_block_beyond_a_horizon_balances_the_strips_without_failing(matrix):
    """When no block of the source has a finite image box (every one reaches a horizon), the
    strip-work estimate was an empty ``bincount`` (int64) and adding the horizon blocks' share
    raised ``UFuncTypeError`` (INTERNAL over gRPC; found by a hostile-client test). Now the warp
    runs, finite, and the same at one strip as at two (the split only balances the strips)."""
    img = np.arange(48, dtype=np.float64).reshape(6, 8)
    t = HomographyTransform(matrix)
    p = antialias.plan(t, img.shape, (6, 8), 1, with_coverage=False)
    assert not p.layout["finite"][p.block_nodes > 0].any()
    outs = []
    for n in (1, 2):
        threads.set_threads(n, opencv=False)
        try:
            outs.append(warp(img, t, intensity="conserve", antialias=True))
        finally:
            threads.set_threads(None, opencv=False)
    assert np.isfinite(outs[0]).all()
    np.testing.assert_array_equal(outs[0], outs[1])


def test_kernels_directly_layout_and_tent_sums():
    """``matrix_layout`` on random homographies and ``tent_sums`` over a random mixed lattice,
    window by window (rows cut at ``iy_lo`` / ``iy_hi``), tier 0 against tier 1, bit for bit."""
    from warpsvc.core import _splat_kernels as k1

    rng = np.random.default_rng(22)
    for _ in range(30):
        t = HomographyTransform(np.eye(3) + rng.normal(0, 0.3, (3, 3)) * [[1, 1, 30], [1, 1, 30], [0.002, 0.002, 0]])
        h, w = 97, 70
        by, bx = antialias._block_grid(h, w)
        mat, side = np.array(t.matrix, dtype=np.float64), antialias.source_side_matrix(t, h, w)
        outs = []
        for kern in (_splat_numpy, k1):
            nb = len(by) * len(bx)
            res = (np.empty(nb), np.empty((nb, 2)), np.empty((nb, 2)), np.empty(nb, bool), np.empty(nb, bool))
            kern.matrix_layout(mat, side, by, bx, 3, *res)
            outs.append(res)
        for a, b in zip(*outs):
            np.testing.assert_array_equal(a, b)
    h, w = 150, 100
    by, bx = antialias._block_grid(h, w)
    row_ptr = np.arange(0, len(by) * len(bx) + 1, len(bx), dtype=np.int64)
    for uniform in (False, True):
        blocks = np.array([[y, x, 3 if uniform else rng.integers(1, 6)] for y in by for x in bx], dtype=np.int64)
        for y_lo, y_hi in [(0, h), (31, 95), (63, 64), (127, h)]:
            sums = []
            for kern in (_splat_numpy, k1):
                s = np.zeros((y_hi - y_lo + 2 * _splat_numpy.PAD, w + 2 * _splat_numpy.PAD))
                for parity in (0, 1):
                    kern.tent_sums(blocks, row_ptr, np.arange(parity, len(by), 2, dtype=np.int64), h, w, s,
                                   y_lo - 1, y_hi + 1, y_lo)
                sums.append(s)
            np.testing.assert_array_equal(sums[0], sums[1])
            inner = sums[0][2:-2, 2:-2]
            assert (inner > 0).all()
            if uniform:  # a uniform lattice's tents sum to 1 (up to rounding)
                np.testing.assert_allclose(inner, 1.0, rtol=0, atol=1e-13)


def test_tier0_conserves_the_flux(monkeypatch):
    tier0(monkeypatch)
    img, _ = point_field()
    out = warp(img, shrink3_homography(), (230, 230), intensity="conserve", antialias=True)
    assert abs(out.sum() / img.sum() - 1) < 1e-12
    pol = PolarTransform((300.0, 300.0), 290.0, (360, 200))
    inside = np.zeros((600, 600))
    inside[205:400:20, 205:400:20] = 100.0  # off the pole (a singular point)
    out = warp(inside, pol, intensity="conserve", antialias=True)
    assert abs(out.sum() / inside.sum() - 1) < 1e-9


def test_skipping_zero_nodes_before_the_map_changes_no_bit(monkeypatch):
    """The generic path maps only nodes whose bilinear reads are not all zero."""
    for t in (POLAR, LOGPOLAR, compose(HOM, POLAR)):
        skipped = warp(SPARSE, t, intensity="conserve", antialias=True)
        with monkeypatch.context() as m:
            m.setattr(antialias, "_nonzero_reads", lambda src: True)
            full = warp(SPARSE, t, intensity="conserve", antialias=True)
        np.testing.assert_array_equal(skipped, full)
        assert skipped.sum() > 0


def test_tier1_examples_have_the_signatures_the_scatter_uses():
    """The upgrade loads each kernel with small example arguments: real warps through every
    path then add no new numba signature (none is compiled in a caller's thread)."""
    from warpsvc.core import _splat_kernels as k1

    for args, kwargs in WARPS.values():
        warp(*args, antialias=True, **kwargs)
    warp(PHOTO, shrink3_homography(150), (50, 50), antialias=True, intensity="conserve")  # the image read as is
    for name in antialias.KERNELS:
        assert len(getattr(k1, name).signatures) == 1, (name, getattr(k1, name).signatures)


def test_tier0_lets_other_threads_run(monkeypatch):
    """While tier 0 works (numpy calls), another Python thread keeps counting (the probe counts
    only while the caller has released the GIL: switch interval 2 s)."""
    from tests.test_kernels_parallel import ProgressProbe

    tier0(monkeypatch)
    img = RNG.random((400, 400)) * 255
    with ProgressProbe() as probe:
        count = probe.during(lambda: warp(img, AffineTransform.from_components(scale=(1.3, 1.3)), (520, 520),
                                          antialias=True))
    assert count > 0


FRESH = """
import sys, json, numpy as np
from warpsvc import HomographyTransform, PolarTransform, warp
from warpsvc.core import antialias, _compiled
{setup}
pts = np.zeros((200, 200)); pts[5::9, 7::11] = 10.0
t = HomographyTransform.from_points([[0, 0], [199, 0], [199, 199], [0, 199]], [[3, 5], [70, 2], [66, 71], [1, 64]])
pol = PolarTransform((100.0, 100.0), 90.0, (180, 80))
first = warp(pts, t, (75, 75), intensity="conserve", antialias=True)
after_first = "numba" in sys.modules
second = warp(pts, pol, intensity="conserve", antialias=True)
dense = warp(pts + 1.0, pol, intensity="conserve", antialias=True)  # mixed m: the tent sums' groups
numpy_ma = "numpy.ma" in sys.modules  # the first np.unique of a process imports it (~14 ms)
# (asserted with the upgrade off: a background load of the compiled kernels may import it)
antialias.UPGRADE.join(60)
third = warp(pts, t, (75, 75), intensity="conserve", antialias=True)
print(json.dumps({{"numba_after_first": after_first, "numpy_ma": numpy_ma, "tier": antialias.scatter_tier(),
                  "same": bool(np.array_equal(first, third)), "running": antialias.UPGRADE.running()}}))
"""


def _fresh(setup: str = "", env=None) -> dict:
    import json
    import os

    out = subprocess.run([sys.executable, "-c", FRESH.format(setup=setup)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **(env or {})), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fresh_process_starts_on_tier0_and_upgrades_in_the_background():
    got = _fresh()
    del got["numpy_ma"]  # the background load may have imported it (see the next test)
    assert got == {"numba_after_first": False, "tier": 1, "same": True, "running": False}


def test_unique_helpers_match_numpy_unique():
    """The first-call paths' replacements of ``np.unique`` (which imports ``numpy.ma``)."""
    rng = np.random.default_rng(5)
    for n in (0, 1, 2, 7, 500):
        a = np.sort(rng.integers(0, 9, n))
        np.testing.assert_array_equal(_splat_numpy.unique_sorted(a), np.unique(a))
        rows = rng.integers(0, 3, (n, 3))
        np.testing.assert_array_equal(_splat_numpy.unique_rows(rows).reshape(-1, 3), np.unique(rows, axis=0).reshape(-1, 3))


def test_upgrade_can_be_turned_off():
    got = _fresh(env={"WARPSVC_KERNEL_UPGRADE": "0"})
    assert got["tier"] == 0
    assert got["numpy_ma"] is False  # tier 0's first calls (matrix, generic, mixed m) avoid np.unique
    assert _fresh("_compiled.set_kernel_upgrade(False)")["tier"] == 0
    assert _fresh("_compiled.set_kernel_upgrade(False); antialias.compile_tier1()")["tier"] == 1  # a warm-up


def test_failed_load_is_logged_and_tier0_stays(monkeypatch, caplog):
    up = _compiled.BackgroundUpgrade(None, None, after_calls=1, load=lambda key: 1 / 0, name="probe.")
    monkeypatch.setattr(_splat_numpy_tiers, "UPGRADE", up)
    with caplog.at_level(logging.WARNING):
        zero = warp(SPARSE, shrink3_homography(150), (50, 50), intensity="conserve", antialias=True)
        up.join(10)
    assert up.failed("scatter_matrix") and not up.ready("scatter_matrix")
    assert "ZeroDivisionError" in caplog.text and "numpy" in caplog.text  # logged, with the reason
    again = warp(SPARSE, shrink3_homography(150), (50, 50), intensity="conserve", antialias=True)
    np.testing.assert_array_equal(zero, again)  # still tier 0, still the same bits


@pytest.mark.parametrize("case", ["homography shrink, point field", "homography shrink, photo, plain",
                                  "enlarging affine, mixed m", "wrap border, colour uint8", "polar, photo"])
def test_tier0_stays_within_the_estimated_working_memory(monkeypatch, case):
    """The plan counts tier 0's chunk (``_splat_numpy.chunk_bytes``): its real peak allocations
    (tracemalloc sees numpy) stay below the estimate, as tier 1's do."""
    import tracemalloc

    from warpsvc import antialias_cost

    args, kwargs = WARPS[case]
    img = np.tile(args[0], (3, 3, 1)[:args[0].ndim])  # larger, so the chunks are full
    t = args[1]
    shape = None if len(args) < 3 else tuple(3 * s for s in args[2])
    cost = antialias_cost(img, t, shape, **kwargs)
    tier0(monkeypatch)
    warp(img, t, shape, antialias=True, **kwargs)
    tracemalloc.start()
    warp(img, t, shape, antialias=True, **kwargs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak <= cost.working_bytes, (peak, cost.working_bytes)
