"""Oracles shared by the tests and the benchmarks (independent of the code under test)."""

from __future__ import annotations

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
