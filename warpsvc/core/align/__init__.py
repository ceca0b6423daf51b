"""Image alignment: inverse-compositional Gauss-Newton on the warp Jacobians, coarse to fine.

``align(template, image, model, init, ...) -> AlignResult``. Modules: :mod:`.api` (the entry
point), :mod:`.gauss_newton` (the derivation and one level's iterations), :mod:`.pyramid`
(inputs, levels, steepest-descent images), :mod:`.chart` (the normalised chart; the motion models
are :mod:`warpsvc.core.transforms.models`), :mod:`.covariance` (final statistics and the status check), :mod:`.features` (the global start:
SIFT + MAGSAC), :mod:`.losses` (robust losses), :mod:`.options`, :mod:`.result`.
"""

import importlib

# Names load lazily (PEP 562): `AlignResult` (the client's result type) must not pull in OpenCV,
# which `.api` and `.features` import.
_EXPORTS = {"align": "api", "AlignOptions": "options", "REASONS": "result", "AlignResult": "result",
            "Reason": "result", "Start": "result"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
