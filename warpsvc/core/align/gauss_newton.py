r"""Inverse-compositional Gauss-Newton on one pyramid level (Baker & Matthews 2004).

Notation. ``T`` is the template (``h x w x C``), ``I`` the image, ``W`` the current estimate of
``image_from_template`` (the result's ``inverse``), ``C`` the chart ``u = C x`` that normalises
template pixels (:mod:`.chart`), ``M(d)`` the motion model's matrix with ``M(0) = I``.
Sums run over the template elements ``x`` (pixel and channel) that are usable in ``T`` and land
inside ``I``; everything else is NaN and dropped (:mod:`.pyramid`).

Residual::

    e(x) = I(W x) - T(x)                                   (bilinear ``cv2.warpPerspective``)

Inverse compositional step. Instead of moving ``W`` we move the template by a small warp
``V(d) = C^-1 M(d) C`` and ask ``T(V(d) x) ~ I(W x)``. Linearising at ``d = 0``::

    T(V(d) x) ~ T(x) + grad T(x) . s . J(u) d              u = C x, s = pixels per chart unit

with ``J(u) = d(M(d) u)/dd`` at ``d = 0`` (``(2, P)`` per pixel). The *steepest-descent images*
``SD(x) = grad T(x) . s . J(u)`` (``(N, P)``) and the *Hessian* ``H = sum_x SD^T SD``
(``(P, P)``) depend on the template only, so each level computes them once. Minimising
``sum_x (T(x) + SD(x) d - I(W x))^2`` gives the normal equations::

    H d = g,        g = sum_x SD(x)^T e(x)

and the *compositional update* undoes the template's motion on the image side::

    W <- W  V(d)^-1  =  W C^-1 M(d)^-1 C

When some template pixels leave the image, their rows leave ``H`` too (a rank-k downdate of the
precomputed Hessian, cheap when few pixels leave).

Robust loss (IRLS). With ``rho`` Huber or Tukey and a scale ``sigma`` from the median absolute
deviation of the residuals, each iteration weights the residuals by
``w(x) = rho'(e/sigma) / (e/sigma)`` and solves ``(SD^T W SD) d = SD^T W e``.

Gain and bias (Baker-Matthews part 3). The appearance model is ``I(W x) ~ a_c T_c(x) + b_c``
per channel ``c``. Each iteration fits ``(a, b)`` in closed form (weighted least squares of the
warped image on the template), forms the normalised residual ``e = (I(W x) - b) / a - T`` and
solves the normal equations of the *augmented* Jacobian ``[SD | T_c | 1_c]``; the motion part of
its solution is the Schur complement ``(H_pp - H_pa H_aa^-1 H_ap)^-1 (...)``, i.e. the step
with the appearance directions projected out. Dividing by ``a`` keeps the Gauss-Newton step at
the right length when the gain is far from 1.

Levenberg-Marquardt safeguard. A step is accepted only if the cost at the new ``W`` (measured
at the next iteration's warp, so acceptance costs nothing extra) does not exceed the last
accepted cost; otherwise ``W`` goes back, ``lambda`` grows tenfold and
``(H + lambda diag H) d = g`` is solved again from the stored ``H, g``. Accepted steps shrink
``lambda`` back towards plain Gauss-Newton.

Stopping. A level ends when the step moves no template corner by more than the level's
tolerance, or the geometric tail ``s r / (1 - r)`` of the shrinking steps (``r`` the ratio of
the last two) is below it, or -- at the noise floor -- the cost stops falling once the steps
are below ten tolerances (all ``converged``); after ``max_iterations``; when the shared clock
says stop (``time_budget`` / ``should_stop``); when too few pixels overlap; or when the damping
cannot find a descent step (``no_progress``). Coarse levels also stop at the first step that
does not lower the cost: they only hand a start to the next level.

Covariance: :mod:`.covariance` (the Gauss-Newton sandwich at the solution, corrected for the
noise in the template's gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .chart import chart_scale
from .clock import Clock
from .losses import LOSSES, mad_sigma
from .pyramid import Level, level_scale, point_maps, sample_points, warp_to_template  # samplers: also api/verify
from .result import CONVERGED, DEGENERATE_WARP, INSUFFICIENT_OVERLAP, MAX_ITERATIONS, NO_PROGRESS

MAX_DAMPING = 1e8
# Fewer usable residuals than this many per unknown and a level is skipped / the call fails.
MIN_RESIDUALS_PER_UNKNOWN = 4
# Gain clamp when normalising the image by the photometric fit.
GAIN_RANGE = (0.05, 20.0)


@dataclass
class Evaluation:
    """Residuals of one warp estimate at one level."""

    e: np.ndarray            # (n,) float32 residuals, 0 where not valid
    valid: np.ndarray        # (n,) bool
    n_valid: int
    weights: np.ndarray | None  # (n,) robust weights (None: all ones on valid)
    sigma: float
    cost: float
    gain: np.ndarray
    bias: np.ndarray
    warped: np.ndarray       # (h, w, C) float32, NaN where not valid


@dataclass
class Accepted:
    """The last accepted estimate of a level and its normal equations (what a rejected,
    re-damped step starts again from)."""

    W: np.ndarray            # (3, 3) level-0 image_from_template
    ev: Evaluation           # residuals at W
    H: np.ndarray            # (K, K) Gauss-Newton matrix at W
    g: np.ndarray            # (K,) gradient at W


@dataclass
class LevelOutcome:
    W: np.ndarray
    reason: str
    iterations: int
    costs: list = field(default_factory=list)
    last: Evaluation | None = None  # residuals at the last accepted estimate
    # Size (level-0 pixels, largest template-corner motion) of the *undamped* Gauss-Newton step
    # from the returned estimate: how far the local quadratic model puts the optimum. A damped
    # (Levenberg-Marquardt) step can be below the tolerance far from the optimum; this cannot.
    newton_step: float = float("inf")


def _unusable_index(lv: Level) -> np.ndarray:
    """Flat indices of the level's unusable template elements (computed once per level)."""
    if lv.unusable_index is None:
        lv.unusable_index = np.flatnonzero(~lv.usable)
    return lv.unusable_index


