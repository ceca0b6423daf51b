"""Tier 0's fast paths (``warpsvc/core/_splat_numpy.py``) against tier 1 (the compiled kernels
of ``warpsvc/core/_splat_kernels.py``), bit for bit, on inputs built to reach each path: the flat
corner reads and per-channel bilinear values of ``node_values``, ``_deposit``'s offset-major
weights with node-major deposits (every slot depositing, or some picked; a strip's rows only;
non-finite values, whose zero-share slots must not be added), the reductions of
``scatter_points`` (chunks landing wholly inside or not, NaN positions, dead nodes, poles), and
``_half_width`` against its definition. Whole warps through both tiers: ``tests/test_antialias_tiers.py``."""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc.core import _splat_numpy as k
from warpsvc.core import antialias


@pytest.fixture(scope="module")
def k1():
    antialias.compile_tier1()
    from warpsvc.core import _splat_kernels

    return _splat_kernels


# -- inputs -------------------------------------------------------------------------------------

def _window(rng, h, w, nch, specials=True):
    """A padded source window (``PAD`` zero rows / columns) with negative zeros, NaN and
    infinities among its values when ``specials``."""
    src = np.zeros((h + 2 * k.PAD, w + 2 * k.PAD, nch))
    inner = rng.normal(size=(h, w, nch))
    inner[rng.random((h, w, nch)) < 0.2] = 0.0
    if specials:
        flat = inner.reshape(-1)
        picks = rng.choice(flat.size, 40, replace=False)
        flat[picks[:10]] = -0.0
        flat[picks[10:20]] = np.nan
        flat[picks[20:30]] = np.inf
        flat[picks[30:]] = -np.inf
    src[k.PAD:k.PAD + h, k.PAD:k.PAD + w] = inner
    return src


def _nodes(rng, n, h, w, ms=(1, 2, 3), lo=-1):
    """``(xy, m)``: nodes on lattices of factor ``m`` (pixel centres and fractions ``k / m``),
    in pixels ``lo ..`` (-1: some read the zero padding)."""
    m = rng.choice(ms, n)
    kx, ky = rng.integers(0, 3, n) % m, rng.integers(0, 3, n) % m
    xy = np.stack([rng.integers(lo, w, n) + kx * (1.0 / m), rng.integers(lo, h, n) + ky * (1.0 / m)], 1)
    return xy, m.astype(np.int64)


def _same(a, b):
    """The same bits, except a NaN's sign: which operand's NaN an IEEE operation returns is the
    hardware's choice, and the two tiers' operand order differs (so did it before these paths)."""
    assert a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    assert a[~nan].tobytes() == b[~nan].tobytes()


# -- tests --------------------------------------------------------------------------------------

def _both(k1, src, xy, m, pos, rows, strips, shape, nch):
    """Accumulators of tier 0's and tier 1's ``scatter_points`` on the same nodes."""
    out = []
    for kern in (k, k1):
        acc = np.zeros((shape[0] + 2 * k.GUARD, shape[1] + 2 * k.GUARD, nch))
        kern.scatter_points(src, xy, m, pos, rows, strips, acc, 0)
        out.append(acc)
    return out


def test_half_width_is_its_definition():
    """``clip(norm / m, 1e-9, 1)`` with NaN and infinite norms (a pole) as the widest footprint."""
    norm = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-12, 1e-9, 0.3, 1.0, 2.5, 1e308, -4.0])
    inv_m = np.full(len(norm), 0.5)
    h = norm * inv_m
    expected = np.clip(np.where(h < np.inf, h, 1.0), 1e-9, 1.0)
    _same(k._half_width(norm, inv_m), expected)


