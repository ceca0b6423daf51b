"""Fill numba's on-disk cache with every compiled kernel (antialias, projective tier 1), for
every signature used.

    python -m warpsvc.core.warmup            # at install / image build (Dockerfile RUN line)
    python -m warpsvc.core.warmup --check    # in a later process: exit 1 if anything compiled

``--check`` tells whether the cache works where the library will run: it warms up as above,
then lists every kernel signature this process had to *compile* (numba's per-dispatcher
``stats.cache_misses``) instead of loading from the cache, and exits 1 if there is any. Run
after the warm-up, in a new process as the runtime user, it proves the replica's warm-up will
load, not compile (~0.3 s instead of ~17 s of CPU in the image, measured). The Dockerfile runs
it after the warm-up: an image whose cache does not work fails to build.

Run it as the user (or with the ``NUMBA_CACHE_DIR``) that will run the library: numba keeps the
cache next to the package (``__pycache__``) when that folder is writable, else in the user's
cache folder. Afterwards the first call of each kernel in a fresh process loads machine code
instead of compiling it (seconds -> tens of milliseconds; see ``benchmarks/bench_cold_start.py``).

It loads tier 1 of the antialias scatter (:func:`.antialias.compile_tier1`: the five compiled
kernels; every source is float64 there, so one signature each) and of the projective conserve
factor (:func:`._scale_kernels.compile_tier1`, all four dtypes) and the streaming stores of
large conserve results (:func:`._scale_kernels.compile_stream_tier1`: uint8, uint16, float32
sources; see :mod:`._stream_kernels`), then runs real (small) warps
through every path (the antialias scatter's matrix and generic paths, uniform and mixed node
density, for each dtype), so that in the process that ran the warm-up (a server's) every
antialiased warp and every conserving homography uses tier 1 at once, and in later processes
the background upgrades only load them (the first calls run tier 0, numpy, meanwhile).
Antialiased calls of other threads made while it loads the kernels wait for it. The other
conserve scalings of results under 8 MB and the polar maps are numpy / OpenCV over strips:
nothing to compile; the warm-up still runs them (it checks every path once). Run it in its own
process (as the command above does), not in a server's parent process before it forks: the
OpenMP thread pool the parallel kernels start does not survive a fork.

It also byte-compiles warpsvc's own packages (:func:`compile_bytecode`), as ``pip install``
of a wheel does: an editable install, or any environment with ``PYTHONDONTWRITEBYTECODE=1``,
otherwise compiles every module from source in every new process (~10 ms of a first
antialiased polar warp for the modules it imports lazily, more for ``import warpsvc``).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def _cases():
    from .transforms import AffineTransform, HomographyTransform, PolarTransform, compose

    aff = AffineTransform.from_components(scale=(0.8, 0.9), rotation=0.2, translation=(3, 2))
    hom = HomographyTransform(np.array([[0.9, 0.05, 2.0], [0.02, 1.1, 1.0], [1e-4, 2e-4, 1.0]]))
    pol = PolarTransform((20.0, 18.0), 16.0, (64, 24))
    return aff, hom, pol, compose(hom, pol)


def warm(verbose: bool = False) -> float:
    """Compile (or load) every kernel signature; returns the seconds it took."""
    from . import _scale_kernels, antialias, threads
    from .warp import warp

    t0 = time.perf_counter()
    previous = threads._chosen
    threads.set_threads(1, opencv=False)  # compiling does not depend on the count
    try:
        with antialias.warming_up():  # antialiased calls of other threads wait for these loads
            _scale_kernels.compile_tier1()
            _scale_kernels.compile_stream_tier1()
            antialias.compile_tier1()
        aff, hom, pol, comp = _cases()
        for dtype in DTYPES:
            img = (np.arange(40 * 36 * 3).reshape(40, 36, 3) % 200).astype(dtype)
            for t in (aff, hom, pol, comp):
                warp(img, t, intensity="conserve")
            warp(img, pol)
            warp(img, pol.inverse(), (40, 36))
            for t in (aff, hom, pol):
                warp(img, t, antialias=True)
            warp(img, aff, antialias=True, border="reflect")
            if verbose:
                print(f"warmed {np.dtype(dtype).name}: {time.perf_counter() - t0:.2f} s")
    finally:
        threads._chosen = previous
    return time.perf_counter() - t0


def kernel_cache_use() -> tuple[list[str], list[str]]:
    """``(loaded, compiled)``: the kernel signatures this process loaded from numba's on-disk
    cache and those it compiled (cache empty, stale or not writable), as ``module.kernel(sig)``
    strings, over the compiled kernels of :mod:`._splat_kernels` and :mod:`._scale_kernels`
    that exist in this process (none if numba was never imported)."""
    loaded, compiled = [], []
    for name in ("warpsvc.core._splat_kernels", "warpsvc.core._scale_kernels", "warpsvc.core._stream_kernels"):
        module = sys.modules.get(name)
        for attr, value in sorted(vars(module).items()) if module is not None else ():
            dispatcher = getattr(value, "_dispatcher", value)  # a LazyKernel holds its dispatcher
            stats = getattr(dispatcher, "stats", None)
            if stats is None or not hasattr(stats, "cache_misses"):
                continue
            label = f"{name.rsplit('.', 1)[1]}.{attr}"
            loaded += [f"{label}{tuple(str(t) for t in sig)}" for sig in stats.cache_hits]
            compiled += [f"{label}{tuple(str(t) for t in sig)}" for sig in stats.cache_misses]
    return loaded, compiled


PACKAGES = ("warpsvc", "warpsvc_api", "warpsvc_client")


def compile_bytecode() -> list[str]:
    """Write the ``.pyc`` files of :data:`PACKAGES` where they are missing or stale (what
    ``pip install`` does for a wheel; an editable install leaves it to the first import, which
    ``PYTHONDONTWRITEBYTECODE`` turns off). Folders that cannot be written are skipped: the
    bytecode is a start-up speed-up, nothing more. Returns the package folders compiled."""
    import compileall
    import importlib.util
    import os

    done = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        for folder in (spec.submodule_search_locations or []) if spec is not None else []:
            if os.access(folder, os.W_OK) and compileall.compile_dir(folder, quiet=2):
                done.append(folder)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if a kernel had to be compiled instead of loaded from the cache")
    args = ap.parse_args(argv)
    compiled_packages = compile_bytecode()
    if not args.quiet and not args.check:
        print(f"warpsvc bytecode up to date in {len(compiled_packages)} package folder(s)")
    seconds = warm(verbose=not args.quiet and not args.check)
    if not args.check:
        if not args.quiet:
            print(f"warpsvc kernels compiled/cached in {seconds:.2f} s")
        return 0
    loaded, compiled = kernel_cache_use()
    if compiled:
        print(f"warpsvc warm-up: {len(compiled)} kernel signature(s) compiled, not loaded from numba's "
              f"cache ({len(loaded)} loaded, {seconds:.2f} s); is NUMBA_CACHE_DIR writable and was "
              "`python -m warpsvc.core.warmup` run as this user?", file=sys.stderr)
        for label in compiled:
            print(f"  compiled: {label}", file=sys.stderr)
        return 1
    if not loaded:
        print("warpsvc warm-up: no compiled kernel was loaded (numba unavailable?)", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"warpsvc warm-up: all {len(loaded)} kernel signatures loaded from numba's cache in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
