"""Cost control of warp / jacobian_determinant: antialias budgets, chain length, poll()."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.oracles import point_field, shrink3_homography
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose, jacobian_determinant, warp
from warpsvc.core import _scale_kernels, _splat_kernels, antialias, grids, sampling
from warpsvc.core.budget import WarpLimits
from warpsvc.core.errors import InvalidArgumentError, ResourceExhaustedError
from warpsvc.core.transforms.compose import ComposedTransform
from warpsvc.core.warp import antialias_cost


warp_module = sys.modules["warpsvc.core.warp"]  # the package attribute of that name is the function


class Abort(Exception):
    """What a server's poll raises (its own DeadlineExceeded / Cancelled)."""


class Poll:
    """Counts calls; raises :class:`Abort` on call number ``fail_at`` (never if ``None``)."""

    def __init__(self, fail_at=None):
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self):
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise Abort(f"deadline at poll {self.calls}")


# ---- antialias budget ------------------------------------------------------------------------------

ANISOTROPIC = AffineTransform.from_components(scale=(32.0, 1 / 32), translation=(-3000, 95))  # m = 48: 2304 nodes/px


def test_anisotropic_antialias_is_refused_before_the_work_naming_the_field(monkeypatch):
    launched = []
    monkeypatch.setattr(_splat_kernels, "scatter_matrix", lambda *a: launched.append(1))
    img = np.ones((200, 200))
    cost = antialias_cost(img, ANISOTROPIC)
    assert cost.nodes > 1.5 * WarpLimits().max_nodes_per_pixel * cost.pixels  # the estimate sees the stretch
    with pytest.raises(ResourceExhaustedError) as exc:
        warp(img, ANISOTROPIC, antialias=True)
    assert exc.value.field == "antialias" and "nodes" in str(exc.value)
    assert launched == []  # refused before any kernel ran


def test_just_under_the_node_budget_succeeds_just_over_is_refused():
    img, _ = point_field((200, 200), step=11, margin=8)
    cost = antialias_cost(img, ANISOTROPIC, intensity="conserve")
    ratio = cost.nodes / cost.pixels
    at = WarpLimits(max_nodes_per_pixel=ratio)
    out = warp(img, ANISOTROPIC, intensity="conserve", antialias=True, limits=at)
    inside = ANISOTROPIC.map(np.argwhere(img > 0)[:, ::-1].astype(float))
    keep = (inside[:, 0] > 2) & (inside[:, 0] < 197) & (inside[:, 1] > 2) & (inside[:, 1] < 197)
    assert keep.any()  # some sources land inside: the call did real work
    with pytest.raises(ResourceExhaustedError) as exc:
        warp(img, ANISOTROPIC, intensity="conserve", antialias=True, limits=WarpLimits(max_nodes_per_pixel=ratio * 0.999))
    assert exc.value.field == "antialias"
    assert np.isfinite(out).all()


def test_ordinary_warps_fit_the_default_budget():
    img, _ = point_field()
    for t, shape in [(shrink3_homography(), (230, 230)),
                     (AffineTransform.from_components(scale=(1.01, 1.01), rotation=0.3), (620, 620)),
                     (PolarTransform((300.0, 300.0), 280.0, (720, 300)), None)]:
        cost = antialias_cost(img, t, shape)
        assert cost.nodes <= WarpLimits().max_nodes_per_pixel * cost.pixels
        warp(img[:50, :50], t, (40, 40), antialias=True)  # and the call runs


