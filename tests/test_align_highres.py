"""The global search on high-resolution pairs: template and image are detected at a common
factor ``f = features.detection_factor(...)`` once the image at 3/4 scale holds more than
``features.DETECT_PIXELS`` pixels, and the start is mapped back to full-resolution pixels.

Oracles: the closed form of ``f``; the shapes the SIFT detector is shown (recorded); a known
synthetic homography (the feature start within a few pixels of it, the refined result within
hundredths of a pixel) on a 3000x4000 photograph collage; small pairs detected exactly as before.
"""

import math

import cv2
import numpy as np
import pytest
from skimage import data

from warpsvc import HomographyTransform, align
from warpsvc.core.align import Start, features


def _collage():
    """3000x4000 grey: six photographs, each enlarged to a 1500x1333 cell (no cell repeats)."""
    photos = [data.camera(), data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.coins()]
    cells = []
    for p in photos:
        g = p if p.ndim == 2 else cv2.cvtColor(p, cv2.COLOR_RGB2GRAY)
        cells.append(cv2.resize(g, (1333, 1500), interpolation=cv2.INTER_CUBIC))
    img = np.vstack([np.hstack(cells[:3]), np.hstack(cells[3:])])
    return np.ascontiguousarray(cv2.resize(img, (4000, 3000), interpolation=cv2.INTER_LINEAR))


@pytest.fixture(scope="module")
def big():
    return _collage()


def _corners(n):
    return np.array([[0, 0], [n - 1, 0], [n - 1, n - 1], [0, n - 1]], np.float64)


