"""Alignment of a file with an alpha channel: the alpha says where the colour is defined, so it
becomes the input's mask (``alpha > 0``) and the colour channels are aligned
(:func:`warpsvc_api.alpha_warp.alpha_as_mask`; found by a new-user test: an RGBA file against an
RGB reference was refused, "image has 4 channels but template has 3"). Oracles: a known affine
warp (corner error), the library's own alignment of the colour with the mask passed explicitly
(bit for bit), and a 4-channel *array* keeping the library's meaning (refused against RGB)."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
from interop.harness import inprocess_server
from test_batch_helpers import make_align_folder, read_manifest, run_batch
from warpsvc_client import WarpClient

import warpsvc
from warpsvc_api.alpha_warp import alpha_as_mask

TEX = cv2.GaussianBlur(np.random.default_rng(2).integers(0, 256, (160, 160, 3), dtype=np.uint8), (0, 0), 2.0)
TRUTH = warpsvc.AffineTransform.from_components(scale=(1.03, 0.98), rotation=0.05, translation=(31.3, 27.6))
TEMPLATE = np.ascontiguousarray(TEX[40:120, 40:120])  # 80x80 RGB reference


def _scene():
    """An RGBA image: the texture under the inverse of TRUTH's offset, its top 12 rows
    transparent and filled with a colour that matches nothing (their values are undefined)."""
    moved = warpsvc.warp(TEX, warpsvc.AffineTransform.from_components(translation=(-9.0, -12.5)), (160, 160))
    rgba = np.dstack([moved, np.full((160, 160), 255, np.uint8)])
    rgba[:12, :, :3], rgba[:12, :, 3] = (250, 0, 250), 0
    return rgba


def _png(arr) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def test_alpha_as_mask_splits_and_combines():
    rgba = _scene()
    colour, mask = alpha_as_mask(rgba, True)
    assert colour.shape == (160, 160, 3) and mask.dtype == bool and not mask[:12].any() and mask[12:].all()
    given = np.ones((160, 160), np.uint8)
    given[:, :5] = 0
    _, both = alpha_as_mask(rgba, True, given)
    assert not both[:, :5].any() and not both[:12].any() and both[12:, 5:].all()
    grey, m = alpha_as_mask(rgba[:, :, 2:], True)  # grey + alpha: a 2-D grey image
    assert grey.shape == (160, 160) and (m == (rgba[:, :, 3] > 0)).all()
    same, none = alpha_as_mask(rgba, False)  # no alpha declared: as given
    assert same is rgba and none is None
    _, odd = alpha_as_mask(rgba, True, np.ones((3, 3)))  # a mask of another shape: left for align to refuse
    assert odd.shape == (3, 3)


def test_the_server_aligns_an_rgba_file_to_an_rgb_reference():
    rgba = _scene()
    colour, mask = alpha_as_mask(rgba, True)
    expected = warpsvc.align(TEMPLATE, colour, "affine", image_mask=mask)
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        got = client.align(_png(TEMPLATE), _png(rgba), "affine")
        assert got.converged, got.reason
        np.testing.assert_array_equal(got.matrix, expected.matrix)  # the colour, masked by the alpha
        shift = np.array([[1, 0, 40 - 9.0], [0, 1, 40 - 12.5], [0, 0, 1]])  # template origin in the image
        corners = np.array([[0, 0, 1], [79, 0, 1], [79, 79, 1], [0, 79, 1.0]]).T
        assert np.abs((got.inverse @ corners)[:2] - (shift @ corners)[:2]).max() < 0.05
        with pytest.raises(warpsvc.InvalidArgumentError, match="4 channels") as exc:  # an array: 4 intensities
            client.align(TEMPLATE, rgba, "affine")
        assert exc.value.field == "image"


def test_the_batch_aligns_rgba_files_to_an_rgb_reference(tmp_path):
    src = tmp_path / "in"
    tmpl, truth = make_align_folder(src, 2, seed=3)
    colour = lambda g: cv2.merge([g, (g * 0.8).astype(np.uint8), 255 - g])
    cv2.imwrite(str(tmp_path / "ref.png"), colour(tmpl))
    for rel in truth:
        g = cv2.imread(str(src / rel), cv2.IMREAD_GRAYSCALE)
        c, a = colour(g), np.full(g.shape, 255, np.uint8)
        c[:8], a[:8] = 7, 0  # transparent rows of an undefined colour
        cv2.imwrite(str(src / rel), np.dstack([c, a]))
    res = run_batch("align", src, tmp_path / "out", "--reference", tmp_path / "ref.png", "--model", "affine",
                    "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert len(records) == 2 and all(r["status"] == "ok" and r["convergence"]["converged"] for r in records)


def _la_png(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.dstack([grey, alpha]), "LA").save(buf, "PNG")
    return buf.getvalue()


def test_a_grey_alpha_png_aligns_to_a_grey_file_as_grey():
    """OpenCV decodes a grey + alpha PNG as four channels (the grey repeated): it was refused
    against a grey reference ("image has 3 channels but template has 1", found by a helper's
    test). It now aligns as grey, its alpha the mask, like the grey pixels masked by hand."""
    grey = np.ascontiguousarray(_scene()[:, :, 1])
    alpha = np.where(np.arange(160)[:, None] < 12, 0, 255).astype(np.uint8) * np.ones((1, 160), np.uint8)
    ref = np.ascontiguousarray(TEMPLATE[:, :, 1])
    expected = warpsvc.align(ref, grey, "affine", image_mask=alpha > 0)
    with inprocess_server() as srv, WarpClient(f"127.0.0.1:{srv.port}", retries=1) as client:
        got = client.align(_png(ref), _la_png(grey, alpha), "affine")
        assert got.converged, got.reason
        np.testing.assert_array_equal(got.matrix, expected.matrix)
        back = client.align(_la_png(ref, np.full(ref.shape, 255, np.uint8)), _png(grey), "affine")
        assert back.converged and np.abs(back.matrix - warpsvc.align(ref, grey, "affine").matrix).max() < 1e-9


def test_the_report_pictures_files_with_alpha(tmp_path):
    """The report's residuals of RGBA and grey + alpha files are drawn from their colour
    channels, transparent pixels grey (each such row said "no pictures: could not broadcast
    (300,300,4) into (300,300,3)", found by a helper's test)."""
    pytest.importorskip("matplotlib", reason="the report's summary plots need matplotlib")
    src = tmp_path / "in"
    src.mkdir()
    rgba = _scene()
    cv2.imwrite(str(tmp_path / "ref.png"), TEMPLATE)
    cv2.imwrite(str(src / "rgba.png"), rgba)
    (src / "grey_alpha.png").write_bytes(_la_png(np.ascontiguousarray(rgba[:, :, 1]), rgba[:, :, 3]))
    res = run_batch("align", src, tmp_path / "out", "--reference", tmp_path / "ref.png", "--model", "affine",
                    "--jobs", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    html = (tmp_path / "out" / "report.html").read_text()
    assert "no pictures" not in html, re.findall("no pictures[^<]*", html)
    assert len(re.findall(r"residual RMS [0-9.]+ -", html)) == 2
