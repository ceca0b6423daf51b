"""The metrics interceptor: every RPC's start, messages, bytes, outcome and handling time
recorded in a :class:`.metrics.Metrics` (names of the grpc-ecosystem Prometheus middleware;
the metrics themselves, their endpoint and the multiprocess folder are in :mod:`.metrics`)."""

from __future__ import annotations

from .metrics import BIDI_STREAM, CLIENT_STREAM, SERVER_STREAM, UNARY, Metrics


def concurrency_probe(server):
    """A function telling whether ``server`` is about to shed the call being intercepted, or None.

    gRPC Python sheds a call over ``maximum_concurrent_rpcs`` *after* the interceptors ran and
    never calls its handler, so the handler cannot see it. The test gRPC applies, ``active >=
    maximum`` under the server's lock, is repeated here: interceptors run inside that same lock,
    right after gRPC made its decision, so the answer is exact. It reads private fields of
    grpcio's ``_Server`` (checked by tests/test_metrics_interceptor.py for the pinned grpcio);
    None when they are absent or no limit is set (then shed calls are simply not counted).
    """
    state = getattr(server, "_state", None)
    if state is None or getattr(state, "maximum_concurrent_rpcs", None) is None:
        return None
    if not hasattr(state, "active_rpc_count"):
        return None
    return lambda: state.active_rpc_count >= state.maximum_concurrent_rpcs


class MetricsInterceptor:
    """A ``grpc.ServerInterceptor`` recording every call in a :class:`Metrics`.

    Put it first in the server's interceptor list (outermost), so refusals by later interceptors
    (drain gate, token) are counted with their codes; call :meth:`attach` with the server once it
    exists to count shed calls. Handler time is measured from the handler's start (queueing in the
    pool excluded, as in the go-grpc-prometheus middleware); message bytes are the serialized
    sizes, taken in the (de)serializers.
    """

    _registered = False

    def __init__(self, metrics: Metrics):
        import grpc

        if not MetricsInterceptor._registered:  # a virtual subclass: no grpc import at module load
            grpc.ServerInterceptor.register(MetricsInterceptor)
            MetricsInterceptor._registered = True
        self._grpc = grpc
        self._metrics = metrics
        self._shed_probe = None

    def attach(self, server, shed_probe=None) -> None:
        """Count shed calls: those gRPC refuses over its ``maximum_concurrent_rpcs`` (read from
        ``server``) and those ``shed_probe()`` says an inner interceptor just refused (the
        admission gate, :mod:`.admission`)."""
        probes = [p for p in (concurrency_probe(server), shed_probe) if p is not None]
        # every probe is called (each reads and clears its flag): a list, not a short-circuiting generator
        self._shed_probe = (lambda: any([p() for p in probes])) if probes else None  # noqa: C419

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        grpc_type = _grpc_type(handler)
        if self._shed_probe is not None and self._shed_probe():
            self._metrics.shed(method, grpc_type)
            return handler
        return _instrumented(self._grpc, self._metrics, handler, method, grpc_type)


def _grpc_type(handler) -> str:
    """The grpc-ecosystem ``grpc_type`` label of ``handler``'s method. A bodiless refusal
    (:class:`.interceptors.BodilessRefusal`) declares itself request-streaming only so that gRPC
    never reads the message: it answers a unary call and is labelled as one."""
    if getattr(handler, "answers_unary", False):
        return UNARY
    if handler.request_streaming:
        return BIDI_STREAM if handler.response_streaming else CLIENT_STREAM
    return SERVER_STREAM if handler.response_streaming else UNARY


def _status_name(grpc, context, failed: bool) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if failed:
        return "UNKNOWN"  # an exception without abort(): gRPC answers UNKNOWN
    return "OK" if context.is_active() else "CANCELLED"


def _instrumented(grpc, metrics: Metrics, handler, method: str, grpc_type: str):
    """The same handler with each message and the call's outcome recorded (see
    :meth:`Metrics.begin_call`: a unary request's bytes are written with the call's end, a
    stream's messages one by one, as they come). Built per call (the handler gRPC passes down is
    per call too): a unary-unary call gets five small closures and nothing else."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    children = metrics._method(method, grpc_type)
    add = metrics.cells.add

    def write(message) -> bytes:
        raw = serialize(message) if serialize is not None else message
        add(((children.sent, 1.0), (children.response_bytes, len(raw))))
        return raw

    def end(context, failed: bool, call) -> None:
        metrics.end_call(call, _status_name(grpc, context, failed))

    if handler.unary_unary is not None:  # the hot path: Warp, Align, JacobianDeterminant
        behavior = handler.unary_unary
        size = [-1]

        def read_one(raw: bytes):
            size[0] = len(raw)
            return deserialize(raw) if deserialize is not None else raw

        def begin_one():
            call = metrics.begin_call(method, grpc_type, children)
            if size[0] >= 0:
                call.pending.append((children.received, 1.0))
                call.pending.append((children.request_bytes, size[0]))
            return call

        return grpc.unary_unary_rpc_method_handler(_recorded_unary(behavior, begin_one, end),
                                                   request_deserializer=read_one, response_serializer=write)

    received = [] if not handler.request_streaming else None

    def read(raw: bytes):
        if received is None:
            add(((children.received, 1.0), (children.request_bytes, len(raw))))
        else:
            received.append((children.received, 1.0))
            received.append((children.request_bytes, len(raw)))
        return deserialize(raw) if deserialize is not None else raw

    def begin():
        call = metrics.begin_call(method, grpc_type, children)
        if received:
            call.pending.extend(received)
            received.clear()
        return call

    def stream_response(behavior):
        def call(request, context):
            record = begin()
            failed = True
            try:
                yield from behavior(request, context)
                failed = False
            except GeneratorExit:  # the client went away mid-stream
                failed = False
                raise
            finally:
                end(context, failed, record)

        return call

    if handler.stream_unary is not None:
        make, behavior = grpc.stream_unary_rpc_method_handler, _recorded_unary(handler.stream_unary, begin, end)
    elif handler.unary_stream is not None:
        make, behavior = grpc.unary_stream_rpc_method_handler, stream_response(handler.unary_stream)
    else:
        make, behavior = grpc.stream_stream_rpc_method_handler, stream_response(handler.stream_stream)
    return make(behavior, request_deserializer=read, response_serializer=write)


def _recorded_unary(behavior, begin, end):
    """``behavior`` (a handler answering with one response) between ``begin()`` and
    ``end(context, failed, call)``: an exception or an abort is a failed call."""

    def call(request, context):
        record = begin()
        failed = True
        try:
            response = behavior(request, context)
            failed = False
            return response
        finally:
            end(context, failed, record)

    return call