def test_border_extension_costs_one_window_not_its_size():
    """Shrinking 3x with a wrap border extends the source 3x3 over the preimage (9x the source);
    it is read one window of rows at a time, so the estimate and the real peak (tracemalloc)
    stay within one window of the constant border's, far below the extension's float64 size;
    a tight memory budget still refuses the call naming ``antialias``."""
    import tracemalloc

    img = np.ones((600, 600))
    t = AffineTransform.from_components(scale=(1 / 3, 1 / 3), translation=(200, 200))
    plain = antialias_cost(img, t, (600, 600))
    wrapped = antialias_cost(img, t, (600, 600), border="wrap")
    assert plain.extension_pixels == 0
    assert wrapped.extension_pixels >= 8 * 600 * 600
    window = 1.2 * antialias.WINDOW_BYTES
    assert wrapped.working_bytes <= plain.working_bytes + window
    assert wrapped.working_bytes < 0.5 * 16 * wrapped.extension_pixels  # vs the extension in float64 + coverage
    peaks = {}
    for border in ("constant", "wrap"):
        warp(img, t, (600, 600), antialias=True, border=border)  # warm
        tracemalloc.start()
        out = warp(img, t, (600, 600), antialias=True, border=border)
        peaks[border] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["wrap"] <= wrapped.working_bytes
    assert peaks["wrap"] <= peaks["constant"] + window
    np.testing.assert_allclose(out[5:-5, 5:-5], 1.0, rtol=1e-9)  # wrap of a constant image is constant
    per_sample = wrapped.working_bytes / wrapped.pixels
    fits = WarpLimits(max_bytes_per_sample=per_sample * (1 + 1e-9), floor_bytes=1)
    warp(img, t, (600, 600), antialias=True, border="wrap", limits=fits)
    tight = WarpLimits(max_bytes_per_sample=per_sample * (1 - 1e-9), floor_bytes=1)
    with pytest.raises(ResourceExhaustedError) as exc:
        warp(img, t, (600, 600), antialias=True, border="wrap", limits=tight)
    assert exc.value.field == "antialias" and "window" in str(exc.value)


@pytest.mark.parametrize("border,transform", [
    ("wrap", HomographyTransform([[1.2, 0.1, -20], [0.05, 0.9, 10], [0.0008, 0.0003, 1]])),  # mixed m: tent sums
    ("reflect", AffineTransform.from_components(scale=(0.7, 1.3), rotation=0.4, translation=(40, -30))),
    ("symmetric", PolarTransform((150.0, 140.0), 130.0, (300, 130))),  # generic path
    ("constant", PolarTransform((150.0, 140.0), 130.0, (300, 130)).inverse()),  # periodic rows: extended
])
def test_source_windows_change_no_value(monkeypatch, border, transform):
    """Windows of one block row (the smallest), of a few, and the whole source in one: the same
    bits (every output pixel receives the same deposits in the same order)."""
    rng = np.random.default_rng(7)
    img = rng.random((300, 280, 2)) * 100
    if transform.source_row_period() is not None:
        img = img[:, :130]
    shape = (260, 300)
    runs = {}
    for name, size in [("one", 1 << 40), ("few", 1 << 20), ("rows", 1)]:
        monkeypatch.setattr(antialias, "WINDOW_BYTES", size)
        runs[name] = warp(img, transform, shape, antialias=True, border=border, border_value=3.0)
    assert np.isfinite(runs["one"]).all() and np.abs(runs["one"]).max() > 1
    np.testing.assert_array_equal(runs["few"], runs["one"])
    np.testing.assert_array_equal(runs["rows"], runs["one"])


def test_estimate_bounds_the_memory_really_used():
    """The estimate is an upper bound of the scatter's peak allocations (tracemalloc sees numpy)."""
    import tracemalloc

    img, _ = point_field()
    t = shrink3_homography()
    for border in ("constant", "reflect"):
        cost = antialias_cost(img, t, (230, 230), border=border)
        warp(img, t, (230, 230), antialias=True, border=border)  # warm
        tracemalloc.start()
        warp(img, t, (230, 230), antialias=True, border=border)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= cost.working_bytes, (border, peak, cost.working_bytes)
        assert peak >= 0.3 * cost.working_bytes  # and it is not wildly pessimistic


def test_antialias_cost_validates_its_arguments():
    for kwargs, field in [({"border": "mirror"}, "border"), ({"border_value": "x"}, "border_value"),
                          ({"intensity": "sum"}, "intensity")]:
        with pytest.raises(InvalidArgumentError) as exc:
            antialias_cost(np.ones((5, 5)), AffineTransform.identity(), **kwargs)
        assert exc.value.field == field


def test_bad_limits_are_rejected():
    for kwargs in ({"max_transform_steps": 0}, {"max_nodes_per_pixel": -1.0}, {"max_bytes_per_sample": "x"}):
        with pytest.raises(InvalidArgumentError) as exc:
            WarpLimits(**kwargs)
        assert exc.value.field == "limits"
    with pytest.raises(InvalidArgumentError) as exc:
        warp(np.ones((5, 5)), AffineTransform.identity(), limits={"max_transform_steps": 3})
    assert exc.value.field == "limits"


# ---- transform chains ------------------------------------------------------------------------------

