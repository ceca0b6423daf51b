"""Per-pixel loops of ``intensity="conserve"`` (determinant scaling) and of the separable polar
maps, as numpy calls over horizontal strips on the thread pool of :mod:`.strips`, plus one
compiled tier for the projective factor.

Nothing here is compiled on the first call (it costs what any numpy call does, not a JIT and
its cache load), numpy releases the GIL inside each call's loop, and the strips run in
parallel, as many as the thread setting (:mod:`.threads`) allows. Each strip works through
chunks of about :data:`CHUNK_VALUES` values so its temporaries stay in the core's cache; every
output value is a function of its own pixel only, so neither the strips nor the chunks change
a value: the results do not depend on the thread count.

Scaling ``out = sampled * |det J_{T^{-1}}(y)|`` comes in the shapes the determinant takes:

* affine ``S``: a constant ``|det M_2x2|`` (:func:`scale_by_constant`);
* projective ``S`` with matrix ``M``: ``|det M| / |w|^3``, ``w = M20 x + M21 y + M22``
  (:func:`scale_by_projective_det`);
* polar ``S``: a function of the column only (:func:`scale_by_columns`);
* anything else: a full ``(H, W)`` map (:func:`scale_by_map`).

Arrays are ``(H, W, C)`` and C-contiguous; ``out`` is float32 or float64. Each chunk is first
converted into ``out`` (``out = out.dtype(src)``, exact for uint8 / uint16 / float32 values),
then multiplied in place by the factor in ``out``'s dtype: the numpy formulation
``out = src.astype(out.dtype); out *= factor``, bit for bit.

Projective tiers. In numpy the factor ``|det M| / |w|^3`` costs ~8 passes over float64
temporaries (1080p RGB at one thread: 14-25 ms, against 3.5-5.6 ms for one compiled loop), so
:func:`scale_by_projective_det` has two tiers with bit-identical results (the same IEEE
operations in the same order; tier 1 is compiled without fast-math):

* tier 0: :func:`_projective_numpy`, numpy over strips; no numba import, fast first call;
* tier 1: :func:`_projective_rows`, a numba ``prange`` row loop (GIL released, parallel lazy
  kernel of :mod:`._compiled`), used for a signature ``(src dtype, out dtype)`` once that
  signature is compiled.

Switching (:data:`PROJECTIVE_UPGRADE`, a :class:`._compiled.BackgroundUpgrade`): a call uses
tier 1 when its signature is ready (the warm-up :mod:`.warmup` compiles all four, or an
earlier upgrade did), else tier 0. At the 3rd tier-0 call in a process (a 1080p warp is 2
calls: one per scaling band), or at the first one if numba is already imported (antialias
or a warm-up loaded it), a daemon thread compiles the missing signatures, one at a time,
and the calls after it finishes use tier 1. Cost: once per process, ~0.5-1 s of CPU in that
thread when numba's on-disk cache holds the kernel (the numba import and cache load, part
of it holding the GIL, so the calling threads slow down meanwhile), several seconds when it
must compile. Errors are logged and ignored (tier 0 stays). ``WARPSVC_KERNEL_UPGRADE=0`` or
``_compiled.set_kernel_upgrade(False)`` turns the background compile off (tier 1 then only
after the warm-up).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from ._compiled import BackgroundUpgrade, lazy_compiled
from .strips import run_strips

prange = range  # numba.prange once tier 1 compiles (see ._compiled.lazy_compiled)

CHUNK_VALUES = 1 << 18  # values per chunk of a simple strip: ~0.2 ms of work per numpy call
CHAIN_CHUNK_VALUES = 1 << 15  # per chunk of a chain of float64 passes: its temporaries stay in L2
ROWS_PER_TASK = 8  # rows per parallel task of tier 1 (its row buffers are reused within a task)


def _chunks(r0: int, r1: int, row_values: int, values: int = CHUNK_VALUES):
    """``(a, b)`` row ranges of ``[r0, r1)`` of about ``values`` values each."""
    step = max(1, values // max(1, row_values))
    for a in range(r0, r1, step):
        yield a, min(r1, a + step)


def _rows(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of ``(H, W, C)`` as a ``(rows, W C)`` view (C-contiguous input)."""
    return a[r0:r1].reshape(r1 - r0, -1)


