"""What the servicer reports about a call, to metrics and traces at once.

``Observer(metrics, tracing)`` is built once per server (:func:`.app.build_server`); the servicer
times its stages with ``with observer.stage("decode"): ...`` (one histogram observation in
``warpsvc_stage_seconds{grpc_method, stage}`` and one child span of the RPC's span) and reports
alignment outcomes with :meth:`Observer.align_outcome`. Pixels are not reported here: the access
log already counts them per call (:func:`.interceptors.record_pixels`) and hands the totals to the
metrics when the call ends. With metrics and tracing both off every method is a no-op (``stage``
returns one shared ``nullcontext``); with metrics on and tracing off a stage is one small timer
object (two ``perf_counter`` reads, one pending histogram update written with the call's end:
:class:`.metrics.Metrics`); with tracing on it is also a child span.
"""

from __future__ import annotations

import contextlib
import time

from .tracing import OFF, Tracing

_NULL = contextlib.nullcontext()


def _null_stage(name: str):
    return _NULL


class Observer:
    """``stage(name)``: time the block as stage ``name`` (``decode``, ``compute``, ``encode``) of
    the current call; chosen once here (no per-call test of what is on)."""

    def __init__(self, metrics=None, tracing: Tracing = OFF):
        self.metrics = metrics
        self.tracing = tracing
        if tracing.enabled:
            self.stage = self._stage
        elif metrics is not None:
            self.stage = metrics.stage
        else:
            self.stage = _null_stage

    @contextlib.contextmanager
    def _stage(self, name: str):
        with self.tracing.stage(name):
            t0 = time.perf_counter()
            try:
                yield
            finally:
                if self.metrics is not None:
                    self.metrics.stage_observe(name, time.perf_counter() - t0)

    def align_outcome(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.align_outcome(reason)

    def pixels(self, kind: str, n: int) -> None:
        """Pixels of a call the access log does not see per call (a stream: :mod:`.stream_gate`)."""
        if self.metrics is not None and n:
            self.metrics.pixels(kind, n)


OBSERVER_OFF = Observer()
