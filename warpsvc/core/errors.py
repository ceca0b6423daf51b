"""Transport-neutral errors of the core library.

Every guard in :mod:`warpsvc.core` raises one of these. They carry the name of the
offending argument (``field``) so a transport layer can point at it (``warpsvc_api.status``
maps each class to one gRPC status code, in one table). They are also ``ValueError`` /
``MemoryError`` subclasses so plain Python callers can catch them idiomatically.

This module imports nothing (not even numpy), and ``warpsvc`` / ``warpsvc.core`` load their
contents lazily, so the protocol package and the client import these classes without the
compute stack (see docs/architecture.md, "Where errors live").

``message`` is the bare description; ``str(err)`` is the same text. The ``"field: message"``
form a caller reads is built once, by :func:`describe`.
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

    def relabelled(self, field: str | None) -> WarpsvcError:
        """The same error (class and message) naming ``field`` instead (raise it ``from self``)."""
        return type(self)(self.message, field=field)


class InvalidArgumentError(WarpsvcError, ValueError):
    """An argument has the wrong type, value or range (maps to INVALID_ARGUMENT)."""


class InvalidTransformError(InvalidArgumentError):
    """A transform is non-finite, singular, or otherwise unusable."""


class InvalidImageError(InvalidArgumentError):
    """An image is empty, has an unsupported dtype, or the wrong dimensionality."""


class ResourceExhaustedError(WarpsvcError, MemoryError):
    """A request needs more than a configured limit allows (RESOURCE_EXHAUSTED)."""


class ImageTooLargeError(ResourceExhaustedError):
    """An input or requested output exceeds a configured size limit (RESOURCE_EXHAUSTED)."""


class DeadlineExceededError(WarpsvcError):
    """The caller's deadline passed while the work was running (DEADLINE_EXCEEDED)."""


class CancelledError(WarpsvcError):
    """The caller cancelled the work (CANCELLED)."""


def describe(err: BaseException) -> str:
    """``"field: message"`` for an error naming a field, else the message. The field is said
    once: a message already starting with it (``"levels must be ..."``, the library's style, or
    ``"levels: ..."``) is not prefixed again (``"levels: must be ..."``)."""
    message = getattr(err, "message", None) or str(err)
    field = getattr(err, "field", None)
    if not field or message.startswith(field + ":"):
        return message
    if message.startswith(field + " "):
        message = message[len(field) + 1:]
    return f"{field}: {message}"