def _times_pixel_factor(out3: np.ndarray, factor: np.ndarray) -> None:
    """``out3[y, x, c] *= factor[y, x]`` in place (``(h, w, C)`` times ``(h, w)``): the factor is
    first repeated over the channels, so the product runs along contiguous rows."""
    c = out3.shape[2]
    if c == 1:
        np.multiply(out3[:, :, 0], factor, out=out3[:, :, 0])
        return
    flat = out3.reshape(out3.shape[0], -1)
    spread = cv2.merge([factor] * c) if c <= 4 else np.repeat(factor, c, axis=1)  # merge: ~4x faster
    np.multiply(flat, spread.reshape(flat.shape), out=flat)


def scale_by_constant(src, factor, out, stream: bool = False) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor`` (``factor`` in ``out``'s dtype).
    ``stream``: the whole result is large (:data:`STREAM_MIN_BYTES`): write it with streaming
    stores once that tier is compiled (:func:`stream_kernels`)."""
    h, w, c = src.shape
    sk = stream_kernels(src, out, stream)
    if sk is not None and isinstance(factor, np.float32):  # (a float64 factor: numpy multiplies in float64)
        fac = np.full(w * c, factor, np.float32)
        run_strips(lambda r0, r1: sk.rows_times_row(_rows(src, r0, r1), fac, _rows(out, r0, r1)), h, src.size)
        return
    depth = cv2.CV_32F if out.dtype == np.float32 else cv2.CV_64F

    def strip(r0, r1):
        s, o = _rows(src, r0, r1), _rows(out, r0, r1)
        if src.dtype.kind == "f":  # same dtype as out: one fused numpy pass (inf / NaN kept)
            np.multiply(s, factor, out=o)
        else:  # integers (always finite): OpenCV's fused convert-and-scale, x * f rounded once
            cv2.addWeighted(s, float(factor), s, 0.0, 0.0, dst=o, dtype=depth)

    run_strips(strip, h, src.size)


def scale_by_columns(src, flat_factor, out, stream: bool = False) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * flat_factor[x C + c]``: a factor per column,
    repeated for each channel by the caller (factor in ``out``'s dtype). ``stream``: as
    :func:`scale_by_constant`."""
    h, w, c = src.shape
    sk = stream_kernels(src, out, stream)
    if (sk is not None and flat_factor.dtype == np.float32 and flat_factor.shape == (w * c,)
            and flat_factor.flags.c_contiguous and flat_factor.flags.writeable and flat_factor.flags.aligned):
        run_strips(lambda r0, r1: sk.rows_times_row(_rows(src, r0, r1), flat_factor, _rows(out, r0, r1)), h,
                   src.size)
        return

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w * c):
            o = _rows(out, a, b)
            np.copyto(o, _rows(src, a, b))
            np.multiply(o, flat_factor, out=o)

    run_strips(strip, h, src.size)


def scale_by_map(src, factor, out) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * factor[y, x]`` (factor in ``out``'s dtype)."""
    h, w, c = src.shape

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w * c):
            np.copyto(out[a:b], src[a:b])
            _times_pixel_factor(out[a:b], factor[a:b])

    run_strips(strip, h, src.size)


