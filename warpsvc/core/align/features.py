r"""Global initialisation for :func:`warpsvc.align`: a start from feature matches.

Gauss-Newton only sees the cost's local slope, so it needs a start inside the basin of the
right answer (a few pixels at the coarsest pyramid level). When the motion is large -- any
rotation, scale 0.5-2x, strong perspective, half the template outside the image -- a start
comes from local features instead:

1. both images are mapped to 8 bits by their own 0.5 / 99.5 % intensity percentiles (so a
   gain / bias / gamma change between them does not matter; missing pixels are masked); a
   grey ``uint8`` image is passed as it is, and the caller searches it stretched only when
   that fails (``align``'s ``_global``: cheaper, and measured to keep starts that the
   stretched image loses, while a dark image needs the stretch);
2. SIFT keypoints and descriptors (``cv2.SIFT_create``: invariant to rotation and scale,
   tolerant of affine exposure changes and moderate noise), the image at 3/4 resolution
   (:data:`IMAGE_SCALE`). ORB was measured too: 6x faster, but only 45 % of the
   large-motion starts within 3 px against SIFT's 90 %;
3. nearest-neighbour matching with Lowe's ratio test (best / second-best distance < 0.8);
4. a robust fit of the model's family to the matches, template -> image:
   ``cv2.findHomography(..., cv2.USAC_MAGSAC)`` for homographies (MAGSAC++ marginalises over
   the inlier threshold, so no noise level has to be guessed), ``cv2.estimateAffine2D`` /
   ``cv2.estimateAffinePartial2D`` (RANSAC) for the affine / similarity families, reduced to
   the model's family (euclidean: the scale is dropped; translation: the map of the template
   centre).

The fit is accepted with at least :data:`MIN_INLIERS` inliers; the caller then refines it by
Gauss-Newton, which brings the corner error from a few tenths of a pixel to a few hundredths,
and judges the result with the usual checks (correlation, overlap), so a wrong feature
start is reported as a failure, not returned as converged. Fourier-Mellin (phase correlation
of log-polar magnitude spectra) was considered and not used: it assumes the two images show
the same region (a 240x240 template inside a 640x480 frame does not), breaks under strong
perspective and partial overlap, and costs several FFTs of the larger image per trial.
"""

from __future__ import annotations

import itertools
import threading
import time

import cv2
import numpy as np

from ..threads import available_cpus

# Matches needed after the robust fit to accept a start (a homography has 8 unknowns; a start
# from few matches is often still in the refinement's basin, and the final checks judge it).
MIN_INLIERS = 6
RATIO = 0.8
MAGSAC_THRESHOLD = 3.0  # pixels: MAGSAC's upper bound on the inlier threshold
MAGSAC_ITERATIONS = 5000
CONFIDENCE = 0.999
# The image is searched at 3/4 of its resolution (SIFT doubles its input first, so its finest
# octave still sees the template's finest structure at the benchmark's scales 0.6-1.6):
# measured on the large-motion benchmark, 57 ms instead of 97 ms for a 640x480 image with the
# same share of starts within 3 px (90 %); at 1/2, 27 ms but 70 %.
IMAGE_SCALE = 0.75
MIN_SCALED_SIDE = 96
# High-resolution inputs: SIFT's time and memory grow with the pixels it is shown (it doubles its
# input and keeps ~11 float32 scale images per octave: a 4000x4000 image at 3/4 took 2.5 s and a
# 2.4 GB peak here). Beyond DETECT_PIXELS (the image at IMAGE_SCALE), template and image are
# both detected at a common factor f < 1 (:func:`detection_factor`), which keeps their relative
# scale -- what SIFT must bridge -- as it is at full resolution; f never takes the template's
# longer side below MIN_DETECT_SIDE pixels (its own structure must survive: 320 = 240 / 0.75,
# the large-motion benchmark's template against its image searched at 3/4).
DETECT_PIXELS = 1 << 21
MIN_DETECT_SIDE = 320
# Larger detector inputs are detected in tiles (:func:`_detect`): SIFT's peak memory is ~210 MB
# per million pixels here (4 MP +0.76 GB, 19 MP +4.1 GB), and a server accepts 32 MP inputs.
TILE = 1024          # core side of a tile (pixels of the detector's input)
TILE_MARGIN = 128    # context on each side of a core (a keypoint's scale-space and descriptor support)
TILE_PIXELS = 1 << 21  # inputs up to this many pixels are detected whole


