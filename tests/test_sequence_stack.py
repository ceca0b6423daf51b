"""Tests of warpsvc.core.sequence.stack / Stacker: flux, coverage, combine rules, clipping, memory.

Oracles: totals of the input frames (flux conservation), the frames' own areas (coverage),
numpy slicing for integer shifts with point sampling (exact), per-frame measured noise
variances (the mean of N independent frames has variance mean(var_k) / N), a clean stack
(outlier rejection).
"""

import gc
import weakref

import numpy as np
import pytest

import warpsvc
from warpsvc.core.errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError, InvalidTransformError
from warpsvc.core.sequence import StackOptions, Stacker, stack

# Tolerances (policy). Sum stack of frames inside the output (issue 15: 1e-6 relative); the
# antialiased scatter conserves to float64 round-off.
FLUX_RTOL = 1e-6
# Noise of the mean stack vs sqrt(mean_k var_k / N): sampling error of a std over ~3000 pixels is ~1.3 %.
NOISE_RTOL = 0.05
OUT = (80, 96)


def shift(dx, dy):
    return np.array([[1, 0, dx], [0, 1, dy], [0, 0, 1.0]])


def homographies(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        m = shift(20 + rng.uniform(-3, 3), 15 + rng.uniform(-3, 3))
        m[:2, :2] += rng.normal(0, 0.02, (2, 2))
        m[2, :2] = rng.normal(0, 2e-4, 2)
        out.append(m)
    return out


def test_sum_stack_preserves_every_frames_flux():
    rng = np.random.default_rng(0)
    frames = [rng.gamma(2.0, 50.0, (40, 50)) for _ in range(6)]
    ts = homographies(6, 1)
    for t in ts:  # every frame lands inside the output
        corners = warpsvc.HomographyTransform(t).map([[-0.5, -0.5], [49.5, -0.5], [49.5, 39.5], [-0.5, 39.5]])
        assert corners.min() > 1 and corners[:, 0].max() < OUT[1] - 2 and corners[:, 1].max() < OUT[0] - 2
    res = stack(frames, ts, OUT, combine="sum")
    total = sum(float(f.sum()) for f in frames)
    assert abs(res.image.sum() - total) <= FLUX_RTOL * total
    # one frame at a time too (the streaming accumulator gives the same)
    for f, t in zip(frames, ts):
        single = stack([f], [t], OUT, combine="sum").image
        assert abs(single.sum() - f.sum()) <= FLUX_RTOL * f.sum()
    # integer images, uint16
    res16 = stack([f.astype(np.uint16) for f in frames], ts, OUT, combine="sum")
    total16 = sum(float(f.astype(np.uint16).sum()) for f in frames)
    assert abs(res16.image.sum() - total16) <= FLUX_RTOL * total16


def test_coverage_counts_frames_and_their_area():
    ts = homographies(5, 2)
    frames = [np.ones((40, 50)) for _ in ts]
    res = stack(frames, ts, OUT, combine="sum")
    # each frame's covered fraction integrates to its footprint's area in output pixels,
    # sum over the frame's pixels of |det J_T| (midpoint rule; the determinant is smooth)
    dets = [warpsvc.jacobian_determinant(warpsvc.HomographyTransform(t).inverse(), (40, 50)) for t in ts]
    expected = sum(float(d.sum()) for d in dets)
    assert abs(res.coverage.sum() - expected) < 1e-3 * expected
    assert res.coverage.max() <= 5 + 1e-9 and res.coverage.min() == 0.0
    assert np.isclose(res.coverage[OUT[0] // 2, OUT[1] // 2], 5.0, atol=1e-6)  # the middle sees every frame


def test_mean_of_integer_shifts_matches_slicing_with_point_sampling():
    rng = np.random.default_rng(3)
    frames = [rng.random((30, 40)) * 100 for _ in range(4)]
    offsets = [(5, 7), (9, 4), (6, 10), (12, 8)]
    res = stack(frames, [shift(dx, dy) for dx, dy in offsets], (50, 60), combine="mean", antialias=False)
    acc, cnt = np.zeros((50, 60)), np.zeros((50, 60))
    for f, (dx, dy) in zip(frames, offsets):
        acc[dy:dy + 30, dx:dx + 40] += f
        cnt[dy:dy + 30, dx:dx + 40] += 1
    inside = cnt > 0
    np.testing.assert_allclose(res.image[inside], acc[inside] / cnt[inside], rtol=1e-9)
    np.testing.assert_allclose(res.coverage, cnt, atol=1e-9)
    assert np.all(np.isnan(res.image[~inside]))


def test_mean_is_flux_per_output_pixel():
    # a 2x magnification spreads each frame pixel over 4 output pixels: 1/4 of its value each
    frames = [np.full((20, 20), 8.0) for _ in range(3)]
    zoom = np.array([[2.0, 0, 10], [0, 2.0, 10], [0, 0, 1]])
    res = stack(frames, [zoom] * 3, (70, 70))
    np.testing.assert_allclose(res.image[20:40, 20:40], 2.0, rtol=1e-9)
    np.testing.assert_allclose(res.coverage[20:40, 20:40], 3.0, rtol=1e-9)


def test_mean_noise_falls_as_one_over_sqrt_n():
    rng = np.random.default_rng(4)
    ts = homographies(16, 5)
    frames = [rng.normal(0, 5.0, (40, 50)) for _ in ts]  # pure noise: the stack's signal is 0
    inner = (slice(25, 45), slice(30, 60))  # covered by every frame
    per_frame_var = [float(stack([f], [t], OUT).image[inner].var()) for f, t in zip(frames, ts)]
    for n in (1, 4, 16):
        res = stack(frames[:n], ts[:n], OUT)
        expected = np.sqrt(np.mean(per_frame_var[:n]) / n)
        assert abs(res.image[inner].std() / expected - 1) < NOISE_RTOL


def test_median_and_sigma_clipping_reject_an_outlier_frame():
    rng = np.random.default_rng(6)
    ts = [shift(10 + 0.25 * i, 12 - 0.2 * i) for i in range(9)]
    clean = [np.full((30, 30), 50.0) + rng.normal(0, 1.0, (30, 30)) for _ in ts]
    hit = [f.copy() for f in clean]
    hit[3][10:13, 10:13] += 5000.0  # a cosmic ray in one frame
    where = (slice(22, 24), slice(21, 23))  # its image on the output grid (inside it in every frame)
    plain = stack(hit, ts, (60, 60))
    assert plain.image[where].min() > 200  # the plain mean is polluted
    for combine, clip in (("median", None), ("mean", 3.0), ("median", 3.0)):
        res = stack(hit, ts, (60, 60), combine=combine, clip=clip)
        reference = stack(clean, ts, (60, 60), combine=combine)
        assert np.abs(res.image[where] - reference.image[where]).max() < 3.0, (combine, clip)
    clipped = stack(hit, ts, (60, 60), combine="mean", clip=3.0)
    assert clipped.rejected is not None and clipped.rejected[where].min() >= 1
    assert clipped.rejected.sum() < 200  # the Gaussian noise is mostly kept
    summed = stack(hit, ts, (60, 60), combine="sum", clip=3.0)
    np.testing.assert_allclose(summed.image[20:40, 20:40], clipped.image[20:40, 20:40] * clipped.coverage[20:40, 20:40],
                               rtol=1e-9)


def test_channels_and_matrix_or_transform_inputs():
    rng = np.random.default_rng(7)
    frames = [rng.random((20, 24, 3)) for _ in range(2)]
    ts = [warpsvc.AffineTransform(shift(5.5, 6.25)), shift(7.0, 4.5)[:2]]
    res = stack(frames, ts, (40, 40), combine="sum")
    assert res.image.shape == (40, 40, 3)
    np.testing.assert_allclose(res.image.sum(axis=(0, 1)), sum(f.sum(axis=(0, 1)) for f in frames), rtol=FLUX_RTOL)


def test_mean_and_sum_do_not_keep_frames_and_median_is_bounded():
    stacker = Stacker(OUT)
    refs = []
    for t in homographies(5, 8):
        f = np.ones((40, 50))
        refs.append(weakref.ref(f))
        stacker.add(f, t)
        del f
    gc.collect()
    assert all(r() is None for r in refs)
    # median keeps one float32 (H, W, C + 1) plane per frame: a small bound refuses the third
    bounded = Stacker(OUT, combine="median", options=StackOptions(max_stored_bytes=2 * OUT[0] * OUT[1] * 2 * 4))
    bounded.add(np.ones((40, 50)), shift(1, 1))
    bounded.add(np.ones((40, 50)), shift(2, 1))
    with pytest.raises(ImageTooLargeError) as e:
        bounded.add(np.ones((40, 50)), shift(3, 1))
    assert e.value.field == "frames"


def test_bad_arguments_name_their_field():
    f = np.ones((10, 10))
    cases = [
        (dict(combine="max"), "combine"), (dict(clip=-1.0), "clip"), (dict(clip=True), "clip"),
        (dict(antialias="yes"), "antialias"), (dict(options={"min_weight": 1}), "options"),
        (dict(options=StackOptions(min_weight=0.0)), "min_weight"),
        (dict(options=StackOptions(clip_iterations=0)), "clip_iterations"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidArgumentError) as e:
            stack([f], [np.eye(3)], (10, 10), **kwargs)
        assert e.value.field == field, kwargs
    with pytest.raises(InvalidArgumentError) as e:
        stack([f, f], [np.eye(3)], (10, 10))
    assert e.value.field == "transforms"
    with pytest.raises(InvalidArgumentError) as e:
        stack([f], [np.eye(3), np.eye(3)], (10, 10))
    assert e.value.field == "transforms"
    with pytest.raises(InvalidTransformError) as e:
        stack([f], [np.zeros((4, 4))], (10, 10))
    assert e.value.field == "transforms"
    with pytest.raises(InvalidArgumentError) as e:
        stack([f], [np.eye(3)], (0, 10))
    assert e.value.field == "output_shape"
    with pytest.raises(InvalidArgumentError) as e:
        Stacker((10, 10)).result()
    assert e.value.field == "frames"
    s = Stacker((10, 10))
    s.add(f, np.eye(3))
    with pytest.raises(InvalidImageError) as e:
        s.add(np.ones((10, 10, 2)), np.eye(3))
    assert e.value.field == "frame"


@pytest.mark.parametrize("combine", ["mean", "sum", "median"])
def test_nan_frame_pixels_are_missing_in_every_combine(combine):
    """A NaN patch in one of four frames is left out (no flux, no coverage) by every combine:
    mean and median give the other frames' value there, sum their flux, coverage 3 not 4.
    mean / sum used to spread it as NaN over 144 output pixels (a new user's audit)."""
    rng = np.random.default_rng(3)
    base = rng.uniform(10, 20, OUT)
    frames = [base.copy() for _ in range(4)]
    frames[2][30:40, 40:50] = np.nan
    eye = [np.eye(3)] * 4
    res = stack(frames, eye, OUT, combine=combine, antialias=False)
    assert np.isfinite(res.image).all()
    inner = (slice(32, 38), slice(42, 48))  # whole pixels of the patch, away from its edge
    np.testing.assert_allclose(res.coverage[inner], 3.0)
    want = 3 * base[inner] if combine == "sum" else base[inner]
    np.testing.assert_allclose(res.image[inner], want, rtol=1e-6 if combine == "median" else 1e-12)  # median: float32 store
    outside = (slice(0, 20), slice(0, 20))
    np.testing.assert_allclose(res.coverage[outside], 4.0)
