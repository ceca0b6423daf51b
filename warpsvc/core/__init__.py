"""The domain core: transforms, Jacobians, resampling, alignment. numpy + OpenCV + numba, no transport.

Names load lazily (PEP 562): ``import warpsvc.core.transforms`` or ``warpsvc.core.errors`` pulls
numpy only; OpenCV and numba arrive with the first resampling or alignment name used
(``warp``, ``jacobian_determinant``, ``align``, ...). The client and ``warpsvc_api`` rely on it.
"""

from __future__ import annotations

import importlib
import sys
import types

# public name -> submodule of warpsvc.core defining it
_EXPORTS = {
    "AlignOptions": "align", "AlignResult": "align", "align": "align",
    "ImageTooLargeError": "errors", "InvalidArgumentError": "errors", "InvalidImageError": "errors",
    "InvalidTransformError": "errors", "ResourceExhaustedError": "errors", "DeadlineExceededError": "errors",
    "CancelledError": "errors", "WarpsvcError": "errors",
    "MODELS": "transforms", "AffineTransform": "transforms", "ComposedTransform": "transforms",
    "HomographyTransform": "transforms", "MotionModel": "transforms", "PolarTransform": "transforms",
    "Transform": "transforms", "compose": "transforms",
    "jacobian_determinant": "warp", "warp": "warp", "antialias_cost": "warp",
    "WarpLimits": "budget",
    "available_cpus": "threads", "get_threads": "threads", "set_threads": "threads",
    "FrameResult": "sequence", "SequenceAligner": "sequence", "SequenceOptions": "sequence",
    "StackOptions": "sequence", "StackResult": "sequence", "Stacker": "sequence",
    "align_sequence": "sequence", "stack": "sequence",
}

__all__ = sorted(_EXPORTS)
# What the resampling and alignment import beyond numpy (the `compute` extra).
_COMPUTE_DEPENDENCIES = ("cv2", "numba")
# Public functions named like the submodule defining them (warpsvc.core.warp.warp, ...align.align).
_SHADOWED = frozenset(name for name, module in _EXPORTS.items() if name == module)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as err:
        if err.name not in _COMPUTE_DEPENDENCIES:
            raise
        raise ModuleNotFoundError(f"warpsvc.{name} needs {err.name}, which is not installed: "
                                  "pip install 'warpsvc[compute]'", name=err.name) from err
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Namespace(types.ModuleType):
    """This package's module type: loading submodule ``warp`` (or ``align``) does not rebind the
    package attribute ``warp`` to the module, so ``warpsvc.core.warp`` stays the function (as
    it was with eager imports) whenever the submodule happens to be imported first."""

    def __setattr__(self, name, value):
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Namespace
