"""Core errors <-> ``google.rpc.Status`` (with a ``BadRequest`` field violation), in one table.

Server: :func:`to_status` answers an exception. ``STATUS_TABLE`` is read top to bottom; the first
class the exception is an instance of wins. An error naming a field (``err.field``) says so first
in its message (``"transforms[0].affine.matrix: ..."``) and carries a ``google.rpc.BadRequest``
detail with one ``FieldViolation``. Anything not in the table is a server bug: logged with its
traceback and answered INTERNAL (never UNKNOWN), without leaking its text.

Client: :func:`from_rpc_error` turns a failed call back into the library's error of the same
meaning (INVALID_ARGUMENT -> ``InvalidArgumentError``; a field's RESOURCE_EXHAUSTED ->
``ImageTooLargeError``), ``field`` read from the detail; other codes stay ``grpc.RpcError``.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from warpsvc.core.errors import (
    CancelledError,
    DeadlineExceededError,
    ImageTooLargeError,
    InvalidArgumentError,
    ResourceExhaustedError,
    WarpsvcError,
    describe,
)

log = logging.getLogger("warpsvc.server")

STATUS_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a configured limit (size, cost)
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),  # bad value, transform or image
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),  # the call's deadline stopped the work
    (CancelledError, grpc.StatusCode.CANCELLED),  # the caller went away
    (WarpsvcError, grpc.StatusCode.INVALID_ARGUMENT),  # any other deliberate core refusal
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),  # a real allocation failure
)
# Client side: code -> the library error re-raised (RESOURCE_EXHAUSTED only when a field is named).
ERROR_TABLE: dict[grpc.StatusCode, type[WarpsvcError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ImageTooLargeError,
}


def status_code(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def status_message(exc: BaseException) -> status_pb2.Status:
    """The ``google.rpc.Status`` answering ``exc``."""
    code = status_code(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.error("internal error", exc_info=exc)
        message = f"internal error ({type(exc).__name__}); see the server log"
    else:
        message = describe(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    field = getattr(exc, "field", None) if code is not grpc.StatusCode.INTERNAL else None
    if field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        status.details.append(detail)
    return status


def to_status(exc: BaseException) -> grpc.Status:
    """The ``grpc.Status`` (code, message, rich details) answering ``exc``."""
    return rpc_status.to_status(status_message(exc))


def violated_field(status: status_pb2.Status | None) -> str | None:
    """The first ``BadRequest`` field violation of ``status``, if any."""
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Is(bad.DESCRIPTOR) and detail.Unpack(bad) and bad.field_violations:
            return bad.field_violations[0].field
    return None


def from_rpc_error(err: grpc.RpcError) -> BaseException:
    """The library error a failed call stands for, or ``err`` itself."""
    cls = ERROR_TABLE.get(err.code())
    if cls is None:
        return err
    field = violated_field(rpc_status.from_call(err))
    if cls is not InvalidArgumentError and field is None:
        return err  # e.g. the channel's own message-size limit: no field to blame
    return cls(err.details(), field=field)
