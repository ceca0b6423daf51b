"""Shared fixtures: seeded images and a catalogue of well-conditioned transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from warpsvc import AffineTransform, HomographyTransform, PolarTransform, compose


def smooth_image(shape, seed: int, sigma: float = 2.0, dtype=np.float32) -> np.ndarray:
    """Band-limited noise in [0, 1]: white noise blurred by a Gaussian of ``sigma`` px."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random(shape), (0, 0), sigma)
    img = (img - img.min()) / (img.max() - img.min())
    return img.astype(dtype)


def catalogue(h: int = 120, w: int = 160) -> dict:
    """Named transforms valid on an ``h x w`` image (centre ``(w/2, h/2)``)."""
    c = (w / 2, h / 2)
    hom = HomographyTransform([[0.9, 0.08, 6.0], [-0.05, 1.05, 3.0], [4e-4, -3e-4, 1.0]])
    polar = PolarTransform(c, 55.0, (180, 100))
    return {
        "affine": AffineTransform.from_components(scale=(0.9, 1.1), rotation=0.2, shear=0.1, translation=(5, -4)),
        "homography": hom,
        "polar": polar,
        "logpolar": PolarTransform(c, 55.0, (180, 100), log=True),
        "polar_inverse": polar.inverse(),
        "logpolar_inverse": PolarTransform(c, 55.0, (180, 100), log=True, inverse=True),
        "homography_then_polar": compose(hom, polar),
        "polar_inverse_then_affine": compose(polar.inverse(), AffineTransform([[1.1, 0.1, 3.0], [0.0, 0.9, -2.0]])),
    }


@pytest.fixture
def transforms():
    return catalogue()
