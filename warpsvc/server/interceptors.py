"""Server interceptors: one structured access-log line per call, optional bearer-token auth, and
the drain gate of graceful shutdown.

The access log is one JSON object per line on the ``warpsvc.access`` logger::

    {"method": "/warpsvc.v1.WarpService/Warp", "status": "OK", "ms": 12.41, "in_px": 2073600,
     "out_px": 2073600, "peer": "ipv4:127.0.0.1:51234"}

``in_px`` / ``out_px`` are the decoded input pixels and produced output pixels (H*W summed over
images), reported by the servicer through :func:`record_pixels`; at the end of the call they are
also added to the metrics' ``warpsvc_pixels_total`` (when metrics are on). With tracing on, the
line carries ``"trace_id"`` (32 hex digits, the RPC span's trace). Metadata is never logged (the
token travels there).
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import threading
import time

import grpc

access_log = logging.getLogger("warpsvc.access")

_PIXELS: contextvars.ContextVar[list | None] = contextvars.ContextVar("warpsvc_pixels", default=None)

# Methods callable without the token: orchestrators probe health without credentials.
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def record_pixels(*, inp: int = 0, out: int = 0) -> None:
    """Add to the current call's pixel counters (no-op outside an intercepted call)."""
    counters = _PIXELS.get()
    if counters is not None:
        counters[0] += inp
        counters[1] += out


