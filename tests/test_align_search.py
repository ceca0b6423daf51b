"""Global search, the photometric default, colour and honest status (issue 11).

Oracle: templates are sampled from a real photograph through known homographies (bilinear,
the aligner's own sampling), so the truth is exact; a refined result must land within
LARGE_TOL of it -- far below the ~0.5 px of a feature-only estimate, so passing means the
Gauss-Newton refinement really ran from the global start.
"""

import cv2
import numpy as np
import pytest
from skimage import data

from warpsvc import AlignOptions, HomographyTransform, align
from warpsvc.core.align import Start
from warpsvc.core.align.features import IMAGE_SCALE, feature_start
from warpsvc.core.errors import InvalidArgumentError

LARGE_TOL = 0.05  # px, corner error after refinement on noise-free synthetic pairs
NOISY_TOL = 0.3   # px, with gain/bias/gamma and noise 8
SIDE = 240


@pytest.fixture(scope="module")
def frame():
    """A 640x480 grey photograph (astronaut, resized)."""
    rgb = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def corners(n=SIDE):
    return np.array([[0, 0], [n - 1, 0], [n - 1, n - 1], [0, n - 1]], np.float64)


def placed(angle_deg, scale, centre, jitter=(0.0,) * 8):
    """image_from_template: rotate/scale the template about its centre, put it at ``centre``,
    move the corners by ``jitter`` (perspective)."""
    t = np.deg2rad(angle_deg)
    c = (SIDE - 1) / 2.0
    R = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = (corners() - c) @ R.T + centre + np.reshape(jitter, (4, 2))
    return HomographyTransform.from_points(corners(), pts).matrix.copy()


def cut(image, W, n=SIDE):
    return cv2.warpPerspective(image, W, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))


def corner_error(result, W):
    c = np.column_stack([corners(), np.ones(4)])
    a, b = c @ result.inverse.T, c @ W.T
    return float(np.abs(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]).max())


LARGE_MOTIONS = {
    "rotation_180": dict(angle_deg=180.0, scale=1.0, centre=(330.0, 230.0)),
    "scale_0.5": dict(angle_deg=20.0, scale=0.5, centre=(300.0, 250.0)),
    "scale_2": dict(angle_deg=-10.0, scale=1.9, centre=(320.0, 240.0)),
    "perspective": dict(angle_deg=60.0, scale=1.1, centre=(320.0, 240.0),
                        jitter=(18, -12, -15, 10, 14, 16, -10, -17)),
    "half_outside": dict(angle_deg=-120.0, scale=1.0, centre=(625.0, 240.0)),
}


@pytest.mark.parametrize("case", sorted(LARGE_MOTIONS))
def test_global_search_finds_large_motions(frame, case):
    W = placed(**LARGE_MOTIONS[case])
    template = cut(frame, W)
    if case == "half_outside":  # the template's right part lies beyond the image
        inside = np.isfinite(template).mean()
        assert 0.5 <= inside < 0.6  # about half of the template visible
    result = align(template, frame, "homography")
    assert result.converged, result.reason
    assert result.start == Start.FEATURES == "features"
    assert corner_error(result, W) < LARGE_TOL
    local = align(template, frame, "homography", search="local")
    assert not local.converged and local.start == "identity"  # the local solve alone cannot


def test_explicit_global_search_and_its_guard(frame):
    W = placed(**LARGE_MOTIONS["rotation_180"])
    template = cut(frame, W)
    result = align(template, frame, "homography", search="global")
    assert result.converged and result.start == "features" and corner_error(result, W) < LARGE_TOL
    with pytest.raises(InvalidArgumentError) as info:
        align(template, frame, "homography", np.eye(3), search="global")
    assert info.value.field == "search"
    with pytest.raises(InvalidArgumentError) as info:
        align(template, frame, search="everywhere")
    assert info.value.field == "search"


