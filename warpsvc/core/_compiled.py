"""``compiled(...)``: numba's ``njit`` with an on-disk cache when one can be written and the GIL
released. Used by tier 1 of the antialias scatter (:mod:`._splat_kernels`) and of the
projective conserve factor (:mod:`._scale_kernels`), both compiled without fast-math so that
they stay bit-identical to their numpy tier 0 (:mod:`._splat_numpy`, :mod:`._scale_kernels`);
the other conserve scalings and the polar maps are numpy / OpenCV over strips and never import
numba.

* **Cache.** numba raises at decoration time when neither the package folder nor a user cache
  folder is writable (a read-only install run by a user without a home, as in some
  containers). Then the kernels are compiled per process instead (about a second on first
  use); set ``NUMBA_CACHE_DIR`` to a writable folder to keep the cache, and run
  ``python -m warpsvc.core.warmup`` once (at install / image build) to fill it.
* **GIL.** Every kernel is ``nogil=True``: a long call never stalls the caller's other threads.
* **Fast math**: :data:`FASTMATH` (every flag but ``nnan`` / ``ninf``: the ``isfinite`` /
  ``x < inf`` / NaN guards would stay code) is kept for kernels that may use it; none does
  now: FMA contraction, reassociation and approximate reciprocals / functions would change
  the last bits against tier 0 (measured on the antialias scatter: no speed difference).
* **Threads.** Parallel kernels use numba's thread-safe layer (``tbb`` or ``omp``; the
  ``workqueue`` fallback aborts when two Python threads launch kernels at once) unless
  ``NUMBA_THREADING_LAYER`` says otherwise; the count comes from :mod:`.threads`. Idle OpenMP
  threads sleep (``OMP_WAIT_POLICY=PASSIVE`` unless set): spinning ones slowed the OpenCV warp
  that follows a kernel by 1.5-2x on two cores.
* **Lazy.** :func:`lazy_compiled` defers importing numba and compiling to the first call
  (kernels called from Python only), so importing the library does not import numba. Such
  modules write ``prange = range`` at module level; the real ``numba.prange`` is put in place
  when the kernel compiles. Parallel lazy kernels apply the thread setting on every call.
* **Tiers.** :class:`BackgroundUpgrade` lets a numpy path (tier 0, no numba) hand over to a
  compiled kernel (tier 1) once that kernel is ready, compiling it in a daemon thread after
  the numpy path has been used a few times (see :mod:`._scale_kernels` and :mod:`.antialias`
  for the policies; ``load=`` lets one upgrade load several kernels, one key each).
  ``WARPSVC_KERNEL_UPGRADE=0`` (or :func:`set_kernel_upgrade` ``(False)``) turns the
  background compile off: tier 1 is then used only once something else compiled it (the
  warm-up, a server's warm-up).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

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
        self._lock = threading.Lock()
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def dispatcher(self):
        if self._dispatcher is None:
            with self._lock:  # one dispatcher even when two threads ask at once
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


UPGRADE_ENV_VAR = "WARPSVC_KERNEL_UPGRADE"
# Seconds a fork waits for a running background upgrade to finish (BackgroundUpgrade._before_fork):
# loading from numba's cache takes ~0.5-1 s, compiling with an empty cache several seconds.
FORK_WAIT = 60.0
_upgrade_setting: bool | None = None
_log = logging.getLogger(__name__)


def set_kernel_upgrade(enabled: bool | None) -> None:
    """Allow (``True``) or forbid (``False``) background compiles of tier-1 kernels in this
    process; ``None``: back to the ``WARPSVC_KERNEL_UPGRADE`` environment variable (default on)."""
    global _upgrade_setting
    _upgrade_setting = None if enabled is None else bool(enabled)


def kernel_upgrade_enabled() -> bool:
    """Whether background upgrades may start: :func:`set_kernel_upgrade`, else the environment
    variable (``0`` / ``false`` / ``no`` / ``off`` turn it off)."""
    if _upgrade_setting is not None:
        return _upgrade_setting
    return os.environ.get(UPGRADE_ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


class BackgroundUpgrade:
    """Which signatures (``key`` = a tuple of dtypes) of a lazy tier-1 kernel are compiled, and
    a daemon thread that compiles the missing ones.

    ``ready(key)`` is a set lookup (no numba import). ``tier0_used(key)`` counts the calls that
    took tier 0; the upgrade starts at the ``after_calls``-th of them, or at the first when
    numba is already imported (then only the kernel's compile or cache load is left to pay).
    ``examples(key)`` gives small arguments of exactly the signature the caller will use;
    calling the dispatcher on them compiles (or loads from numba's cache) that signature. One
    thread at a time works through every key asked for so far; an error is logged once and
    the key is dropped (tier 0 stays)."""

    def __init__(self, kernel: LazyKernel | None, examples, after_calls: int = 3, load=None, name: str | None = None):
        self.kernel = kernel
        self.examples = examples
        self.after_calls = after_calls
        self._load = load  # load(key): compile / load that key itself (several kernels: the antialias scatter)
        self.name = name or kernel.__name__
        self.calls = 0
        self._ready: set = set()
        self._wanted: list = []
        self._failed: set = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._forked_mid_upgrade = False
        if hasattr(os, "register_at_fork"):  # a forked child has no upgrade thread: let it start its own
            os.register_at_fork(before=self._before_fork, after_in_child=self._after_fork)

    def _before_fork(self) -> None:
        """Let a running upgrade finish (up to :data:`FORK_WAIT` seconds) before the process
        forks: forked in the middle of numba's import or compile, the child would inherit the
        import and compiler locks held by a thread it does not have, and hang (or find a
        half-imported kernel module) at its own first compile."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(FORK_WAIT)

    def _after_fork(self) -> None:
        thread = self._thread
        self._forked_mid_upgrade = thread is not None and thread.is_alive()
        self._lock = threading.Lock()
        self._thread = None

    def ready(self, key) -> bool:
        return key in self._ready

    def failed(self, key) -> bool:
        """Whether compiling ``key`` failed in this process (tier 0 stays for it)."""
        return key in self._failed

    def running(self) -> bool:
        """Whether the upgrade thread is working."""
        return self._thread is not None

    def compile_now(self, key) -> None:
        """Compile (or load) the signature ``key`` in the calling thread and mark it ready."""
        if self._load is not None:
            self._load(key)
        else:
            self.kernel.dispatcher()(*self.examples(key))
        self._ready.add(key)

    def mark_failed(self, key) -> None:
        self._failed.add(key)

    def tier0_used(self, key, *more) -> None:
        """A call took tier 0 for ``key`` (and ``more`` keys, wanted in that order after it)."""
        self.calls += 1
        keys = [k for k in (key, *more) if k not in self._failed and k not in self._ready]
        if not keys or not kernel_upgrade_enabled() or self._forked_mid_upgrade:
            return  # (forked while the parent's upgrade still ran after FORK_WAIT: its locks may be held)
        if self.calls < self.after_calls and "numba" not in sys.modules:
            return
        with self._lock:
            self._wanted.extend(k for k in keys if k not in self._wanted)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="warpsvc-kernel-upgrade", daemon=True)
                self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for a running upgrade (tests, benchmarks)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._lock:
                todo = [k for k in self._wanted if k not in self._ready and k not in self._failed]
                if not todo:
                    self._thread = None
                    return
            try:
                self.compile_now(todo[0])
            except Exception:  # noqa: BLE001 - tier 0 keeps working; say why once
                _log.warning("warpsvc: compiling %s%s failed; staying on the numpy path",
                             self.name, todo[0], exc_info=True)
                self._failed.add(todo[0])
