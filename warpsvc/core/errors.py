"""Transport-neutral errors of the core library.

Every guard in :mod:`warpsvc.core` raises one of these. They carry the name of the
offending argument (``field``) so a transport layer can point at it (the gRPC server
maps each class to one status code, in one table). They are also ``ValueError`` /
``MemoryError`` subclasses so plain Python callers can catch them idiomatically.
"""

from __future__ import annotations


class WarpsvcError(Exception):
    """Base class of every error raised on purpose by warpsvc.

    ``field`` names the argument (or request field) at fault, ``None`` when there is
    no single culprit.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field
        self.message = message


class InvalidArgumentError(WarpsvcError, ValueError):
    """An argument has the wrong type, value or range (maps to INVALID_ARGUMENT)."""


class InvalidTransformError(InvalidArgumentError):
    """A transform is non-finite, singular, or otherwise unusable."""


class InvalidImageError(InvalidArgumentError):
    """An image is empty, has an unsupported dtype, or the wrong dimensionality."""


class ImageTooLargeError(WarpsvcError, MemoryError):
    """An input or requested output exceeds a configured size limit (RESOURCE_EXHAUSTED)."""


class ResourceExhaustedError(WarpsvcError):
    """A request would cost more work or memory than a configured budget allows (RESOURCE_EXHAUSTED)."""
