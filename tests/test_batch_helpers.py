"""Helpers for the ``warpsvc-batch`` tests (folders of generated images with known warps, the
CLI as a subprocess, manifest reading), plus checks of the generator itself."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np

import warpsvc
from warpsvc import AffineTransform

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXTURE, SIDE = 96, 64
OFFSET = (TEXTURE - SIDE) / 2
# Alignment of 8-bit 64x64 images recovers the template corners to ~0.02 px (measured, seeds
# 7/11: max 0.023 px over 50 warps); 0.1 px leaves room without accepting a wrong answer.
CORNER_TOL_PX = 0.1


def texture(seed: int, size: int = TEXTURE) -> np.ndarray:
    """Band-limited noise (Gaussian blur 2.5 px) stretched to the uint8 range."""
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((size, size)), (0, 0), 2.5)
    t = (t - t.min()) / (t.max() - t.min())
    return (t * 255).astype(np.uint8)


def _shift(x: float, y: float) -> np.ndarray:
    return np.array([[1, 0, x], [0, 1, y], [0, 0, 1.0]])


def known_warp(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(image_from_texture, template_from_image)`` for a small random similarity-ish warp
    about the texture centre; the template is the texture's central ``SIDE`` window."""
    c = (TEXTURE - 1) / 2
    a = AffineTransform.from_components(scale=tuple(1 + rng.uniform(-0.04, 0.04, 2)), rotation=rng.uniform(-0.06, 0.06),
                                        translation=tuple(rng.uniform(-3, 3, 2))).matrix
    perturb = _shift(c, c) @ a @ _shift(-c, -c)
    image_from_texture = _shift(-OFFSET, -OFFSET) @ perturb
    template_from_image = _shift(-OFFSET, -OFFSET) @ np.linalg.inv(perturb) @ _shift(OFFSET, OFFSET)
    return image_from_texture, template_from_image


def make_align_folder(root: pathlib.Path, n: int, seed: int = 11) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``n`` PNGs (in nested folders) warped from one texture; returns the template (reference)
    and the true ``template_from_image`` matrix per relative path."""
    tex = texture(7)
    o = int(OFFSET)
    tmpl = np.ascontiguousarray(tex[o:o + SIDE, o:o + SIDE])
    rng = np.random.default_rng(seed)
    truth = {}
    for i in range(n):
        fwd, m = known_warp(rng)
        rel = f"set{i % 4}/img{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), warpsvc.warp(tex, AffineTransform(fwd[:2]), (SIDE, SIDE)))
        truth[rel] = m
    return tmpl, truth


def make_mixed_folder(root: pathlib.Path, n: int, seed: int = 5) -> list[str]:
    """``n`` small images of every supported kind (8/16-bit PNG, JPEG, 8-bit and float TIFF)."""
    rng = np.random.default_rng(seed)
    kinds = [("png", np.uint8, 1), ("png", np.uint16, 3), ("jpg", np.uint8, 3), ("tif", np.uint8, 1),
             ("tiff", np.float32, 1)]
    names = []
    for i in range(n):
        ext, dtype, ch = kinds[i % len(kinds)]
        base = cv2.GaussianBlur(rng.random((SIDE, SIDE, ch)), (0, 0), 1.5).reshape(SIDE, SIDE, ch)
        base = (base - base.min()) / (base.max() - base.min())
        img = base.astype(np.float32) if dtype == np.float32 else (base * np.iinfo(dtype).max).astype(dtype)
        rel = f"d{i % 3}/k{i:03d}.{ext}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / rel), img[:, :, 0] if ch == 1 else img)
        names.append(rel)
    return sorted(names)


def unreadable_file(path: pathlib.Path) -> str:
    """An image-named input that cannot be read: ``chmod 000`` when that blocks reads (not
    root), else a FIFO (whose ``open`` would block: the client must refuse it, not hang)."""
    path.write_bytes(cv2.imencode(".png", texture(3, 32))[1].tobytes())
    os.chmod(path, 0)
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return "chmod 000"
    os.chmod(path, 0o644)
    path.unlink()
    os.mkfifo(path)
    return "fifo"


def batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "warpsvc_client.batch.cli", *map(str, args)]


def run_batch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(batch_cmd(*args, "--no-progress"), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_manifest(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def corner_error(m: np.ndarray, truth: np.ndarray, side: int = SIDE) -> float:
    corners = np.array([[0, 0, 1], [side - 1, 0, 1], [side - 1, side - 1, 1], [0, side - 1, 1.0]]).T
    a, b = m @ corners, truth @ corners
    return float(np.abs(a[:2] / a[2] - b[:2] / b[2]).max())


def all_files(root: pathlib.Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


# -- checks of the helpers themselves -----------------------------------------------------------
def test_known_warp_maps_the_template_window_back():
    fwd, m = known_warp(np.random.default_rng(1))
    # a texture point seen in the image lands, through m, at its template coordinates
    p = np.array([40.0, 50.0, 1.0])
    q = fwd @ p
    np.testing.assert_allclose(m @ (q / q[2]), p - [OFFSET, OFFSET, 0], atol=1e-9)


def test_unreadable_file_is_unreadable(tmp_path):
    kind = unreadable_file(tmp_path / "x.png")
    if kind == "fifo":
        assert not (tmp_path / "x.png").is_file()
    else:
        assert not os.access(tmp_path / "x.png", os.R_OK)
