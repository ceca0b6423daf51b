"""``compiled(...)``: numba's ``njit`` with an on-disk cache when one can be written.

numba raises at decoration time when neither the package folder nor a user cache folder is
writable (a read-only install run by a user without a home, as in some containers). Then the
kernels are compiled per process instead (about a second on first use); set
``NUMBA_CACHE_DIR`` to a writable folder to keep the cache.
"""

from __future__ import annotations

from numba import njit


def compiled(**options):
    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, **options)(fn)

    return wrap
