"""float64 cubic / lanczos warps keep infinite pixels infinite, as float32 does (the float64 path
splits each value into a float32 high part and a low part; inf - inf made the low part NaN, with
a RuntimeWarning, and the result NaN where float32 gives inf: a new user's audit)."""

import warnings

import numpy as np
import pytest

import warpsvc


@pytest.mark.parametrize("interp", ["cubic", "lanczos"])
def test_infinities_match_float32(interp):
    img = np.ones((20, 20))
    img[10, 10], img[5, 5] = np.inf, -np.inf
    t = warpsvc.AffineTransform([[1, 0, 0.3], [0, 1, 0.2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o64 = warpsvc.warp(img, t, interpolation=interp)
    o32 = warpsvc.warp(img.astype(np.float32), t, interpolation=interp)
    assert np.isinf(o64).any()
    np.testing.assert_array_equal(np.isinf(o64), np.isinf(o32))
    np.testing.assert_array_equal(np.isnan(o64), np.isnan(o32))
    finite = np.isfinite(o64)
    np.testing.assert_allclose(o64[finite], o32[finite], rtol=1e-6)
