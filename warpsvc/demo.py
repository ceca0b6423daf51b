"""``warpsvc demo``: warp a bundled photograph every way the library can, and write the results.

Writes PNGs (and the determinant maps as ``.npy``) into the output folder and prints one
line per product with its total intensity, so conservation can be read off directly.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
from skimage import data

from .core import AffineTransform, HomographyTransform, PolarTransform, compose, jacobian_determinant, warp


def heatmap(values: np.ndarray) -> np.ndarray:
    """Colour-map a non-negative map on a log scale (``inferno``) to uint8 BGR."""
    v = np.log10(np.clip(values, 1e-6, None))
    finite = np.isfinite(v)
    lo, hi = np.percentile(v[finite], [1, 99]) if finite.any() else (0.0, 1.0)
    scaled = np.clip((v - lo) / max(hi - lo, 1e-12), 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)


def _to_png(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    return np.clip(img, 0, 255).astype(np.uint8)


def run(out_dir: pathlib.Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rgb = data.astronaut()  # (512, 512, 3) uint8, bundled with scikit-image
    h, w = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], float)
    shrink = HomographyTransform.from_points(corners, [[60, 40], [300, 90], [290, 250], [40, 300]])
    transforms = {
        "affine": AffineTransform.from_components(scale=(0.8, 0.6), rotation=0.3, shear=0.2, translation=(140, 40)),
        "homography": shrink,
        "polar": PolarTransform((w / 2, h / 2), w / 2, (720, 256)),
        "logpolar": PolarTransform((w / 2, h / 2), w / 2, (720, 256), log=True),
        "homography_then_polar": compose(shrink, PolarTransform((170, 170), 170, (720, 256))),
    }
    lines = [f"input astronaut {w}x{h}: total {bgr.astype(np.float64).sum():.6e}"]
    cv2.imwrite(str(out_dir / "input.png"), bgr)
    for name, t in transforms.items():
        plain = warp(bgr, t)
        conserved = warp(bgr, t, intensity="conserve", antialias=True)
        det = jacobian_determinant(t, plain.shape[:2])
        cv2.imwrite(str(out_dir / f"{name}.png"), plain)
        cv2.imwrite(str(out_dir / f"{name}_det_heatmap.png"), heatmap(det))
        np.save(out_dir / f"{name}_det.npy", det)
        lines.append(
            f"{name:<22} {plain.shape[1]}x{plain.shape[0]}  conserved total {conserved.sum():.6e}  "
            f"|det J| range [{np.nanmin(det):.3g}, {np.nanmax(det):.3g}]"
        )
    back = warp(warp(bgr, transforms["polar"]), transforms["polar"].inverse(), (h, w))
    cv2.imwrite(str(out_dir / "polar_roundtrip.png"), _to_png(back))
    lines.append(f"wrote {len(transforms) * 2 + 2} images to {out_dir}")
    return lines
