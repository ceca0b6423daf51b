"""The one place where exceptions become gRPC statuses.

``STATUS_TABLE`` is read top to bottom; the first class the exception is an instance of wins.
Errors that name a request field (``err.field``) also carry a ``google.rpc.BadRequest`` detail
with one ``FieldViolation`` (read it with ``grpc_status.rpc_status.from_call``). Anything not in
the table is a server bug: logged with its traceback and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from warpsvc.core.errors import ImageTooLargeError, InvalidArgumentError, WarpsvcError

log = logging.getLogger("warpsvc.server")


class UnimplementedError(Exception):
    """A feature this build of the server does not provide (Align before warpsvc.align exists)."""


class DeadlineExceededError(Exception):
    """The call's deadline passed while the server was working on it."""


STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ImageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a configured size limit
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),  # bad value, transform or image
    (WarpsvcError, grpc.StatusCode.INVALID_ARGUMENT),  # any other deliberate core refusal
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a real allocation failure
    (UnimplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(exc: BaseException) -> grpc.Status:
    """The ``grpc.Status`` (code, message, rich details) answering ``exc``."""
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error", exc_info=exc)
        message = f"internal error ({type(exc).__name__}); see the server log"
    else:
        message = getattr(exc, "message", None) or str(exc)
    field = getattr(exc, "field", None)
    if field and not message.startswith(field + ":"):
        message = f"{field}: {message}"  # every message names its field first
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return rpc_status.to_status(status)


def abort(context: grpc.ServicerContext, exc: BaseException):
    """Answer the call with the status for ``exc`` (raises, as ``context.abort`` does)."""
    context.abort_with_status(to_status(exc))