def evaluate(lv: Level, W0: np.ndarray, affine: bool, robust, photometric: bool,
             prev_weights, sigma_for_cost, sigma_floor) -> Evaluation:
    """Warp the image by ``W0`` (level-0 ``image_from_template``) and form the residuals.

    The unusable template elements are always missing (``tflat`` is NaN there), so when the
    count of missing residuals equals the count of unusable elements the two sets are equal:
    ``valid`` is then the level's ``usable`` and the missing residuals are zeroed through the
    level's index list of them (the common case: the whole template lands in the image)."""
    Wl = W0 * level_scale(lv.factor)
    if lv.points is None:
        warped = warp_to_template(lv.image, Wl, lv.shape, affine)
    else:
        if lv.pts is None:
            lv.pts = point_maps(lv.points)
        warped = sample_points(lv.image, Wl, lv.points, lv.pts)
    c = lv.shape[2]
    tflat = lv.tflat
    wflat = warped.reshape(-1)
    e = wflat - tflat  # NaN where either side is missing
    missing = np.isnan(e)
    n_valid = e.size - int(np.count_nonzero(missing))
    if n_valid == lv.n_usable:
        valid = lv.usable
        zero_at = _unusable_index(lv)
    else:
        valid, zero_at = ~missing, missing
    gain = bias = None
    if photometric and n_valid > 0:
        weights = prev_weights
        # With a robust loss and no weights yet (a level's first evaluation), the outliers
        # would bias the first gain/bias fit: fit, weight by the loss, fit again.
        for _ in range(2 if robust is not None and weights is None else 1):
            if c == 1 and weights is None:
                e[zero_at] = 0.0  # the raw residual, zero where missing: its sums fit (a, b)
                gain, bias = _fit_gain_bias_1(lv, e, missing, n_valid)
            else:
                gain, bias = fit_gain_bias(wflat.reshape(-1, c), tflat.reshape(-1, c), valid.reshape(-1, c),
                                           None if weights is None else weights.reshape(-1, c))
            if c == 1:  # e = (I(W x) - b) / a - T, in place
                np.subtract(wflat, np.float32(bias[0]), out=e)
                e *= np.float32(1.0 / gain[0])
                e -= tflat
            else:
                e = ((wflat.reshape(-1, c) - bias.astype(np.float32)) * (1.0 / gain).astype(np.float32)
                     - tflat.reshape(-1, c)).reshape(-1)
            if robust is not None:
                e[zero_at] = 0.0
                weights = LOSSES[robust].weights_and_rho_sum(
                    e, valid, sigma_for_cost or mad_sigma(e, valid, sigma_floor))[0]
    if gain is None:
        gain, bias = np.ones(c), np.zeros(c)
    if n_valid < e.size:
        e[zero_at] = 0.0
    if robust is None:
        cost = float(np.dot(e, e)) / max(n_valid, 1)
        return Evaluation(e, valid, n_valid, None, 0.0, cost, gain, bias, warped)
    # The scale is estimated once per level (``sigma_for_cost`` carries it on), so the costs of
    # successive iterations are comparable and the median is not recomputed every time.
    sigma = sigma_for_cost if sigma_for_cost else mad_sigma(e, valid, sigma_floor)
    weights, rho_sum = LOSSES[robust].weights_and_rho_sum(e, valid, sigma)
    cost = 2.0 * sigma * sigma * rho_sum / max(n_valid, 1)
    return Evaluation(e, valid, n_valid, weights, sigma, cost, gain, bias, warped)


