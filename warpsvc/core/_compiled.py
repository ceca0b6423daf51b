"""``compiled(...)``: numba's ``njit`` with an on-disk cache when one can be written, the GIL
released, and an explicit fast-math flag set. Used by the antialias kernels
(:mod:`._splat_kernels`); the conserve scalings and polar maps (:mod:`._scale_kernels`) are
numpy / OpenCV over strips and never import numba.

* **Cache.** numba raises at decoration time when neither the package folder nor a user cache
  folder is writable (a read-only install run by a user without a home, as in some
  containers). Then the kernels are compiled per process instead (about a second on first
  use); set ``NUMBA_CACHE_DIR`` to a writable folder to keep the cache, and run
  ``python -m warpsvc.core.warmup`` once (at install / image build) to fill it.
* **GIL.** Every kernel is ``nogil=True``: a long call never stalls the caller's other threads.
* **Fast math without** ``nnan`` / ``ninf``: :data:`FASTMATH` lets LLVM reassociate, contract
  to FMA, use reciprocals and fast library functions and ignore the sign of zero, but not
  assume values are finite: the kernels' ``isfinite`` / ``x < inf`` / NaN guards stay code.
* **Threads.** Parallel kernels use numba's thread-safe layer (``tbb`` or ``omp``; the
  ``workqueue`` fallback aborts when two Python threads launch kernels at once) unless
  ``NUMBA_THREADING_LAYER`` says otherwise; the count comes from :mod:`.threads`. Idle OpenMP
  threads sleep (``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning ones slowed the OpenCV warp
  that follows a kernel by 1.5-2x on two cores.
* **Lazy.** :func:`lazy_compiled` defers importing numba and compiling to the first call
  (kernels called from Python only), so importing the library does not import numba. Such
  modules write ``prange = range`` at module level; the real ``numba.prange`` is put in place
  when the kernel compiles. Parallel lazy kernels apply the thread setting on every call.
"""

from __future__ import annotations

import os

from .threads import kernel_threads

# Every flag of LLVM's fast-math set except nnan and ninf (no NaN / no infinity assumptions).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_DEFAULTS = {"nogil": True}


def _njit(fn, options):
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "threadsafe"
    # Idle OpenMP threads sleep instead of spinning (read when libgomp loads, at the first
    # parallel launch): spinning threads would take the cores from OpenCV's own pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    opts = _DEFAULTS | options
    if "prange" in fn.__code__.co_names:  # modules written for lazy numba name ``prange = range``
        fn.__globals__["prange"] = numba.prange
    try:
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(cache=False, **opts)(fn)


def compiled(**options):
    """Decorator: ``njit(cache=True, nogil=True, **options)`` now (needed by kernels that call
    each other: numba resolves callees when the caller compiles)."""

    def wrap(fn):
        return _njit(fn, options)

    return wrap


class LazyKernel:
    """A kernel compiled (and numba imported) on first call; ``dispatcher()`` forces it."""

    def __init__(self, fn, options):
        self.py_func = fn
        self._options = options
        self._dispatcher = None
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def dispatcher(self):
        if self._dispatcher is None:
            self._dispatcher = _njit(self.py_func, self._options)
        return self._dispatcher

    def __call__(self, *args):
        if self._options.get("parallel"):
            kernel_threads(max(getattr(a, "size", 0) for a in args))  # the largest array: the work
        return (self._dispatcher or self.dispatcher())(*args)


def lazy_compiled(**options):
    """Like :func:`compiled`, but numba is imported and the kernel compiled on first call."""

    def wrap(fn):
        return LazyKernel(fn, options)

    return wrap