def _chain(n):
    p = PolarTransform((10.0, 10.0), 8.0, (36, 20))
    steps = [p if i % 2 == 0 else p.inverse() for i in range(n)]
    return compose(*steps)


def test_chain_length_is_bounded_in_warp_and_jacobian_determinant():
    img = np.ones((20, 20))
    limits = WarpLimits(max_transform_steps=4)
    ok = _chain(4)
    assert len(ok.steps) == 4
    warp(img, ok, (20, 20), limits=limits)
    jacobian_determinant(ok, (20, 20), limits=limits)
    for call in (lambda: warp(img, _chain(5), (20, 20), limits=limits),
                 lambda: jacobian_determinant(_chain(5), (20, 20), limits=limits),
                 lambda: warp(img, _chain(17), (20, 20))):  # default: 16
        with pytest.raises(ResourceExhaustedError) as exc:
            call()
        assert exc.value.field == "transform" and "steps" in str(exc.value)


def test_matrices_in_a_chain_count_once():
    a = AffineTransform.from_components(rotation=0.1)
    chain = compose(*([a] * 40))  # multiplied out: one step
    warp(np.ones((20, 20)), chain, limits=WarpLimits(max_transform_steps=1))


# ---- poll ------------------------------------------------------------------------------------------

RGB = (np.arange(600 * 700 * 3) % 251).astype(np.uint8).reshape(600, 700, 3)
HOM = HomographyTransform.from_points([[0, 0], [699, 0], [699, 599], [0, 599]],
                                      [[20, 10], [680, 30], [650, 590], [10, 570]])
POLAR = PolarTransform((350.0, 300.0), 290.0, (720, 300))


@pytest.mark.parametrize("name,call", [
    ("plain matrix", lambda poll: warp(RGB, HOM, poll=poll)),
    ("plain remap (polar)", lambda poll: warp(RGB, POLAR, poll=poll)),
    ("float64 bilinear", lambda poll: warp(RGB[:, :, 0].astype(np.float64), POLAR, poll=poll)),
    ("conserve homography", lambda poll: warp(RGB, HOM, intensity="conserve", poll=poll)),
    ("conserve composition", lambda poll: warp(RGB, compose(HOM, POLAR), (720, 300), intensity="conserve",
                                               poll=poll)),
    ("antialias matrix", lambda poll: warp(RGB, HOM, (300, 350), antialias=True, poll=poll)),
    ("antialias generic", lambda poll: warp(RGB[:200, :200], PolarTransform((100.0, 100.0), 90.0, (360, 90)),
                                            antialias=True, poll=poll)),
    ("jacobian_determinant", lambda poll: jacobian_determinant(compose(HOM, POLAR), (4000, 600), poll=poll)),
])
def test_poll_is_called_and_its_exception_propagates(name, call):
    counting = Poll()
    result = call(counting)
    assert counting.calls >= 1
    again = call(None)
    np.testing.assert_array_equal(result, again)  # polling changes nothing
    aborting = Poll(fail_at=1)
    with pytest.raises(Abort):
        call(aborting)
    assert aborting.calls == 1  # nothing polled (hence nothing worked on) after the raise


def test_antialias_stops_launching_kernels_after_the_abort(monkeypatch):
    """A large antialiased warp is polled between bands of <= ~NODES_PER_BAND nodes; an abort at
    poll 3 leaves exactly 3 launched bands (no work after the raise)."""
    monkeypatch.setattr(antialias, "NODES_PER_BAND", 1 << 18)
    launched = []
    real = _splat_kernels.scatter_matrix
    monkeypatch.setattr(_splat_kernels, "scatter_matrix", lambda *a: (launched.append(1), real(*a)))
    img = np.ones((2000, 2000))
    t = AffineTransform.from_components(scale=(0.5, 0.5), rotation=0.2, translation=(300, 100))
    cost = antialias_cost(img, t, (1200, 1200), intensity="conserve")
    counting = Poll()
    warp(img, t, (1200, 1200), intensity="conserve", antialias=True, poll=counting)
    assert counting.calls >= cost.nodes / (2 * antialias.NODES_PER_BAND) >= 5  # polled often enough
    assert len(launched) == counting.calls
    launched.clear()
    with pytest.raises(Abort):
        warp(img, t, (1200, 1200), intensity="conserve", antialias=True, poll=Poll(fail_at=3))
    assert len(launched) == 3