def _fit_gain_bias_1(lv: Level, e0: np.ndarray, missing: np.ndarray, n: int):
    """One channel, unweighted ``I(W x) ~ a T(x) + b`` from the raw residual ``e0 = I(W x) - T``
    (0 where ``missing``): with ``I = T + e``, ``cov(T, I) = var(T) + cov(T, e)``, so
    ``a = 1 + cov(T, e) / var(T)``. The template's sums come from the level
    (:func:`template_sums`) when every usable pixel is valid, so one pass over ``e0`` (a
    two-row product) is all an evaluation adds."""
    a, b = np.ones(1), np.zeros(1)
    if n < 2:
        return a, b
    tz, st, stt = template_sums(lv)
    if n == lv.n_usable:
        ste, se = (tz @ e0.reshape(-1, 1)).ravel().tolist()  # rows (T, 1): sum T e, sum e
    else:
        t0 = np.where(missing, np.float32(0), tz[0])
        st, stt = float(t0.sum(dtype=np.float64)), float(np.dot(t0, t0))
        se, ste = float(e0.sum(dtype=np.float64)), float(np.dot(t0, e0))
    var_t = stt - st * st / n
    if var_t > 0:
        a[0] = min(max(1.0 + (ste - st * se / n) / var_t, GAIN_RANGE[0]), GAIN_RANGE[1])
    b[0] = (st + se) / n - a[0] * st / n
    return a, b


def template_sums(lv: Level):
    """``(rows, sum T, sum T^2)`` over a one-channel level's usable pixels: ``rows`` the
    ``(2, n)`` float32 array ``(T, 1)``, 0 where unusable -- the level's gain/bias
    steepest-descent rows when it has them -- and the sums in float64 (once per level)."""
    if lv.tsums is None:
        p = lv.n_params
        if lv.sdT.shape[0] == p + 2:
            rows = lv.sdT[p:p + 2]
        else:
            rows = np.stack([np.where(lv.usable, lv.tflat, np.float32(0)), lv.usable.astype(np.float32)])
        t64 = rows[0].astype(np.float64)
        lv.tsums = (rows, float(t64.sum()), float(t64 @ t64))
    return lv.tsums


