"""The strip kernels of ``intensity="conserve"`` and the polar maps (numpy / OpenCV over strips on
the pool of ``warpsvc.core.strips``; the projective scaling's tier 0): oracle values,
independence from the strip count, the GIL released, guards, polls, and no numba on these
paths."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from tests.test_kernels_parallel import ProgressProbe
from warpsvc import HomographyTransform, PolarTransform, warp
from warpsvc.core import _scale_kernels, strips, threads

RNG = np.random.default_rng(3)
RGB = (RNG.random((260, 310, 3)) * 255).astype(np.uint8)
M = np.array([[1.05, 0.02, -30.0], [0.01, 0.97, 12.0], [2e-4, -3e-4, 1.01]])


@pytest.fixture(autouse=True)
def tier0(monkeypatch):
    """These tests are about the strip kernels: the projective scaling stays on tier 0 (numpy)
    even when tier 1 is compiled in this process (tests/test_projective_tiers.py covers it)."""
    from warpsvc.core import _compiled

    monkeypatch.setattr(_scale_kernels, "projective_tier", lambda *a: 0)
    monkeypatch.setattr(_compiled, "_upgrade_setting", False)


@pytest.fixture
def restore_threads():
    previous = threads._chosen
    yield
    threads._chosen = previous


def _projective_oracle(src, m, det_m, row0, dtype):
    """The formula in float64, one pixel at a time along numpy's exact IEEE operations."""
    h, w = src.shape[:2]
    y, x = np.mgrid[row0:row0 + h, 0:w].astype(np.float64)
    ww = np.abs(m[2, 0] * x + (m[2, 1] * y + m[2, 2]))
    with np.errstate(divide="ignore", invalid="ignore"):
        f = det_m / (ww * ww * ww)
    f[~np.isfinite(f)] = 0.0
    return src * f[:, :, None], f


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_projective_scaling_matches_the_formula(dtype):
    src = (RNG.random((90, 130, 3)) * 200).astype(dtype)
    out = np.empty(src.shape, np.float64 if dtype == np.float64 else np.float32)
    det_m = abs(np.linalg.det(M))
    _scale_kernels.scale_by_projective_det(src, M, det_m, 17, out)
    exact, f = _projective_oracle(src.astype(np.float64), M, det_m, 17, out.dtype)
    if out.dtype == np.float64:
        np.testing.assert_allclose(out, exact, rtol=4e-16, atol=0)
    else:  # factor rounded to float32, then the float32 product: two roundings, <= 2^-23 relative
        np.testing.assert_array_equal(out, src.astype(np.float32) * f.astype(np.float32)[:, :, None])
        np.testing.assert_allclose(out, exact, rtol=2.0 ** -23, atol=0)


def test_projective_guards_and_huge_factors():
    """``w = 0`` gives 0 (never inf or NaN), non-finite ``|det M|`` gives 0 everywhere, and a
    factor beyond float32's range takes the exact path: 0 counts stay 0, others overflow to inf."""
    src = np.full((4, 9, 3), 7, np.uint8)
    src[:, 3] = 0
    m = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, -5.0]])  # w = x - 5
    out = np.empty(src.shape, np.float32)
    _scale_kernels.scale_by_projective_det(src, m, 1.0, 0, out)
    expected = [0.0 if x in (3, 5) else 7 / abs(x - 5) ** 3 for x in range(9)]
    np.testing.assert_allclose(out[:, :, 1], np.tile(expected, (4, 1)), rtol=1e-6)
    for det in (np.inf, np.nan):
        _scale_kernels.scale_by_projective_det(src, m, det, 0, out)
        assert (out == 0).all()
    _scale_kernels.scale_by_projective_det(src, m, 1e39, 0, out)  # 1e39 > float32 max
    assert np.isinf(out[:, 4]).all() and (out[:, 3] == 0).all() and (out[:, 5] == 0).all()
    assert not np.isnan(out).any()


def test_simple_kernels_are_the_numpy_formulation_bit_for_bit():
    f = np.float32(0.7311)
    for src in (RGB, RGB.astype(np.uint16) * 250, RGB.astype(np.float32) / 7):
        out = np.empty(src.shape, np.float32)
        _scale_kernels.scale_by_constant(src, f, out)
        np.testing.assert_array_equal(out, src.astype(np.float32) * f)
        cols = RNG.random(src.shape[1] * 3).astype(np.float32)
        _scale_kernels.scale_by_columns(src, cols, out)
        np.testing.assert_array_equal(out, src.astype(np.float32) * cols.reshape(1, -1, 3))
        fmap = RNG.random(src.shape[:2]).astype(np.float32)
        _scale_kernels.scale_by_map(src, fmap, out)
        np.testing.assert_array_equal(out, src.astype(np.float32) * fmap[:, :, None])
    inf_src = np.array([[[np.inf, -np.inf, 2.0]]], np.float32)
    _scale_kernels.scale_by_constant(inf_src, np.float32(2), out := np.empty_like(inf_src))
    np.testing.assert_array_equal(out, inf_src * 2)  # inf stays inf (no inf * 0 = NaN)


