"""The second look at level 1 (``api._attempt``): a converged solve that the finest level's
noise-corrected correlation rejects (``low_correlation``) is judged again on pyramid level 1,
where the image's extra interpolation no longer lowers the correlation; it is accepted there
only at ``SECOND_LOOK_ZNCC``.

Oracles: a known synthetic homography (the template sharp, the image its bilinear resampling:
the case that read as ``low_correlation`` though right); the same pair with the second look off;
the level-1 correlation at the truth and at placements a few pixels off.
"""

import importlib

import cv2
import numpy as np
import pytest
from skimage import data

from warpsvc import align
from warpsvc.core.align import covariance
from warpsvc.core.align.pyramid import build_level, build_pyramid, prepare

api = importlib.import_module("warpsvc.core.align.api")


@pytest.fixture(scope="module")
def pair():
    """``(template, image, truth image_from_template)``: a 1000x1500 collage of three photographs
    as they are and mirrored (point sources, tissue, brick: fine texture) and its bilinear
    resampling through a mild homography."""
    def grey(p):
        return cv2.cvtColor(p, cv2.COLOR_RGB2GRAY) if p.ndim == 3 else p

    cells = [cv2.resize(grey(getattr(data, n)()), (500, 500), interpolation=cv2.INTER_AREA)
             for n in ("brick", "immunohistochemistry", "hubble_deep_field")]
    cells += [c[:, ::-1] for c in cells]
    tmpl = np.vstack([np.hstack(cells[:3]), np.hstack(cells[3:])]).astype(np.float32)
    h, w = tmpl.shape
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    ang = np.deg2rad(8.0)
    R = 1.03 * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    jitter = np.float32([[5, -7], [-6, 4], [8, 3], [-4, -5]]) * w / 600
    dst = ((c - [w / 2, h / 2]) @ R.T + [w / 2, h / 2] + jitter).astype(np.float32)
    truth = cv2.getPerspectiveTransform(c, dst).astype(np.float64)
    image = cv2.warpPerspective(tmpl, truth, (w, h), flags=cv2.INTER_LINEAR)
    return tmpl, image, truth


def _corner_rms(W, truth, shape):
    h, w = shape
    c = np.array([[[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]], np.float64)
    return float(np.sqrt(np.mean((cv2.perspectiveTransform(c, W) - cv2.perspectiveTransform(c, truth)) ** 2)))


def test_sharper_template_is_converged_with_the_second_look(pair, monkeypatch):
    tmpl, image, truth = pair
    r = align(tmpl, image, "homography", init=np.linalg.inv(truth))
    assert r.converged, r.reason
    assert _corner_rms(r.inverse, truth, tmpl.shape) < 0.05
    monkeypatch.setattr(api, "SECOND_LOOK", False)
    before = align(tmpl, image, "homography", init=np.linalg.inv(truth))
    assert not before.converged and before.reason == "low_correlation"  # what it read as before
    assert _corner_rms(before.inverse, truth, tmpl.shape) < 0.05          # though right


@pytest.mark.parametrize("shift", [2.0, 4.0])
def test_level_one_correlation_rejects_placements_a_few_pixels_off(pair, shift):
    """At the truth the level-1 check passes SECOND_LOOK_ZNCC; moved by 2 or 4 level-0 pixels
    (1 or 2 at level 1) it does not."""
    tmpl, image, truth = pair
    t_pyr = build_pyramid(prepare(tmpl, None, "template", "template_mask"), 2)
    i_pyr = build_pyramid(prepare(image, None, "image", "image_mask"), 2)
    opts = api.AlignOptions(model="homography")
    chart = api.make_chart(tmpl.shape)
    lv1 = build_level(1, t_pyr[1], i_pyr[1], "homography", chart, True, opts.max_pixels)

    def check(W):
        return covariance.coarse_check_zncc(lv1, W, opts, False, True, 0.0, i_pyr[1])

    assert check(truth) >= api.SECOND_LOOK_ZNCC
    off = np.array([[1.0, 0, shift], [0, 1.0, -shift / 2], [0, 0, 1.0]]) @ truth
    assert check(off) < api.SECOND_LOOK_ZNCC


def test_no_second_look_far_below_min_zncc(monkeypatch):
    """An RGBA pair aligned on all four channels (tests/test_sequence_alpha.py: a third of each
    frame is random colour under alpha 0): the finest level reads ~0.52, level 1 ~0.98 at a
    placement 2-5 px off. Without the reach bound the second look called it converged."""
    from test_sequence_alpha import RGBA, _corner_error

    second_look = importlib.import_module("warpsvc.core.align.second_look")
    for k in (1, 2, 5, 7):
        r = align(RGBA[0], RGBA[k], "homography")
        assert not r.converged or _corner_error(r.matrix, k) < 1.0, (k, r.reason, _corner_error(r.matrix, k))
    monkeypatch.setattr(second_look, "SECOND_LOOK_REACH", 10.0)
    wrong = [k for k in (1, 2, 5, 7) if (r := align(RGBA[0], RGBA[k], "homography")).converged
             and _corner_error(r.matrix, k) > 1.0]
    assert wrong, "the case no longer needs the bound: pick another"