def test_dark_uint8_image_is_searched_stretched(frame):
    """A grey uint8 image exposed into the bottom 6 % of its range (values 0-16): SIFT's
    contrast threshold finds no start in it as it is, while the template (another exposure) is
    stretched to its percentiles; the global search then searches the image stretched too."""
    dark = np.round(frame * (16 / 255.0)).astype(np.uint8)
    W = placed(150.0, 1.2, (330.0, 230.0), (10, -8, -9, 6, 8, 9, -6, -10))
    template = cut(frame, W)
    for scale in (IMAGE_SCALE, 1.0):  # the raw searches alone find nothing
        assert feature_start(template[:, :, None], dark, "homography", scale) is None
    result = align(template, dark, "homography")
    assert result.converged and result.start == Start.FEATURES
    assert corner_error(result, W) < LARGE_TOL


def test_similarity_model_from_a_global_start(frame):
    W = placed(angle_deg=150.0, scale=0.8, centre=(300.0, 240.0))
    result = align(cut(frame, W), frame, "similarity")
    assert result.converged and result.start == "features"
    assert corner_error(result, W) < LARGE_TOL
    assert np.allclose(result.matrix[2], (0, 0, 1))  # stays in the family


def test_small_motion_stays_local(frame):
    """A small motion from the identity: the local solve succeeds, no feature search runs."""
    W = np.array([[1.01, 0.02, 3.0], [-0.015, 0.99, -2.0], [0.0, 0.0, 1.0]])
    template = cut(frame, W, n=480)[:, :480]
    result = align(template, frame[:, :480], "affine")
    assert result.converged and result.start == "identity"
    given = align(template, frame[:, :480], "affine", np.eye(3))
    assert given.start == "init"


def exposure(t, gain, bias, gamma):
    return (255.0 * (np.clip(t, 0, 255) / 255.0) ** gamma * gain + bias).astype(np.float32)


def test_default_is_robust_to_exposure_and_noise():
    """gain/bias/gamma + noise 8: the default call recovers the warp; identical-exposure
    least squares (the opt-out) is measurably worse on the same pair."""
    camera = data.camera().astype(np.float32)
    W = np.array([[1.02, 0.03, 181.0], [-0.02, 0.98, 148.0], [1e-4, -5e-5, 1.0]])
    rng = np.random.default_rng(5)
    t = cut(camera, W, n=100)
    t = exposure(t, 0.75, 18.0, 1.2) + rng.normal(0, 8, t.shape).astype(np.float32)
    image = camera + rng.normal(0, 8, camera.shape).astype(np.float32)
    start = np.linalg.inv(np.array([[1, 0, 180.0], [0, 1, 150.0], [0, 0, 1.0]]))
    c = np.column_stack([corners(100), np.ones(4)])

    def err(r):
        a, b = c @ r.inverse.T, c @ W.T
        return float(np.abs(a[:, :2] / a[:, 2:] - b[:, :2] / b[:, 2:]).max())

    default = align(t, image, "homography", start)
    assert default.converged and err(default) < NOISY_TOL
    assert default.gain[0] == pytest.approx(0.75 ** -1 * 1.0, rel=0.25)  # image ~ gain * template + bias
    plain = align(t, image, "homography", start, photometric=None)
    assert not plain.converged or err(plain) > 2 * err(default)


def test_colour_matches_grey_accuracy(frame):
    rgb = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA).astype(np.float32)
    W = placed(angle_deg=5.0, scale=1.0, centre=(320.0, 240.0))
    colour = align(cut(rgb, W), rgb, "homography", np.linalg.inv(placed(0.0, 1.0, (322.0, 238.0))))
    grey = align(cut(frame, W), frame, "homography", np.linalg.inv(placed(0.0, 1.0, (322.0, 238.0))))
    assert colour.converged and grey.converged
    assert corner_error(colour, W) < LARGE_TOL and corner_error(grey, W) < LARGE_TOL
    every = align(cut(rgb, W), rgb, "homography", np.linalg.inv(placed(0.0, 1.0, (322.0, 238.0))),
                  options=AlignOptions(channels="all"))
    assert every.converged and corner_error(every, W) < LARGE_TOL and len(every.gain) == 3
    with pytest.raises(InvalidArgumentError) as info:
        AlignOptions(channels="rgb").checked()
    assert info.value.field == "channels"