def projective_factor_rows(m, det_m, y0: int, y1: int, ax: np.ndarray) -> np.ndarray:
    """Tier 0's factor ``(y1 - y0, W)`` in float64 for output rows ``y0:y1`` (``ax = M20 x``):
    ``w = M20 x + (M21 y + M22)``, ``ww = |w|``, ``f = det_m / ((ww ww) ww)``, 0 where not finite
    (``w = 0`` gives ``det_m / 0`` = inf or NaN, so 0 too). The same IEEE operations in the same
    order as tier 1's loop."""
    base = m[2, 1] * np.arange(y0, y1, dtype=np.float64) + m[2, 2]
    ww = np.abs(np.add(ax, base[:, None]))
    f = np.multiply(ww, ww)
    np.multiply(f, ww, out=f)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.divide(det_m, f, out=f)
    if not f.max() < np.inf:  # some inf or NaN (NaN fails every comparison)
        f[~np.isfinite(f)] = 0.0
    return f


def _projective_numpy(src, m, det_m, row0, out) -> None:
    """Tier 0 of :func:`scale_by_projective_det`: numpy over strips and chunks."""
    h, w, c = src.shape
    ax = m[2, 0] * np.arange(w, dtype=np.float64)

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w, CHAIN_CHUNK_VALUES):
            f = projective_factor_rows(m, det_m, a + row0, b + row0, ax)
            with np.errstate(over="ignore", invalid="ignore"):  # inf / NaN pixels: IEEE results, as tier 1
                fr = f if out.dtype == np.float64 else f.astype(out.dtype)
                np.copyto(out[a:b], src[a:b])
                _times_pixel_factor(out[a:b], fr)
                if not fr.max() < np.inf:  # a finite factor beyond float32: the product in float64
                    huge = np.isinf(fr)
                    out[a:b][huge] = src[a:b][huge] * f[huge][:, None]

    run_strips(strip, h, src.size)


