"""The two tiers of ``scale_by_projective_det``: tier 0 (numpy over strips) and tier 1 (numba row
loop, no fast-math) give bit-identical results; which tier runs when; the background upgrade
(numba not imported by the first calls, compiled after the 3rd tier-0 call, can be turned off,
errors leave tier 0 in place)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from tests.test_kernels_parallel import ProgressProbe
from warpsvc import HomographyTransform, warp
from warpsvc.core import _compiled, _scale_kernels, threads

RNG = np.random.default_rng(11)
M = np.array([[1.05, 0.02, -30.0], [0.01, 0.97, 12.0], [2e-4, -3e-4, 1.01]])
HORIZON = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.25, -0.125, -5.0]])  # w = x/4 - y/8 - 5: exact zeros
STEEP = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1e-3, 2e-3, 1e-30]])  # w ~ 0 at the origin: huge factors


@pytest.fixture(scope="module", autouse=True)
def tier1_compiled():
    _scale_kernels.compile_tier1()


@pytest.fixture
def restore_threads():
    previous = threads._chosen
    yield
    threads._chosen = previous


def _out_dtype(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def _source(dtype, shape, special=False):
    if np.dtype(dtype).kind == "u":
        src = RNG.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
        src.flat[::17] = 0
    else:
        src = (RNG.standard_normal(shape) * 300).astype(dtype)
        if special:
            src.flat[::13] = np.inf
            src.flat[5::29] = -np.inf
            src.flat[7::31] = np.nan
            src.flat[3::11] = 0
            src.flat[9::37] = np.finfo(dtype).tiny / 4  # subnormal
    return src


def _both_tiers(src, m, det_m, row0):
    a = np.full(src.shape, 99, _out_dtype(src.dtype))
    b = np.full(src.shape, -99, _out_dtype(src.dtype))
    _scale_kernels._projective_numpy(src, m, det_m, row0, a)
    _scale_kernels._projective_rows(src, m, det_m, row0, b)
    return a, b


CASES = [  # (matrix, det_m, row0, shape)
    (M, abs(np.linalg.det(M)), 0, (61, 83)),
    (M, abs(np.linalg.det(M)), 17, (40, 257)),  # a band starting at row 17
    (HORIZON, 1.0, 0, (48, 70)),  # w crosses 0 inside the image, exactly 0 on a line
    (HORIZON, 1.0, 23, (9, 70)),
    (STEEP, 1.0, 0, (20, 30)),  # factors up to ~1e90: beyond float32 (inf) and finite in float64
    (STEEP, 1e39, 3, (20, 30)),
    (STEEP, 1e290, 0, (20, 30)),  # beyond float64 near the origin: 0 there
    (M, 0.0, 5, (10, 40)),  # det 0: 0 everywhere (0 / 0 = NaN guarded where w = 0)
    (np.array([[1.0, 0, 0], [0, 1, 0], [np.nan, 0, 1]]), 1.0, 0, (6, 9)),  # NaN w: 0
    (np.array([[1.0, 0, 0], [0, 1, 0], [0.0, 0, 1e-110]]), 1.0, 0, (6, 9)),  # |w|^3 underflows to 0: 0
]


@pytest.mark.parametrize("channels", [1, 3, 4, 5])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_tiers_are_bit_identical(case, dtype, channels):
    m, det_m, row0, shape = CASES[case]
    src = _source(dtype, (*shape, channels), special=True)
    a, b = _both_tiers(src, m, det_m, row0)
    np.testing.assert_array_equal(a, b)  # NaN == NaN here (same positions required)
    assert (np.signbit(a) == np.signbit(b)).all()  # -0.0 vs 0.0 too


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_tier1_matches_the_formula(dtype):
    """Oracle: the factor in float64 per pixel (Python floats), rounded to out's dtype, times
    out.dtype(src); where that rounding overflows, the float64 product rounded once."""
    m, det_m, row0 = STEEP, 1e-9, 2
    src = _source(dtype, (12, 15, 3))
    out = np.empty(src.shape, _out_dtype(dtype))
    _scale_kernels._projective_rows(src, m, det_m, row0, out)
    od = out.dtype.type
    for y in range(12):
        for x in range(15):
            ww = abs(m[2, 0] * x + (m[2, 1] * (y + row0) + m[2, 2]))
            with np.errstate(all="ignore"):
                f = det_m / (ww * ww * ww) if ww else np.inf
            f = f if np.isfinite(f) else 0.0
            with np.errstate(over="ignore"):
                fr = od(f)
            for ch in range(3):
                expected = od(src[y, x, ch]) * fr if np.isfinite(fr) else od(np.float64(src[y, x, ch]) * f)
                assert out[y, x, ch] == expected or (np.isnan(expected) and np.isnan(out[y, x, ch]))


def test_huge_factors_keep_zero_counts_and_never_make_nan():
    """|w| = 1e-14 everywhere: factor 1e42, finite in float64, inf in float32."""
    src = np.full((20, 30, 3), 7, np.uint8)
    src[:, ::4] = 0
    flat = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1e-14]])
    for tier in (_scale_kernels._projective_numpy, _scale_kernels._projective_rows):
        out = np.empty(src.shape, np.float32)
        tier(src, flat, 1.0, 0, out)
        assert not np.isnan(out).any()
        assert (out[:, ::4] == 0).all() and np.isinf(out[:, 1::4]).all()
        out64 = np.empty(src.shape, np.float64)
        tier(src, flat, 1.0, 0, out64)
        np.testing.assert_allclose(out64, src * 1e42, rtol=1e-15)


def _tier0(src):
    out = np.empty(src.shape, np.float32)
    _scale_kernels._projective_numpy(src, M, 1.0, 0, out)
    return out


def test_dispatch_uses_tier1_once_compiled_and_tier0_for_other_layouts(monkeypatch):
    src = _source(np.uint8, (30, 40, 3))
    out = np.empty(src.shape, np.float32)
    assert _scale_kernels.projective_tier(src, M, out) == 1
    assert _scale_kernels.projective_tier(src[:, ::2], M, out[:, ::2]) == 0  # not C-contiguous
    assert _scale_kernels.projective_tier(src.astype(np.int16), M, out) == 0  # signature not compiled
    used = []
    monkeypatch.setattr(_scale_kernels, "_projective_rows", lambda *a: used.append(1))
    monkeypatch.setattr(_compiled, "_upgrade_setting", False)
    _scale_kernels.scale_by_projective_det(src, M, 1.0, 0, out)
    other = np.empty(src.shape, np.float32)
    _scale_kernels.scale_by_projective_det(src.astype(np.int16), M, 1.0, 0, other)  # tier 0
    assert used == [1]
    np.testing.assert_array_equal(other, _tier0(src))


def test_warp_results_are_the_same_on_both_tiers(monkeypatch, restore_threads):
    hom = HomographyTransform(M)
    img = _source(np.uint16, (130, 170, 3))
    threads.set_threads(2, opencv=False)
    fast = warp(img, hom, intensity="conserve")
    threads.set_threads(1, opencv=False)
    fast1 = warp(img, hom, intensity="conserve")
    monkeypatch.setattr(_scale_kernels, "projective_tier", lambda *a: 0)
    monkeypatch.setattr(_compiled, "_upgrade_setting", False)
    slow = warp(img, hom, intensity="conserve")
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast1, slow)


def test_tier1_releases_the_gil(restore_threads):
    src = _source(np.uint8, (1500, 1600, 3))
    out = np.empty(src.shape, np.float32)
    threads.set_threads(2, opencv=False)
    _scale_kernels.scale_by_projective_det(src, M, 1.0, 0, out)
    with ProgressProbe() as probe:
        progress = [probe.during(_scale_kernels._projective_rows, src, M, 1.0, 0, out) for _ in range(5)]
    # a GIL-holding call gives 0 every time (ProgressProbe); on a loaded box the counting thread
    # may miss a ~3 ms call's window, so one call with progress is the proof
    assert max(progress) > 0


UPGRADE_SCRIPT = """
import sys, numpy as np
from warpsvc import HomographyTransform, warp
from warpsvc.core import _scale_kernels as sk
img = np.zeros((50, 60, 3), np.uint8)
t = HomographyTransform([[1, 0, 1], [0, 1, 2], [1e-3, 0, 1]])
seen = []
for _ in range(3):
    seen.append((sk.projective_tier(img, t.inverse().matrix, np.empty(img.shape, np.float32)), "numba" in sys.modules))
    warp(img, t, intensity="conserve")