@pytest.mark.parametrize("search", ["auto", "global"])
def test_unrelated_images_never_claim_convergence(frame, search):
    """A failure case for the whole pipeline, global search included."""
    other = cv2.resize(data.coffee(), (640, 480), interpolation=cv2.INTER_AREA)
    other = cv2.cvtColor(other, cv2.COLOR_RGB2GRAY).astype(np.float32)
    template = cut(frame, placed(**LARGE_MOTIONS["perspective"]))
    result = align(template, other, "homography", search=search)
    assert not result.converged
    assert result.reason != "converged"
    noise = np.random.default_rng(1).uniform(0, 255, frame.shape).astype(np.float32)
    assert not align(template, noise, "homography", search=search).converged


def test_auto_photometric_switches_off_for_identical_exposure():
    """photometric='auto': with identical exposure a coarse gain/bias fit of ~(1, 0) drops the
    model for the finer levels (plain least squares: gain 1, bias 0 exactly); with a real
    exposure change the fit stays and is reported."""
    camera = data.camera().astype(np.float32)
    W = np.array([[1.02, 0.03, 181.0], [-0.02, 0.98, 148.0], [1e-4, -5e-5, 1.0]])
    start = np.linalg.inv(np.array([[1, 0, 180.0], [0, 1, 150.0], [0, 0, 1.0]]))
    same = align(cut(camera, W, n=100), camera, "homography", start)
    assert same.converged and same.gain == (1.0,) and same.bias == (0.0,)
    changed = align(cut(camera, W, n=100) * 0.8 + 10.0, camera, "homography", start)
    assert changed.converged
    assert changed.gain[0] == pytest.approx(1 / 0.8, rel=1e-3) and changed.bias[0] == pytest.approx(-12.5, abs=0.1)


def test_failure_reports_the_start_that_got_furthest(frame):
    """search='auto' tries the identity, a feature start and the identity again with restarts.
    When all fail, the reported result is the one that passed the most checks: here the
    feature start lands on the truth and fails only an impossible ``max_corner_error``, so the
    result says ``uncertain`` and ``features`` at the right placement -- not the identity's
    ``low_correlation`` (what was reported before, the last fallback's reason)."""
    W = placed(**LARGE_MOTIONS["perspective"])
    template = cut(frame, W)
    result = align(template, frame, "homography", max_corner_error=1e-9)
    assert not result.converged
    assert result.reason == "uncertain" and result.start == "features"
    assert corner_error(result, W) < LARGE_TOL
    assert align(template, frame, "homography").converged  # the same call without the tight bound


def test_closest_failure_order():
    """Depth through the checks first (ambiguous > uncertain > an unconverged or uncorrelated
    solve > the rest; zncc, NaN lowest, breaks ties among the first three), else the last."""
    from types import SimpleNamespace as R

    from warpsvc.core.align.verify import closest_failure

    low, unc, amb = (R(reason=r, zncc=z) for r, z in
                     (("low_correlation", 0.99), ("uncertain", 0.5), ("ambiguous", 0.2)))
    assert closest_failure([low, unc]) is unc
    assert closest_failure([unc, amb, low]) is amb
    unc2, unc_nan = R(reason="uncertain", zncc=0.6), R(reason="uncertain", zncc=float("nan"))
    assert closest_failure([unc_nan, unc2, unc]) is unc2
    a, b = R(reason="max_iterations", zncc=0.3), R(reason="degenerate_warp", zncc=0.9)
    assert closest_failure([a, low, b]) is low  # the better-correlated solve, not the degenerate warp
    c, d = R(reason="insufficient_overlap", zncc=0.9), R(reason="degenerate_warp", zncc=0.1)
    assert closest_failure([c, d]) is d  # none got that far: the last


def _stop_on_entry(monkeypatch, what, then=None):
    """Wrap ``api.<what>`` so that the returned ``should_stop`` turns true once it is entered
    (``then``: a callable run there instead, e.g. a sleep past a time budget). The real
    function still runs, on a stopped clock."""
    from warpsvc.core.align import api

    flag = {"stop": False}
    real = getattr(api, what)

    def wrapped(*args, **kwargs):
        if then is None:
            flag["stop"] = True
        else:
            then()
        return real(*args, **kwargs)

    monkeypatch.setattr(api, what, wrapped)
    return lambda: flag["stop"]


