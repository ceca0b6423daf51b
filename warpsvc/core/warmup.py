"""Fill numba's on-disk cache with every compiled kernel (antialias, projective tier 1), for
every signature used.

    python -m warpsvc.core.warmup            # at install / image build (Dockerfile RUN line)

Run it as the user (or with the ``NUMBA_CACHE_DIR``) that will run the library: numba keeps the
cache next to the package (``__pycache__``) when that folder is writable, else in the user's
cache folder. Afterwards the first call of each kernel in a fresh process loads machine code
instead of compiling it (seconds -> tens of milliseconds; see ``benchmarks/bench_cold_start.py``).

It loads tier 1 of the antialias scatter (:func:`.antialias.compile_tier1`: the five compiled
kernels; every source is float64 there, so one signature each) and of the projective conserve
factor (:func:`._scale_kernels.compile_tier1`, all four dtypes), then runs real (small) warps
through every path (the antialias scatter's matrix and generic paths, uniform and mixed node
density, for each dtype), so that in the process that ran the warm-up (a server's) every
antialiased warp and every conserving homography uses tier 1 at once, and in later processes
the background upgrades only load them (the first calls run tier 0, numpy, meanwhile).
Antialiased calls of other threads made while it loads the kernels wait for it. The other
conserve scalings and the polar maps are numpy / OpenCV over strips: nothing to compile; the
warm-up still runs them (it checks every path once). Run it in its own
process (as the command above does), not in a server's parent process before it forks: the
OpenMP thread pool the parallel kernels start does not survive a fork.
"""

from __future__ import annotations

import argparse
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    seconds = warm(verbose=not args.quiet)
    if not args.quiet:
        print(f"warpsvc kernels compiled/cached in {seconds:.2f} s")


if __name__ == "__main__":
    main()
