"""``PolarTransform.image_boxes``: exact bounding boxes of the images of source rectangles under
the forward (log-)polar warp, and what the antialias scatter does with them (skips the source
blocks whose whole image misses the output, with no output bit changed).

Oracles: the map itself on dense grids over each rectangle (every image point lies in its box,
and the box's radius bounds are attained to the grid's resolution); the scatter with the boxes
switched off (the sampled boxes and their two-block margin) for the output, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc import PolarTransform, warp
from warpsvc.core import antialias


def _grid(lo, hi, n=41):
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return np.stack([gx.ravel(), gy.ravel()], 1)


@pytest.mark.parametrize("log", [False, True])
def test_boxes_hold_every_image_point(log):
    rng = np.random.default_rng(7)
    for _ in range(40):
        t = PolarTransform(rng.uniform(-50, 650, 2), rng.uniform(2, 500),
                           (int(rng.integers(8, 400)), int(rng.integers(8, 400))), log=log)
        lo = rng.uniform(-100, 700, (25, 2))
        hi = lo + rng.uniform(0, 64, (25, 2))
        blo, bhi = t.image_boxes(lo, hi)
        assert blo.shape == bhi.shape == (25, 2)
        for i in range(25):
            y = t.map(_grid(lo[i], hi[i]))
            tol = 1e-9 * (1 + np.abs(y).max())
            assert (y >= blo[i] - tol).all() and (y <= bhi[i] + tol).all(), (t, lo[i], hi[i])


def test_boxes_are_tight_away_from_the_centre_and_the_cut():
    """A rectangle in the upper-left quadrant of the centre: radius from its nearest to its
    farthest corner, angle between its corners' (no full range), matched by the sampled map."""
    t = PolarTransform((300.0, 300.0), 280.0, (360, 200))
    lo, hi = np.array([[100.0, 120.0]]), np.array([[132.0, 152.0]])
    blo, bhi = t.image_boxes(lo, hi)
    y = t.map(_grid(lo[0], hi[0], 65))
    np.testing.assert_allclose(blo[0], y.min(axis=0), rtol=0, atol=1e-9)  # attained at corners here
    np.testing.assert_allclose(bhi[0], y.max(axis=0), rtol=0, atol=1e-9)
    assert bhi[0, 1] - blo[0, 1] < 360 / 4  # a sector, not every row


@pytest.mark.parametrize("lo, hi", [([290.0, 290.0], [310.0, 310.0]),  # holds the centre
                                    ([350.0, 280.0], [380.0, 312.0])])  # crosses the cut theta = 0
def test_centre_or_cut_spans_every_row(lo, hi):
    t = PolarTransform((300.0, 300.0), 280.0, (360, 200))
    blo, bhi = t.image_boxes(np.array([lo]), np.array([hi]))
    assert (blo[0, 1], bhi[0, 1]) == (0.0, 360.0)


def test_inverse_declines():
    t = PolarTransform((300.0, 300.0), 280.0, (360, 200), inverse=True)
    assert t.image_boxes(np.zeros((1, 2)), np.ones((1, 2))) is None


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("source", ["photograph", "points"])
def test_scatter_skips_blocks_outside_with_the_same_bits(monkeypatch, log, source):
    """The disc of radius 180 inside a 400x400 source: blocks beyond it are no longer listed,
    and the output is bit for bit the output with the sampled boxes (which keep them)."""
    rng = np.random.default_rng(2)
    if source == "photograph":
        src = rng.uniform(1, 255, (400, 400, 3))
    else:
        src = np.zeros((400, 400))
        src[3::9, 5::7] = 50.0
    t = PolarTransform((200.0, 190.0), 180.0, (240, 120), log=log)
    exact_plan = antialias.plan(t, src.shape[:2], (240, 120), src.ndim == 3 and 3 or 1)
    exact = warp(src, t, intensity="conserve", antialias=True)
    monkeypatch.setattr(antialias, "_exact_boxes", lambda *a: None)
    sampled_plan = antialias.plan(t, src.shape[:2], (240, 120), src.ndim == 3 and 3 or 1)
    sampled = warp(src, t, intensity="conserve", antialias=True)
    # analytic oracle: a block (its square [origin, origin + 32]) whose nearest point lies
    # beyond the radius of the last column, plus 4 columns of footprint reach, cannot reach the
    # output; the exact boxes hide every such block, the sampled ones keep some of them
    origins = exact_plan.layout["origins"][:, ::-1].astype(float)  # (x, y)
    near = np.hypot(*np.maximum(np.maximum(np.array(t.center) - (origins + 32), origins - np.array(t.center)), 0).T)
    outside = t.map(np.column_stack([near + 1e-9, np.zeros_like(near)]) + [t.center[0], t.center[1]])[:, 0] > 120 + 4
    assert outside.sum() >= 10
    assert not (exact_plan.visible & outside).any()
    assert (sampled_plan.visible & outside).sum() > 0
    assert exact_plan.visible.sum() < sampled_plan.visible.sum() and exact_plan.nodes < sampled_plan.nodes
    np.testing.assert_array_equal(exact, sampled)