def detection_factor(template_shape, image_shape) -> float:
    """The common detection factor ``f`` of template and image (1 for inputs up to
    :data:`DETECT_PIXELS`)::

        f = clip(sqrt(DETECT_PIXELS / (H W IMAGE_SCALE^2)), MIN_DETECT_SIDE / max(h, w), 1)

    for an ``(H, W)`` image and an ``(h, w)`` template: the image search at ``IMAGE_SCALE`` then
    sees at most ``DETECT_PIXELS`` pixels unless that would take the template below
    :data:`MIN_DETECT_SIDE` (a small template in a huge image keeps its detail; the detection
    is then tiled, so its memory stays bounded and its time grows with the image)."""
    pixels = float(image_shape[0]) * float(image_shape[1]) * IMAGE_SCALE * IMAGE_SCALE
    if pixels <= DETECT_PIXELS:
        return 1.0
    floor = MIN_DETECT_SIDE / float(max(template_shape[0], template_shape[1]))
    return float(min(1.0, max(np.sqrt(DETECT_PIXELS / pixels), floor)))


def to_uint8(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(grey uint8, mask uint8)`` of an ``(H, W, C) float32`` image with NaN where missing:
    the channel mean stretched between its 0.5 and 99.5 % percentiles."""
    grey = img[:, :, 0] if img.shape[2] == 1 else img.mean(axis=2)
    valid = np.isfinite(grey)
    sample = grey[valid][:: max(1, int(valid.sum()) // 65536)]
    if sample.size < 16:
        return np.zeros(grey.shape, np.uint8), valid.astype(np.uint8)
    lo, hi = np.percentile(sample, (0.5, 99.5))
    scale = 255.0 / (hi - lo) if hi > lo else 1.0
    out = np.where(valid, (grey - lo) * scale, 0.0)
    return np.clip(out, 0, 255).astype(np.uint8), valid.astype(np.uint8) * 255


WORKER_NAME = "warpsvc-template-sift"
# Template detections running beside their call's image detection, process-wide (see
# TemplateFeatures): at most one fewer than the CPUs the process may use.
_SIDE_THREADS = threading.BoundedSemaphore(max(0, available_cpus() - 1))
_LOCAL = threading.local()  # one detector per thread (a server runs several calls at once)


def _sift():
    sift = getattr(_LOCAL, "sift", None)
    if sift is None:
        sift = _LOCAL.sift = cv2.SIFT_create()
    return sift


# Fastest SIFT time per detector pixel seen in this process, over detections (whole, or tiles)
# of at least RATE_MIN_PIXELS: the lower bound that :func:`_sift_detect` holds a deadline
# against. Measured here (2 OpenCV threads): 0.46 us/px at 240^2, 0.34 at 480^2, 0.23-0.26 at
# 1024^2-2000^2. Only large detections teach it: a rate learnt on a 386^2 template (0.57 us/px)
# made a 1448^2 image detection (0.26 us/px) look twice as slow as it was, and an Align that
# would have ended in time gave up. FIT_MARGIN halves the bound again (a featureless image skips
# most of the descriptor work; another call may have been running beside the fastest one).
# It predicts only after RATE_MIN_SEEN such detections (one measured while the machine was busy
# overstated the rate: a 0.5 s Align that would have converged in 0.41 s gave up).
_FASTEST = {"rate": None, "seen": 0}
RATE_MIN_PIXELS = 1 << 20
RATE_MIN_SEEN = 3
FIT_MARGIN = 0.5


def _sift_detect(img: np.ndarray, mask: np.ndarray | None, check=None):
    """One uninterruptible ``detectAndCompute``. With a ``check`` that has ``fits`` / ``give_up``
    (a :class:`.clock.Clock`), a detection whose lower-bound cost (:data:`FIT_MARGIN` x the
    fastest rate seen x its pixels) does not fit the time left is not started: the call stops at
    once instead of overrunning its deadline by the detection (a gRPC Align with a 0.3 s
    deadline on a 3000x3000 pair held its worker 2.5-3.1 s). Fewer than :data:`RATE_MIN_SEEN`
    large detections seen yet: no prediction."""
    pixels = img.shape[0] * img.shape[1]
    fits, rate = getattr(check, "fits", None), _FASTEST["rate"]
    if _FASTEST["seen"] >= RATE_MIN_SEEN and callable(fits) and not fits(FIT_MARGIN * rate * pixels):
        check.give_up()
    t0 = time.perf_counter()
    found = _sift().detectAndCompute(img, mask)
    if pixels >= RATE_MIN_PIXELS:
        seen = (time.perf_counter() - t0) / pixels
        _FASTEST["rate"] = seen if rate is None else min(rate, seen)
        _FASTEST["seen"] += 1
    return found


def _detect(img: np.ndarray, mask: np.ndarray | None, check=None):
    """``(keypoints, descriptors)`` of ``img`` (``cv2.SIFT.detectAndCompute``; releases the GIL),
    in tiles when it has more than :data:`TILE_PIXELS` pixels (:func:`_detect_tiled`, with
    ``check()`` between tiles); each detection first asks whether it fits (:func:`_sift_detect`)."""
    if img.shape[0] * img.shape[1] <= TILE_PIXELS:
        return _sift_detect(img, mask, check)
    return _detect_tiled(img, mask, check)


def _tile_edges(n: int) -> list[int]:
    """Core boundaries ``0, TILE, 2 TILE, ..., n`` (the last core takes a remainder below half
    a tile, so no core is a thin strip)."""
    edges = list(range(0, n, TILE)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < TILE // 2:
        del edges[-2]
    return edges


def _detect_tiled(img: np.ndarray, mask: np.ndarray | None, check=None):
    """SIFT over tiles: each core of :data:`TILE` x :data:`TILE` pixels is detected with
    :data:`TILE_MARGIN` pixels of context around it and keeps the keypoints whose centre lies
    in the core, moved to image coordinates. Peak memory is that of one tile (~1.6 MP: ~0.3 GB)
    whatever the image size; the time stays about proportional to the pixels.

    Within a core, keypoints of the finer octaves are those of a whole-image detection (their
    Gaussian and difference-of-Gaussian support, a few ``sigma`` of up to ~20 px, is inside the
    context); coarse ones -- a scale-space support beyond the margin -- can differ or be missed
    (measured in ``tests/test_align_highres.py``). Descriptors come back as one ``(N, 128)``
    array, keypoints in tile order."""
    h, w = img.shape[:2]
    rows, cols = _tile_edges(h), _tile_edges(w)
    keypoints, descriptors = [], []
    for y0, y1 in itertools.pairwise(rows):
        for x0, x1 in itertools.pairwise(cols):
            a, b = max(0, y0 - TILE_MARGIN), min(h, y1 + TILE_MARGIN)
            c, d = max(0, x0 - TILE_MARGIN), min(w, x1 + TILE_MARGIN)
            kp, desc = _sift_detect(img[a:b, c:d], None if mask is None else mask[a:b, c:d], check)
            _check(check)  # a deadline passing during a large image's detection stops after a tile
            if desc is None:
                continue
            keep = [i for i, k in enumerate(kp) if x0 <= k.pt[0] + c < x1 and y0 <= k.pt[1] + a < y1]
            keypoints.extend(cv2.KeyPoint(kp[i].pt[0] + c, kp[i].pt[1] + a, kp[i].size, kp[i].angle, kp[i].response,
                                          kp[i].octave, kp[i].class_id) for i in keep)
            descriptors.append(desc[keep])
    if not keypoints:
        return (), None
    return tuple(keypoints), np.vstack(descriptors)


class TemplateFeatures:
    """The template's SIFT keypoints and descriptors, computed once per ``align`` call and
    shared by its feature searches (3/4 and full resolution, raw and stretched image: the
    template is always stretched the same way).

    On the first search, with OpenCV allowed two threads or more (``cv2.getNumThreads()``),
    the template's detection runs on a second thread while the calling thread detects in the
    image. Both are OpenCV calls that release the GIL, and neither scales well to two cores
    (measured here: 1.4-1.5x from 1 to 2 threads, 240x240 template and 480x360 image), so
    side by side they finish sooner: on the large-motion benchmark at 2 threads, 33 -> 27 ms for
    the two detections alone, 4-5 ms less per ``align`` call (median of 150 paired calls), the
    keypoints bit-identical. At one thread they run one after the other,
    as the thread setting asks.

    The second threads are counted process-wide (:data:`_SIDE_THREADS`: one fewer than the CPUs
    the process may use): when a server's concurrent calls already hold them all, a call
    detects one after the other, so concurrent alignments do not oversubscribe the cores. The
    clock is checked before and after the pair (neither OpenCV call can be interrupted), so a
    deadline passing meanwhile is seen after the longer of the two detections.

    ``scale``: the template is detected at this factor of its resolution (:func:`detection_factor`;
    ``cv2.INTER_AREA``), its keypoints mapped back to full-resolution pixels by the fit."""

    def __init__(self, template: np.ndarray, scale: float = 1.0):
        self.template = template
        self.scale = float(scale)
        self._found = None

    def get(self, check=None):
        if self._found is None:
            t8, tm = to_uint8(self.template)
            if self.scale != 1.0:
                t8, tm = _resized(t8, tm, self.scale)
            self._found = _detect(t8, tm, check)
        return self._found

    def with_image(self, i8: np.ndarray, im: np.ndarray | None, check=None):
        """``((kt, dt), (ki, di))``: the template's (computed now, beside the image's, when
        not yet known) and the image's keypoints and descriptors."""
        if self._found is not None or cv2.getNumThreads() < 2 or not _SIDE_THREADS.acquire(blocking=False):
            template = self.get(check)
            _check(check)
            return template, _detect(i8, im, check)
        box: dict = {}

        def run():
            try:
                box["found"] = self.get(check)
            except BaseException as error:  # noqa: BLE001 -- re-raised in the calling thread
                box["error"] = error
            finally:
                _SIDE_THREADS.release()

        try:
            worker = threading.Thread(target=run, name=WORKER_NAME, daemon=True)
            worker.start()
        except BaseException:
            _SIDE_THREADS.release()
            raise
        try:
            image = _detect(i8, im, check)
        finally:
            worker.join()
        if "error" in box:
            raise box["error"]
        return box["found"], image


