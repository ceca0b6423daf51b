"""Tests of warpsvc.align: recovery of synthesised warps, masks, channels, photometric and
robust options, status reporting on degenerate inputs, argument guards, covariance.

Oracle: the template is cut out of the image through a known ``image_from_template`` warp with
the same bilinear sampling the aligner uses, so the true warp gives a zero residual and the
recovered corners must match to far better than the 0.01 px tolerance we assert.
"""

import math

import cv2
import numpy as np
import pytest
from skimage import data

import warpsvc
from warpsvc import AlignOptions, AlignResult, HomographyTransform, align, warp
from warpsvc.core.errors import InvalidArgumentError, InvalidImageError, InvalidTransformError

# Tolerances (policy): recovered template-corner positions, in image pixels.
CORNER_TOL = 0.01
TEMPLATE = (100, 100)  # (h, w)
ORIGIN = (180.0, 150.0)  # where the template's top-left corner sits in the camera image


def corners(h=TEMPLATE[0], w=TEMPLATE[1]):
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def map_points(m, xy):
    p = np.column_stack([xy, np.ones(len(xy))]) @ np.asarray(m).T
    return p[:, :2] / p[:, 2:]


def cut(image, image_from_template, shape=TEMPLATE):
    """The template: image sampled through the warp (bilinear, as the aligner does)."""
    h, w = shape
    return cv2.warpPerspective(image, image_from_template, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


@pytest.fixture(scope="module")
def camera():
    return data.camera().astype(np.float32)


def true_warp(model):
    """A well-conditioned member of each family, placed at ORIGIN (image_from_template)."""
    tx, ty = ORIGIN
    c, s = np.cos(0.06), np.sin(0.06)
    if model == "translation":
        m = np.array([[1, 0, tx + 3.3], [0, 1, ty - 2.7], [0, 0, 1.0]])
    elif model == "euclidean":
        m = np.array([[c, -s, tx + 2.2], [s, c, ty - 1.4], [0, 0, 1.0]])
    elif model == "similarity":
        m = np.array([[1.05 * c, -1.05 * s, tx + 1.5], [1.05 * s, 1.05 * c, ty + 2.5], [0, 0, 1.0]])
    elif model == "affine":
        m = np.array([[1.04, 0.05, tx - 2.0], [-0.03, 0.95, ty + 1.8], [0, 0, 1.0]])
    else:
        m = np.array([[1.03, 0.04, tx - 1.0], [-0.02, 0.97, ty + 2.0], [1.2e-4, -0.8e-4, 1.0]])
    return m


def start():
    """``init`` in the result's meaning (template_from_image): the unperturbed placement."""
    return np.linalg.inv(np.array([[1, 0, ORIGIN[0]], [0, 1, ORIGIN[1]], [0, 0, 1.0]]))


def corner_error(result, truth, shape=TEMPLATE):
    c = corners(*shape)
    return float(np.abs(map_points(result.inverse, c) - map_points(truth, c)).max())


@pytest.mark.parametrize("model", warpsvc.MODELS)
def test_recovers_known_warp_for_every_model(camera, model):
    truth = true_warp(model)
    result = align(cut(camera, truth), camera, model, start())
    assert isinstance(result, AlignResult)
    assert result.converged and result.reason == "converged"
    assert corner_error(result, truth) < CORNER_TOL
    assert result.zncc > 0.999
    product = result.matrix @ result.inverse  # identity up to the homogeneous scale
    assert np.allclose(product / product[2, 2], np.eye(3), atol=1e-9)


@pytest.mark.parametrize("model", ["euclidean", "similarity", "affine"])
def test_result_stays_in_the_model_family(camera, model):
    result = align(cut(camera, true_warp(model)), camera, model, start())
    warpsvc.MotionModel(model).params(result.matrix)  # raises if the matrix left the family
    assert isinstance(result.transform, warpsvc.AffineTransform)


def test_matrix_plugs_into_warp(camera):
    truth = true_warp("homography")
    template = cut(camera, truth)
    result = align(template, camera, "homography", start())
    aligned = warp(camera, result.transform, template.shape)
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(aligned[inner] - template[inner]).max() < 0.25  # grey levels: ~0.005 px at the steepest edges
    assert isinstance(result.transform, HomographyTransform)


def test_previous_result_seeds_the_next_call(camera):
    template = cut(camera, true_warp("affine"))
    first = align(template, camera, "affine", start())
    again = align(template, camera, "affine", first.matrix, levels=1)  # tracking: no pyramid needed
    assert again.converged
    assert again.iterations == (1,)
    assert np.allclose(again.matrix, first.matrix, atol=1e-4)


def test_accepts_transform_and_2x3_init(camera):
    template = cut(camera, true_warp("affine"))
    a = align(template, camera, "affine", warpsvc.AffineTransform(start()))
    b = align(template, camera, "affine", start()[:2])
    assert a.converged and b.converged
    assert np.allclose(a.matrix, b.matrix, atol=1e-9)


def test_template_mask_is_honoured(camera):
    truth = true_warp("homography")
    template = cut(camera, truth)
    mask = np.ones(TEMPLATE, bool)
    template[10:50, 20:70] = 255.0  # corrupt a block ...
    mask[10:50, 20:70] = False  # ... and exclude it
    result = align(template, camera, "homography", start(), template_mask=mask)
    assert result.converged
    assert corner_error(result, truth) < CORNER_TOL


def test_image_mask_is_honoured(camera):
    truth = true_warp("affine")
    template = cut(camera, truth)
    image = camera.copy()
    image[200:230, 190:260] = 0.0  # corrupt where the template lies ...
    mask = np.ones(image.shape, np.uint8)
    mask[195:235, 185:265] = 0  # ... and mask it (with a margin for the bilinear footprint)
    result = align(template, image, "affine", start(), image_mask=mask)
    assert corner_error(result, truth) < CORNER_TOL
    unmasked = align(template, image, "affine", start())
    assert corner_error(unmasked, truth) > corner_error(result, truth)


def test_nan_pixels_count_as_missing(camera):
    truth = true_warp("affine")
    template = cut(camera, truth)
    template[40:60, 40:60] = np.nan
    image = camera.copy()
    image[:, :20] = np.nan
    result = align(template, image, "affine", start())
    assert result.converged
    assert corner_error(result, truth) < CORNER_TOL


def test_multichannel(camera):
    rgb = data.astronaut().astype(np.float32)
    truth = true_warp("homography")
    template = cut(rgb, truth)
    assert template.shape == TEMPLATE + (3,)
    result = align(template, rgb, "homography", start())
    assert result.converged
    assert corner_error(result, truth) < CORNER_TOL
    assert len(result.gain) == 1  # default channels="mean": one grey channel is solved
    every = align(template, rgb, "homography", start(), options=AlignOptions(channels="all"))
    assert every.converged and corner_error(every, truth) < CORNER_TOL
    assert len(every.gain) == 3


def test_more_than_four_channels(camera):
    stack = np.dstack([camera, 255 - camera, camera * 0.5, np.sqrt(camera), camera, camera[::-1]])
    truth = true_warp("affine")
    result = align(cut(stack, truth), stack, "affine", start())
    assert corner_error(result, truth) < CORNER_TOL


def test_gain_bias(camera):
    truth = true_warp("homography")
    template = cut(camera, truth) * 1.3 - 25.0
    result = align(template, camera, "homography", start(), photometric="gain_bias")
    assert result.converged
    assert corner_error(result, truth) < CORNER_TOL
    # image ~ gain * template + bias  =>  gain = 1/1.3, bias = 25/1.3
    assert result.gain[0] == pytest.approx(1 / 1.3, rel=1e-3)
    assert result.bias[0] == pytest.approx(25 / 1.3, abs=0.05)


@pytest.mark.parametrize("loss", ["huber", "tukey"])
def test_robust_loss_ignores_occlusion(camera, loss):
    truth = true_warp("affine")
    template = cut(camera, truth)
    rng = np.random.default_rng(7)
    template[5:55, 5:55] = rng.uniform(0, 255, (50, 50)).astype(np.float32)  # 25 % occluded
    result = align(template, camera, "affine", start(), robust=loss)
    assert corner_error(result, truth) < 0.05


def test_uint8_and_uint16_inputs(camera):
    truth = true_warp("translation")
    template = cut(camera, truth)
    r8 = align(np.round(template).astype(np.uint8), camera.astype(np.uint8), "translation", start())
    r16 = align((template * 256).astype(np.uint16), (camera * 256).astype(np.uint16), "translation", start())
    assert corner_error(r8, truth) < 0.05
    assert corner_error(r16, truth) < 0.05


# -- degenerate inputs: a clear reason or a typed error, never a hang ------------------------

def test_flat_template_reports_reason(camera):
    result = align(np.full(TEMPLATE, 90.0, np.float32), camera, "homography", start())
    assert not result.converged
    assert result.reason == "flat_template"
    assert np.allclose(result.matrix, start())


@pytest.mark.parametrize("search", ["auto", "global", "local"])
@pytest.mark.parametrize("value,dtype", [(77, np.uint8), (0, np.uint8), (3.5, np.float32)])
def test_flat_template_without_a_start_reports_it_whatever_the_search(camera, search, value, dtype):
    """With no ``init`` the default search used to report ``low_correlation`` and a spurious
    shift for a constant template (its coarse-gated solve stopped before the flatness check,
    then the global search made something up; found by a hostile-client test)."""
    result = align(np.full(TEMPLATE, value, dtype), camera.astype(np.float32), "affine", search=search)
    assert not result.converged and result.reason == "flat_template", result.reason
    np.testing.assert_array_equal(result.matrix, np.eye(3))


@pytest.mark.parametrize("unit,dtype", [(u, np.float32) for u in (1e-30, 1e-10, 1e18, 1e30)]
                         + [(u, np.float64) for u in (1e-300, 1e-30, 1e-10, 1e18, 1e30, 1e300)])
def test_float_images_in_any_intensity_unit_align_like_the_usual_range(camera, unit, dtype):
    """Pixel values of 1e18 and up overflowed the float32 Hessian (``flat_template``; from 1e20
    the noise-share eigensolver raised, INTERNAL over gRPC) and values of 1e-10 and below lost
    the problem (found by a hostile-client test). They are rescaled by a power of two
    (:mod:`warpsvc.core.align.intensity_scale`): the matrix is bit for bit that of the same
    images handed over already scaled into range, and the intensity-valued statistics come back
    in the caller's unit."""
    from warpsvc.core.align.intensity_scale import scale_for

    truth = true_warp("homography")
    tmpl = cut(camera, truth).astype(np.float64) / 255.0 * unit
    image = (camera.astype(np.float64) / 255.0 * 0.9 + 0.05) * unit  # gain and bias
    tmpl, image = tmpl.astype(dtype), image.astype(dtype)
    got = align(tmpl, image, "homography", start())
    s = scale_for(tmpl)
    assert s != 1.0 and math.log2(s) == round(math.log2(s))
    ref = align(tmpl * dtype(s), image * dtype(s), "homography", start())  # in range: not rescaled
    assert got.converged and ref.converged
    np.testing.assert_array_equal(got.matrix, ref.matrix)
    assert corner_error(got, truth) < 0.05
    assert got.rms_error == pytest.approx(ref.rms_error / s, rel=1e-12)
    assert got.bias[0] == pytest.approx(ref.bias[0] / s, rel=1e-12) and got.gain == ref.gain


def test_usual_intensity_ranges_are_not_rescaled():
    from warpsvc.core.align.intensity_scale import scale_for

    for peak in (1 / 255.0, 1.0, 255.0, 65535.0, 2.0 ** 20):
        assert scale_for(np.array([[0.0, peak]], np.float32)) == 1.0
    assert scale_for(np.array([[np.nan, 0.0]])) == 1.0
    assert scale_for(np.array([[3e-3, 1e25]])) == 2.0 ** (7 - 83)  # 1e25 = 1.03 * 2^83
    assert scale_for(np.array([[np.inf, 1e25]])) == 2.0 ** (7 - 83)  # non-finite values ignored
    assert scale_for(np.array([[0, 65535]], np.uint16)) == 1.0  # integers never


@pytest.mark.parametrize("kind", ["16-bit image, 8-bit template", "8-bit image, [0, 1] template",
                                  "8-bit image, 16-bit template", "zero-centred floats, 8- and 16-bit units"])
def test_template_and_image_in_other_units_align(camera, kind):
    """The same scene stored in other units -- an 8-bit reference for a 16-bit file, a [0, 1]
    float template for 8-bit frames -- needs a gain far outside the gain model's [0.05, 20]:
    such pairs came out ``uncertain`` with the gain clamped at 20 (found by a batch run over a
    folder of mixed bit depths). The template is now brought to the image's units by a power
    of two first; the motion is that of the same-unit pair and the gain is reported in the
    caller's units."""
    truth = true_warp("homography")
    tmpl8 = cut(camera, truth).astype(np.float64)
    cam8 = camera.astype(np.uint8)  # (the fixture is the 8-bit photograph as float32)
    template, image, gain = {
        "16-bit image, 8-bit template": (tmpl8.round().astype(np.uint8), cam8.astype(np.uint16) * 257, 257.0),
        "8-bit image, [0, 1] template": ((tmpl8 / 255.0).astype(np.float32), cam8, 255.0),
        "8-bit image, 16-bit template": ((tmpl8 * 257).round().astype(np.uint16), cam8, 1 / 257.0),
        # both float32 (no container says the units differ): the first fit's gain is clamped at
        # 20, and the retry in the peaks' units (intensity_scale.solve_in_units) converges
        "zero-centred floats, 8- and 16-bit units": ((tmpl8 - 128).astype(np.float32),
                                                     (camera - 128) * np.float32(257), 257.0),
    }[kind]
    same = align(tmpl8.astype(np.float32), camera, "homography", start())
    got = align(template, image, "homography", start())
    assert same.converged and got.converged, got.reason
    assert corner_error(got, truth) < 0.05 and corner_error(same, truth) < 0.05
    assert got.gain[0] == pytest.approx(gain, rel=0.01)  # the model's gain (or the unit alone) times the unit
    off = align(template, image, "homography", start(), photometric=None)  # identical exposure asserted: as given
    assert off.gain == (1.0,)


def test_only_a_clamped_gain_is_solved_again(camera, monkeypatch):
    """The retry in the peaks' units runs only when the first fit's gain sits at a bound of the
    gain model: a fit inside the range is solved once (the same bits as before)."""
    from warpsvc.core.align import api

    calls = []
    real = api._search
    monkeypatch.setattr(api, "_search", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    truth = true_warp("homography")
    tmpl = cut(camera, truth)
    inside = align(tmpl, camera * np.float32(0.9) + 5, "homography", start(), photometric="gain_bias")
    assert inside.converged and len(calls) == 1 and 0.8 < inside.gain[0] < 1.0
    calls.clear()
    far = align(tmpl - 128, (camera - 128) * np.float32(257), "homography", start(), photometric="gain_bias")
    assert far.converged and len(calls) == 2 and corner_error(far, truth) < 0.05
    assert far.gain[0] > 20  # no longer the clamp


def test_unit_factor_needs_a_difference_of_containers():
    """Only a difference of containers (uint8, uint16, [0, 1] floats) says the units differ;
    the factor is the power of two nearest the ratio of robust peaks, clipped to the ratio of
    the full scales. Same-kind pairs are never rescaled: a dark patch of a bright image, or a
    hot pixel (cosmic ray), must not look like another unit (found by a helper's test: a hot
    pixel rescaled a same-unit float pair and moved the result 0.1-1.2 px)."""
    from warpsvc.core.align.intensity_scale import robust_peak
    from warpsvc.core.align.intensity_scale import template_factor as tf

    rng = np.random.default_rng(5)
    t8 = rng.integers(0, 201, (60, 60)).astype(np.uint8)
    scene = rng.integers(0, 201, (300, 300))
    assert tf(t8, (scene * 257).astype(np.uint16)) == 256.0  # 8- vs 16-bit full range
    assert tf(t8, (scene * 16).astype(np.uint16)) == 16.0  # a 12-bit camera in a 16-bit file
    assert tf(t8, (scene * 4).astype(np.uint16)) == 1.0  # 10-bit: gain 4, left to the gain model
    assert tf((t8 // 10).astype(np.uint8), np.full((9, 9), 65535, np.uint16)) == 256.0  # dark: clipped to 257
    assert tf((t8 / 255.0).astype(np.float32), scene.astype(np.uint8)) == 256.0  # [0, 1] template
    assert tf((scene * 257).astype(np.uint16), t8) == 2.0 ** -8  # and the other way
    assert tf(t8.astype(np.float32), (scene // 10).astype(np.uint8)) == 1.0  # float counts: unit unknown
    assert tf(t8.astype(np.float32) / 255, scene.astype(np.float32)) == 1.0  # float / float: never
    assert tf(t8.astype(np.float32), scene.astype(np.float32) * 1000) == 1.0
    hot = scene.astype(np.uint16)
    hot[3, 3] = 65535  # 8-bit data in a 16-bit file, one hot pixel: not a unit
    assert tf(t8, hot) == 1.0
    nan = (scene / 255.0).astype(np.float32)
    nan[0, :5] = np.nan
    assert tf(t8, nan) == 2.0 ** -8
    assert robust_peak(np.array([0.0, 200.0])) == 200.0 and robust_peak(np.array([np.nan])) == 0.0
    assert tf(np.zeros((4, 4), np.uint8), np.full((4, 4), 9.0, np.float32)) == 1.0  # nothing to compare


def test_all_nan_template(camera):
    result = align(np.full(TEMPLATE, np.nan, np.float32), camera, "affine", start())
    assert not result.converged
    assert result.reason == "flat_template"


def test_no_overlap_reports_reason(camera):
    far = np.linalg.inv(np.array([[1, 0, 5000.0], [0, 1, 5000.0], [0, 0, 1]]))
    result = align(cut(camera, true_warp("affine")), camera, "affine", far)
    assert not result.converged
    assert result.reason == "insufficient_overlap"
    assert result.overlap == 0.0


def test_template_larger_than_image(camera):
    small = np.ascontiguousarray(camera[100:160, 100:170])
    result = align(camera, small, "homography")
    assert not result.converged
    assert result.reason in ("insufficient_overlap", "low_correlation", "no_progress", "max_iterations")


def test_template_larger_than_image_can_still_align(camera):
    """Overlap, not size, decides: the image is a crop of the template."""
    template = camera[100:300, 100:300]
    image = np.ascontiguousarray(camera[140:260, 130:250])
    init = np.array([[1, 0, -30.0], [0, 1, -40.0], [0, 0, 1]])  # template_from_image is a shift by (-30, -40)
    result = align(template, image, "translation", np.linalg.inv(init) @ np.diag([1, 1, 1.0]) @ init @ np.linalg.inv(init))
    assert result.converged
    assert np.allclose(result.inverse[:2, 2], [-30.0, -40.0], atol=CORNER_TOL)


def test_time_budget_is_checked_between_iterations(camera):
    result = align(cut(camera, true_warp("homography")), camera, "homography", start(), time_budget=1e-9)
    assert not result.converged
    assert result.reason == "time_budget"


def test_should_stop_cancels(camera):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    result = align(cut(camera, true_warp("homography")), camera, "homography", start(), should_stop=stop)
    assert result.reason == "cancelled"
    assert not result.converged
    assert len(calls) == 4


def test_max_iterations_reason(camera):
    truth = true_warp("homography")
    result = align(cut(camera, truth), camera, "homography", start(), levels=1, max_iterations=1)
    assert not result.converged
    assert result.reason == "max_iterations"
    assert result.iterations == (1,)


def test_unrelated_images_do_not_claim_convergence(camera):
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, TEMPLATE).astype(np.float32), (0, 0), 2.0)
    result = align(noise, camera, "homography", start())
    assert not result.converged


# -- argument guards -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, field", [
    ({"model": "projective"}, "model"),
    ({"levels": 0}, "levels"),
    ({"levels": "many"}, "levels"),
    ({"robust": "cauchy"}, "robust"),
    ({"photometric": "gain"}, "photometric"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"max_iterations": 2.5}, "max_iterations"),
    ({"tolerance": -1.0}, "tolerance"),
    ({"tolerance": float("nan")}, "tolerance"),
    ({"time_budget": 0}, "time_budget"),
    ({"should_stop": 3}, "should_stop"),
    ({"options": "fast"}, "options"),
])
def test_invalid_arguments_raise_with_field(camera, kwargs, field):
    with pytest.raises(InvalidArgumentError) as info:
        align(camera[:50, :50], camera, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize("init", [np.zeros((3, 3)), np.ones((2, 2)), np.full((3, 3), np.nan), "identity",
                                  np.array([[1, 2, 0], [2, 4, 0], [0, 0, 1.0]])])
def test_invalid_init(camera, init):
    with pytest.raises(InvalidTransformError) as info:
        align(camera[:50, :50], camera, init=init)
    assert info.value.field == "init"


def test_invalid_images(camera):
    with pytest.raises(InvalidImageError) as info:
        align(camera[:50, :50].astype(np.int32), camera)
    assert info.value.field == "template"
    with pytest.raises(InvalidImageError) as info:
        align(camera[:50, :50], np.dstack([camera, camera]))
    assert info.value.field == "image"
    with pytest.raises(InvalidImageError) as info:
        align(camera[:50, :50], camera, template_mask=np.ones((3, 3), bool))
    assert info.value.field == "template_mask"
    with pytest.raises(InvalidImageError) as info:
        align(camera[:50, :50], camera, image_mask=np.ones((3, 3), bool))
    assert info.value.field == "image_mask"


def test_options_object_and_keyword_override(camera):
    template = cut(camera, true_warp("affine"))
    opts = AlignOptions(model="affine", robust="huber")
    a = align(template, camera, init=start(), options=opts)
    assert a.model == "affine"
    b = align(template, camera, init=start(), options=opts, model="translation")
    assert b.model == "translation"
    with pytest.raises(InvalidArgumentError) as info:
        opts.replace(speed=3)
    assert info.value.field == "speed"


def test_result_is_frozen(camera):
    result = align(cut(camera, true_warp("translation")), camera, "translation", start())
    with pytest.raises(AttributeError):
        result.converged = False
    assert len(result.cost_history) == len(result.iterations) == result.levels


# -- covariance ------------------------------------------------------------------------------

def test_covariance_is_symmetric_positive_definite(camera):
    rng = np.random.default_rng(11)
    truth = true_warp("homography")
    template = cut(camera, truth) + rng.normal(0, 4, TEMPLATE).astype(np.float32)
    result = align(template, camera, "homography", start())
    cov = result.covariance
    assert cov.shape == (8, 8)
    assert np.allclose(cov, cov.T)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert result.corner_covariance.shape == (4, 2, 2)
    assert np.allclose(result.point_covariance(corners()), result.corner_covariance)


def test_covariance_matches_the_scatter_of_noisy_estimates(camera):
    """Monte Carlo: 40 noisy trials; the squared Mahalanobis distance of the true corners has
    mean 2 (chi-square, 2 dof) when the covariance is right. Accept [1.2, 3.2]."""
    rng = np.random.default_rng(5)
    truth = true_warp("affine")
    clean = cut(camera, truth)
    c = corners()
    d2 = []
    for _ in range(40):
        template = clean + rng.normal(0, 8, TEMPLATE).astype(np.float32)
        image = camera + rng.normal(0, 8, camera.shape).astype(np.float32)
        result = align(template, image, "affine", start())
        err = map_points(result.inverse, c) - map_points(truth, c)
        cov = result.corner_covariance
        d2.extend(np.einsum("ni,nij,nj->n", err, np.linalg.inv(cov), err))
    assert 1.2 < float(np.mean(d2)) < 3.2


def test_covariance_shrinks_with_less_noise(camera):
    truth = true_warp("affine")
    clean = cut(camera, truth)
    spreads = []
    for sigma in (2.0, 8.0):
        rng = np.random.default_rng(9)
        result = align(clean + rng.normal(0, sigma, TEMPLATE).astype(np.float32), camera, "affine", start())
        spreads.append(np.trace(result.covariance))
    assert spreads[0] < spreads[1] / 4


# -- large templates and retries -------------------------------------------------------------

def test_pixel_selection_recovers_large_template(camera):
    """Above max_pixels the strongest-gradient pixels are sampled with cv2.remap."""
    truth = true_warp("homography")
    template = cut(camera, truth, shape=(200, 240))
    full = align(template, camera, "homography", start(), options=AlignOptions(max_pixels=None))
    sparse = align(template, camera, "homography", start(), options=AlignOptions(max_pixels=3000))
    assert full.converged and sparse.converged
    assert corner_error(sparse, truth, (200, 240)) < CORNER_TOL
    assert corner_error(full, truth, (200, 240)) < CORNER_TOL
    assert sparse.covariance is not None


def test_retry_can_be_disabled(camera):
    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, TEMPLATE).astype(np.float32), (0, 0), 2.0)
    once = align(noise, camera, "affine", start(), options=AlignOptions(retry=False))
    again = align(noise, camera, "affine", start())
    assert not once.converged and not again.converged
    with pytest.raises(InvalidArgumentError) as info:
        AlignOptions(retry="yes").checked()
    assert info.value.field == "retry"


def test_all_nan_image_reports_no_overlap(camera):
    image = np.full(camera.shape, np.nan, np.float32)
    result = align(cut(camera, true_warp("affine")), image, "affine", start())
    assert not result.converged
    assert result.reason == "insufficient_overlap"


def test_large_image_region_does_not_change_the_answer(camera):
    """The solver works on the image part the template can reach; padding the image far away
    from it must not change the result."""
    truth = true_warp("homography")
    template = cut(camera, truth)
    padded = np.pad(camera, ((0, 700), (0, 900)), mode="reflect")
    a = align(template, camera, "homography", start())
    b = align(template, padded, "homography", start())
    assert a.converged and b.converged
    assert np.allclose(a.inverse, b.inverse, atol=1e-6)