@pytest.mark.parametrize("search", ["auto", "global"])
def test_search_cut_short_is_reported_as_the_stop(frame, monkeypatch, search):
    """The clock stops the call just as the global search starts: the result is the best
    failure so far, reported ``cancelled``, not that failure's own reason (``auto``: the
    identity's ``low_correlation``, which this reported before) -- more time might find the
    motion. ``global``: the first feature search is stopped, nothing was found, and the
    identity start is reported stopped before it began."""
    W = placed(**LARGE_MOTIONS["rotation_180"])
    template = cut(frame, W)
    stop = _stop_on_entry(monkeypatch, "_feature_start" if search == "global" else "_global")
    result = align(template, frame, "homography", search=search, should_stop=stop)
    assert not result.converged
    assert result.reason == "cancelled"
    if search == "auto":  # the identity's attempt, which the search did not get past
        assert result.start == "identity" and corner_error(result, W) > 50


def test_search_that_ran_out_of_budget_reports_time_budget(frame, monkeypatch):
    """Same with a time budget: the budget expires while the identity attempt's failure is
    already known (the wrapper sleeps past it before the global search starts)."""
    import time

    W = placed(**LARGE_MOTIONS["rotation_180"])
    template = cut(frame, W)
    budget = 2.0
    t0 = time.perf_counter()
    _stop_on_entry(monkeypatch, "_global",
                   then=lambda: time.sleep(max(0.0, budget + 0.05 - (time.perf_counter() - t0))))
    result = align(template, frame, "homography", time_budget=budget)
    assert not result.converged and result.reason == "time_budget"
    assert result.elapsed >= budget
    unlimited = align(template, frame, "homography")  # the same pair with time: found
    assert unlimited.converged and unlimited.start == "features"


def test_failed_search_with_time_left_keeps_its_own_reason(frame):
    """Unrelated images, a generous budget: every start is tried and fails; the reason is the
    failure's own, not a stop."""
    rng = np.random.default_rng(3)
    noise = rng.uniform(0, 255, (SIDE, SIDE)).astype(np.float32)
    result = align(noise, frame, "homography", time_budget=60.0)
    assert not result.converged and result.reason not in ("time_budget", "cancelled")


def test_feature_start_plausibility_guard():
    """``features.plausible``: the benchmark's motions pass; a mirror, a fold (two image
    corners swapped: a bow-tie), a corner behind the camera, a rank-2 fit and a 10x shrink
    per side are refused (``feature_start`` then returns no start)."""
    from warpsvc.core.align.features import plausible

    shape = (SIDE, SIDE)
    for case in LARGE_MOTIONS.values():
        assert plausible(placed(**case), shape)
    assert plausible(placed(0.0, 0.2, (100.0, 100.0)), shape)  # 5x smaller per side: within 8x
    tp = corners()
    good = tp * 1.1 + 30
    assert plausible(HomographyTransform.from_points(tp, good).matrix, shape)
    mirror = np.diag([-1.0, 1.0, 1.0]) @ placed(**LARGE_MOTIONS["perspective"])
    assert not plausible(mirror, shape)
    bowtie = good[[0, 1, 3, 2]]  # BR and BL swapped: the quadrilateral crosses itself
    assert not plausible(cv2.getPerspectiveTransform(tp.astype(np.float32), bowtie.astype(np.float32)), shape)
    behind = np.array([[1.0, 0, 0], [0, 1.0, 0], [-0.01, 0, 1.0]])  # w < 0 for x > 100
    assert not plausible(behind, shape)
    rank2 = np.array([[1.0, 2.0, 5.0], [2.0, 4.0, 10.0], [0.0, 0.0, 1.0]])
    assert not plausible(rank2, shape)
    assert not plausible(placed(0.0, 0.1, (100.0, 100.0)), shape)  # 100x less area
