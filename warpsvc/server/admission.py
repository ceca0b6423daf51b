"""Admission of work calls: health and reflection always find a thread; work waits for a compute slot.

gRPC Python's sync server runs every handler -- health checks included -- on one thread pool, in
arrival order. With four threads busy on slow calls and more queued behind them, a health check
waited for all of them (issue 13: "four slow calls make health time out"). The pool cannot be split
per service, so this module keeps the pool from ever queueing work instead:

* the pool has ``M + CONTROL_THREADS`` threads, ``M = settings.max_concurrent_rpcs``;
* :class:`AdmissionGate` (an interceptor, in :class:`.interceptors.DrainGate`'s place) refuses a work
  call RESOURCE_EXHAUSTED when ``M`` calls are already in the server (gRPC's own exact count of pool
  tasks not finished, read under its lock, as :func:`.metrics_interceptor.concurrency_probe` does). So at most
  ``M`` pool tasks are work, and every control call (health, reflection) and every refusal finds
  an idle thread at once -- they are the only tasks that can ever wait, and only behind each other;
* :class:`ComputeSlots` (innermost) lets at most ``settings.threads`` admitted work calls compute
  at once; the others wait for a slot on their own thread (blocked, no CPU), up to their deadline
  (DEADLINE_EXCEEDED) or cancellation (CANCELLED), polled every :data:`SLOT_POLL_S`;
* gRPC's ``maximum_concurrent_rpcs`` is set to ``M + CONTROL_THREADS + CONTROL_BACKLOG``: a backstop
  against floods of control calls, which gRPC then refuses without running anything.

Invariant (``A`` = pool tasks not finished): work is admitted only while ``A < M``, so work tasks
<= M and, since the pool has ``M + CONTROL_THREADS`` threads, a control call arriving with ``A < M +
CONTROL_THREADS`` starts at once. ``tests/test_service_admission.py`` fills every slot and every
admitted place with slow calls and times health and reflection.
"""

from __future__ import annotations

import threading

import grpc

# Threads kept for health, reflection and refusals (never taken by work).
CONTROL_THREADS = 2
# Control calls beyond the reserved threads that may wait for one before gRPC refuses them.
CONTROL_BACKLOG = 32
# How often a call waiting for a compute slot checks its deadline and cancellation (seconds).
SLOT_POLL_S = 0.05
# Methods that are never work: orchestrators probe health; reflection lists the services.
CONTROL_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def is_work(handler, method: str) -> bool:
    """A unary call of our services (health, reflection and streams are control)."""
    return handler is not None and handler.unary_unary is not None and not method.startswith(CONTROL_METHOD_PREFIXES)


def pool_threads(max_concurrent_rpcs: int) -> int:
    return max_concurrent_rpcs + CONTROL_THREADS


def grpc_limit(max_concurrent_rpcs: int) -> int:
    return max_concurrent_rpcs + CONTROL_THREADS + CONTROL_BACKLOG


class ServerLoad:
    """gRPC's count of the server's unfinished pool tasks (``active_rpc_count``), read from its
    private state; falls back to ``fallback()`` where the field is absent (other grpcio)."""

    def __init__(self, fallback):
        self._state = None
        self._fallback = fallback

    def attach(self, server) -> None:
        state = getattr(server, "_state", None)
        self._state = state if hasattr(state, "active_rpc_count") else None

    def __call__(self) -> int:
        return self._state.active_rpc_count if self._state is not None else self._fallback()


class ComputeSlots(grpc.ServerInterceptor):
    """At most ``slots`` work calls run their handler at once; the rest wait for a slot (on their
    own pool thread) until their deadline or cancellation. Put it last (innermost)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if not is_work(handler, handler_call_details.method):
            return handler
        behavior = handler.unary_unary

        def slotted(request, context):
            self._acquire(context)
            try:
                return behavior(request, context)
            finally:
                self._free.release()

        return grpc.unary_unary_rpc_method_handler(slotted, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _acquire(self, context) -> None:
        while True:
            remaining = context.time_remaining()
            wait = SLOT_POLL_S if remaining is None else min(SLOT_POLL_S, remaining)
            if wait <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"the deadline passed while waiting for one of {self.slots} compute slots")
            if self._free.acquire(timeout=wait):
                return
            if not context.is_active():
                left = context.time_remaining()
                if left is not None and left <= SLOT_POLL_S:  # gRPC ended it at the deadline
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"the deadline passed while waiting for one of {self.slots} compute slots")
                context.abort(grpc.StatusCode.CANCELLED, "cancelled while waiting for a compute slot")


def busy_refusal(handler, limit: int):
    """The handler answering a work call refused over the admission limit (RESOURCE_EXHAUSTED,
    without parsing its body)."""

    def refuse(request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"server busy: {limit} calls in flight on this worker (max_concurrent_rpcs); retry later")

    return grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=lambda raw: raw,
                                               response_serializer=handler.response_serializer)
