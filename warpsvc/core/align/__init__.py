"""Image alignment: inverse-compositional Gauss-Newton on the warp Jacobians, coarse to fine.

``align(template, image, model, init, ...) -> AlignResult``. Modules: :mod:`.api` (the entry
point), :mod:`.gauss_newton` (the derivation and one level's iterations), :mod:`.pyramid`
(inputs, levels, steepest-descent images), :mod:`.chart` (the normalised chart; the motion models
are :mod:`warpsvc.core.transforms.models`), :mod:`.covariance` (final statistics and the status check), :mod:`.features` (the global start:
SIFT + MAGSAC), :mod:`.losses` (robust losses), :mod:`.options`, :mod:`.result`.
"""

from .api import align
from .options import AlignOptions
from .result import REASONS, AlignResult, Reason, Start

__all__ = ["REASONS", "AlignOptions", "AlignResult", "Reason", "Start", "align"]
