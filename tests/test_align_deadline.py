"""An alignment does not start an uninterruptible stage that cannot end before its deadline
(:mod:`warpsvc.core.align.clock`, ``features._sift_detect``): a SIFT detection of a large image
is one OpenCV call, so a deadline passing inside it was seen only after it (a gRPC Align with a
0.3 s deadline on a 3000x3000 pair held its worker 2.5-3.1 s). Oracles: the clock's arithmetic,
the detections actually started (counted), and the reason reported."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

import warpsvc
from warpsvc.core.align import features
from warpsvc.core.align.clock import Clock, Stopped
from warpsvc.core.align.result import CANCELLED, TIME_BUDGET


class CallerDeadline:
    """A ``should_stop`` with the server's protocol: ``remaining()`` and ``expire()``."""

    def __init__(self, seconds):
        self.end = time.perf_counter() + seconds
        self.expired = False

    def __call__(self):
        return self.expired or time.perf_counter() > self.end

    def remaining(self):
        return self.end - time.perf_counter()

    def expire(self):
        self.expired = True


def test_the_clock_knows_the_nearer_limit_and_gives_up_with_its_reason():
    assert Clock(None, None).remaining() is None and Clock(None, None).fits(1e9)
    assert Clock(None, lambda: False).remaining() is None  # a plain should_stop bounds nothing
    budget = Clock(5.0, CallerDeadline(100.0))
    assert 4.5 < budget.remaining() <= 5.0 and budget.fits(4.0) and not budget.fits(6.0)
    with pytest.raises(Stopped) as exc:
        budget.give_up()
    assert exc.value.reason == TIME_BUDGET and budget.stop_reason() == TIME_BUDGET
    caller = CallerDeadline(2.0)
    clock = Clock(50.0, caller)
    assert 1.5 < clock.remaining() <= 2.0
    with pytest.raises(Stopped) as exc:
        clock.give_up()
    assert exc.value.reason == CANCELLED and caller.expired  # the server answers DEADLINE_EXCEEDED


@pytest.fixture
def counted_sift(monkeypatch):
    """SIFT detections started, by detector input pixels (the real detector still runs)."""
    started = []
    real = features._sift

    class Counting:
        def detectAndCompute(self, img, mask):
            started.append(img.shape[0] * img.shape[1])
            return real().detectAndCompute(img, mask)

    monkeypatch.setattr(features, "_sift", Counting)
    return started


def test_a_detection_that_cannot_fit_is_not_started(monkeypatch, counted_sift):
    img = cv2.resize(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8), (1200, 1200))
    monkeypatch.setattr(features, "_FASTEST", {"rate": 2e-7, "seen": features.RATE_MIN_SEEN})
    clock = Clock(0.05, None)  # lower bound 0.5 * 2e-7 * 1.44e6 = 0.144 s > 0.05 s left
    with pytest.raises(Stopped) as exc:
        features._sift_detect(img, None, clock)
    assert exc.value.reason == TIME_BUDGET and counted_sift == []
    features._sift_detect(img, None, Clock(5.0, None))  # it fits: detected, and the rate learnt
    assert counted_sift == [1200 * 1200] and features._FASTEST["seen"] == features.RATE_MIN_SEEN + 1


def test_no_prediction_before_enough_large_detections(monkeypatch, counted_sift):
    monkeypatch.setattr(features, "_FASTEST", {"rate": None, "seen": 0})
    small = np.random.default_rng(1).integers(0, 255, (400, 400), np.uint8)
    features._sift_detect(small, None, Clock(0.0, None))  # nothing learnt or predicted from small inputs
    assert features._FASTEST == {"rate": None, "seen": 0} and counted_sift == [160000]


def test_a_global_search_with_a_hopeless_deadline_stops_before_the_large_detection(monkeypatch, counted_sift):
    from skimage import data

    img = cv2.resize(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY), (3000, 3000))
    tpl = np.ascontiguousarray(cv2.warpAffine(img, cv2.getRotationMatrix2D((1500, 1500), 40, 1.0),
                                              (3000, 3000))[1000:1600, 1200:1800])
    # a rate that makes the ~2 MP detection's lower bound ~10 s: the 3 s deadline leaves the
    # set-up (and the template's detection) ample time on a loaded machine, not the detection
    monkeypatch.setattr(features, "_FASTEST", {"rate": 1e-5, "seen": features.RATE_MIN_SEEN})
    caller = CallerDeadline(3.0)
    t0 = time.perf_counter()
    result = warpsvc.align(tpl, img, "homography", search="global", should_stop=caller)
    assert result.reason == "cancelled" and not result.converged
    assert caller.expired  # stopped by the prediction (the deadline itself had not passed)
    assert time.perf_counter() - t0 < 3.0
    assert all(p < features.RATE_MIN_PIXELS for p in counted_sift), counted_sift  # no 2 MP detection started
