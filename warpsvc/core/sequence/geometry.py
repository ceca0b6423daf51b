"""Geometry of a registered sequence: corner covariances, the chain rule, predicted overlaps.

Notation. ``X_ref`` are the reference frame's corners (TL, TR, BR, BL), ``(4, 2)``. Every
registration of frame ``k`` is stored as ``k_from_ref`` (a 3x3 homogeneous matrix) together with
``S_k``, the ``(8, 8)`` joint covariance of ``c_k = k_from_ref(X_ref)``, the reference corners as
seen in frame ``k`` (order ``TL.x, TL.y, TR.x, TR.y, BR.x, ...``; pixels squared). It is what
``align(reference, frame_k).corner_covariance`` reports block by block, with the cross terms
between corners kept (a shift moves all four corners together, so dropping them would be wrong).

**One alignment.** ``align(template=A, image=F)`` estimates ``W = F_from_A`` (its ``inverse``)
and ``Cov(d)`` of a motion ``d`` in the template chart ``C`` (``result.chart``, scale ``s`` px per
chart unit), the truth being ``W o C^-1 o M(d)^-1 o C`` (``AlignResult.point_covariance``). To
first order a template point ``p`` lands at ``W(p) - G(p) d`` with::

    G(p) = s * J_W(p) * dM(d)u/dd |_{d=0, u = C p}          (2 x P)

so the joint covariance of points ``p_1..p_N`` is ``G Cov(d) G^T`` with ``G`` the ``(2N, P)``
stack (:func:`joint_point_covariance`; its 2x2 diagonal blocks are ``point_covariance(p_i)``).

**Chain rule.** ``k_from_ref = k_from_a o a_from_ref`` (``a`` the previous frame, a keyframe, or
the reference itself with ``a_from_ref = I``, ``S_a = 0``). Perturb both factors:
``a_from_ref(X_ref)`` by ``dc_a`` (covariance ``S_a``) and ``k_from_a`` by its own error
``-G(c_a) d``. Then::

    dc_k = J_{k_from_a}(c_a) dc_a - G(c_a) d       (c_a = a_from_ref(X_ref))
    S_k  = A S_a A^T + G(c_a) Cov(d) G(c_a)^T,     A = blockdiag_i J_{k_from_a}(c_a,i)

where ``J`` is the transform's Jacobian with respect to position: the Jacobian of the product
is the product of the Jacobians. This assumes the two errors independent. Consecutive
frame-to-frame steps share a frame, whose noise displaces it in both steps with opposite signs
(it is the image of one step and the template of the next), so the true correlation is
negative and the independent sum is conservative (measured in ``benchmarks/bench_sequence.py``).

**Other points.** Four point correspondences fix a homography, so ``c_k`` is a chart of the
homography ``k_from_ref`` and any perturbation of it (every model's perturbation is a homography)
is ``dH(x) = L(x) dc`` with ``L(x) = dH(x)/dh (dc/dh)^-1`` (``h`` the 8 free matrix entries):
``Cov(k_from_ref(x)) = L(x) S_k L(x)^T`` (:func:`corner_chart_point_covariance`).
"""

from __future__ import annotations

import numpy as np

from ..transforms import HomographyTransform
from ..transforms.models import MotionModel

# Grid (per side) of frame points used to predict the fraction of a frame that an anchor sees.
OVERLAP_GRID = 24


def corners_of(shape) -> np.ndarray:
    """``(4, 2)`` pixel-centre corners TL, TR, BR, BL of an ``(H, W, ...)`` image."""
    h, w = shape[:2]
    return np.array([[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]])


def apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(N, 2)`` image of the points ``xy`` under a 3x3 homogeneous matrix."""
    xt = np.column_stack([xy, np.ones(len(xy))])
    y = xt @ np.asarray(matrix, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return y[:, :2] / y[:, 2:3]


def position_jacobian(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(N, 2, 2)`` Jacobian of the point map of ``matrix`` at ``xy`` (the public transform's)."""
    return HomographyTransform(matrix).jacobian(xy)


