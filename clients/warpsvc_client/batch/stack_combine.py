"""The ``stack`` job's co-adding: the library's :class:`warpsvc.core.sequence.Stacker`, fed with
frames that were already resampled (the verified aligned frames of the manifest).

``Stacker.add(frame, T)`` resamples a frame and accumulates it; the batch job resamples each
frame once, writes it (``aligned/<name>.tif``, float32), and builds the stack from those files
afterwards -- in a fresh and in a resumed run alike, so both give the same bytes. Per frame ``k``
(``T_k = reference_from_frame``, ``y`` an output pixel)::

    flux_k(y) = warp(frame_k, T_k, shape, intensity="conserve", antialias=True)(y)   # the aligned frame
    area_k(y) = warp(ones,    T_k, shape, intensity="conserve", antialias=True)(y)
    w_k(y)    = clip(area_k(y) / |det J_{T_k^-1}(y)|, 0, 1)      # fraction of y the frame covers

exactly the quantities ``Stacker.add`` computes (its ones image is one more channel of the same
warp; here it is a warp of its own, so a resumed run can recompute ``w_k`` from the recorded
matrix without the frame). :meth:`ResampledStacker.add_resampled` then accumulates them as
``Stacker.add`` does, and ``result()`` combines (mean, sum, median, sigma clipping: the library's
code, see :mod:`warpsvc.core.sequence.stack`). ``tests/test_batch_stack.py`` checks the result
against ``warpsvc.stack`` on the same frames and transforms.
"""

from __future__ import annotations

import numpy as np

from warpsvc.core.errors import ImageTooLargeError, InvalidImageError
from warpsvc.core.sequence import Stacker, StackOptions


def coverage_weight(area: np.ndarray, det: np.ndarray) -> np.ndarray:
    """``w = clip(area / det, 0, 1)``, 0 where ``det`` is not positive or the ratio not finite."""
    area = np.asarray(area, np.float64)
    det = np.asarray(det, np.float64)
    if area.ndim == 3:
        area = area[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(det > 0, area / det, 0.0)
    return np.clip(np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)


class ResampledStacker(Stacker):
    """A :class:`Stacker` whose frames arrive already on the output grid (module docstring).

    Relies on ``Stacker``'s accumulator state (``_flux``, ``_coverage``, ``_stored``, ...); the
    equivalence test against ``warpsvc.stack`` guards it.
    """

    def add_resampled(self, flux: np.ndarray, weight: np.ndarray) -> None:
        """Accumulate one frame given its ``flux_k`` (``(H, W)`` / ``(H, W, C)``) and ``w_k`` (``(H, W)``)."""
        f = np.asarray(flux, np.float64)
        squeeze = f.ndim == 2
        if squeeze:
            f = f[:, :, None]
        if f.shape[:2] != self.output_shape or np.shape(weight) != self.output_shape:
            raise InvalidImageError(f"resampled frame is {f.shape[:2]}, the stack {self.output_shape}", field="frame")
        if self._channels is None:
            self._channels, self._squeeze = f.shape[2], squeeze
            self._flux = np.zeros(self.output_shape + (self._channels,))
        elif f.shape[2] != self._channels:
            raise InvalidImageError(f"frame has {f.shape[2]} channels, earlier frames {self._channels}",
                                    field="frame")
        c = self._channels
        if self._store:
            need = stored_bytes(len(self._stored) + 1, self.output_shape, c)
            if need > self.options.max_stored_bytes:
                raise ImageTooLargeError(
                    f"{self.combine if self.clip is None else 'sigma clipping'} keeps every warped frame: "
                    f"{need} bytes exceed max_stored_bytes={self.options.max_stored_bytes}", field="frames")
        w = np.asarray(weight, np.float64)
        self._flux += f
        self._coverage += w
        if self._store:
            full = np.full(self.output_shape + (c + 1,), np.nan, np.float32)
            keep = w >= self.options.min_weight
            full[keep, :c] = f[keep] / w[keep, None]
            full[:, :, c] = w
            self._stored.append(full)
        self.n_frames += 1


def stored_bytes(n_frames: int, shape, channels: int) -> int:
    """Memory ``median`` / sigma clipping hold: every frame as float32 ``H x W x (C + 1)``."""
    return n_frames * int(shape[0]) * int(shape[1]) * (channels + 1) * 4


DEFAULT_MAX_STORED = StackOptions().max_stored_bytes