@pytest.mark.parametrize("nch", [1, 3])
@pytest.mark.parametrize("zeros", [True, False])
def test_scatter_points_same_bits_as_tier1(k1, nch, zeros):
    """Chunks wholly inside (the slices path) and not (10 % of one chunk's nodes outside, 1 % at
    NaN), dead nodes (value 0) with ``zeros``, NaN / infinite / -0 source values, poles (infinite
    or NaN row norms), one strip and two strips (tier 0 covers both at once)."""
    rng = np.random.default_rng(10 + nch)
    h, w, ho, wo = 30, 40, 25, 35
    src = _window(rng, h, w, nch)
    if not zeros:
        inner = src[k.PAD:-k.PAD, k.PAD:-k.PAD]
        inner[inner == 0.0] = 0.5
    xy, m = _nodes(rng, 3 * k.POINT_CHUNK_NODES + 123, h, w, lo=-1 if zeros else 0)
    pos = np.stack([xy[:, 0] * 0.8 + 1.0, xy[:, 1] * 0.8 + 0.5], 1)
    rows = rng.uniform(0.2, 1.2, (len(xy), 2))
    second = slice(k.POINT_CHUNK_NODES, 2 * k.POINT_CHUNK_NODES)
    pos[second][rng.random(k.POINT_CHUNK_NODES) < 0.1] = [-50.0, 3.0]
    pos[second][rng.random(k.POINT_CHUNK_NODES) < 0.01] = np.nan
    rows[rng.random(len(xy)) < 0.01] = np.inf  # poles
    rows[rng.random(len(xy)) < 0.01] = np.nan
    full = ho + 2 * k.GUARD
    for strips in ([[0, full]], [[0, 14], [14, full]]):
        zero, one = _both(k1, src, xy, m, pos, rows, np.array(strips, dtype=np.int64), (ho, wo), nch)
        _same(zero, one)
        assert np.count_nonzero(zero) > 0


@pytest.mark.parametrize("case", ["all_slots", "zero_shares", "some_slots", "clipped"])
def test_deposits_same_bits_as_tier1(k1, case, monkeypatch):
    """``all_slots``: footprints 3 pixels wide with every share non-zero, inside the frame (no
    slot picked: ``_slots`` never called); ``zero_shares``: the same with every 50th footprint
    narrow (half-width 0.3: some of its shares are zero), every value finite: the zero-share
    slots are added as exact zeros (no slot picked); ``some_slots``: those narrow footprints
    with non-finite values among the source's (a zero share of an infinite value would add
    NaN), so the others are picked; ``clipped``: a strip of rows only, with non-finite values
    among 3 channels."""
    rng = np.random.default_rng(len(case))
    n, h, w, ho, wo, nch = 20000, 60, 70, 60, 70, 3
    src = _window(rng, h, w, nch, specials=case in ("clipped", "some_slots"))
    px = rng.integers(2, w - 3, n) + rng.uniform(0.1, 0.45, n)
    py = rng.integers(2, h - 3, n) + rng.uniform(0.1, 0.45, n)
    xy = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1).astype(np.float64)  # pixel centres
    m = np.ones(n, dtype=np.int64)
    rows = np.full((n, 2), 0.999)
    if case in ("zero_shares", "some_slots"):
        rows[::50] = 0.3
    picked = []
    real_slots = k._slots
    monkeypatch.setattr(k, "_slots", lambda *a: picked.append(1) or real_slots(*a))
    full = ho + 2 * k.GUARD
    strips = np.array([[20, 41]] if case == "clipped" else [[0, full]], dtype=np.int64)
    zero, one = _both(k1, src, xy, m, np.stack([px, py], 1), rows, strips, (ho, wo), nch)
    _same(zero, one)
    assert np.count_nonzero(zero) > 0
    assert bool(picked) == (case in ("some_slots", "clipped"))  # the path each case is built for


def test_landing_and_strip_bounds_same_bits_as_tier1(k1):
    """Nodes exactly on the landing bounds (``x`` or ``y = -3``, ``x = Wo + 2``, ``y = Ho + 2``:
    outside, the inequalities are strict) among nodes inside; and, in a strip of rows
    ``[0, 20)``, a footprint whose third row is row 20 of the accumulator (not deposited) while
    every other node's rows lie inside the strip."""
    rng = np.random.default_rng(5)
    h, w, ho, wo, nch = 20, 20, 22, 22, 1
    src = _window(rng, h, w, nch, specials=False)
    src[k.PAD:-k.PAD, k.PAD:-k.PAD] += 2.0  # no dead node
    inner = np.stack([rng.uniform(2.0, 12.0, 200), rng.uniform(2.0, 12.0, 200)], 1)
    full = ho + 2 * k.GUARD
    edges = [[-3.0, 5.0], [5.0, -3.0], [wo + 2.0, 5.0], [5.0, ho + 2.0]]  # one per case: each bound alone
    cases = [(np.vstack([inner, [e]]), full) for e in edges] + [(np.vstack([inner, [[10.2, 15.2]]]), 20)]
    for pos, end in cases:
        n = len(pos)
        xy = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1).astype(np.float64)
        zero, one = _both(k1, src, xy, np.ones(n, dtype=np.int64), pos, np.full((n, 2), 1.0),
                          np.array([[0, end]], dtype=np.int64), (ho, wo), nch)
        _same(zero, one)
        assert np.count_nonzero(zero) > 0
