"""Oracles shared by the tests and the benchmarks (independent of the code under test)."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi

from warpsvc import HomographyTransform


def supersampled_reference(img: np.ndarray, t, shape, n: int = 16) -> np.ndarray:
    """Mean over ``n x n`` sub-positions ``z`` of each output pixel of ``f(T^-1 z) |det J_T^-1(z)|``,
    ``f`` the bilinear model of ``img`` with zeros outside (scipy ``grid-constant``)."""
    inv = t.inverse()
    ho, wo = shape
    out = np.zeros(shape)
    sub = (np.arange(n) + 0.5) / n - 0.5
    for r in range(ho):
        ys, xs = np.meshgrid(r + sub, np.arange(wo)[:, None] + sub[None, :], indexing="ij")
        pts = np.column_stack([xs.ravel(), ys.ravel()])
        src = inv.map(pts)
        det = np.abs(inv.jacobian_determinant(pts))
        v = ndi.map_coordinates(img, [src[:, 1], src[:, 0]], order=1, mode="grid-constant", cval=0.0)
        out[r] = (v * det).reshape(n, wo, n).mean(axis=(0, 2))
    return out


def point_field(shape=(600, 600), step=24, margin=20, flux=1000.0):
    """Single-pixel sources of ``flux`` on a grid: ``(image, source positions (N, 2))``."""
    img = np.zeros(shape)
    ys, xs = np.mgrid[margin:shape[0] - margin:step, margin:shape[1] - margin:step]
    img[ys, xs] = flux
    return img, np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float64)


def shrink3_homography(n: int = 600) -> HomographyTransform:
    """A perspective homography taking an ``n x n`` image to about ``n/3``, inside 230x230."""
    corners = np.array([[0, 0], [n - 1, 0], [n - 1, n - 1], [0, n - 1]], float)
    return HomographyTransform.from_points(corners, [[10, 20], [190, 10], [200, 215], [5, 190]])


def window_flux(out: np.ndarray, pos: np.ndarray, half: int = 3) -> np.ndarray:
    """Sum of ``out`` in the ``(2 half + 1)^2`` window around each (rounded) position."""
    sums = []
    for px, py in pos:
        ix, iy = int(round(px)), int(round(py))
        sums.append(out[iy - half:iy + half + 1, ix - half:ix + half + 1].sum())
    return np.asarray(sums)


def photo_bm_trial(im: np.ndarray, k: int, noise: float, seed: int = 0, noise_rng=None):
    """Trial ``k`` of ``benchmarks/bench_align_real.py``'s ``bm_noise{noise}`` rows on the grey
    float32 photograph ``im`` (the benchmark's recipe, same seeded draws): a 100x100 template at a
    random position with grey-level std >= 20, its corners moved by 8 px (Gaussian), gain / bias
    / gamma, then noise on both images -- drawn from ``noise_rng`` when given (another noise
    draw of the same trial). Returns ``(template, image, start image_from_template, truth points,
    template points)``."""
    rng = np.random.default_rng([seed, k, int(noise)])
    h, w = im.shape
    while True:
        x0, y0 = int(rng.integers(40, w - 140)), int(rng.integers(40, h - 140))
        if im[y0:y0 + 100, x0:x0 + 100].std() >= 20.0:
            break
    tp = np.array([[0, 0], [99, 0], [99, 99], [0, 99]], np.float64)
    truth_pts = tp + [x0, y0] + 8.0 * rng.normal(size=(4, 2))
    truth = HomographyTransform.from_points(tp, truth_pts).matrix.copy()
    t = cv2.warpPerspective(im, truth, (100, 100), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    g, b, gam = rng.uniform(0.7, 1.3), rng.uniform(-20, 20), rng.uniform(0.8, 1.25)
    t = (255.0 * (np.clip(t, 0, 255) / 255.0) ** gam * g + b).astype(np.float32)
    nrng = rng if noise_rng is None else noise_rng
    t = t + nrng.normal(0, noise, t.shape).astype(np.float32)
    img = im + nrng.normal(0, noise, im.shape).astype(np.float32)
    start = np.array([[1, 0, x0 + 0.5], [0, 1, y0 + 0.5], [0, 0, 1.0]])
    return t, img, start, truth_pts, tp
