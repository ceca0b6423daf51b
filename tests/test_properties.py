"""Property tests (hypothesis) over well-conditioned transforms."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import smooth_image
from warpsvc import AffineTransform, HomographyTransform, compose, jacobian_determinant, warp

angles = st.floats(-np.pi, np.pi)
scales = st.floats(0.5, 2.0)
shifts = st.floats(-20.0, 20.0)
persp = st.floats(-1e-3, 1e-3)


@st.composite
def homographies(draw):
    a = AffineTransform.from_components(
        scale=(draw(scales), draw(scales)), rotation=draw(angles), shear=draw(st.floats(-0.3, 0.3)),
        translation=(draw(shifts), draw(shifts)),
    )
    m = a.matrix.copy()
    m[2, :2] = [draw(persp), draw(persp)]
    return HomographyTransform(m)


PTS = np.random.default_rng(3).uniform(0, 100, (64, 2))


@settings(max_examples=60, deadline=None)
@given(homographies())
def test_round_trip_and_jacobian_of_inverse(t):
    y = t.map(PTS)
    np.testing.assert_allclose(t.inverse().map(y), PTS, atol=1e-8)
    prod = t.inverse().jacobian(y) @ t.jacobian(PTS)
    np.testing.assert_allclose(prod, np.broadcast_to(np.eye(2), prod.shape), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(homographies(), homographies())
def test_composition_matches_sequential_maps(g, h):
    chain = compose(h, g)  # h first
    np.testing.assert_allclose(chain.map(PTS), g.map(h.map(PTS)), rtol=1e-9, atol=1e-7)
    det = jacobian_determinant(chain, (8, 9))
    ys, xs = np.mgrid[0:8, 0:9]
    pts = np.column_stack([xs.ravel(), ys.ravel()]).astype(float)
    expected = np.abs(chain.inverse().jacobian_determinant(pts)).reshape(8, 9)
    np.testing.assert_allclose(det, expected, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(angles, scales, shifts, shifts)
def test_warp_then_inverse_warp_recovers_the_interior(angle, scale, tx, ty):
    img = smooth_image((64, 64), seed=5, sigma=4.0).astype(np.float64)
    t = AffineTransform.from_components(scale=(scale, scale), rotation=angle, translation=(tx, ty))
    # choose an output large enough to hold the whole warped image, then come back
    centre = t.map([[31.5, 31.5]])[0]
    shift = AffineTransform([[1, 0, 100 - centre[0]], [0, 1, 100 - centre[1]]])
    forward = compose(t, shift)
    there = warp(img, forward, (200, 200), interpolation="cubic")
    back = warp(there, forward.inverse(), (64, 64), interpolation="cubic")
    # bicubic twice blurs a little; sigma-4 content survives to a few percent of its range
    assert np.abs(back - img)[12:-12, 12:-12].max() < 0.06


@settings(max_examples=25, deadline=None)
@given(homographies())
def test_antialiased_conserve_never_creates_flux(t):
    img = smooth_image((48, 48), seed=9, sigma=2.0).astype(np.float64)
    shift = AffineTransform([[1, 0, 40], [0, 1, 40]])
    out = warp(img, compose(t, shift), (140, 140), intensity="conserve", antialias=True)
    assert out.min() >= -1e-12
    assert out.sum() <= img.sum() * (1 + 1e-9)
