"""``converged`` is honest: the ambiguity check (warpsvc.core.align.verify) and the noise floor.

Oracles: known synthetic warps (pure shifts of seeded textures), so the truth of every result is
known; a periodic pattern has *exact* competing optima one period apart."""

import numpy as np
import pytest

import warpsvc
from warpsvc.core.align.pyramid import build_pyramid
from warpsvc.core.align.verify import MAX_BLOCK_MARGIN, MIN_MARGIN, margins, peak_margin


def _texture(seed, shape=(240, 320)):
    import cv2
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 255, shape).astype(np.float32), (0, 0), 2.0) * 4 - 384


def _stripes(shape=(240, 320), period=6):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (128 + 60 * np.sin(2 * np.pi * xx / period) + 60 * np.sin(2 * np.pi * yy / period)).astype(np.float32)


def _pyr(img, levels=3):
    return build_pyramid(img[:, :, None].astype(np.float32), levels)


def _shift(x, y):
    return np.array([[1.0, 0, x], [0, 1.0, y], [0, 0, 1.0]])


def test_margin_large_at_a_unique_optimum():
    img = _texture(1)
    t = img[60:160, 80:180]
    assert peak_margin(_pyr(t), _pyr(img), _shift(80, 60), affine=True) >= 3 * MIN_MARGIN


def test_margin_small_on_a_periodic_pattern():
    img = _stripes()
    t = img[60:160, 80:180]
    # the right placement and the one a period away correlate identically: no margin either way
    for x in (80, 86):
        assert peak_margin(_pyr(t), _pyr(img), _shift(x, 60), affine=True) < MIN_MARGIN


def test_periodic_pattern_is_reported_ambiguous_not_converged():
    img = _stripes()
    t = img[60:160, 80:180]
    r = warpsvc.align(t, img, "translation", _shift(-83, -60), photometric=None)
    assert not r.converged and r.reason == "ambiguous"


@pytest.mark.parametrize("noise", [0.0, 8.0])
def test_unique_texture_still_converged(noise):
    rng = np.random.default_rng(5)
    img = _texture(2)
    t = img[60:160, 80:180] + rng.normal(0, noise, (100, 100)).astype(np.float32)
    r = warpsvc.align(t, img + rng.normal(0, noise, img.shape).astype(np.float32), "homography",
                      _shift(-82.5, -61.5))
    assert r.converged and r.reason == "converged"
    assert np.allclose(r.inverse[:2, 2], [80, 60], atol=0.2)


def test_reason_vocabulary_has_ambiguous():
    from warpsvc.core.align import REASONS
    assert "ambiguous" in REASONS


def _beyond_the_edge(fill):
    """A 100x100 template whose right 30 columns lie beyond the image's right edge, filled with
    ``fill`` there (a crop taken with a constant border), and its image."""
    img = _texture(3)
    t = np.empty((100, 100), np.float32)
    t[:, :70] = img[60:160, 250:320]
    t[:, 70:] = fill
    return t, img


@pytest.mark.parametrize("fill", [0.0, 500.0])
def test_margin_ignores_template_pixels_beyond_the_image(fill):
    # those pixels compare with nothing: the margin is the one of the template without them
    # (any fill gives the same margin, and a unique optimum keeps a large one)
    t, img = _beyond_the_edge(fill)
    reference, _ = _beyond_the_edge(float(np.mean(t[:, :70])))
    m = peak_margin(_pyr(t), _pyr(img), _shift(250, 60), affine=True)
    assert m == pytest.approx(peak_margin(_pyr(reference), _pyr(img), _shift(250, 60), affine=True), rel=1e-4)
    assert m >= 3 * MIN_MARGIN


def test_constant_filled_template_part_beyond_the_image_still_converges():
    t, img = _beyond_the_edge(0.0)
    r = warpsvc.align(t, img, "homography", _shift(-250.7, -60.4))
    assert r.converged, r.reason
    assert np.allclose(r.inverse, _shift(250, 60), atol=0.05)