def test_polar_maps_match_opencv_warppolar():
    """Forward polar warps through the banded path (a poll forces it) equal cv2.warpPolar."""
    img = RGB
    for log in (False, True):
        pol = PolarTransform((150.0, 130.0), 120.0, (360, 140), log=log)
        flags = cv2.INTER_LINEAR | cv2.WARP_FILL_OUTLIERS | (cv2.WARP_POLAR_LOG if log else 0)
        ref = cv2.warpPolar(img, (140, 360), (150.0, 130.0), 120.0, flags)
        np.testing.assert_array_equal(warp(img, pol, poll=lambda: None), ref)
        np.testing.assert_array_equal(warp(img, pol), ref)


CASES = {
    "homography": lambda: warp(RGB, HomographyTransform(M), intensity="conserve"),
    "polar": lambda: warp(RGB, PolarTransform((150.0, 130.0), 120.0, (500, 300)), intensity="conserve"),
    "polar banded": lambda: warp(RGB, PolarTransform((150.0, 130.0), 120.0, (500, 300)), intensity="conserve",
                                 border="reflect"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_results_do_not_depend_on_the_strip_count(case, restore_threads, monkeypatch):
    threads.set_threads(1, opencv=False)
    one = CASES[case]()
    threads.set_threads(2, opencv=False)
    two = CASES[case]()
    monkeypatch.setattr(strips, "strip_count", lambda work=None: 7)
    monkeypatch.setattr(_scale_kernels, "CHUNK_VALUES", 1000)
    monkeypatch.setattr(_scale_kernels, "CHAIN_CHUNK_VALUES", 700)
    seven = CASES[case]()
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, seven)


@pytest.mark.parametrize("name", ["scale_by_projective_det", "scale_by_constant", "scale_by_columns"])
def test_scaling_releases_the_gil(name, restore_threads):
    """Another Python thread keeps counting while a large scaling call runs (see ProgressProbe)."""
    src = (RNG.random((1500, 1600, 3)) * 255).astype(np.uint8)
    out = np.empty(src.shape, np.float32)
    args = {"scale_by_projective_det": (src, M, 1.0, 0, out),
            "scale_by_constant": (src, np.float32(0.5), out),
            "scale_by_columns": (src, np.ones(1600 * 3, np.float32), out)}[name]
    fn = getattr(_scale_kernels, name)
    threads.set_threads(2, opencv=False)
    fn(*args)
    with ProgressProbe() as probe:
        progress = [probe.during(fn, *args) for _ in range(5)]
    # a GIL-holding call gives 0 every time (ProgressProbe); on a loaded box the counting thread
    # may miss a ~3 ms call's window, so one call with progress is the proof
    assert max(progress) > 0


def test_strip_errors_propagate_and_the_pool_keeps_working(restore_threads):
    threads.set_threads(2, opencv=False)

    def failing(r0, r1):
        if r0 > 0:
            raise ValueError("strip failed")

    with pytest.raises(ValueError, match="strip failed"):
        strips.run_strips(failing, 100, 1 << 30)
    seen = []
    assert strips.run_strips(lambda a, b: seen.append((a, b)), 100, 1 << 30) == 2
    assert sorted(seen) == [(0, 50), (50, 100)]


def test_polar_band_path_is_polled_and_aborts():
    pol = PolarTransform((150.0, 130.0), 120.0, (1200, 300))
    calls = []
    banded = warp(RGB, pol, intensity="conserve", poll=lambda: calls.append(1))
    assert len(calls) >= 1200 * 300 // (1 << 17)
    np.testing.assert_array_equal(banded, warp(RGB, pol, intensity="conserve"))

    class Abort(Exception):
        pass

    def abort():
        raise Abort

    with pytest.raises(Abort):
        warp(RGB, pol, intensity="conserve", poll=abort)


def test_conserve_and_polar_warps_do_not_import_numba():
    code = ("import sys, numpy as np, warpsvc\n"
            "from warpsvc import AffineTransform, HomographyTransform, PolarTransform, warp\n"
            "img = np.zeros((50, 60, 3), np.uint8)\n"
            "warp(img, AffineTransform.from_components(scale=(0.9, 0.8)), intensity='conserve')\n"
            "warp(img, HomographyTransform([[1, 0, 1], [0, 1, 2], [1e-3, 0, 1]]), intensity='conserve')\n"
            "warp(img, PolarTransform((30.0, 25.0), 20.0, (60, 30)), intensity='conserve')\n"
            "warp(img, PolarTransform((30.0, 25.0), 20.0, (60, 30)).inverse(), (50, 60))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