@lazy_compiled(parallel=True, error_model="numpy")  # no fast-math: plain IEEE, bit-identical to tier 0
def _projective_rows(src, m, det_m, row0, out):
    """Tier 1 of :func:`scale_by_projective_det`: one fused pass per row, blocks of
    :data:`ROWS_PER_TASK` rows in parallel (``prange``; each block reuses its two row buffers).
    Per row: the float64 factor ``f`` (tier 0's operations, in its order) and its rounding to
    ``out``'s dtype ``fr``, then per pixel and channel ``out = out.dtype(src)``, ``out *= fr``
    (1 and 3 channels written out, so LLVM vectorises them); where ``fr`` is inf (float32
    output, a finite factor beyond its range) the product in float64, rounded once.
    ``error_model="numpy"``: a division by 0 is IEEE (inf / NaN, then guarded), not a
    ``ZeroDivisionError`` check."""
    h, w, c = src.shape
    flat_src = src.reshape(h, w * c)
    flat_out = out.reshape(h, w * c)
    for block in prange((h + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        f = np.empty(w)
        fr = np.empty_like(flat_out[0, :w])
        for i in range(block * ROWS_PER_TASK, min(h, (block + 1) * ROWS_PER_TASK)):
            base = m[2, 1] * np.float64(i + row0) + m[2, 2]
            huge = False
            for j in range(w):
                ww = abs(m[2, 0] * np.float64(j) + base)
                fj = det_m / (ww * ww * ww)
                fj = fj if math.isfinite(fj) else 0.0
                f[j] = fj
                fr[j] = fj  # rounded to out's dtype
                huge |= fr[j] == np.inf
            row_src, row_out = flat_src[i], flat_out[i]
            if c == 3:
                for j in range(w):
                    v = fr[j]
                    row_out[3 * j] = row_src[3 * j]
                    row_out[3 * j] *= v
                    row_out[3 * j + 1] = row_src[3 * j + 1]
                    row_out[3 * j + 1] *= v
                    row_out[3 * j + 2] = row_src[3 * j + 2]
                    row_out[3 * j + 2] *= v
            elif c == 1:
                for j in range(w):
                    row_out[j] = row_src[j]
                    row_out[j] *= fr[j]
            else:
                for j in range(w):
                    v = fr[j]
                    for ch in range(c):
                        row_out[j * c + ch] = row_src[j * c + ch]
                        row_out[j * c + ch] *= v
            if huge:
                for j in range(w):
                    if fr[j] == np.inf:
                        for ch in range(c):
                            row_out[j * c + ch] = row_src[j * c + ch] * f[j]


def _tier1_examples(key):
    """Small arguments of the signature ``key = (src dtype, out dtype)`` as the callers pass
    them (C-contiguous writable 3-D arrays, a float64 matrix, a float, an int)."""
    src_dtype, out_dtype = key
    src = np.ones((2, 3, 3), src_dtype)
    m = np.array([[1.0, 0, 0], [0, 1, 0], [1e-3, 0, 1]])
    return src, m, 1.0, 0, np.empty(src.shape, out_dtype)


PROJECTIVE_UPGRADE = BackgroundUpgrade(_projective_rows, _tier1_examples, after_calls=3)
TIER1_KEYS = tuple((np.dtype(d), np.dtype(np.float64 if d == np.float64 else np.float32))
                   for d in (np.uint8, np.uint16, np.float32, np.float64))


def compile_tier1(keys=TIER1_KEYS) -> None:
    """Compile (or load) tier 1 of :func:`scale_by_projective_det` for ``keys`` now, in this
    thread (the warm-up calls it); later calls of those signatures use it."""
    for key in keys:
        PROJECTIVE_UPGRADE.compile_now(key)


def projective_tier(src, m, out) -> int:
    """The tier :func:`scale_by_projective_det` would use now for these arrays (0 or 1)."""
    key = (src.dtype, out.dtype)
    if (PROJECTIVE_UPGRADE.ready(key) and src.flags.c_contiguous and out.flags.c_contiguous
            and src.flags.writeable and out.flags.writeable and np.shape(m) == (3, 3)):
        return 1  # exactly the signature compiled: C-contiguous writable arrays (M is copied)
    return 0


# -- the streaming tier (._stream_kernels) ---------------------------------------------------
# Results at least this large are written with streaming stores once that tier is compiled:
# a 1080p RGB float32 result (25 MB) written through the cache evicted the source and the
# sampled image (32 MB last-level cache here), slowing the next warp (see ._stream_kernels).
# Below it the result may still be in cache when the caller reads it, so plain stores stay.
STREAM_MIN_BYTES = 8 << 20
STREAM_KEYS = tuple(np.dtype(d) for d in (np.uint8, np.uint16, np.float32))  # source dtypes; out float32


def _load_stream(key) -> None:
    """Compile (or load from numba's cache) the streaming kernels for source dtype ``key``."""
    from . import _stream_kernels as sk

    src, out = np.zeros((2, 40), key), np.empty((2, 40), np.float32)
    sk.rows_times_row(src, np.ones(40, np.float32), out)
    sk.rows_projective(src, 1, np.eye(3), 1.0, 0, out)


STREAM_UPGRADE = BackgroundUpgrade(None, None, after_calls=3, load=_load_stream, name="streaming scaling")


def compile_stream_tier1(keys=STREAM_KEYS) -> None:
    """Compile (or load) the streaming tier for ``keys`` now, in this thread (the warm-up)."""
    for key in keys:
        STREAM_UPGRADE.compile_now(key)


def stream_kernels(src, out, stream: bool):
    """:mod:`._stream_kernels` when this call may write with streaming stores: ``stream`` asked
    (a large result), float32 ``out``, a :data:`STREAM_KEYS` source, both C-contiguous,
    writable (the compiled signatures) and aligned, and the tier loaded for the source dtype; else
    ``None``. (The warp counts its large calls towards the background upgrade once per call,
    :func:`large_result`, not once per band.)"""
    if not stream or out.dtype != np.float32 or src.dtype not in STREAM_KEYS or src.shape != out.shape:
        return None  # (the kernels index both arrays with one count: the shapes must agree)
    flags = (src.flags.c_contiguous, out.flags.c_contiguous, src.flags.writeable, out.flags.writeable,
             src.flags.aligned, out.flags.aligned)  # aligned: the 64-byte vector stores need 4-byte floats
    if not all(flags):
        return None
    if not STREAM_UPGRADE.ready(src.dtype):
        return None
    from . import _stream_kernels as sk

    return sk


def large_result(src_dtype, out) -> bool:
    """Whether a warp's result ``out`` is large enough for the streaming tier
    (:data:`STREAM_MIN_BYTES`), to pass on as the scalings' ``stream``. A large float32 result
    of a :data:`STREAM_KEYS` source while the tier is not loaded counts, once per warp, towards
    :data:`STREAM_UPGRADE` (the third such warp starts it, or the first when numba is already
    imported). Small results never count: numba is not imported for them."""
    if out.nbytes < STREAM_MIN_BYTES:
        return False
    key = np.dtype(src_dtype)
    if out.dtype == np.float32 and key in STREAM_KEYS and not STREAM_UPGRADE.ready(key):
        STREAM_UPGRADE.tier0_used(key)
    return True


def scale_by_projective_det(src, m, det_m, row0, out, stream: bool = False) -> None:
    """``out[y, x, c] = out.dtype(src[y, x, c]) * out.dtype(f(x, row0 + y))``, with the factor
    ``f = |det M| / |w|^3``, ``w = M20 x + M21 y + M22``, computed in float64 and 0 where ``w = 0``
    or ``f`` is not finite; ``row0``: output row of ``src[0]`` (bands). For float32 output the
    factor is rounded to float32 before the product (<= 1 ulp from rounding the float64 product
    once), except where that rounding overflows: there the product is formed in float64 and
    rounded once (0 counts stay 0, never NaN). Non-finite ``det_m``: 0 everywhere.

    Two tiers, bit-identical (same IEEE operations in the same order, no fast-math): tier 1
    (a compiled parallel row loop; 1080p RGB at one thread ~5 ms CPU against ~20 ms) once its
    signature is compiled, else tier 0
    (numpy over strips, no numba import); see the module docstring for when tier 1 appears.
    ``stream``: as :func:`scale_by_constant` (the streaming tier is bit-identical too)."""
    if not np.isfinite(det_m):
        out[...] = 0
        return
    sk = stream_kernels(src, out, stream)
    if sk is not None and np.shape(m) == (3, 3):
        mc, c = np.array(m, dtype=np.float64, order="C"), src.shape[2]
        run_strips(lambda r0, r1: sk.rows_projective(_rows(src, r0, r1), c, mc, float(det_m), int(row0) + r0,
                                                     _rows(out, r0, r1)), src.shape[0], src.size)
        return
    if projective_tier(src, m, out) == 1:
        # a fresh writable float64 copy of M: a read-only one (a transform's matrix) would be
        # another numba signature, compiled in the calling thread
        _projective_rows(src, np.array(m, dtype=np.float64, order="C"), float(det_m), int(row0), out)
        return
    _projective_numpy(src, m, det_m, row0, out)
    PROJECTIVE_UPGRADE.tier0_used((src.dtype, out.dtype))


def outer_maps(row_cos, row_sin, radius, cx, cy, mx, my) -> None:
    """``mx[i, j] = mx.dtype(radius[j] * row_cos[i] + cx)`` (and ``my`` with ``row_sin``, ``cy``):
    the polar -> Cartesian sampling maps, computed in double and rounded once, as OpenCV does."""
    h, w = mx.shape

    def strip(r0, r1):
        for a, b in _chunks(r0, r1, w, CHAIN_CHUNK_VALUES):
            for m_out, trig, centre in ((mx, row_cos, cx), (my, row_sin, cy)):
                prod = np.multiply.outer(trig[a:b], radius)
                np.add(prod, centre, out=m_out[a:b], casting="same_kind")

    run_strips(strip, h, 2 * mx.size)
