"""Core errors <-> google.rpc.Status: one table, the field named once, BadRequest details."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from warpsvc.core import errors
from warpsvc_api import status

CASES = [
    (errors.InvalidArgumentError("must be positive", field="tolerance"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidTransformError("is singular", field="transforms[0].affine.matrix"),
     grpc.StatusCode.INVALID_ARGUMENT),
    (errors.InvalidImageError("is empty", field="image"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ImageTooLargeError("too many pixels", field="output_shape"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ResourceExhaustedError("over the cost budget", field="image"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceededError("the deadline stopped the alignment"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.CancelledError("the caller went away"), grpc.StatusCode.CANCELLED),
    (errors.WarpsvcError("refused"), grpc.StatusCode.INVALID_ARGUMENT),
    (MemoryError(), grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def _field_violations(st):
    out = []
    for detail in st.details:
        bad = error_details_pb2.BadRequest()
        assert detail.Unpack(bad)
        out += [v.field for v in bad.field_violations]
    return out


@pytest.mark.parametrize("exc,code", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_status_table(exc, code):
    st = status.status_message(exc)
    assert st.code == getattr(code_pb2, code.name) and status.status_code(exc) is code
    field = getattr(exc, "field", None)
    assert _field_violations(st) == ([field] if field else [])
    if field:
        assert st.message == f"{field}: {exc.message}"
        assert status.violated_field(st) == field


def test_the_field_prefix_is_never_doubled():
    for text in ("levels: must be >= 1", "levels must be >= 1", "must be >= 1"):
        err = errors.InvalidArgumentError(text, field="levels")
        assert status.status_message(err).message == "levels: must be >= 1"
    singular = errors.InvalidTransformError("matrix is singular", field="matrix")
    relabelled = singular.relabelled("transforms[0].affine.matrix")
    assert errors.describe(relabelled) == "transforms[0].affine.matrix: matrix is singular"
    relabelled = errors.InvalidArgumentError("must be positive", field="time_budget").relabelled("time_budget_seconds")
    assert type(relabelled) is errors.InvalidArgumentError
    assert status.status_message(relabelled).message == "time_budget_seconds: must be positive"


def test_bugs_are_internal_without_their_text(caplog):
    st = status.status_message(ZeroDivisionError("secret"))
    assert st.code == code_pb2.INTERNAL and "secret" not in st.message and not st.details
    assert "internal error" in caplog.text


class _FakeRpcError(grpc.RpcError):
    """What grpc raises on the client: code(), details(), trailing_metadata() with the status."""

    def __init__(self, exc):
        self._status = status.to_status(exc)

    def code(self):
        return self._status.code

    def details(self):
        return self._status.details

    def trailing_metadata(self):
        return self._status.trailing_metadata


@pytest.mark.parametrize("exc,back", [
    (errors.InvalidTransformError("is singular", field="transforms[0].affine.matrix"), errors.InvalidArgumentError),
    (errors.ImageTooLargeError("too many pixels", field="image"), errors.ImageTooLargeError),
])
def test_client_gets_the_library_error_back(exc, back):
    rpc_error = _FakeRpcError(exc)
    got = status.from_rpc_error(rpc_error)
    assert type(got) is back and got.field == exc.field and got.message == f"{exc.field}: {exc.message}"


def test_other_codes_stay_rpc_errors():
    for exc in (errors.DeadlineExceededError("late"), MemoryError()):  # no field: nothing to blame
        rpc_error = _FakeRpcError(exc)
        assert status.from_rpc_error(rpc_error) is rpc_error