def feature_start(template: np.ndarray | TemplateFeatures, image: np.ndarray, model: str,
                  image_scale: float = 1.0, check=None, image_factor: float = 1.0) -> tuple[np.ndarray, int] | None:
    """``(image_from_template (3, 3), inliers)`` from SIFT matches, or ``None`` when the
    matches do not determine the model. Inputs as :func:`to_uint8` takes them (or, for
    ``image``, already a grey ``uint8`` array); the image is searched at ``image_scale`` of its
    resolution (:data:`IMAGE_SCALE`: faster, as robust on the benchmark). ``check()`` (may
    raise: the caller's deadline) runs between the stages (each OpenCV call is one piece).
    ``template`` may be its :class:`TemplateFeatures`, to share its keypoints between the
    searches of one call. ``image_factor``: ``image`` is the caller's image reduced to this factor
    of its resolution (:func:`reduced`); the start is returned in the caller's full-resolution
    pixels either way."""
    features = template if isinstance(template, TemplateFeatures) else TemplateFeatures(template)
    template = features.template
    i8, im = (image, None) if image.dtype == np.uint8 and image.ndim == 2 else to_uint8(image)
    _check(check)
    scale = image_scale if min(i8.shape) * image_scale >= MIN_SCALED_SIDE else 1.0
    if scale != 1.0:
        i8, im = _resized(i8, im, scale)
    (kt, dt), (ki, di) = features.with_image(i8, im, check)
    _check(check)
    if dt is None or di is None or len(kt) < 4 or len(ki) < 4:
        return None
    good = [m[0] for m in _matches(dt, di, check) if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < max(MIN_INLIERS, 4):
        return None
    src = np.float32([kt[m.queryIdx].pt for m in good])  # template points (x, y)
    if features.scale != 1.0:  # back in full-resolution template pixels, as below
        src = (src + 0.5) / np.float32(features.scale) - 0.5
    # image points, back in full-resolution pixels (pixel centres: x_full = (x_s + 0.5) / scale - 0.5)
    dst = (np.float32([ki[m.trainIdx].pt for m in good]) + 0.5) / np.float32(scale * image_factor) - 0.5
    if model == "homography":
        H, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, MAGSAC_THRESHOLD, maxIters=MAGSAC_ITERATIONS,
                                    confidence=CONFIDENCE)
    else:
        fit = cv2.estimateAffine2D if model == "affine" else cv2.estimateAffinePartial2D
        A, inl = fit(src, dst, method=cv2.RANSAC, ransacReprojThreshold=MAGSAC_THRESHOLD,
                     maxIters=MAGSAC_ITERATIONS, confidence=CONFIDENCE)
        H = None if A is None else np.vstack([A, [0.0, 0.0, 1.0]])
    if H is None or inl is None or int(inl.sum()) < MIN_INLIERS or not np.all(np.isfinite(H)):
        return None
    H = np.asarray(H, np.float64)
    H = _in_family(H / H[2, 2], model, template.shape)
    if not plausible(H, template.shape):
        return None
    return H, int(inl.sum())