def test_large_matrix_warps_are_banded_only_when_polled(monkeypatch):
    """Banded OpenCV warps use the band's matrix ``M @ shift(r0)``: coordinates differ from the
    single call by float64 round-off, so a few uint8 values round the other way (<= 1 count)."""
    monkeypatch.setattr(sampling, "POLL_BAND_PIXELS", 700 * 50)
    counting = Poll()
    banded = warp(RGB, HOM, poll=counting)
    assert counting.calls == 12  # 600 rows in bands of 50
    single = warp(RGB, HOM)
    diff = np.abs(banded.astype(int) - single)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005
    assert (warp(RGB, HOM, poll=None) == single).all()  # without a poll: one OpenCV call


def test_conserve_scaling_is_polled_per_band(monkeypatch):
    monkeypatch.setattr(warp_module, "SCALE_BAND_ELEMENTS", 700 * 3 * 100)
    launched = []
    real = _scale_kernels.scale_by_projective_det
    monkeypatch.setattr(_scale_kernels, "scale_by_projective_det", lambda *a: (launched.append(1), real(*a)))
    banded = warp(RGB, HOM, intensity="conserve", poll=Poll())
    assert len(launched) == 6
    launched.clear()
    with pytest.raises(Abort):
        warp(RGB, HOM, intensity="conserve", poll=Poll(fail_at=3))  # poll 1: after the OpenCV warp
    assert len(launched) == 2
    monkeypatch.setattr(warp_module, "SCALE_BAND_ELEMENTS", 1 << 22)
    np.testing.assert_array_equal(banded, warp(RGB, HOM, intensity="conserve"))
    launched.clear()
    monkeypatch.setattr(warp_module, "SCALE_BAND_ELEMENTS", 700 * 3 * 100)
    np.testing.assert_array_equal(banded, warp(RGB, HOM, intensity="conserve"))  # no poll: nothing to band for
    assert len(launched) == 1


def _polar_chain(n, side=400):
    """``n`` alternating forward / inverse polar steps on ``side`` x ``side`` grids (none merge)."""
    p = PolarTransform((side / 2, side / 2), side * 0.4, (side, side))
    q = PolarTransform((side / 2, side / 2), side * 0.4, (side, side), inverse=True, cartesian_shape=(side, side))
    return compose(*[p if i % 2 == 0 else q for i in range(n)])


CHAIN_CALLS = {
    "warp": lambda t, poll: warp(RGB[:4, :4], t, (400, 400), poll=poll),
    "warp float64": lambda t, poll: warp(RGB[:50, :50, 0].astype(np.float64), t, (400, 400), poll=poll),
    "jacobian_determinant": lambda t, poll: jacobian_determinant(t, (400, 400), poll=poll),
}


@pytest.mark.parametrize("name", list(CHAIN_CALLS))
def test_polls_scale_with_the_chain_length(monkeypatch, name):
    """Coordinate and determinant maps run in sub-blocks of GRID_WORK pixel-steps: a 16-step
    chain is polled about 16 times as often as one step on the same grid (so a deadline stops it
    as promptly), an abort at poll 5 leaves exactly 5 sub-blocks evaluated, and the blocking
    changes no value (bit-identical to one block: every value is pointwise)."""
    call = CHAIN_CALLS[name]
    one, chain = Poll(), Poll()
    call(_polar_chain(1), one)
    blocked = call(_polar_chain(16), chain)
    assert chain.calls >= 16 * 400 * 400 / grids.GRID_WORK
    assert chain.calls >= 6 * one.calls
    evaluated = []
    for hook in ("sampling_grid", "determinant_grid"):
        real = getattr(ComposedTransform, hook)
        monkeypatch.setattr(ComposedTransform, hook,
                            lambda self, *a, _real=real, **k: (evaluated.append(1), _real(self, *a, **k))[1])
    with pytest.raises(Abort):
        call(_polar_chain(16), Poll(fail_at=5))
    assert len(evaluated) == 5
    monkeypatch.setattr(grids, "GRID_WORK", 1 << 40)
    single = call(_polar_chain(16), None)
    np.testing.assert_array_equal(blocked, single)


def test_poll_must_be_callable():
    with pytest.raises(InvalidArgumentError) as exc:
        warp(RGB, HOM, poll=3)
    assert exc.value.field == "poll"
    with pytest.raises(InvalidArgumentError) as exc:
        jacobian_determinant(HOM, (10, 10), poll="soon")
    assert exc.value.field == "poll"