def _bench():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_align_real.py"
    spec = importlib.util.spec_from_file_location("bench_align_real", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _tilted(x, y, dy_right):
    """image_from_template of a 100x100 crop at (x, y) whose right corners are dy_right lower:
    the left half in place, the right half sheared away (a wrong perspective)."""
    tp = np.array([[0, 0], [99, 0], [99, 99], [0, 99]], np.float64)
    pts = tp + [x, y] + [[0, 0], [0, dy_right], [0, dy_right], [0, 0]]
    return warpsvc.HomographyTransform.from_points(tp, pts).matrix.copy()


def test_block_margin_sees_a_half_sheared_placement():
    """Oracle: a known crop of a seeded texture. At the truth every block of the template
    peaks at zero shift (block margin 0); with its right corners 6 px off, the right blocks
    peak 3-6 px away, far above MAX_BLOCK_MARGIN, while the whole template's peak cannot tell
    (no competing peak: the left half holds it at the estimate)."""
    img = _texture(3)
    t = img[60:160, 80:180]
    assert margins(_pyr(t), _pyr(img), _shift(80, 60), affine=False)[1] == 0.0
    assert margins(_pyr(t), _pyr(img), _tilted(80, 60, 6.0), affine=False)[1] > 3 * MAX_BLOCK_MARGIN
    # a sub-pixel error is no block shift (peaks within 1 px count as the estimate's own)
    assert margins(_pyr(t), _pyr(img), _tilted(80, 60, 0.8), affine=False)[1] == 0.0


def test_sheared_wrong_stationary_point_is_not_converged():
    """Oracle: bench_align_real's large-motion trial 10 (tuning, rocket photograph, gain/bias/
    gamma, noise 4, JPEG 85), started at the known truth with two pyramid levels and the linear
    exposure model (``photometric="gain_bias"``; the default's tone curve avoids it): Gauss-Newton
    ends 7.4 px off at a stationary point that correlates 0.973 (above min_zncc), with a tight
    covariance and no competing whole-template peak -- it used to be reported converged. The
    block check (margin ~12 at level 0) makes it ambiguous; the retries then reach the truth or
    stay unconverged, never converged-but-wrong. One level, from the same start: converged
    within 0.2 px."""
    bench = _bench()
    trial = bench.large_trial(bench.TUNING, 10, 0)
    truth = warpsvc.HomographyTransform.from_points(trial["tp"], trial["truth_pts"]).matrix
    for levels in (1, 2):
        r = warpsvc.align(trial["template"], trial["image"], "homography", np.linalg.inv(truth), levels=levels,
                          photometric="gain_bias")
        error = bench.rms(r.inverse, trial["tp"], trial["truth_pts"])
        assert r.converged == (error <= 1.0), (levels, r.reason, error)
        if levels == 1:
            assert r.converged and error < 0.2
    r = warpsvc.align(trial["template"], trial["image"], "homography", np.linalg.inv(truth),
                      options=warpsvc.AlignOptions(levels=2, retry=False, photometric="gain_bias"))
    assert not r.converged and r.reason == "ambiguous"
    t_pyr = _pyr(trial["template"], 2)
    peak, blocks = margins(t_pyr, _pyr(trial["image"], 2), r.inverse, affine=False)
    assert peak >= MIN_MARGIN and blocks > MAX_BLOCK_MARGIN  # the peak check alone passed it
    assert bench.rms(r.inverse, trial["tp"], trial["truth_pts"]) > 5


def test_rotated_crop_with_constant_fill_started_at_the_truth_stays_there():
    # Oracle: the known homography of bench_align_real's large-motion trial 22 (tuning set, the
    # rocket photograph): 10 % of the 240x240 template lies beyond the image, filled with 0, and
    # its straight dark edge is the template's strongest contrast. Started at the truth, the
    # coarse translation search used to pull the band onto dark image content: 118 px off.
    bench = _bench()
    trial = bench.large_trial(bench.TUNING, 22, 0)
    truth = warpsvc.HomographyTransform.from_points(trial["tp"], trial["truth_pts"]).matrix
    r = warpsvc.align(trial["template"], trial["image"], "homography", np.linalg.inv(truth))
    assert bench.rms(r.inverse, trial["tp"], trial["truth_pts"]) < 0.2
    assert r.converged, r.reason


def test_block_check_skips_blocks_a_robust_loss_calls_outliers():
    """Oracle: a known homography crop of the camera photograph with a 50x50 occluder (brick
    texture, the Baker-Matthews occlusion condition) in its lower-right quarter, aligned with
    the Tukey loss from 1-2 px off. The occluded block peaks somewhere else (block margin 18 >
    MAX_BLOCK_MARGIN when every block is judged), but the loss calls its pixels outliers, so
    the block is not judged and the right result stays converged."""
    from skimage import data

    from test_align_search import cut

    camera = data.camera().astype(np.float32)
    W = np.array([[1.02, 0.03, 181.0], [-0.02, 0.98, 148.0], [1e-4, -5e-5, 1.0]])
    t = cut(camera, W, n=100).copy()
    t[50:100, 50:100] = data.brick().astype(np.float32)[100:150, 200:250]
    r = warpsvc.align(t, camera, "homography", np.linalg.inv(_shift(180, 150)), robust="tukey")
    assert r.converged, r.reason
    corners = np.column_stack([np.array([[0, 0], [99, 0], [99, 99], [0, 99]], float), np.ones(4)])
    a, b = corners @ r.inverse.T, corners @ W.T
    assert np.abs(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]).max() < 0.1
    p3 = lambda x: build_pyramid(np.asarray(x, np.float32)[:, :, None], 3)  # noqa: E731
    assert margins(p3(t), p3(camera), r.inverse, affine=False)[1] > MAX_BLOCK_MARGIN
    occluder = np.zeros((100, 100), bool)
    occluder[50:, 50:] = True
    assert margins(p3(t), p3(camera), r.inverse, affine=False, outliers=occluder)[1] <= MAX_BLOCK_MARGIN