def reduced(img: np.ndarray, factor: float) -> np.ndarray:
    """``img`` (grey ``uint8`` ``(H, W)`` or ``(H, W, C) float32``, NaN where missing) at
    ``factor < 1`` of its resolution by ``cv2.INTER_AREA`` (the mean over each output pixel's
    area; NaN wherever that area holds a missing pixel), in the same layout."""
    out = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    return out.reshape(out.shape[0], out.shape[1], -1) if img.ndim == 3 else out


def _resized(img8: np.ndarray, mask: np.ndarray | None, scale: float):
    """``img8`` at ``scale`` of its resolution (``cv2.INTER_AREA``) and its mask (nearest)."""
    out = cv2.resize(img8, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return out, None if mask is None else cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)


# Largest area change (either way) a start may claim between template and image: 8x in scale
# per side, well beyond the 0.5-2x that the search is built for.
MAX_AREA_RATIO = 64.0


def plausible(H: np.ndarray, shape) -> bool:
    """Whether ``H`` (image_from_template) maps the template to a start Gauss-Newton can
    refine: every corner in front of the camera (``w > 0``), the mapped corners a convex
    quadrilateral with the template's own orientation (no fold, no mirror: the solver keeps
    orientation, :class:`.gauss_newton.Stepper`), and an area within :data:`MAX_AREA_RATIO` of
    the template's. MAGSAC can return a near-singular fit on few, nearly collinear inliers
    (a held-out retina pair: a rank-2 homography), which is none of these.

    Orientation: with the corners ``p_k`` in template order (TL, TR, BR, BL) the cross product
    ``(p_{k+1} - p_k) x (p_{k+2} - p_{k+1})`` has the sign of the template's own at every
    ``k`` exactly when the quadrilateral is convex and not mirrored; the shoelace sum gives
    its area."""
    h, w = shape[:2]
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], np.float64)
    q = c @ np.asarray(H, np.float64).T
    if not (np.all(np.isfinite(q)) and np.all(q[:, 2] > 0)):
        return False
    p = q[:, :2] / q[:, 2:]
    e = np.roll(p, -1, axis=0) - p  # edges p_k -> p_{k+1}
    turn = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
    if not np.all(turn > 0):  # the template's corners turn positively (x right, y down)
        return False
    area = 0.5 * float(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
    area0 = float((w - 1) * (h - 1))
    return area0 > 0 and 1.0 / MAX_AREA_RATIO <= area / area0 <= MAX_AREA_RATIO


MATCH_ROWS = 1024  # template descriptors matched per brute-force call (then a check)


class _Match:
    """What the fit reads of a ``cv2.DMatch``, with the query index of the whole descriptor set."""

    __slots__ = ("distance", "queryIdx", "trainIdx")

    def __init__(self, m, offset):
        self.queryIdx, self.trainIdx, self.distance = m.queryIdx + offset, m.trainIdx, m.distance


def _matches(dt, di, check):
    """The two nearest image descriptors of every template descriptor (``BFMatcher.knnMatch``,
    k = 2), in runs of :data:`MATCH_ROWS` template descriptors with ``check()`` between two: each
    query's neighbours do not depend on the other queries, so the runs give the same matches as
    one call (10 000 x 10 000 SIFT descriptors: ~1.3 s in one call)."""
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    out = []
    for a in range(0, len(dt), MATCH_ROWS):
        out.extend([_Match(m, a) for m in pair] for pair in matcher.knnMatch(dt[a:a + MATCH_ROWS], di, k=2))
        _check(check)
    return out


def _check(check) -> None:
    if check is not None:
        check()


def _in_family(H: np.ndarray, model: str, shape) -> np.ndarray:
    """Reduce a similarity fit to the euclidean / translation family (others pass through)."""
    if model == "euclidean":
        s = np.sqrt(abs(np.linalg.det(H[:2, :2])))
        if s > 0:
            h, w = shape[:2]
            c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
            R = H[:2, :2] / s
            t = H[:2, :2] @ c + H[:2, 2] - R @ c  # keep the centre's image
            return np.vstack([np.column_stack([R, t]), [0.0, 0.0, 1.0]])
    if model == "translation":
        h, w = shape[:2]
        c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        t = H[:2, :2] @ c + H[:2, 2] - c
        return np.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]], [0.0, 0.0, 1.0]])
    return H
