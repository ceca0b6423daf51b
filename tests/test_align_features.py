"""The feature stage of the global search (:mod:`warpsvc.core.align.features`): the template's
keypoints are detected once per ``align`` call and, with OpenCV allowed two threads, beside the
image's on a second thread.

Oracles: the sequential detection (one thread, one after the other) -- the keypoints and
descriptors must be the same bits, and ``align`` must return the same matrix; call counts of
the detector; a dark image whose raw searches find nothing (so every search of the call runs).
"""

import threading
import time
import types

import cv2
import numpy as np
import pytest
from skimage import data

from warpsvc import align
from warpsvc.core.align import Start, features

SIDE = 240


@pytest.fixture(scope="module")
def frame():
    rgb = cv2.resize(data.astronaut(), (640, 480), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


@pytest.fixture
def opencv_threads():
    before = cv2.getNumThreads()
    yield cv2.setNumThreads
    cv2.setNumThreads(before)


def _placed(angle_deg, scale, centre):
    t = np.deg2rad(angle_deg)
    c = (SIDE - 1) / 2.0
    R = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    A = np.eye(3)
    A[:2, :2] = R
    A[:2, 2] = np.asarray(centre) - R @ [c, c]
    return A


def _cut(image, W):
    return cv2.warpPerspective(image, W, (SIDE, SIDE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=float("nan"))


def _same(a, b):
    (ka, da), (kb, db) = a, b
    assert [k.pt for k in ka] == [k.pt for k in kb]
    assert [(k.size, k.angle, k.response, k.octave) for k in ka] == [(k.size, k.angle, k.response, k.octave) for k in kb]
    np.testing.assert_array_equal(da, db)


def test_concurrent_detection_is_the_sequential_one(frame, opencv_threads, monkeypatch):
    """Two threads: the template's keypoints come from a second thread, and both sets equal
    those of one detection after the other, bit for bit."""
    W = _placed(120.0, 1.3, (320.0, 240.0))
    template = _cut(frame, W)[:, :, None]
    image8 = np.clip(frame, 0, 255).astype(np.uint8)
    opencv_threads(2)
    monkeypatch.setattr(features, "_SIDE_THREADS", threading.BoundedSemaphore(1))  # one free, whatever the CPUs
    names = []
    real = features._detect

    def recording(img, mask, check=None):
        names.append(threading.current_thread().name)
        return real(img, mask)

    features._detect = recording
    try:
        got_t, got_i = features.TemplateFeatures(template).with_image(image8, None)
    finally:
        features._detect = real
    assert sorted(names) == sorted([threading.main_thread().name, features.WORKER_NAME])
    t8, tm = features.to_uint8(template)
    _same(got_t, real(t8, tm))
    _same(got_i, real(image8, None))


def _no_thread(*args, **kwargs):
    raise AssertionError("a second thread was started")


def test_one_thread_detects_in_the_calling_thread(frame, opencv_threads, monkeypatch):
    """One OpenCV thread: no second thread is started (the thread setting is honoured)."""
    opencv_threads(1)
    monkeypatch.setattr(features, "threading", types.SimpleNamespace(Thread=_no_thread))
    template = _cut(frame, _placed(30.0, 1.0, (300.0, 250.0)))[:, :, None]
    t, i = features.TemplateFeatures(template).with_image(np.clip(frame, 0, 255).astype(np.uint8), None)
    assert len(t[0]) > 20 and len(i[0]) > 20


def test_no_second_thread_when_the_process_has_none_free(frame, opencv_threads, monkeypatch):
    """Concurrent calls (a server's) hold every side thread: this call detects one after the
    other instead of oversubscribing the cores, with the same keypoints."""
    opencv_threads(2)
    template = _cut(frame, _placed(30.0, 1.0, (300.0, 250.0)))[:, :, None]
    image8 = np.clip(frame, 0, 255).astype(np.uint8)
    monkeypatch.setattr(features, "_SIDE_THREADS", threading.BoundedSemaphore(1))
    features._SIDE_THREADS.acquire()  # held by another call
    monkeypatch.setattr(features, "threading", types.SimpleNamespace(Thread=_no_thread))
    got_t, got_i = features.TemplateFeatures(template).with_image(image8, None)
    monkeypatch.undo()
    _same(got_t, features._detect(*features.to_uint8(template)))
    _same(got_i, features._detect(image8, None))


def test_errors_reach_the_caller_after_the_worker_ended(frame, opencv_threads, monkeypatch):
    """An exception in either detection is raised in the calling thread, and only after the
    template's thread has ended (a slow template detection, a failing image detection); the
    side thread is given back either way."""
    opencv_threads(2)
    real = features._detect
    slots = threading.BoundedSemaphore(1)
    monkeypatch.setattr(features, "_SIDE_THREADS", slots)
    template = _cut(frame, _placed(30.0, 1.0, (300.0, 250.0)))[:, :, None]
    image8 = np.clip(frame, 0, 255).astype(np.uint8)
    ended = []

    def slow_template_failing_image(img, mask, check=None):
        if threading.current_thread().name == features.WORKER_NAME:
            time.sleep(0.3)
            ended.append(True)
            return real(img, mask)
        raise MemoryError("image detection failed")

    monkeypatch.setattr(features, "_detect", slow_template_failing_image)
    with pytest.raises(MemoryError, match="image detection"):
        features.TemplateFeatures(template).with_image(image8, None)
    assert ended == [True]  # the worker had finished when the error arrived

    def failing_template(img, mask, check=None):
        if threading.current_thread().name == features.WORKER_NAME:
            raise MemoryError("template detection failed")
        return real(img, mask)

    monkeypatch.setattr(features, "_detect", failing_template)
    with pytest.raises(MemoryError, match="template detection"):
        features.TemplateFeatures(template).with_image(image8, None)
    assert not [t for t in threading.enumerate() if t.name == features.WORKER_NAME]
    assert slots.acquire(blocking=False)  # both side threads were given back


@pytest.mark.parametrize("threads", [1, 2])
def test_template_detected_once_per_call(frame, opencv_threads, monkeypatch, threads):
    """A dark uint8 image: the raw searches (3/4 and full resolution) find no start, the
    stretched ones do -- four image detections, one template detection. The result equals the
    one at the other thread count."""
    opencv_threads(threads)
    dark = np.round(frame * (16 / 255.0)).astype(np.uint8)
    W = _placed(150.0, 1.2, (330.0, 230.0))
    template = _cut(frame, W)
    shapes = []
    real = features._detect

    def counting(img, mask, check=None):
        shapes.append(img.shape)
        return real(img, mask)

    monkeypatch.setattr(features, "_detect", counting)
    result = align(template, dark, "homography")
    assert result.converged and result.start == Start.FEATURES
    assert shapes.count(template.shape) == 1
    assert len(shapes) - 1 >= 3  # the raw searches and at least one stretched one
    monkeypatch.setattr(features, "_detect", real)
    opencv_threads(3 - threads)
    again = align(template, dark, "homography")
    np.testing.assert_array_equal(again.matrix, result.matrix)


def test_a_large_detection_heeds_the_clock_between_tiles():
    """A global search kept working 2.4-4.3 s past a 0.3-3 s deadline on 3000x3000 images (found
    by a hostile-client test): the clock was checked only between the template's and the
    image's detections. Now a tiled detection (image or template) checks it after every tile,
    so it stops after the tile during which the deadline passed."""
    from warpsvc.core.align import features

    rng = np.random.default_rng(0)
    side = features.TILE * 3
    img = cv2.GaussianBlur(rng.integers(0, 256, (side, side), dtype=np.uint8), (0, 0), 1.5)
    calls = []

    class Stop(Exception):
        pass

    def check():
        calls.append(1)
        if len(calls) >= 2:
            raise Stop

    with pytest.raises(Stop):
        features._detect(img, None, check)
    assert len(calls) == 2  # stopped after the second of nine tiles
    t = features.TemplateFeatures(img[:, :, None].astype(np.float32))
    calls.clear()
    with pytest.raises(Stop):
        t.get(check)
    assert len(calls) == 2 and t._found is None  # nothing half-made is kept