sk.PROJECTIVE_UPGRADE.join(300)
seen.append((sk.projective_tier(img, t.inverse().matrix, np.empty(img.shape, np.float32)), "numba" in sys.modules))
if seen[-1][0] == 1:
    signatures = len(sk._projective_rows.dispatcher().signatures)
    warp(img, t, intensity="conserve")  # tier 1, with the transform's read-only matrix
    warp(img.astype(np.float32), t, intensity="conserve")  # a new signature: tier 0, then compiled
    sk.PROJECTIVE_UPGRADE.join(300)
    seen.append(len(sk._projective_rows.dispatcher().signatures) - signatures)
print(seen)
"""


def test_background_upgrade_after_the_third_call():
    out = subprocess.run([sys.executable, "-c", UPGRADE_SCRIPT], capture_output=True, text=True, check=True,
                         timeout=600)
    seen = eval(out.stdout.strip().splitlines()[-1])
    assert seen[:3] == [(0, False)] * 3  # the first three calls: tier 0, numba never imported
    assert seen[3] == (1, True)  # after the 3rd: compiled in the background, tier 1
    assert seen[4] == 1  # the warp on tier 1 compiled nothing in its thread; float32 was added


def test_upgrade_can_be_turned_off():
    env = {"WARPSVC_KERNEL_UPGRADE": "0"}
    import os

    out = subprocess.run([sys.executable, "-c", UPGRADE_SCRIPT], capture_output=True, text=True, check=True,
                         timeout=600, env=dict(os.environ, **env))
    assert eval(out.stdout.strip().splitlines()[-1]) == [(0, False)] * 4


def test_failed_upgrade_is_logged_and_tier0_stays(caplog, monkeypatch):
    def broken(key):
        raise RuntimeError("no compiler here")

    upgrade = _compiled.BackgroundUpgrade(_scale_kernels._projective_rows, broken, after_calls=1)
    monkeypatch.setattr(_compiled, "_upgrade_setting", True)
    key = (np.dtype(np.uint8), np.dtype(np.float32))
    with caplog.at_level(logging.WARNING, logger="warpsvc.core._compiled"):
        upgrade.tier0_used(key)
        upgrade.join(60)
        upgrade.tier0_used(key)  # a failed key is not retried
        upgrade.join(60)
    assert not upgrade.ready(key)
    assert sum("staying on the numpy path" in r.getMessage() for r in caplog.records) == 1