def fit_gain_bias(iw, t, valid, weights):
    """Per-channel weighted least squares ``iw ~ a t + b`` over valid elements (N, C) -> (a, b)
    (one channel without weights: :func:`_fit_gain_bias_1`)."""
    c = t.shape[1]
    a, b = np.ones(c), np.zeros(c)
    for ch in range(c):
        v = valid[:, ch]
        tv, iv = t[v, ch].astype(np.float64), iw[v, ch].astype(np.float64)
        if tv.size < 2:
            continue
        if weights is None:
            mt, mi = tv.mean(), iv.mean()
            dt = tv - mt
            var_t, cov = float(dt @ dt), float(dt @ (iv - mi))
        else:
            wv = weights[v, ch].astype(np.float64)
            sw = wv.sum()
            if sw <= 0:
                continue
            mt, mi = float(wv @ tv) / sw, float(wv @ iv) / sw
            dt = tv - mt
            wdt = wv * dt
            var_t, cov = float(wdt @ dt), float(wdt @ (iv - mi))
        if var_t > 0:
            a[ch] = min(max(cov / var_t, GAIN_RANGE[0]), GAIN_RANGE[1])
        b[ch] = mi - a[ch] * mt
    return a, b


def normal_equations(lv: Level, ev: Evaluation):
    """``(H, g)`` over the valid residuals (with robust weights when present)."""
    sdT = lv.sdT
    if ev.weights is None:
        g = sdT @ ev.e
        n_lost = lv.n_usable - ev.n_valid
        if n_lost == 0:
            H = lv.hessian
        elif 3 * n_lost < lv.n_usable:
            rows = sdT[:, np.flatnonzero(lv.usable & ~ev.valid)]
            H = lv.hessian - (rows @ rows.T).astype(np.float64)
        else:
            rows = sdT[:, ev.valid]
            H = (rows @ rows.T).astype(np.float64)
    else:
        g = sdT @ (ev.weights * ev.e)
        H = ((sdT * ev.weights) @ sdT.T).astype(np.float64)
    return H, g.astype(np.float64)


def solve_step(H: np.ndarray, g: np.ndarray, lam: float, n_params: int) -> list | None:
    """``(H + lam diag H) d = g`` for the motion part of ``d``, as a list of floats
    (``cv2.solve``: Cholesky, SVD if that fails; numpy's ``linalg.solve`` costs more in call
    overhead than in arithmetic at this size). ``None`` when not finite."""
    A = H + lam * np.diag(np.diag(H)) if lam > 0 else H
    ok, d = cv2.solve(A, g.reshape(-1, 1), flags=cv2.DECOMP_CHOLESKY)
    if not ok:
        ok, d = cv2.solve(A, g.reshape(-1, 1), flags=cv2.DECOMP_SVD)
    d = d[:n_params, 0].tolist()
    return d if math.isfinite(sum(v * v for v in d)) else None


def model_rows(model: str, p: list) -> tuple:
    """``M(p)`` (:func:`~warpsvc.core.transforms.models.unchecked_matrix`) as three row tuples."""
    if model == "translation":
        return (1.0, 0.0, p[0]), (0.0, 1.0, p[1]), (0.0, 0.0, 1.0)
    if model == "euclidean":
        c, s = math.cos(p[0]), math.sin(p[0])
        return (c, -s, p[1]), (s, c, p[2]), (0.0, 0.0, 1.0)
    if model == "similarity":
        return (1 + p[0], -p[1], p[2]), (p[1], 1 + p[0], p[3]), (0.0, 0.0, 1.0)
    if model == "affine":
        return (1 + p[0], p[1], p[2]), (p[3], 1 + p[4], p[5]), (0.0, 0.0, 1.0)
    return (1 + p[0], p[1], p[2]), (p[3], 1 + p[4], p[5]), (p[6], p[7], 1.0)


def inverse_rows(m: tuple) -> tuple | None:
    """Inverse of a 3x3 matrix given as rows (adjugate over determinant); ``None`` when the
    determinant is 0 or not finite."""
    (a, b, c), (d, e, f), (g, h, i) = m
    c0, c1, c2 = e * i - f * h, f * g - d * i, d * h - e * g  # cofactors of the first row
    det = a * c0 + b * c1 + c * c2
    if det == 0.0 or not math.isfinite(det):
        return None
    r = 1.0 / det
    return ((c0 * r, (c * h - b * i) * r, (b * f - c * e) * r),
            (c1 * r, (a * i - c * g) * r, (c * d - a * f) * r),
            (c2 * r, (b * g - a * h) * r, (a * e - b * d) * r))