def joint_point_covariance(result, xy: np.ndarray, offset=(0.0, 0.0)) -> np.ndarray | None:
    """``(2N, 2N)`` joint covariance of where the template points ``xy`` land in the image.

    ``result`` is an :class:`~warpsvc.core.align.AlignResult`; ``offset`` is the template's
    origin in the coordinates of ``xy`` (a cropped template). ``None`` when the result carries
    no covariance. See the module docstring for ``G``.
    """
    if result.covariance is None or result.chart is None:
        return None
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2) - np.asarray(offset, dtype=np.float64)
    chart = np.asarray(result.chart, dtype=np.float64)
    u = pts @ chart[:2, :2].T + chart[:2, 2]
    model = MotionModel(result.model)
    dmu = model.jacobian_params(np.zeros(model.n_params), u)  # (N, 2, P) at d = 0
    scale = 1.0 / chart[0, 0]  # template pixels per chart unit
    g = scale * np.matmul(position_jacobian(result.inverse, pts), dmu)  # (N, 2, P)
    g = g.reshape(-1, g.shape[2])  # (2N, P)
    cov = g @ np.asarray(result.covariance, dtype=np.float64) @ g.T
    return 0.5 * (cov + cov.T)


def chain_covariance(c_a: np.ndarray, cov_a: np.ndarray | None, k_from_a: np.ndarray,
                     step_cov: np.ndarray | None) -> np.ndarray | None:
    """``(8, 8)`` ``S_k = A S_a A^T + step_cov``, ``A = blockdiag J_{k_from_a}(c_a)``.

    ``c_a`` : ``(4, 2)`` reference corners in frame ``a``; ``cov_a`` their ``(8, 8)`` covariance
    (zero for the reference itself); ``step_cov`` the ``(8, 8)`` joint covariance of the step
    ``k_from_a`` at ``c_a``. ``None`` when either covariance is unknown.
    """
    if cov_a is None or step_cov is None:
        return None
    jac = position_jacobian(k_from_a, c_a)  # (4, 2, 2)
    a = np.zeros((8, 8))
    for i in range(4):
        a[2 * i:2 * i + 2, 2 * i:2 * i + 2] = jac[i]
    cov = a @ cov_a @ a.T + step_cov
    return 0.5 * (cov + cov.T)


def fuse(ref_corners: np.ndarray, estimates) -> tuple[np.ndarray, np.ndarray | None]:
    """Combine estimates ``(reference_from_frame, S)`` of one frame's registration.

    In the four-corner chart each estimate is ``c_i = frame_from_ref_i(X_ref)`` with covariance
    ``S_i``; the information-weighted mean ``c = (sum S_i^-1)^-1 sum S_i^-1 c_i`` (the best
    linear unbiased combination of independent estimates) is turned back into a homography
    through the four points. The estimates share the frame's noise (and a keyframe's own
    registration came partly from the reference), so they are positively correlated and
    ``(sum S_i^-1)^-1`` would be optimistic; the covariance returned is the best single
    estimate's (conservative: a combination is never worse than its best member to first order
    when the weights are right). Estimates without a covariance are left out; with fewer than
    two left the first estimate is returned unchanged.
    """
    usable = [(m, s) for m, s in estimates if s is not None]
    if len(usable) < 2:
        return estimates[0]
    info_sum = np.zeros((8, 8))
    weighted = np.zeros(8)
    for m, s in usable:
        info = np.linalg.pinv(s, hermitian=True)
        info_sum += info
        weighted += info @ apply(np.linalg.inv(m), ref_corners).ravel()
    c = np.linalg.solve(info_sum, weighted).reshape(4, 2)
    frame_from_ref = HomographyTransform.from_points(ref_corners, c).matrix
    best = min(usable, key=lambda e: float(np.trace(e[1])))
    return normalised(np.linalg.inv(frame_from_ref)), best[1]


