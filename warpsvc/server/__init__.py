"""The gRPC transport of warpsvc: ``warpsvc serve``.

Importing this package imports no grpc (so ``serve`` can fork workers first);
``build_server`` is loaded on first use.
"""

from .runner import serve
from .settings import Settings

__all__ = ["Settings", "build_server", "serve"]


def __getattr__(name):
    if name == "build_server":
        from .app import build_server

        return build_server
    raise AttributeError(name)
