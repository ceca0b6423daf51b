"""The cheaper per-call statistics equal what they replace.

Oracles: seeded white noise of known variance (the windowed noise estimate), direct pixel means
(the template mean read off the Hessian)."""

import numpy as np
import pytest

from warpsvc.core.align.chart import make_chart
from warpsvc.core.align.noise import NOISE_WINDOW, template_noise_variance
from warpsvc.core.align.problem import _template_mean
from warpsvc.core.align.pyramid import build_level


@pytest.mark.parametrize("shape", [(480, 640, 1), (300, 200, 1), (260, 700, 3)])
def test_windowed_noise_estimate_matches_the_known_variance(shape):
    rng = np.random.default_rng(7)
    img = (128 + rng.normal(0, 6.0, shape)).astype(np.float32)
    assert template_noise_variance(img) == pytest.approx(36.0, rel=0.03)


def test_large_templates_are_measured_on_their_centred_window():
    rng = np.random.default_rng(8)
    img = (rng.normal(0, 3.0, (NOISE_WINDOW, NOISE_WINDOW, 1))).astype(np.float32)
    big = np.zeros((NOISE_WINDOW + 40, NOISE_WINDOW + 40, 1), np.float32)
    big[20:-20, 20:-20] = img
    # the large one is measured on its centred window: the same pixels (plus a 1-pixel rim)
    assert template_noise_variance(big) == pytest.approx(template_noise_variance(big[19:-19, 19:-19]), rel=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("photometric", [True, False])
def test_template_mean_from_the_hessian(channels, photometric):
    rng = np.random.default_rng(9)
    t = rng.uniform(0, 255, (60, 80, channels)).astype(np.float32)
    t[5:9, 10:30] = np.nan  # unusable pixels do not count
    lv = build_level(0, t, t, "homography", make_chart(t.shape), photometric, None)
    assert _template_mean(lv) == pytest.approx(float(np.nanmean(np.abs(lv.tflat))), rel=1e-5)
