"""Co-adding registered frames on the reference grid with flux conserved: ``stack`` and ``Stacker``.

Each frame ``k`` (transform ``T_k = reference_from_frame``) is resampled once with
``warp(frame, T_k, output_shape, intensity="conserve", antialias=...)``::

    flux_k(y) = integral over the preimage of output pixel y of frame_k   (antialias=True)

the frame's flux landing in output pixel ``y``, so ``sum_y flux_k(y) = sum_x frame_k(x)`` for a
frame inside the output (the antialiased scatter conserves it exactly; point sampling with
``antialias=False`` only to its interpolation error, ~1e-5 relative).

**Coverage.** Warping a ones image the same way gives ``area_k(y)``, the area of frame ``k``
(in its own pixels) inside the preimage of ``y``; the determinant map ``det_k(y) =
|det J_{T_k^-1}(y)|`` is the whole preimage's area. Their ratio ``w_k(y) = area_k / det_k`` in
``[0, 1]`` is the fraction of output pixel ``y`` that frame ``k`` covers (1 inside, fractional
along its edges, 0 outside), and the coverage map ``C(y) = sum_k w_k(y)`` counts the frames
covering ``y`` (an exposure map). The ones image rides along as an extra channel of the same
warp.

**Combining.** ``sum``: ``S(y) = sum_k flux_k(y)``, total flux preserved. ``mean``:
``S(y) / C(y)``, each covering frame weighted by the fraction it covers; it is in flux per
output pixel (the flux of one frame is preserved where all frames cover, and the noise of ``N``
frames falls as ``1/sqrt(N)``); ``nan`` where ``C = 0``. ``median``: the per-pixel median of
``flux_k(y) / w_k(y)`` (each covering frame's full-pixel estimate) over frames with ``w_k >=
min_weight``. Sum and mean are streaming accumulators (two ``(H, W)`` float64 planes and one
``(H, W, C)``); median and sigma clipping keep every warped frame (float32, ``N x H x W x (C+1)``),
bounded by ``StackOptions.max_stored_bytes``.

**Sigma clipping** (``clip=kappa``): per pixel, over the stored full-pixel estimates, reject
samples further than ``kappa`` standard deviations from the median, recompute, up to
``clip_iterations`` times or until nothing changes (astropy ``sigma_clip``'s rule). Then ``mean``
is the coverage-weighted mean of the kept samples, ``sum`` that mean times ``C`` (the flux a
full set of unrejected frames would have), ``median`` the kept samples' median.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ImageTooLargeError, InvalidArgumentError, InvalidImageError, InvalidTransformError
from ..transforms import AffineTransform, HomographyTransform, Transform
from ..validate import check_choice, check_image, check_shape
from ..warp import jacobian_determinant, warp

COMBINES = ("mean", "sum", "median")


@dataclass(frozen=True)
class StackOptions:
    """Settings of :func:`stack` / :class:`Stacker` besides combine, antialias and clip.

    min_weight : for median and clipping, samples covering less than this fraction of an output
        pixel are left out (their full-pixel estimate ``flux / w`` is noisy).
    clip_iterations : at most this many rejection passes of sigma clipping.
    max_stored_bytes : memory allowed for the stored frames of ``median`` / clipping; adding a
        frame beyond it raises :class:`ImageTooLargeError` (``field="frames"``).
    """

    min_weight: float = 0.5
    clip_iterations: int = 5
    max_stored_bytes: int = 2 << 30

    def checked(self) -> StackOptions:
        if (isinstance(self.min_weight, bool) or not isinstance(self.min_weight, numbers.Real)
                or not 0.0 < float(self.min_weight) <= 1.0):
            raise InvalidArgumentError(f"min_weight must be in (0, 1], got {self.min_weight!r}", field="min_weight")
        for name, lo in (("clip_iterations", 1), ("max_stored_bytes", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
                raise InvalidArgumentError(f"{name} must be an integer >= {lo}, got {v!r}", field=name)
        return self


@dataclass(frozen=True)
class StackResult:
    """image : ``(H, W)`` or ``(H, W, C)`` float64 (``nan`` where nothing covers, mean/median).
    coverage : ``(H, W)`` float64, frames covering each output pixel (fractional at frame edges).
    combine, n_frames : what was asked and how many frames went in.
    rejected : ``(H, W)`` int count of samples removed by sigma clipping (``None`` without).
    """

    image: np.ndarray
    coverage: np.ndarray
    combine: str
    n_frames: int
    rejected: np.ndarray | None = None


class Stacker:
    """Streaming accumulator: ``s = Stacker((H, W)); s.add(frame, transform); s.result()``.

    ``transform`` is ``reference_from_frame`` (a matrix :class:`Transform`, or a 2x3 / 3x3
    matrix, e.g. ``FrameResult.matrix``). See the module docstring for the math.
    """

    def __init__(self, output_shape, *, combine: str = "mean", antialias: bool = True, clip=None,
                 options: StackOptions | None = None):
        self.output_shape = check_shape(output_shape)
        self.combine = check_choice(combine, COMBINES, "combine")
        if not isinstance(antialias, (bool, np.bool_)):
            raise InvalidArgumentError(f"antialias must be a bool, got {antialias!r}", field="antialias")
        self.antialias = bool(antialias)
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real)
                                 or not math.isfinite(float(clip)) or float(clip) <= 0):
            raise InvalidArgumentError(f"clip must be None or a positive number of sigmas, got {clip!r}", field="clip")
        self.clip = None if clip is None else float(clip)
        if options is not None and not isinstance(options, StackOptions):
            raise InvalidArgumentError(f"options must be a StackOptions, got {type(options).__name__}", field="options")
        self.options = (options or StackOptions()).checked()
        self._store = self.combine == "median" or self.clip is not None
        self._channels = None
        self._squeeze = False
        self._flux = None  # (H, W, C) float64 running sum
        self._coverage = np.zeros(self.output_shape)  # (H, W) float64
        self._stored: list[np.ndarray] = []  # (H, W, C+1) float32: full-pixel estimates + weight
        self.n_frames = 0

    def add(self, frame, transform) -> None:
        """Resample ``frame`` once onto the output grid and accumulate it."""
        img = check_image(frame, "frame")
        t = _as_transform(transform)
        if self._channels is None:
            self._channels, self._squeeze = img.shape[2], np.ndim(frame) == 2
            self._flux = np.zeros(self.output_shape + (self._channels,))
        elif img.shape[2] != self._channels:
            raise InvalidImageError(f"frame has {img.shape[2]} channels, earlier frames {self._channels}",
                                    field="frame")
        c = self._channels
        if self._store:
            need = (len(self._stored) + 1) * self.output_shape[0] * self.output_shape[1] * (c + 1) * 4
            if need > self.options.max_stored_bytes:
                raise ImageTooLargeError(
                    f"{self.combine if self.clip is None else 'sigma clipping'} keeps every warped frame: "
                    f"{need} bytes exceed max_stored_bytes={self.options.max_stored_bytes}", field="frames")
        src = np.empty(img.shape[:2] + (c + 1,), np.float64)
        src[:, :, :c] = img
        src[:, :, c] = 1.0
        missing = ~np.isfinite(src[:, :, :c]).all(axis=2)  # NaN / inf: a missing pixel, as in align
        if missing.any():  # it adds neither flux nor coverage (mean and sum spread NaN over the output)
            src[missing] = 0.0
        out = warp(src, t, self.output_shape, intensity="conserve", antialias=self.antialias)  # (H, W, C+1)
        flux, area = out[:, :, :c], out[:, :, c]
        det = jacobian_determinant(t, self.output_shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(det > 0, area / det, 0.0)
        weight = np.clip(np.nan_to_num(weight, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
        self._flux += flux
        self._coverage += weight
        if self._store:
            full = np.full(out.shape, np.nan, np.float32)
            keep = weight >= self.options.min_weight
            full[keep, :c] = flux[keep] / weight[keep, None]
            full[:, :, c] = weight
            self._stored.append(full)
        self.n_frames += 1

    def result(self) -> StackResult:
        """The combined image and the coverage map (the accumulator stays usable)."""
        if self.n_frames == 0:
            raise InvalidArgumentError("no frames were added", field="frames")
        cov = self._coverage.copy()
        rejected = None
        if not self._store:
            if self.combine == "sum":
                image = self._flux.copy()
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    image = np.where(cov[:, :, None] > 0, self._flux / cov[:, :, None], np.nan)
        else:
            image, rejected = self._from_stored(cov)
        if self._squeeze:
            image = image[:, :, 0]
        return StackResult(image=image, coverage=cov, combine=self.combine, n_frames=self.n_frames, rejected=rejected)

    def _from_stored(self, cov):
        """Median / clipped combination of the stored full-pixel estimates. Pixels covered only by
        samples below ``min_weight`` (frame edges) fall back to the plain mean ``S / C``."""
        c = self._channels
        with np.errstate(divide="ignore", invalid="ignore"):
            plain = np.where(cov[:, :, None] > 0, self._flux / cov[:, :, None], np.nan)
        cube = np.stack(self._stored)  # (N, H, W, C+1) float32
        values = cube[..., :c].astype(np.float64)  # (N, H, W, C), nan = not usable
        weights = np.broadcast_to(cube[..., c:].astype(np.float64), values.shape)
        rejected = None
        if self.clip is not None:
            values, rejected = _sigma_clip(values, self.clip, self.options.clip_iterations)
        usable = np.isfinite(values)
        if self.combine == "median":
            with np.errstate(invalid="ignore"), _quiet_nan():
                image = np.nanmedian(values, axis=0) if usable.any() else np.full(values.shape[1:], np.nan)
            return np.where(np.isfinite(image), image, plain), rejected
        w = np.where(usable, weights, 0.0)
        wsum = w.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(wsum > 0, (w * np.nan_to_num(values)).sum(axis=0) / wsum, plain)
        if self.combine == "mean":
            return mean, rejected
        return np.where(cov[:, :, None] > 0, np.nan_to_num(mean) * cov[:, :, None], 0.0), rejected


def stack(frames: Iterable[np.ndarray], transforms: Iterable, output_shape, *, combine: str = "mean",
          antialias: bool = True, clip=None, options: StackOptions | None = None) -> StackResult:
    """Resample every frame once onto the reference grid and combine them (see the module docstring).

    frames : iterable of ``(H, W)`` / ``(H, W, C)`` images (consumed one at a time).
    transforms : the same number of ``reference_from_frame`` transforms or matrices.
    output_shape : ``(H, W)`` of the reference grid.
    combine : ``"mean"``, ``"sum"`` or ``"median"``. antialias : integrate each output pixel's
    preimage (flux conserved locally and, for frames inside the output, exactly in total).
    clip : ``None`` or ``kappa`` for sigma clipping.
    """
    stacker = Stacker(output_shape, combine=combine, antialias=antialias, clip=clip, options=options)
    t_iter = iter(transforms)
    for i, frame in enumerate(frames):
        try:
            t = next(t_iter)
        except StopIteration:
            raise InvalidArgumentError(f"transforms has {i} entries but there are more frames", field="transforms") from None
        stacker.add(frame, t)
    if next(t_iter, None) is not None:
        raise InvalidArgumentError(f"transforms has more entries than the {stacker.n_frames} frames", field="transforms")
    return stacker.result()


def _sigma_clip(values: np.ndarray, kappa: float, iterations: int):
    """Reject, per pixel and channel, samples beyond ``kappa`` std from the median (repeated)."""
    values = values.copy()
    n_start = np.isfinite(values).sum(axis=0)
    for _ in range(iterations):
        ok = np.isfinite(values)
        count = ok.sum(axis=0)
        if not ok.any():
            break
        with np.errstate(invalid="ignore"), _quiet_nan():
            centre = np.nanmedian(values, axis=0)
            spread = np.nanstd(values, axis=0)
        out = ok & (np.abs(values - centre) > kappa * spread) & (count >= 3)
        if not out.any():
            break
        values[out] = np.nan
    rejected = (n_start - np.isfinite(values).sum(axis=0)).max(axis=-1)  # (H, W), most over channels
    return values, rejected


@contextlib.contextmanager
def _quiet_nan():
    """Silence numpy's 'All-NaN slice' / 'Degrees of freedom' warnings for pixels without usable
    samples (their result is nan by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _as_transform(transform) -> Transform:
    if isinstance(transform, Transform):
        return transform
    try:
        m = np.asarray(transform, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidTransformError(f"transform must be a Transform or a matrix, got {type(transform).__name__}",
                                    field="transforms") from None
    if m.shape == (2, 3) or (m.shape == (3, 3) and np.array_equal(m[2], [0.0, 0.0, 1.0])):
        return AffineTransform(m)
    if m.shape == (3, 3):
        return HomographyTransform(m)
    raise InvalidTransformError(f"transform must be 2x3 or 3x3, got shape {m.shape}", field="transforms")
