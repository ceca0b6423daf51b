"""``PolarTransform.map_and_row_norms``: the antialias scatter's closed-form per-node map and
Jacobian row norms agree with ``map`` and the norms of ``jacobian``'s rows (the oracle), and
the antialiased output is unchanged against the generic path (map + full Jacobian)."""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc import PolarTransform, warp
from warpsvc.core import antialias


def _oracle(t, xy):
    jac = t.jacobian(xy)
    return t.map(xy), np.stack([np.hypot(jac[:, 0, 0], jac[:, 0, 1]), np.hypot(jac[:, 1, 0], jac[:, 1, 1])], 1)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("inverse", [False, True])
def test_map_and_row_norms_match_map_and_jacobian(log, inverse):
    t = PolarTransform((40.5, 31.25), 37.0, (90, 50), log=log)
    t = t.inverse() if inverse else t
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 80, (5000, 2)) if not inverse else np.column_stack([rng.uniform(0, 50, 5000), rng.uniform(0, 90, 5000)])
    pos, norms = t.map_and_row_norms(xy)
    want_pos, want_norms = _oracle(t, xy)
    np.testing.assert_array_equal(pos, want_pos)  # the same operations: the same bits
    np.testing.assert_allclose(norms, want_norms, rtol=1e-14, atol=0)


def test_row_norms_are_nan_at_the_pole_like_the_jacobian():
    t = PolarTransform((10.0, 12.0), 9.0, (36, 20))
    xy = np.array([[10.0, 12.0], [11.0, 12.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        _, norms = t.map_and_row_norms(xy)
        _, want = _oracle(t, xy)
    assert np.isnan(norms[0]).all() and np.isnan(want[0]).all()
    np.testing.assert_allclose(norms[1], want[1], rtol=1e-14)


@pytest.mark.parametrize("log", [False, True])
def test_antialiased_polar_warp_unchanged_by_the_closed_form(monkeypatch, log):
    src = (np.arange(200 * 200) % 97 + 1.0).reshape(200, 200)
    t = PolarTransform((100.0, 100.0), 95.0, (120, 70), log=log)
    fast = warp(src, t, intensity="conserve", antialias=True)
    monkeypatch.setattr(PolarTransform, "map_and_row_norms", None)  # -> map + jacobian
    slow = warp(src, t, intensity="conserve", antialias=True)
    np.testing.assert_allclose(fast, slow, rtol=1e-13, atol=1e-12 * np.abs(slow).max())
    np.testing.assert_allclose(fast.sum(), slow.sum(), rtol=1e-13)


def test_generic_fallback_gives_contiguous_norms():
    from test_warp_opencv import NotAMatrix  # map + jacobian only: no fused method

    t = PolarTransform((5.0, 5.0), 4.0, (16, 8))
    xy = np.array([[1.0, 2.0], [7.0, 3.5], [4.0, 9.0]])
    pos, rows = antialias._map_and_row_norms(NotAMatrix(t), xy)
    want_pos, want_rows = _oracle(t, xy)
    assert rows.flags.c_contiguous and pos.flags.c_contiguous
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(rows, want_rows)
