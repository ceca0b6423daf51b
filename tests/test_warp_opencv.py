"""Plain warps agree with OpenCV; dtypes, channels, borders, large images, float64 precision."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import catalogue, smooth_image
from tests.tolerances import FLOAT64_LINEAR_ATOL, OPENCV_AGREEMENT_ATOL
from warpsvc import AffineTransform, HomographyTransform, PolarTransform, Transform, compose, warp

H, W = 120, 160
CV_INTERP = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
             "lanczos": cv2.INTER_LANCZOS4}
CV_BORDER = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101,
             "symmetric": cv2.BORDER_REFLECT, "wrap": cv2.BORDER_WRAP}
INNER = (slice(8, -8), slice(8, -8))


class NotAMatrix(Transform):
    """Wraps a matrix transform but hides it, forcing the generic remap path."""

    def __init__(self, inner):
        self.inner = inner

    def map(self, xy):
        return self.inner.map(xy)

    def jacobian(self, xy):
        return self.inner.jacobian(xy)

    def inverse(self):
        return NotAMatrix(self.inner.inverse())


@pytest.mark.parametrize("interp", list(CV_INTERP))
def test_affine_matches_warpAffine(interp):
    img = smooth_image((H, W), seed=1)
    t = catalogue(H, W)["affine"]
    ours = warp(img, t, interpolation=interp)
    ref = cv2.warpAffine(img, t.matrix[:2], (W, H), flags=CV_INTERP[interp])
    assert np.abs(ours - ref)[INNER].max() <= OPENCV_AGREEMENT_ATOL


@pytest.mark.parametrize("interp", list(CV_INTERP))
def test_homography_matches_warpPerspective(interp):
    img = smooth_image((H, W), seed=2)
    t = catalogue(H, W)["homography"]
    ours = warp(img, t, interpolation=interp)
    ref = cv2.warpPerspective(img, t.matrix, (W, H), flags=CV_INTERP[interp])
    assert np.abs(ours - ref)[INNER].max() <= OPENCV_AGREEMENT_ATOL


@pytest.mark.parametrize("interp", ["nearest", "linear", "cubic", "lanczos"])
@pytest.mark.parametrize("log", [False, True])
def test_polar_forward_and_inverse_match_warpPolar(log, interp):
    img = smooth_image((H, W), seed=3, sigma=1.0)  # sharper content: a stricter comparison
    center, radius, polar_shape = (W / 2 + 0.3, H / 2 - 0.2), 55.0, (180, 100)
    t = PolarTransform(center, radius, polar_shape, log=log)
    flags = CV_INTERP[interp] | cv2.WARP_FILL_OUTLIERS | (cv2.WARP_POLAR_LOG if log else 0)
    ours = warp(img, t, interpolation=interp)
    ref = cv2.warpPolar(img, polar_shape[::-1], center, radius, flags)
    assert ours.shape == ref.shape == polar_shape
    assert np.abs(ours - ref)[:, :-4].max() <= OPENCV_AGREEMENT_ATOL
    back = warp(ref, t.inverse(), (H, W), interpolation=interp)
    ref_back = cv2.warpPolar(ref, (W, H), center, radius, flags | cv2.WARP_INVERSE_MAP)
    diff = np.abs(back - ref_back)
    if interp in ("cubic", "lanczos"):
        # OpenCV pads the angle axis by one row only, too little for these kernels: near the
        # angle seam (the ray theta = 0) it reads its constant border where we wrap.
        ys, xs = np.mgrid[0:H, 0:W]
        diff[(np.abs(ys - center[1]) < 6) & (xs > center[0])] = 0
    assert diff[INNER].max() <= OPENCV_AGREEMENT_ATOL


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_dtypes_and_channels_identical_to_opencv(dtype, channels):
    rng = np.random.default_rng(4)
    hi = 255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 1.0
    img = (rng.random((H, W, channels)) * hi).astype(dtype)
    if channels == 1:
        img = img[:, :, 0]
    t = catalogue(H, W)["homography"]
    ours = warp(img, t)
    ref = cv2.warpPerspective(img, np.linalg.inv(np.linalg.inv(t.matrix)), (W, H), flags=cv2.INTER_LINEAR)
    assert ours.dtype == img.dtype and ours.shape == img.shape
    # OpenCV rounds integer-image coordinates to 1/32 px; matrices inverted by different code
    # may fall either side of a rounding step: allow 1e-4 of the range (>= 1 count).
    tol = OPENCV_AGREEMENT_ATOL * hi if dtype == np.float32 else max(1.0, 1e-4 * hi)
    assert np.abs(ours.astype(np.float64) - ref)[INNER].max() <= tol


@pytest.mark.parametrize("interp", ["linear", "cubic", "lanczos"])
def test_many_channels_equal_per_channel_warps(interp):
    img = np.stack([smooth_image((H, W), seed=10 + c) for c in range(7)], axis=-1)
    t = catalogue(H, W)["affine"]
    ours = warp(img, t, interpolation=interp)
    assert ours.shape == (H, W, 7)
    for c in range(7):
        np.testing.assert_array_equal(ours[:, :, c], warp(img[:, :, c], t, interpolation=interp))


@pytest.mark.parametrize("border", list(CV_BORDER))
@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_remap_path_borders_match_opencv(border, interp):
    """The generic path (coordinate folding, tiles) gives OpenCV's border semantics."""
    img = smooth_image((H, W), seed=5)
    t = AffineTransform.from_components(scale=(1.6, 1.4), rotation=0.4, translation=(-60, -30))
    ours = warp(img, NotAMatrix(t), interpolation=interp, border=border, border_value=0.25)
    ref = cv2.warpAffine(img, t.matrix[:2], (W, H), flags=CV_INTERP[interp], borderMode=CV_BORDER[border],
                         borderValue=(0.25,) * 4)
    assert np.abs(ours - ref).max() <= 2e-4  # float32 coordinate maps vs OpenCV's internal double