def _pair(image, n, angle_deg, scale, centre, jitter_seed=0):
    """A template of side ``n`` cut from ``image`` through a rotation, scale and corner jitter:
    ``(template uint8, truth image_from_template)``."""
    t = np.deg2rad(angle_deg)
    c = (n - 1) / 2.0
    R = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = (_corners(n) - c) @ R.T + centre
    pts += np.random.default_rng(jitter_seed).normal(0, 0.03 * n, pts.shape)
    truth = HomographyTransform.from_points(_corners(n), pts).matrix.copy()
    tmpl = cv2.warpPerspective(image.astype(np.float32), truth, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return np.clip(tmpl, 0, 255).astype(np.uint8), truth


def _corner_rms(W, truth, n):
    q = cv2.perspectiveTransform(_corners(n)[None], np.asarray(W, np.float64))[0]
    p = cv2.perspectiveTransform(_corners(n)[None], truth)[0]
    return float(np.sqrt(np.mean((q - p) ** 2)))


@pytest.fixture
def detector_inputs(monkeypatch):
    """Shapes of every image the SIFT detector is shown."""
    shapes = []
    real = features._detect

    def recording(img, mask, check=None):
        shapes.append(img.shape[:2])
        return real(img, mask, check)

    monkeypatch.setattr(features, "_detect", recording)
    return shapes


def test_detection_factor_closed_form():
    s2 = features.IMAGE_SCALE ** 2
    # up to DETECT_PIXELS at 3/4 scale: as before
    assert features.detection_factor((240, 240), (480, 640)) == 1.0
    side = int(math.sqrt(features.DETECT_PIXELS / s2))
    assert features.detection_factor((240, 240), (side, side)) == 1.0
    # a 12 MP image, an 800 px template: sqrt(DETECT_PIXELS / (H W s^2))
    f = features.detection_factor((800, 800), (3000, 4000))
    assert f == pytest.approx(math.sqrt(features.DETECT_PIXELS / (3000 * 4000 * s2)), rel=1e-12)
    assert 0.5 < f < 0.6
    # the template's floor: a 400 px template stays at MIN_DETECT_SIDE
    assert features.detection_factor((400, 300), (3000, 4000)) == pytest.approx(features.MIN_DETECT_SIDE / 400)
    # never above 1 (a template smaller than the floor is detected as it is: in tiles)
    assert features.detection_factor((200, 200), (3000, 4000)) == 1.0


def test_small_pairs_detect_as_before(detector_inputs):
    """640x480 frame, 240 px template: the template at full resolution, the image at 3/4."""
    rgb = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    frame = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    tmpl, truth = _pair(frame, 240, 75.0, 1.2, (330.0, 250.0))
    r = align(tmpl, frame, "homography", search="global")
    assert r.converged and r.start == Start.FEATURES
    assert detector_inputs[:2] in ([(240, 240), (360, 480)], [(360, 480), (240, 240)])
    assert _corner_rms(r.inverse, truth, 240) < 0.05


@pytest.mark.parametrize("n, angle, scale", [(800, 140.0, 1.3), (400, -60.0, 0.7)])
def test_high_resolution_pair_is_detected_reduced_and_refined_at_full_resolution(big, detector_inputs, n, angle,
                                                                                 scale):
    tmpl, truth = _pair(big, n, angle, scale, (2100.0, 1400.0), jitter_seed=n)
    f = features.detection_factor(tmpl.shape, big.shape)
    assert f < 1.0
    r = align(tmpl, big, "homography", search="global")
    assert r.converged and r.start == Start.FEATURES, r.reason
    # what SIFT saw: the template at f, the image at 3/4 of f, within DETECT_PIXELS
    small_t = (round(n * f), round(n * f))
    reduced = (round(3000 * f), round(4000 * f))
    small_i = (round(reduced[0] * features.IMAGE_SCALE), round(reduced[1] * features.IMAGE_SCALE))
    assert sorted(detector_inputs[:2]) == sorted([small_t, small_i])
    # within DETECT_PIXELS, unless the template's floor set f
    assert small_i[0] * small_i[1] <= features.DETECT_PIXELS * 1.01 or small_t[0] == features.MIN_DETECT_SIDE
    # refined at full resolution: hundredths of a pixel from the truth
    assert _corner_rms(r.inverse, truth, n) < 0.05


def test_feature_start_maps_both_sides_back_to_full_resolution(big):
    """The start itself (before Gauss-Newton) from reduced inputs is within a few pixels of the
    truth in full-resolution pixels; a factor not undone would be off by hundreds."""
    n = 800
    tmpl, truth = _pair(big, n, 35.0, 1.1, (1500.0, 1700.0), jitter_seed=3)
    f = features.detection_factor(tmpl.shape, big.shape)
    found = features.feature_start(features.TemplateFeatures(tmpl[:, :, None].astype(np.float32), f),
                                   features.reduced(big, f), "homography", features.IMAGE_SCALE, image_factor=f)
    assert found is not None
    H, inliers = found
    assert inliers >= 20
    assert _corner_rms(H, truth, n) < 3.0


def test_reduced_keeps_layout_and_marks_missing_areas():
    img = np.arange(40 * 60 * 3, dtype=np.float32).reshape(40, 60, 3)
    img[10, 10, :] = np.nan
    out = features.reduced(img, 0.5)
    assert out.shape == (20, 30, 3)
    assert np.isnan(out[5, 5]).all() and np.isfinite(out[0, 0]).all()
    np.testing.assert_allclose(out[0, 0], img[:2, :2].reshape(-1, 3).mean(axis=0), rtol=1e-6)
    grey = features.reduced(np.zeros((40, 60, 1), np.float32), 0.5)
    assert grey.shape == (20, 30, 1)
    assert features.reduced(np.zeros((40, 60), np.uint8), 0.5).shape == (20, 30)


def _octave(k):
    o = k.octave & 255
    return o - 256 if o >= 128 else o


def test_tiled_detection_reproduces_the_whole_image_keypoints():
    """A 1900x1900 image (above TILE_PIXELS: 2 x 2 tiles): the tiled detection finds the whole-image keypoints
    -- same position, orientation and descriptor (within one level) -- for >= 98 % of those in
    the fine octaves (-1 .. 2, their support inside the tile margin) and >= 97 % overall."""
    cells = [data.camera(), data.astronaut(), data.coffee(), data.chelsea()]
    cells = [cv2.resize(c if c.ndim == 2 else cv2.cvtColor(c, cv2.COLOR_RGB2GRAY), (800, 800),
                        interpolation=cv2.INTER_CUBIC) for c in cells]
    img = np.ascontiguousarray(cv2.resize(np.vstack([np.hstack(cells[:2]), np.hstack(cells[2:])]), (1900, 1900)))
    assert img.size > features.TILE_PIXELS and features._tile_edges(1900) == [0, 1024, 1900]
    whole_k, whole_d = cv2.SIFT_create().detectAndCompute(img, None)
    tiled_k, tiled_d = features._detect(img, None)
    assert tiled_d.shape == (len(tiled_k), 128)
    key = lambda k: (round(k.pt[0], 3), round(k.pt[1], 3), round(k.angle, 2))
    index = {key(k): j for j, k in enumerate(tiled_k)}
    fine, coarse = [], []
    for i, k in enumerate(whole_k):
        j = index.get(key(k))
        same = j is not None and int(np.abs(whole_d[i].astype(int) - tiled_d[j].astype(int)).max()) <= 1
        (fine if _octave(k) <= 2 else coarse).append(same)
    assert np.mean(fine) >= 0.98, np.mean(fine)
    assert np.mean(fine + coarse) >= 0.97
    assert abs(len(tiled_k) - len(whole_k)) <= 0.03 * len(whole_k)


def test_tile_edges_cover_without_thin_strips():
    assert features._tile_edges(1000) == [0, 1000]
    assert features._tile_edges(2048) == [0, 1024, 2048]
    assert features._tile_edges(2100) == [0, 1024, 2100]   # a 52 px remainder joins the last core
    assert features._tile_edges(2700) == [0, 1024, 2048, 2700]
