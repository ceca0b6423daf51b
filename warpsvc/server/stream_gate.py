"""Streams in the access log and in graceful drain: the stream-stream twin of the unary access log
and drain gate (:mod:`.interceptors`), for ``WarpService.AlignStream``.

:class:`StreamGate` is an interceptor (after the drain gate, before the token check) that sees every
bidirectional call of our services (reflection excluded) and:

* **admits** it: refused UNAVAILABLE ("draining") once :meth:`StreamGate.close` was called,
  RESOURCE_EXHAUSTED while the worker already holds ``limit`` calls (``max_concurrent_rpcs``,
  gRPC's own count of unfinished calls, as the unary admission of :mod:`.admission`: a stream
  holds a pool thread for its whole life, so unbounded streams would starve health checks);
* **counts** it open from its handler's start to its end (:attr:`StreamGate.open`), so
  :meth:`.app.WarpServer.stop` can wait for open streams within the grace;
* **logs** one line on ``warpsvc.access`` when it ends::

      {"method": "/warpsvc.v1.WarpService/AlignStream", "status": "OK", "ms": 812.4, "frames": 30,
       "results": 30, "in_bytes": 2949461, "out_bytes": 12570, "in_px": 1523712,
       "peer": "ipv4:127.0.0.1:51234"}

  ``frames``: frame messages received after the setup; ``results``: responses sent; ``in_bytes`` /
  ``out_bytes``: serialized message bytes both ways (setup included); ``in_px``: decoded pixels
  (reference and frames, reported by the handler with :func:`record_pixels`); with tracing on, the
  RPC span's ``trace_id``. The pixels also go to ``warpsvc_pixels_total`` when metrics are on.

Drain (``WarpServer.stop``): :meth:`close` refuses new streams; :meth:`wait` waits for the open ones
to end by themselves (the client half-closes and the last results are sent); past the grace
:meth:`cancel` ends each one with UNAVAILABLE and a message saying how many frames it registered.
The handler reads its requests through :class:`StreamRequests`, which a cancellation wakes even
while it waits for the client's next frame (a reader thread per stream fetches exactly one
message when asked: no read-ahead, so gRPC's flow control still paces the client), and its
alignments poll :attr:`OpenStream.cancelled` (an alignment in progress stops within ~50 ms).
"""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import time

import grpc

from .admission import CONTROL_METHOD_PREFIXES
from .interceptors import access_log

_CURRENT: contextvars.ContextVar = contextvars.ContextVar("warpsvc_stream", default=None)


class StreamCancelled(Exception):
    """Raised from the request iterator of a stream cancelled by :meth:`StreamGate.cancel`."""


class OpenStream:
    """One stream's counters and its cancellation flag."""

    __slots__ = (
        "_wake",
        "cancel_message",
        "cancelled",
        "frames",
        "in_bytes",
        "in_px",
        "messages",
        "out_bytes",
        "results",
    )

    def __init__(self):
        self.messages = self.results = self.in_bytes = self.out_bytes = self.in_px = 0
        self.frames = 0
        self.cancelled = False
        self.cancel_message = ""
        self._wake = None  # the StreamRequests waiting for a message, if any

    def cancel(self, message: str) -> None:
        self.cancel_message = message
        self.cancelled = True
        wake = self._wake
        if wake is not None:
            wake()


def current_stream() -> OpenStream | None:
    """The stream the calling handler serves (None outside a gated stream)."""
    return _CURRENT.get()


def record_pixels(n: int) -> None:
    """Add ``n`` decoded input pixels to the current stream's access-log line (no-op outside one)."""
    stream = _CURRENT.get()
    if stream is not None:
        stream.in_px += n


class StreamRequests:
    """The request iterator of a gated stream: one message per ``next()``, fetched by a reader
    thread only when asked (so a blocked read can be abandoned), :class:`StreamCancelled` once the
    stream is cancelled."""

    _END = object()

    def __init__(self, requests, stream: OpenStream):
        self._requests = iter(requests)
        self._stream = stream
        self._want = threading.Semaphore(0)
        self._got: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._done = False
        stream._wake = lambda: self._got.put((StreamCancelled, None))

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._stream.cancelled:
            raise StreamCancelled(self._stream.cancel_message)
        if self._thread is None:
            self._thread = threading.Thread(target=self._read, name="warpsvc-stream-reader", daemon=True)
            self._thread.start()
        self._want.release()
        kind, value = self._got.get()
        if kind is StreamCancelled:
            self._done = True
            raise StreamCancelled(self._stream.cancel_message)
        if kind is self._END:
            self._done = True
            raise StopIteration
        if kind is BaseException:
            self._done = True
            raise value
        return value

    def _read(self) -> None:
        while True:
            self._want.acquire()
            if self._done:
                return
            try:
                message = next(self._requests)
            except StopIteration:
                self._got.put((self._END, None))
                return
            except BaseException as err:  # noqa: BLE001 - handed to the handler's thread
                self._got.put((BaseException, err))
                return
            self._got.put((None, message))

    def close(self) -> None:
        """Let the reader thread end (it ends with the call's request stream in any case)."""
        self._done = True
        self._want.release()