def test_float64_linear_is_not_quantised():
    rng = np.random.default_rng(6)
    img = rng.random((40, 50))
    t = AffineTransform([[1, 0, 0.3137], [0, 1, 0.7071]])  # sub-1/32 px offsets
    out = warp(img, t)
    x, y = -0.3137, -0.7071  # source offset of each output pixel
    fx, fy = x + 1, y + 1  # fractional parts relative to floor
    ref = ((1 - fx) * (1 - fy) * img[:-1, :-1] + fx * (1 - fy) * img[:-1, 1:]
           + (1 - fx) * fy * img[1:, :-1] + fx * fy * img[1:, 1:])
    np.testing.assert_allclose(out[1:, 1:], ref, atol=FLOAT64_LINEAR_ATOL, rtol=0)
    quantised = cv2.warpAffine(img, t.matrix[:2], (50, 40))
    assert np.abs(quantised[1:, 1:] - ref).max() > 100 * np.abs(out[1:, 1:] - ref).max()


def test_beyond_opencv_size_limit_wide_image():
    """Sides >= 32767 px are tiled; compare with OpenCV on an overlapping crop."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (6, 40000), dtype=np.uint8)
    t = AffineTransform([[1, 0, 2.25], [0, 1, 0.5]])
    out = warp(img, t)
    assert out.shape == img.shape
    ref = cv2.warpAffine(img[:, 30000:31000], t.matrix[:2], (1000, 6))
    np.testing.assert_array_equal(out[:, 30010:30990], ref[:, 10:-10])
    ref_start = cv2.warpAffine(img[:, :1000], t.matrix[:2], (1000, 6))
    np.testing.assert_array_equal(out[:, :990], ref_start[:, :990])


def test_beyond_opencv_size_limit_polar_of_tall_strip():
    rng = np.random.default_rng(8)
    img = cv2.GaussianBlur(rng.random((33000, 40)), (0, 0), 2).astype(np.float32)
    t = PolarTransform((20.0, 32900.0), 18.0, (64, 32))
    out = warp(img, t)
    ref = cv2.warpPolar(img[32800:], (32, 64), (20.0, 100.0), 18.0, cv2.INTER_LINEAR | cv2.WARP_FILL_OUTLIERS)
    assert np.abs(out - ref).max() <= OPENCV_AGREEMENT_ATOL


def test_large_output_composition_is_tiled_consistently():
    img = smooth_image((64, 64), seed=9)
    t = compose(AffineTransform([[600, 0, 0], [0, 0.5, 0]]), NotAMatrix(AffineTransform.identity()))
    out = warp(img, t, (32, 38000))
    ref = cv2.resize(img, None, fx=600, fy=0.5, interpolation=cv2.INTER_LINEAR)  # different pixel model
    assert out.shape == (32, 38000) and np.isfinite(out).all()
    direct = warp(img, AffineTransform([[600, 0, 0], [0, 0.5, 0]]), (32, 30000))
    assert np.abs(out[:, :30000] - direct).max() <= 2e-4
    assert ref.shape[1] == 38400


def test_horizon_in_view_fills_deterministically():
    img = smooth_image((H, W), seed=10) + 1.0
    t = HomographyTransform([[1, 0, 0], [0, 1, 0], [0, 0.02, 1]]).inverse()  # dst->src has w=0 at y=-50
    out1 = warp(img, t, (400, W), border_value=-7)
    out2 = warp(img, t, (400, W), border_value=-7)
    np.testing.assert_array_equal(out1, out2)
    assert np.isfinite(out1).all()
    assert set(np.unique(out1[out1 < 0])) <= {np.float32(-7)}


def test_identity_and_integer_shift_are_exact():
    img = smooth_image((H, W), seed=11)
    np.testing.assert_array_equal(warp(img, AffineTransform.identity()), img)
    shifted = warp(img, AffineTransform([[1, 0, 3], [0, 1, -2]]))
    np.testing.assert_array_equal(shifted[0:H - 2, 3:], img[2:, : W - 3])


def test_rot90_is_exact():
    img = smooth_image((50, 50), seed=12)
    t = AffineTransform([[0, 1, 0], [-1, 0, 49]])  # (x, y) -> (y, 49 - x): numpy rot90
    np.testing.assert_array_equal(warp(img, t), np.rot90(img))
