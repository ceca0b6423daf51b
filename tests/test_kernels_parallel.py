"""Compiled kernels: GIL released, results independent of the thread count, guards kept (the
fast-math flag set has no nnan/ninf), thread setting (affinity, cgroup quota, environment)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data

from tests.oracles import point_field, shrink3_homography
from tests.test_warp_opencv import NotAMatrix
from warpsvc import AffineTransform, HomographyTransform, InvalidArgumentError, PolarTransform, compose, warp
from warpsvc.core import _compiled, _scale_kernels, _splat_kernels, antialias, threads


@pytest.fixture
def restore_threads():
    previous = threads._chosen
    yield
    threads._chosen = previous


# ---- the GIL ---------------------------------------------------------------------------------------

class ProgressProbe:
    """Another Python thread counting loop iterations; ``during(fn)`` runs ``fn`` in the calling
    thread and returns how many iterations the counter made meanwhile.

    The switch interval is raised to 2 s, so a thread that holds the GIL is not preempted during
    a call shorter than that: the counter can only advance while the caller has released the GIL
    (the counting thread yields with ``sleep(0)`` every 200 iterations so the caller gets it back
    as soon as it asks)."""

    def __init__(self):
        self.count = 0
        self.stop = False
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        import time

        while not self.stop:
            self.count += 1
            if self.count % 200 == 0:
                time.sleep(0)

    def __enter__(self):
        _scale_kernels.PROJECTIVE_UPGRADE.join()  # a background compile would hold the GIL meanwhile
        self.interval = sys.getswitchinterval()
        self.thread.start()
        sys.setswitchinterval(2.0)
        return self

    def __exit__(self, *exc):
        sys.setswitchinterval(self.interval)
        self.stop = True
        self.thread.join()

    def during(self, fn, *args):
        import time

        time.sleep(0.002)  # let the counter run: its wait for the GIL starts afresh (no forced switch)
        before = self.count
        fn(*args)
        return self.count - before


def _busy_kernel(nogil):
    def busy(n):
        acc = 0.0
        for i in range(n):
            acc += (i % 7) * 1e-3
        return acc

    import numba

    return numba.njit(nogil=nogil, cache=False)(busy)  # not cached: both variants share a source


def test_probe_detects_a_kernel_that_holds_the_gil():
    """Control: the method tells a GIL-holding kernel from a GIL-free one."""
    holding, free = _busy_kernel(False), _busy_kernel(True)
    holding(10), free(10)  # compile outside the probe
    with ProgressProbe() as probe:
        held = [probe.during(holding, 100_000_000) for _ in range(3)]
        released = [probe.during(free, 100_000_000) for _ in range(3)]
    assert held == [0, 0, 0]
    assert min(released) > 0


def test_antialias_scatter_releases_the_gil(monkeypatch):
    """A long antialiased warp in one thread; another Python thread keeps counting meanwhile."""
    progress = []
    real = _splat_kernels.scatter_matrix

    def observed(*args):
        progress.append(probe.during(real, *args))

    img = ndi.zoom(data.camera().astype(np.float64), 2.0, order=1)  # 1024 x 1024
    t = AffineTransform.from_components(scale=(1.6, 1.6), rotation=0.3)  # m = 3: ~9 nodes per pixel
    warp(img[:64, :64], t, (80, 80), antialias=True)  # compile / load outside the probe
    monkeypatch.setattr(_splat_kernels, "scatter_matrix", observed)
    with ProgressProbe() as probe:
        warp(img, t, (1700, 1700), antialias=True, intensity="conserve")
    assert len(progress) >= 3  # several bands
    assert min(progress) > 0  # the other thread ran during every kernel launch


def test_projective_tier1_is_parallel_gil_free_and_plain_ieee():
    """Tier 1 of the projective scaling (the only compiled scaling kernel; the others are numpy
    strips, see tests/test_conserve_strips.py): parallel, GIL released, and no fast-math at all,
    so it stays bit-identical to tier 0 (tests/test_projective_tiers.py)."""
    opts = _scale_kernels._projective_rows._options
    assert opts.get("parallel") is True
    assert _compiled._DEFAULTS["nogil"] is True
    assert "fastmath" not in opts
    assert _scale_kernels._projective_rows.dispatcher().targetoptions["nogil"] is True


@pytest.mark.parametrize("name", ["tent_sums", "scatter_matrix", "list_nodes", "scatter_points"])
def test_splat_kernels_are_parallel_gil_free_and_keep_guards(name):
    opts = getattr(_splat_kernels, name).targetoptions
    assert opts["nogil"] is True and opts["parallel"] is True
    fm = opts.get("fastmath")
    flags = set(getattr(fm, "flags", fm or ()))
    assert not {"fast", "nnan", "ninf"} & flags


# ---- thread count does not change results -----------------------------------------------------------

def _cases():
    cam = ndi.zoom(data.camera().astype(np.float64), 600 / 512, order=1)[:600, :600]
    pts, _ = point_field()
    rgb = (np.random.default_rng(5).random((300, 340, 3)) * 255).astype(np.uint8)
    pol = PolarTransform((120.0, 120.0), 115.0, (360, 160))
    hom = HomographyTransform.from_points([[0, 0], [340, 0], [340, 300], [0, 300]],
                                          [[20, 10], [320, 30], [310, 290], [10, 270]])
    aff = AffineTransform.from_components(scale=(1.7, 0.6), rotation=0.3, translation=(20, 10))
    return {
        "aa matrix": lambda: warp(pts, shrink3_homography(), (230, 230), intensity="conserve", antialias=True),
        "aa matrix mixed m, plain": lambda: warp(rgb, aff, (400, 500), antialias=True),
        "aa reflect border": lambda: warp(rgb, aff, (400, 500), antialias=True, border="reflect"),
        "aa generic": lambda: warp(cam, NotAMatrix(shrink3_homography()), (230, 230), intensity="conserve",
                                   antialias=True),
        "aa polar (periodic rows)": lambda: warp(cam[:240, :240], pol, intensity="conserve", antialias=True),
        "aa inverse polar": lambda: warp(cam[:360, :160], pol.inverse(), (240, 240), antialias=True),
        "conserve homography": lambda: warp(rgb, hom, intensity="conserve"),
        "conserve affine": lambda: warp(rgb, aff, intensity="conserve"),
        "conserve polar": lambda: warp(rgb, PolarTransform((170, 150), 140.0, (500, 300)), intensity="conserve"),
        "conserve composition": lambda: warp(rgb, compose(hom, pol), (360, 160), intensity="conserve"),
        "plain polar": lambda: warp(rgb, PolarTransform((170, 150), 140.0, (500, 300))),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_results_bit_identical_for_1_and_n_threads(case, restore_threads, monkeypatch):
    """Scaling is elementwise; the scatter splits output rows into strips that each own their
    rows and visit nodes in the global order, so every pixel sums the same terms in the same
    order. ``n`` = the CPUs here, and 7 strips on whatever threads numba has (the partition is
    what could change a result)."""
    fn = _cases()[case]
    threads.set_threads(1, opencv=False)
    one = fn()
    threads.set_threads(threads.available_cpus(), opencv=False)
    many = fn()
    real = antialias.kernel_threads
    monkeypatch.setattr(antialias, "kernel_threads", lambda work=None: (real(), 7)[1])
    seven_strips = fn()
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one, seven_strips)


# ---- guards ----------------------------------------------------------------------------------------

def test_projective_scaling_guards_zero_and_non_finite_factors():
    """``w = 0`` (factor infinite) and non-finite ``|det M|`` give 0, never inf/NaN: the
    ``isfinite`` guard is code, not a compiler assumption (no nnan/ninf)."""
    src = np.full((4, 9, 3), 7, np.uint8)
    m = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, -5.0]])  # w = x - 5
    out = np.empty(src.shape, np.float32)
    _scale_kernels.scale_by_projective_det(src, m, 1.0, 0, out)
    expected = [7 / abs(x - 5) ** 3 if x != 5 else 0.0 for x in range(9)]
    np.testing.assert_allclose(out[:, :, 1], np.tile(expected, (4, 1)), rtol=1e-6)
    for det in (np.inf, np.nan):
        _scale_kernels.scale_by_projective_det(src, m, det, 0, out)
        assert (out == 0).all()


def test_conserve_with_a_horizon_in_view_is_finite():
    t = HomographyTransform([[1, 0, 0], [0, 1, 0], [0.004, 0, 1]])  # inverse has a horizon in the output
    img = np.full((100, 400), 5.0, np.float32)
    out = warp(img, t, (100, 400), intensity="conserve")
    assert np.isfinite(out).all()


def test_polar_pole_keeps_its_flux():
    """A point source at the pole: its nodes have infinite Jacobian rows (the guard gives them the
    widest footprint and keeps their mass; with nnan/ninf fast math the guard was compiled away
    and 1.2 % of the flux was lost)."""
    img = np.zeros((240, 240))
    img[120, 120] = 1000.0
    out = warp(img, PolarTransform((120.0, 120.0), 115.0, (360, 160)), intensity="conserve", antialias=True)
    assert np.isfinite(out).all()
    assert abs(out.sum() / 1000.0 - 1) < 5e-3


# ---- the thread setting ----------------------------------------------------------------------------

def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_quota(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads._cgroup_quota(v1) is None


def test_available_cpus_follows_affinity_and_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda root=None: None)
    assert threads.available_cpus() == 6
    monkeypatch.setattr(threads, "_cgroup_quota", lambda root=None: 2.5)
    assert threads.available_cpus() == 3


def test_environment_and_explicit_setting(monkeypatch, restore_threads):
    threads._chosen = None
    monkeypatch.setenv("WARPSVC_KERNEL_THREADS", "3")
    assert threads.get_threads() == 3
    threads._chosen = None
    monkeypatch.setenv("WARPSVC_KERNEL_THREADS", "three")
    with pytest.raises(InvalidArgumentError) as exc:
        threads.get_threads()
    assert exc.value.field == "WARPSVC_KERNEL_THREADS"
    monkeypatch.delenv("WARPSVC_KERNEL_THREADS")
    assert threads.set_threads(None, opencv=False) == threads.available_cpus()
    assert threads.set_threads(1, opencv=False) == 1 and threads.kernel_threads() == 1
    threads.set_threads(2, opencv=False)
    assert threads.kernel_threads(10) == 1  # a small launch stays on the calling thread
    import numba

    assert threads.kernel_threads(1 << 30) == min(2, numba.config.NUMBA_NUM_THREADS)
    for bad in (0, -2, 1.5, True, "x"):
        with pytest.raises(InvalidArgumentError) as exc:
            threads.set_threads(bad, opencv=False)
        assert exc.value.field == "threads"
