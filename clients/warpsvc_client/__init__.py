"""Python client of the warpsvc gRPC service: ``from warpsvc_client import WarpClient``.

Same call signatures as the library (``warp``, ``jacobian_determinant``, ``align``); numpy in and
out; the same ``warpsvc`` transform objects (numpy-only geometry). Installs and imports without
OpenCV or numba (``pip install 'warpsvc[client]'``). See ``docs/service.md``.
"""

from .client import WarpClient

__all__ = ["WarpClient"]
