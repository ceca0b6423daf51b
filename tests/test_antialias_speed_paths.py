"""The fast paths of the antialiased scatter against plain re-derivations of the same math.

* ``scatter_matrix`` (vectorised geometry, 2x2 fast deposits, general 3x3 deposits, non-finite
  values, skipped zero runs and node rows) against a numpy scatter written from the module
  docstring of :mod:`warpsvc.core.antialias` (node lattice, bilinear values, Jacobian row
  half-widths, exact triangle integrals), deposit by deposit;
* ``matrix_layout`` (compiled block layout) against the sampled layout built from the
  transform's own ``map`` / ``jacobian``;
* ``SourceRows.window`` (only the frame zeroed) against ``np.pad``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.oracles import shrink3_homography
from warpsvc import AffineTransform, HomographyTransform, warp
from warpsvc.core import _splat_kernels as k
from warpsvc.core import antialias


def _tent_cdf(t):
    t = np.clip(t, -1.0, 1.0)
    return np.where(t <= 0, 0.5 * (1 + t) ** 2, 1 - 0.5 * (1 - t) ** 2)


def _shares(p, half):
    """``(i0, (N, 3))``: integrals of the unit triangle (centre ``p``, half-width ``half``) over
    pixels ``i0 .. i0 + 2`` (pixel ``i`` spans ``[i - 1/2, i + 1/2]``)."""
    i0 = np.floor(p - half + 0.5)
    edges = i0[:, None] + np.array([-0.5, 0.5, 1.5, 2.5])
    cdf = _tent_cdf((edges - p[:, None]) / half[:, None])
    return i0.astype(np.int64), np.diff(cdf, axis=1)


def reference_scatter(img, mat, m_of_block, out_shape):
    """The scatter from its definition: every node ``n = (ix + kx/m, iy + ky/m)`` of every block
    (pixels ``-1 .. h-1``, 32x32 blocks, ``m`` per block) carries ``f(n) / m^2`` (``f`` bilinear,
    zero outside) to ``T(n)`` with a separable triangle of half-widths ``|J_T row| / m`` (clipped
    to ``[1e-9, 1]``); nodes with ``w <= 0`` or beyond ``[-3, W + 2] x [-3, H + 2]`` are dropped.
    Only non-zero shares deposit (so a non-finite value stays where its footprint is). Where
    blocks of different ``m`` meet, the image is first divided by the tent sums
    ``S_j = sum_n tent(n - j) / m_n^2``."""
    h, w = img.shape
    ho, wo = out_shape
    g = k.GUARD
    acc = np.zeros((ho + 2 * g, wo + 2 * g))
    by, bx = np.arange(-1, h, k.BLOCK), np.arange(-1, w, k.BLOCK)

    def nodes():
        for i, y0 in enumerate(by):
            for j, x0 in enumerate(bx):
                m = int(m_of_block[i * len(bx) + j])
                ys = np.arange(y0, min(y0 + k.BLOCK, h))[:, None] + np.arange(m)[None] / m
                xs = np.arange(x0, min(x0 + k.BLOCK, w))[:, None] + np.arange(m)[None] / m
                sy, sx = np.meshgrid(ys.ravel(), xs.ravel(), indexing="ij")
                sx, sy = sx.ravel(), sy.ravel()
                c, r = np.floor(sx).astype(int), np.floor(sy).astype(int)
                yield m, sx, sy, c, r, sx - c, sy - r

    padded = np.pad(img, 2)
    if len(np.unique(m_of_block)) > 1:
        sums = np.zeros(padded.shape)
        for m, sx, sy, c, r, fx, fy in nodes():
            for dr, dc, wgt in [(0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)]:
                np.add.at(sums, (r + 2 + dr, c + 2 + dc), wgt / (m * m))
        padded = np.where(sums > 0, padded / np.where(sums > 0, sums, 1.0), padded)
    for m, sx, sy, c, r, fx, fy in nodes():
        if True:
            q = padded
            centre = (fx == 0) & (fy == 0)
            with np.errstate(invalid="ignore"):
                v = ((1 - fy) * ((1 - fx) * q[r + 2, c + 2] + fx * q[r + 2, c + 3])
                     + fy * ((1 - fx) * q[r + 3, c + 2] + fx * q[r + 3, c + 3]))
            v = np.where(centre, q[r + 2, c + 2], v)
            ww = mat[2, 0] * sx + mat[2, 1] * sy + mat[2, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                px = (mat[0, 0] * sx + mat[0, 1] * sy + mat[0, 2]) / ww
                py = (mat[1, 0] * sx + mat[1, 1] * sy + mat[1, 2]) / ww
                hx = np.hypot(mat[0, 0] - px * mat[2, 0], mat[0, 1] - px * mat[2, 1]) / ww / m
                hy = np.hypot(mat[1, 0] - py * mat[2, 0], mat[1, 1] - py * mat[2, 1]) / ww / m
            keep = (ww > 0) & (px >= -3) & (py >= -3) & (px <= wo + 2) & (py <= ho + 2) & (v != 0)
            px, py, v = px[keep], py[keep], v[keep]
            ix0, shx = _shares(px, np.clip(hx[keep], 1e-9, 1.0))
            iy0, shy = _shares(py, np.clip(hy[keep], 1e-9, 1.0))
            for dy in range(3):
                for dx in range(3):
                    wgt = shx[:, dx] * shy[:, dy]
                    nz = wgt != 0
                    with np.errstate(invalid="ignore"):
                        np.add.at(acc, (iy0[nz] + dy + g, ix0[nz] + dx + g), v[nz] * wgt[nz] / (m * m))
    return acc[g:-g, g:-g]


def _ours(img, t, shape, threads_strips=1):
    p = antialias.plan(t, img.shape, shape, 1, with_coverage=False)
    src = antialias.padded_source(img[:, :, None], False)
    return antialias.scatter(src, p, t, shape)[:, :, 0], p


SHRINK = HomographyTransform.from_points([[0, 0], [129, 0], [129, 119], [0, 119]],
                                         [[2, 3], [44, 1], [45, 44], [1, 42]])  # 130x120 -> ~44x42, perspective
CASES = {
    "shrinking homography (2x2 fast path)": (SHRINK, (46, 46)),
    "enlarging homography": (shrink3_homography(120), (200, 210)),
    "enlarging affine (m = 2..3, 3x3 windows)": (AffineTransform.from_components(scale=(1.7, 1.3), rotation=0.3,
                                                                                  translation=(30, 5)), (200, 230)),
    "nearly 1:1 (half-widths near 1/2, both windows)": (AffineTransform.from_components(
        scale=(0.66, 0.7), rotation=0.5, translation=(40, 0)), (120, 130)),
    "horizon in the source (w <= 0 nodes)": (HomographyTransform([[1, 0, 0], [0, 1, 0], [-0.01, 0, 1]]), (120, 130)),
    "edges beyond the output": (AffineTransform.from_components(scale=(0.5, 0.5), translation=(-20, -15)), (30, 40)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matrix_scatter_matches_the_reference(case):
    t, shape = CASES[case]
    rng = np.random.default_rng(3)
    img = rng.random((120, 130)) * 100
    img[rng.random(img.shape) < 0.3] = 0.0  # zero nodes and some all-zero runs
    img[50:60, :] = 0.0
    ours, p = _ours(img, t, shape)
    ref = reference_scatter(img, np.asarray(t.matrix, float), p.blocks[:, 2], shape)
    assert np.abs(ref).max() > 1
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_non_finite_values_stay_inside_their_footprint():
    """inf and NaN source pixels take the general path: they reach exactly the pixels their
    footprint covers with a non-zero share, as in the reference (never inf x 0 = NaN around)."""
    t, shape = CASES["shrinking homography (2x2 fast path)"]
    img = np.random.default_rng(4).random((120, 130))
    img[40, 50], img[80, 20], img[10, 100] = np.inf, -np.inf, np.nan
    ours, p = _ours(img, t, shape)
    ref = reference_scatter(img, np.asarray(t.matrix, float), p.blocks[:, 2], shape)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(ref))
    assert 0 < (~np.isfinite(ours)).sum() <= 3 * 4  # a few pixels each
    ok = np.isfinite(ref)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=1e-12, atol=1e-12)


def test_sparse_source_skips_change_nothing():
    """A point field (almost every run of nodes all zero) against the reference."""
    t, shape = CASES["shrinking homography (2x2 fast path)"]
    img = np.zeros((120, 130))
    img[::17, ::13] = 1000.0
    ours, p = _ours(img, t, shape)
    ref = reference_scatter(img, np.asarray(t.matrix, float), p.blocks[:, 2], shape)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-9)
    assert abs(ours.sum() / img.sum() - 1) < 1e-13  # every source inside: all of its flux lands


@pytest.mark.parametrize("strips", [2, 5, 13])
def test_many_strips_give_the_same_bits(monkeypatch, strips):
    """Strips skip the node rows only their neighbours need: any partition, the same bits."""
    img = np.random.default_rng(5).random((600, 600)) * 255
    t = shrink3_homography(600)
    one = warp(img, t, (230, 230), intensity="conserve", antialias=True)
    monkeypatch.setattr(antialias, "kernel_threads", lambda work=None: strips)
    many = warp(img, t, (230, 230), intensity="conserve", antialias=True)
    np.testing.assert_array_equal(one, many)


def test_compiled_layout_matches_the_sampled_one():
    rng = np.random.default_rng(6)
    transforms = [shrink3_homography(600), HomographyTransform([[1, 0, 0], [0, 1, 0], [0.004, 0, 1]]),
                  HomographyTransform([[1, 0, 0], [0, 1, 0], [-0.004, 0, 1]])]
    for _ in range(40):
        transforms.append(HomographyTransform(np.eye(3) + rng.normal(0, 0.3, (3, 3))
                                              * [[1, 1, 30], [1, 1, 30], [0.002, 0.002, 0]]))
    for t in transforms:
        for h, w in [(600, 600), (65, 33)]:
            by, bx = antialias._block_grid(h, w)
            stretch, lo, hi, finite = antialias._sampled_layout(t, by, bx)
            lay = antialias.block_layout(t, h, w)
            m = np.clip(np.ceil(antialias.OVERSAMPLING * stretch), 1, antialias.MAX_NODES_PER_PIXEL_AXIS)
            np.testing.assert_array_equal(lay["m"], m)
            side = antialias.source_side_matrix(t, h, w)
            pts, per = antialias._block_samples(by, bx, 3)
            ws = (pts @ side[2, :2] + side[2, 2]).reshape(-1, per)
            np.testing.assert_array_equal(lay["finite"], finite & (ws > 0).all(axis=1))
            np.testing.assert_array_equal(lay["dead"], (ws <= 0).all(axis=1))
            np.testing.assert_array_equal(np.isnan(lay["lo"]), np.isnan(lo))
            ok = np.isfinite(lo) & (np.abs(lo) < 1e6) & (np.abs(hi) < 1e6)
            np.testing.assert_allclose(lay["lo"][ok], lo[ok], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(lay["hi"][ok], hi[ok], rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("y_lo,y_hi", [(0, 40), (0, 3), (32, 64), (64, 97), (96, 97), (-5, 10), (90, 110)])
def test_window_zeroes_its_frame(y_lo, y_hi):
    img = np.random.default_rng(7).random((97, 50, 2)) + 1.0
    for coverage in (False, True):
        src = antialias.SourceRows(img, coverage)
        full = np.concatenate([img, np.ones((97, 50, 1))], axis=2) if coverage else img
        padded = np.pad(full, ((k.PAD + 20, k.PAD + 20), (k.PAD, k.PAD), (0, 0)))
        expected = padded[y_lo + 20:y_hi + 20 + 2 * k.PAD]
        np.testing.assert_array_equal(src.window(y_lo, y_hi), expected)
    rows, cols = np.array([-1, 0, 1, 96, -1]), np.array([-1, 3, 49, -1])
    ext = antialias.SourceRows(img, True, rows, cols, fill=7.0).window(0, 5)
    inner = ext[k.PAD:-k.PAD, k.PAD:-k.PAD]
    assert (inner[[0, 4]][:, :, :2] == 7.0).all() and (inner[:, [0, 3], :2] == 7.0).all()
    np.testing.assert_array_equal(inner[1:4, 1:3, :2], img[np.ix_([0, 1, 96], [3, 49])])
    assert (inner[:, :, 2] == 1.0).all() and (ext[:k.PAD] == 0).all() and (ext[:, -k.PAD:] == 0).all()


@pytest.mark.parametrize("case", ["shrinking homography (2x2 fast path)", "enlarging affine (m = 2..3, 3x3 windows)",
                                  "edges beyond the output"])
def test_unpadded_image_read_as_is_matches_the_padded_window(case):
    """A conserving warp of a float64 image reads the caller's array directly (0 outside it):
    the same bits as the padded window, and the reference's values."""
    t, shape = CASES[case]
    img = np.random.default_rng(8).random((120, 130, 1)) * 100
    p = antialias.plan(t, img.shape[:2], shape, 1, with_coverage=False)
    source = antialias.SourceRows(img, False)
    assert antialias._readable_as_is(source, p) is img or p.mixed
    direct = antialias.scatter(source, p, t, shape)
    padded = antialias.scatter(antialias.padded_source(img, False), p, t, shape)
    np.testing.assert_array_equal(direct, padded)
    if not p.mixed:
        ref = reference_scatter(img[:, :, 0], np.asarray(t.matrix, float), p.blocks[:, 2], shape)
        np.testing.assert_allclose(direct[:, :, 0], ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_only_plain_float64_arrays_are_read_as_is():
    t, shape = CASES["shrinking homography (2x2 fast path)"]
    img = np.random.default_rng(9).random((120, 130, 1))
    p = antialias.plan(t, img.shape[:2], shape, 1, with_coverage=False)
    frozen = img.copy()
    frozen.setflags(write=False)
    for other in (img.astype(np.float32), np.asfortranarray(img), frozen, img.astype(">f8")):
        assert antialias._readable_as_is(antialias.SourceRows(other, False), p) is None
    assert antialias._readable_as_is(antialias.SourceRows(img, True), p) is None  # coverage: a window
    assert antialias._readable_as_is(antialias.SourceRows(img, False), p) is img
    for other in (img.astype(np.float32), frozen, img.astype(">f8")):  # and the window path gives the same
        np.testing.assert_allclose(warp(other[:, :, 0], t, shape, intensity="conserve", antialias=True),
                                   warp(img[:, :, 0].astype(other.dtype).astype(np.float64), t, shape,
                                        intensity="conserve", antialias=True), rtol=1e-6, atol=1e-9)