class StreamGate(grpc.ServerInterceptor):
    """See the module docstring. ``limit``: refuse new streams while the worker holds that many
    calls (None: no limit); ``load``: a callable giving that count (see :class:`.admission.ServerLoad`)."""

    def __init__(self, *, limit: int | None = None, load=None, metrics=None, tracing=None):
        self._cond = threading.Condition()
        self._open: set[OpenStream] = set()
        self._closed = False
        self.limit = limit
        self._load = load
        self._metrics = metrics
        self._trace_id = tracing.trace_id if tracing is not None and tracing.enabled else None
        self._shed = threading.local()

    @property
    def open(self) -> int:
        """Streams whose handler is running."""
        return len(self._open)

    def took_shed(self) -> bool:
        """Whether the call being intercepted on this thread was just refused over the limit."""
        shed, self._shed.flag = getattr(self._shed, "flag", False), False
        return shed

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.stream_stream is None or method.startswith(CONTROL_METHOD_PREFIXES):
            return handler
        with self._cond:
            if self._closed:
                return _refusal(handler, grpc.StatusCode.UNAVAILABLE,
                                "server is draining (shutting down); open the stream on another instance")
            if self.limit is not None and self._load is not None and self._load() >= self.limit:
                self._shed.flag = True
                return _refusal(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"server busy: {self.limit} calls in flight on this worker (max_concurrent_rpcs); "
                                "retry later")
        return self._tracked(handler, method)

    def _tracked(self, handler, method: str):
        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        behavior = handler.stream_stream
        stream = OpenStream()

        def read(raw: bytes):
            stream.messages += 1
            stream.in_bytes += len(raw)
            return deserialize(raw) if deserialize is not None else raw

        def write(message) -> bytes:
            raw = serialize(message) if serialize is not None else message
            stream.results += 1
            stream.out_bytes += len(raw)
            return raw

        def tracked(requests, context):
            t0 = time.perf_counter()
            with self._cond:
                self._open.add(stream)
            previous = _CURRENT.get()
            _CURRENT.set(stream)
            reader = StreamRequests(requests, stream)
            status = None
            try:
                yield from behavior(reader, context)
            except GeneratorExit:  # the client went away mid-stream
                status = "CANCELLED"
                raise
            except BaseException:
                code = context.code()
                status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                _CURRENT.set(previous)  # not reset(token): a generator may end in another context
                reader.close()
                with self._cond:
                    self._open.discard(stream)
                    self._cond.notify_all()
                if status is None:
                    code = context.code()
                    status = code.name if isinstance(code, grpc.StatusCode) else "OK"
                self._log(method, status, (time.perf_counter() - t0) * 1e3, stream, context)

        return grpc.stream_stream_rpc_method_handler(tracked, request_deserializer=read, response_serializer=write)

    def _log(self, method: str, status: str, ms: float, stream: OpenStream, context) -> None:
        line = {"method": method, "status": status, "ms": round(ms, 2), "frames": max(0, stream.messages - 1),
                "results": stream.results, "in_bytes": stream.in_bytes, "out_bytes": stream.out_bytes,
                "in_px": stream.in_px, "peer": context.peer()}
        if self._trace_id is not None:
            line["trace_id"] = self._trace_id()
        access_log.info(json.dumps(line))
        if self._metrics is not None and stream.in_px:
            self._metrics.pixels("input", stream.in_px)

    # -- drain ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Refuse new streams from now on (UNAVAILABLE, "draining")."""
        with self._cond:
            self._closed = True

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for every open stream to end. True if none is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
            return True

    def cancel(self, grace: float) -> int:
        """End every open stream UNAVAILABLE (the drain grace of ``grace`` s is over). Returns how
        many were open."""
        with self._cond:
            streams = list(self._open)
        for stream in streams:
            stream.cancel(f"server shutting down: the stream was cancelled at the end of the {grace:g} s drain "
                          f"grace after {max(0, stream.messages - 1)} frames ({stream.results} results sent stay "
                          "valid); send the remaining frames to another instance")
        return len(streams)


def _refusal(handler, code: grpc.StatusCode, message: str):
    def refuse(requests, context):
        context.abort(code, message)
        yield  # pragma: no cover - a generator, like the handler it replaces

    return grpc.stream_stream_rpc_method_handler(refuse, request_deserializer=lambda raw: raw,
                                                 response_serializer=handler.response_serializer)
