"""warpsvc: image warps with analytic Jacobians and intensity-preserving resampling.

``import warpsvc`` gives the in-process library; the gRPC server exposes the same features.
"""

from .core import *  # noqa: F401,F403
from .core import __all__

__version__ = "0.1.0"