def corner_chart_point_covariance(k_from_ref: np.ndarray, ref_corners: np.ndarray, cov: np.ndarray,
                                  xy) -> np.ndarray:
    """``(N, 2, 2)`` covariance of ``k_from_ref(xy)`` given the ``(8, 8)`` covariance of the
    reference corners' images, through the four-point chart ``L(x) = dH(x)/dh (dc/dh)^-1``."""
    h = np.asarray(k_from_ref, dtype=np.float64)
    h = h / h[2, 2]
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    d_c = _dmap_dentries(h, ref_corners).reshape(8, 8)  # (4*2, 8)
    d_x = _dmap_dentries(h, pts)  # (N, 2, 8)
    lmap = np.matmul(d_x, np.linalg.inv(d_c))  # (N, 2, 8)
    out = np.matmul(np.matmul(lmap, cov), np.swapaxes(lmap, 1, 2))
    return 0.5 * (out + np.swapaxes(out, 1, 2))


def _dmap_dentries(h: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``(N, 2, 8)``: derivative of ``H(x)`` with respect to the entries ``h00..h21`` (``h22 = 1``),
    ``dy_i/dh_ij = x~_j / w`` and ``dy_i/dh_2j = -y_i x~_j / w`` (quotient rule)."""
    xt = np.column_stack([xy, np.ones(len(xy))])  # (N, 3)
    w = xt @ h[2]
    y = (xt @ h[:2].T) / w[:, None]
    d = np.zeros((len(xy), 2, 8))
    d[:, 0, 0:3] = xt / w[:, None]
    d[:, 1, 3:6] = xt / w[:, None]
    d[:, :, 6:8] = -y[:, :, None] * xt[:, None, :2] / w[:, None, None]
    return d


def predicted_overlap(anchor_from_frame: np.ndarray, frame_shape, anchor_shape) -> float:
    """Fraction of the frame's area that lands inside the anchor image under the estimate
    (an ``OVERLAP_GRID`` x ``OVERLAP_GRID`` lattice of frame points mapped and tested)."""
    h, w = frame_shape[:2]
    ah, aw = anchor_shape[:2]
    xs, ys = np.meshgrid(np.linspace(0, w - 1, OVERLAP_GRID), np.linspace(0, h - 1, OVERLAP_GRID))
    m = np.asarray(anchor_from_frame, dtype=np.float64)
    q = m[2, 0] * xs + m[2, 1] * ys + m[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = (m[0, 0] * xs + m[0, 1] * ys + m[0, 2]) / q
        y = (m[1, 0] * xs + m[1, 1] * ys + m[1, 2]) / q
    inside = (q > 0) & (x >= -0.5) & (x <= aw - 0.5) & (y >= -0.5) & (y <= ah - 0.5)
    return float(inside.mean())


def footprint_box(anchor_from_frame: np.ndarray, frame_shape, anchor_shape, margin: int):
    """``(x0, y0, x1, y1)``: bounding box, in anchor pixels, of the frame's footprint on the anchor
    grown by ``margin`` and clipped to the anchor; ``None`` when it is not finite or empty."""
    ah, aw = anchor_shape[:2]
    h, w = frame_shape[:2]
    t = np.linspace(0.0, 1.0, 9)
    edge = np.concatenate([np.column_stack([t * (w - 1), np.zeros_like(t)]),
                           np.column_stack([t * (w - 1), np.full_like(t, h - 1.0)]),
                           np.column_stack([np.zeros_like(t), t * (h - 1)]),
                           np.column_stack([np.full_like(t, w - 1.0), t * (h - 1)])])
    m = np.asarray(anchor_from_frame, dtype=np.float64)
    q = np.column_stack([edge, np.ones(len(edge))]) @ m[2]
    if not np.all(q > 0):
        return None
    p = apply(m, edge)
    if not np.all(np.isfinite(p)):
        return None
    x0 = int(max(np.floor(p[:, 0].min()) - margin, 0))
    y0 = int(max(np.floor(p[:, 1].min()) - margin, 0))
    x1 = int(min(np.ceil(p[:, 0].max()) + margin + 1, aw))
    y1 = int(min(np.ceil(p[:, 1].max()) + margin + 1, ah))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def normalised(m: np.ndarray) -> np.ndarray:
    """``m / m[2, 2]`` with an exactly affine last row kept exact."""
    m = np.asarray(m, dtype=np.float64)
    out = m / m[2, 2]
    if m[2, 0] == 0.0 and m[2, 1] == 0.0:
        out[2] = (0.0, 0.0, 1.0)
    return out