class Stepper:
    """Applies chart-space updates to ``W`` (level-0 ``image_from_template``) and measures them.

    The 3x3 algebra of a step (``M(d)``, its inverse, the conjugation by the chart, the
    composition, the corner checks) is written out on Python floats: at this size numpy's
    call overhead is most of the cost. The chart is ``u = k x + a, v = k y + b``
    (:func:`.chart.make_chart`), so ``Q = C^-1 N C`` for ``N = M^-1`` is ::

        q00 = n00 - a n20    q01 = n01 - a n21    q02 = (n00 a + n01 b + n02 - a q22) / k
        q10 = n10 - b n20    q11 = n11 - b n21    q12 = (n10 a + n11 b + n12 - b q22) / k
        q20 = k n20          q21 = k n21          q22 = n20 a + n21 b + n22
    """

    def __init__(self, model, chart, chart_inv, corners0, scale):
        self.model, self.chart, self.chart_inv = model, chart, chart_inv
        (k, z01, a), (z10, k1, b), bottom = chart.tolist()
        if z01 != 0.0 or z10 != 0.0 or k1 != k or bottom != [0.0, 0.0, 1.0] or k == 0.0:
            raise ValueError("chart must be u = k x + a, v = k y + b")
        self.k, self.a, self.b = k, a, b
        self.corners0 = corners0  # (4, 3) homogeneous template corners, level-0 pixels
        self.corner_list = corners0.tolist()
        self.corner_u_list = [((k * x + a * w) / w, (k * y + b * w) / w) for x, y, w in self.corner_list]  # chart
        self.scale = scale  # level pixels per chart unit
        self.keep_affine = model != "homography"

    def compose(self, W, m):
        """``W C^-1 M^-1 C`` (``W`` an array, ``m`` rows), normalised to ``W[2, 2] = 1``, as
        rows; ``None`` if ``M`` is singular or the result is at infinity."""
        n = inverse_rows(m)
        if n is None:
            return None
        (n00, n01, n02), (n10, n11, n12), (n20, n21, n22) = n
        k, a, b = self.k, self.a, self.b
        q20, q21, q22 = k * n20, k * n21, n20 * a + n21 * b + n22
        q00, q01, q02 = n00 - a * n20, n01 - a * n21, (n00 * a + n01 * b + n02 - a * q22) / k
        q10, q11, q12 = n10 - b * n20, n11 - b * n21, (n10 * a + n11 * b + n12 - b * q22) / k
        (w00, w01, w02), (w10, w11, w12), (w20, w21, w22) = W.tolist()
        z = w20 * q02 + w21 * q12 + w22 * q22
        if self.keep_affine and w20 == 0.0 and w21 == 0.0:
            r20 = r21 = 0.0
        else:
            r20 = w20 * q00 + w21 * q10 + w22 * q20
            r21 = w20 * q01 + w21 * q11 + w22 * q21
        if z == 0.0:
            return None
        r = 1.0 / z
        return (((w00 * q00 + w01 * q10 + w02 * q20) * r, (w00 * q01 + w01 * q11 + w02 * q21) * r,
                 (w00 * q02 + w01 * q12 + w02 * q22) * r),
                ((w10 * q00 + w11 * q10 + w12 * q20) * r, (w10 * q01 + w11 * q11 + w12 * q21) * r,
                 (w10 * q02 + w11 * q12 + w12 * q22) * r),
                (r20 * r, r21 * r, 1.0))

    def ok(self, W) -> bool:
        """Finite, orientation-preserving at every template corner (nothing folds or flips);
        ``W`` as rows or an array."""
        if W is None:
            return False
        if isinstance(W, np.ndarray):
            W = W.tolist()
        (a, b, c), (d, e, f), (g, h, i) = W
        for x, y, _ in self.corner_list:
            w = g * x + h * y + i
            if not w > 0:  # also catches NaN
                return False
        det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
        return det > 0 and math.isfinite(det)

    def size(self, m) -> float:
        """Largest motion (level pixels) of a template corner under ``M`` (rows)."""
        (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = m
        worst = 0.0
        for u, v in self.corner_u_list:
            w = m20 * u + m21 * v + m22
            worst = max(worst, abs((m00 * u + m01 * v + m02) / w - u), abs((m10 * u + m11 * v + m12) / w - v))
        return worst * self.scale

    def propose(self, base, H, g, lam, n_params):
        """Damped step from ``base``: raise ``lam`` until the warp stays valid. ``(W, size, lam)``
        with ``W`` a (3, 3) array."""
        while True:
            d = solve_step(H, g, lam, n_params)
            if d is not None:
                m = model_rows(self.model, d)
                W = self.compose(base, m)
                if self.ok(W):
                    return np.array(W), self.size(m), lam
            lam = max(10.0 * lam, 1e-3)
            if lam > MAX_DAMPING:
                return None, None, lam


def solve_level(lv: Level, W0: np.ndarray, *, model: str, chart: np.ndarray, chart_inv: np.ndarray,
                corners0: np.ndarray, affine: bool, robust, photometric: bool, max_iterations: int,
                tolerance: float, clock: Clock, sigma_floor: float, coarse: bool = False) -> LevelOutcome:
    """Iterate inverse-compositional Gauss-Newton at one level from ``W0`` (level-0 pixels).

    ``coarse``: the level only has to hand a good start to the next one, so it also stops at
    the first step that does not lower the cost (the coarse approximation's noise floor).
    """
    stepper = Stepper(model, chart, chart_inv, corners0, chart_scale(chart) / lv.factor)
    min_valid = MIN_RESIDUALS_PER_UNKNOWN * lv.sd.shape[1]
    lam = 0.0
    best: Accepted | None = None
    costs = []
    it = 0
    reason = MAX_ITERATIONS
    W = W0
    prev_size = size_last = None
    while it < max_iterations:
        stop = clock.stop_reason()
        if stop is not None:
            reason = stop
            break
        it += 1
        ev = evaluate(lv, W, affine, robust, photometric, None if best is None else best.ev.weights,
                      None if best is None else best.ev.sigma, sigma_floor)
        if ev.n_valid < min_valid:
            reason = INSUFFICIENT_OVERLAP
            break
        costs.append(ev.cost)
        accepted = best is None or ev.cost <= best.ev.cost
        if accepted:
            lam = lam / 10.0 if lam > 1e-3 else 0.0
            H, g = normal_equations(lv, ev)
            best = Accepted(W, ev, H, g)
        elif coarse or size_last is not None and size_last < 10 * tolerance:
            # a coarse level's noise floor, or the finest level's: the last step was already
            # tiny and the cost no longer falls (noise); keep the best estimate
            reason = CONVERGED
            W = best.W
            break
        else:
            lam = max(10.0 * lam, 1e-3)
        W, size, lam = stepper.propose(best.W, best.H, best.g, lam, lv.n_params)
        if W is None:
            reason = DEGENERATE_WARP if accepted else NO_PROGRESS
            break
        if accepted and (size < tolerance or _remaining(size, prev_size, lam) < tolerance):
            reason = CONVERGED
            break
        size_last = size
        prev_size = size if accepted and lam == 0.0 else None
    if reason != CONVERGED and best is not None:
        W = best.W
    elif W is None:
        W = W0
    newton = float("inf")
    if best is not None and not coarse:
        d = solve_step(best.H, best.g, 0.0, lv.n_params)
        if d is not None:
            newton = stepper.size(model_rows(model, d)) * lv.factor
    return LevelOutcome(W, reason, it, costs, None if best is None else best.ev, newton)


def _remaining(size, prev_size, lam) -> float:
    """Distance left to the fixed point if the steps keep shrinking at their last ratio (a
    geometric tail ``size * r / (1 - r)``); ``inf`` when that cannot be judged yet."""
    if prev_size is None or lam != 0.0 or prev_size <= 0:
        return float("inf")
    r = size / prev_size
    return size * r / (1.0 - r) if r < 0.5 else float("inf")


def translation_search(lv: Level, W: np.ndarray, radius: int, affine: bool) -> np.ndarray:
    """Exhaustive translation search at one (coarse) level: the shift of the template, within
    ``radius`` level pixels, that maximises the zero-normalised correlation with the warped
    image (``cv2.matchTemplate``, ``TM_CCOEFF_NORMED``). Returns the updated ``W`` (level 0).

    Gauss-Newton only sees the local slope; at the coarsest level a global search over a small
    window finds the right basin even when the start is a few coarse pixels away.
    """
    h, w, c = lv.shape
    box = _template_box(lv)
    if box is None:
        return W
    r0, r1, c0, c1, tc = box
    f = lv.factor
    # extended grid: template pixel (x - radius, y - radius) for x in [0, w + 2 radius)
    Wl = W * level_scale(f)
    Wl[:, 2] -= radius * (Wl[:, 0] + Wl[:, 1])  # Wl @ [[1, 0, -radius], [0, 1, -radius], [0, 0, 1]]
    ext = warp_to_template(lv.image, Wl, (h + 2 * radius, w + 2 * radius, c), affine)
    region = ext[r0:r1 + 2 * radius, c0:c1 + 2 * radius]
    if not math.isfinite(float(region.sum())):
        missing = np.isnan(region)
        if missing.all():
            return W
        region = region.copy()
        region[missing] = region[~missing].mean()
        # Template pixels unseen at the start get its mean (no variance): a constant-filled part
        # of a rotated crop drew the search onto dark image content (118 px off from the truth).
        unseen = missing[radius:radius + tc.shape[0], radius:radius + tc.shape[1]]
        unseen = unseen.any(axis=2) if unseen.ndim == 3 else unseen
        if unseen.any() and not unseen.all():
            tc = tc.copy()
            tc[unseen] = tc[~unseen].mean(axis=0)
    if c <= 4:
        score = cv2.matchTemplate(region, tc, cv2.TM_CCOEFF_NORMED)
    else:  # OpenCV takes at most 4 channels: add the per-channel correlations
        score = sum(cv2.matchTemplate(np.ascontiguousarray(region[:, :, i]), np.ascontiguousarray(tc[:, :, i]),
                                      cv2.TM_CCOEFF_NORMED) for i in range(c))
    if not math.isfinite(float(score.sum())):
        return W
    iy, ix = divmod(int(np.argmax(score)), score.shape[1])
    dx, dy = float(ix), float(iy)
    # sub-pixel peak: a parabola through the peak and its neighbours, per axis
    if 0 < ix < score.shape[1] - 1:
        a, b, cc = score[iy, ix - 1:ix + 2].tolist()
        den = a - 2 * b + cc
        dx += 0.5 * (a - cc) / den if den < 0 else 0.0
    if 0 < iy < score.shape[0] - 1:
        a, b, cc = score[iy - 1:iy + 2, ix].tolist()
        den = a - 2 * b + cc
        dy += 0.5 * (a - cc) / den if den < 0 else 0.0
    dx, dy = (dx - radius) * f, (dy - radius) * f  # level-0 template pixels
    # the template pixel x matches image W(x + d): W <- W T(d)
    out = W.copy()
    out[:, 2] += dx * W[:, 0] + dy * W[:, 1]
    return out


def _template_box(lv: Level):
    """``(r0, r1, c0, c1, tc)``: the bounding box of the level template's usable pixels and
    the template inside it (float32, contiguous), or ``None`` when it is smaller than 4x4 or
    has holes (computed once per level)."""
    if lv.box is None:
        t = lv.template
        ok = ~np.isnan(t[:, :, 0] if t.shape[2] == 1 else t.sum(axis=2))
        rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
        box = ()
        if len(rows) >= 4 and len(cols) >= 4:
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            tc = np.ascontiguousarray(t[r0:r1, c0:c1], np.float32)
            if not np.isnan(tc).any():
                box = (r0, r1, c0, c1, tc)
        lv.box = box
    return lv.box or None