def _wrap_unary(handler: grpc.RpcMethodHandler, wrap) -> grpc.RpcMethodHandler:
    if isinstance(handler, BodilessRefusal):  # the token refusal of a unary call: still that call
        return BodilessRefusal(wrap(handler.stream_unary), handler.response_serializer)
    if handler is None or handler.unary_unary is None:
        return handler  # streaming methods (health Watch, reflection) pass through untouched
    return grpc.unary_unary_rpc_method_handler(
        wrap(handler.unary_unary),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AccessLogInterceptor(grpc.ServerInterceptor):
    """One log line per unary call: method, status, milliseconds, pixels, peer (and trace id).

    ``metrics``: a :class:`.metrics.Metrics` that receives the call's pixel counts (or None);
    ``tracing``: a :class:`.tracing.Tracing`, whose trace id goes in the line when it is on. Put it
    inside the metrics and tracing interceptors (the current method and span are then set)."""

    def __init__(self, metrics=None, tracing=None):
        self._metrics = metrics
        self._trace_id = tracing.trace_id if tracing is not None and tracing.enabled else None

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = continuation(handler_call_details)

        def wrap(behavior):
            def logged(request, context):
                counters = [0, 0]
                token = _PIXELS.set(counters)
                t0 = time.perf_counter()
                status = "OK"
                try:
                    return behavior(request, context)
                except BaseException:
                    code = context.code()
                    status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                    raise
                finally:
                    _PIXELS.reset(token)
                    ms = (time.perf_counter() - t0) * 1e3
                    if status == "OK" and isinstance(context.code(), grpc.StatusCode):
                        status = context.code().name
                    line = {"method": method, "status": status, "ms": round(ms, 2),
                            "in_px": counters[0], "out_px": counters[1], "peer": context.peer()}
                    if self._trace_id is not None:
                        line["trace_id"] = self._trace_id()
                    access_log.info(json.dumps(line))
                    if self._metrics is not None:
                        if counters[0]:
                            self._metrics.pixels("input", counters[0])
                        if counters[1]:
                            self._metrics.pixels("output", counters[1])

            return logged

        return _wrap_unary(handler, wrap)


class BodilessRefusal(grpc.RpcMethodHandler):
    """A handler that refuses a *unary* call without ever reading its request message.

    gRPC Python reads a unary call's message (core buffers it whole, up to the receive limit,
    then copies it into ``bytes`` for the deserializer) before the handler runs, whatever the
    handler does with it. A request-*streaming* handler's messages are read only when it
    iterates them: this one declares itself request-streaming (the wire is the same: one
    message, then half-close) and answers without iterating, so gRPC never asks for the
    message; core holds at most the stream's flow-control window of it until the status ends
    the stream. The access log and the drain gate still treat it as the unary call it answers
    (:func:`_wrap_unary`)."""

    request_streaming = True
    response_streaming = False
    answers_unary = True  # what metrics label it (``grpc_type="unary"``)
    request_deserializer = None
    unary_unary = unary_stream = stream_stream = None

    def __init__(self, behavior, response_serializer):
        self.stream_unary = behavior
        self.response_serializer = response_serializer


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Require ``authorization: Bearer <token>`` (constant-time comparison) except on health.

    The decision is taken from the metadata when the call arrives, before its message: a
    refused unary call is answered by a :class:`BodilessRefusal` (its message is never read
    nor parsed); a refused streaming call by a handler of its kind that never reads it."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def _authorised(self, metadata) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                return hmac.compare_digest(given, self._expected)
        return False

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return continuation(handler_call_details)
        if self._authorised(handler_call_details.invocation_metadata):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None

        def deny(request_or_iterator, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token (metadata 'authorization')")

        if handler.unary_unary is not None:
            return BodilessRefusal(deny, handler.response_serializer)
        kind = ("unary_stream" if handler.unary_stream is not None
                else "stream_unary" if handler.stream_unary is not None else "stream_stream")
        return getattr(grpc, f"{kind}_rpc_method_handler")(deny, request_deserializer=_unparsed,
                                                           response_serializer=handler.response_serializer)


_UNPARSED = object()


def _unparsed(raw: bytes) -> object:
    """A request deserializer that ignores the bytes (refused calls). Not None: gRPC reads None
    as a failed deserialization and answers INTERNAL."""
    return _UNPARSED


# Pause after raising the drain flag before trusting the pool's queue (see DrainGate.drain).
DRAIN_SETTLE_S = 0.05


class DrainGate(grpc.ServerInterceptor):
    """Counts calls from arrival to completion and, once :meth:`drain` is called, answers new
    calls UNAVAILABLE ("draining": safe to retry elsewhere) while the accepted ones finish.

    Why: gRPC's own ``server.stop(grace)`` lets running handlers finish, but calls the transport
    has accepted and Python has not yet picked up are cancelled at that instant. Draining first,
    and stopping only when nothing accepted is left, loses no call that reached the server.
    Health checks and reflection are never gated. With ``limit``, work calls over it are refused
    RESOURCE_EXHAUSTED at arrival (:mod:`.admission`: keeps threads free for health).
    """

    def __init__(self, executor=None, limit: int | None = None):
        from .admission import ServerLoad

        self._cond = threading.Condition()
        self._active = 0  # intercepted, not finished (over-counts calls gRPC then sheds)
        self.arrivals = 0  # work calls intercepted since start (the idle heap trim watches it)
        self._running = 0  # handler running right now
        self._open = 0  # handler started, RPC not terminated (response not yet handed to the transport)
        self._draining = False
        self._executor = executor  # the server's handler pool: its queue holds accepted calls
        # Admission (see .admission): refuse work while `limit` calls are in the server.
        self.limit = limit
        self.load = ServerLoad(lambda: self._active)
        self._shed = threading.local()

    @property
    def active(self) -> int:
        return self._active

    def attach(self, server) -> None:
        """Read the server's own count of calls in flight (call once the server exists)."""
        self.load.attach(server)

    def took_shed(self) -> bool:
        """Whether the call being intercepted on this thread was just refused over the limit
        (read once by the metrics interceptor, outermost, in the same interception)."""
        shed, self._shed.flag = getattr(self._shed, "flag", False), False
        return shed

    def intercept_service(self, continuation, handler_call_details):
        from .admission import busy_refusal, is_work

        handler = continuation(handler_call_details)
        if not is_work(handler, handler_call_details.method):
            return handler
        with self._cond:  # runs when the call arrives, before it waits for a handler thread
            if self._draining:
                return _refusal(handler)
            if self.limit is not None and self.load() >= self.limit:
                self._shed.flag = True
                return busy_refusal(handler, self.limit)
            self._active += 1
            self.arrivals += 1

        def wrap(behavior):
            def counted(request, context):
                with self._cond:
                    self._running += 1
                    self._open += 1
                if not context.add_callback(self._terminated):  # already terminated (cancelled)
                    self._terminated()
                try:
                    return behavior(request, context)
                finally:
                    with self._cond:
                        self._active -= 1
                        self._running -= 1
                        self._cond.notify_all()

            return counted

        return _wrap_unary(handler, wrap)

    def _terminated(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new calls; wait up to ``timeout`` s for accepted ones. True if none is left.

        "Left" includes a call whose handler returned but whose RPC has not terminated: gRPC runs
        the termination callbacks once the status is sent and the close received, i.e. once the
        response is handed to the transport (stopping before that cancels it).

        A call gRPC sheds for its concurrency limit has passed the interceptors but never runs, so
        ``active`` over-counts after an overload. Accepted calls are either running or waiting in
        the handler pool's queue: once neither holds any (checked after a short settle, so calls
        intercepted just before the flag reach the queue), nothing accepted is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._draining = True
        time.sleep(min(DRAIN_SETTLE_S, timeout))
        with self._cond:
            while True:
                if (self._active <= 0 or (self._running == 0 and self._queued() == 0)) and self._open <= 0:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.02))

    def _queued(self) -> int:
        """Calls accepted and waiting for a handler thread (unknown without the pool: assume some)."""
        queue = getattr(self._executor, "_work_queue", None)
        return queue.qsize() if queue is not None else 1


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "server is draining (shutting down); retry another instance")

    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)
