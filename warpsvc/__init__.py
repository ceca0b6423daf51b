"""warpsvc: image warps with analytic Jacobians and intensity-preserving resampling.

``import warpsvc`` gives the in-process library; the gRPC server exposes the same features.
Every public name is loaded on first use (PEP 562, see :mod:`warpsvc.core`): the transforms and
errors need numpy only, ``warp`` / ``align`` bring OpenCV and numba.
"""

from __future__ import annotations

from . import core as _core

__all__ = _core.__all__
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _core.__all__:
        value = getattr(_core, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
