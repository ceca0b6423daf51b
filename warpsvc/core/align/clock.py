"""The stopping rule of one :func:`warpsvc.align` call: a time budget, the caller's cancellation,
and the decision to give up *before* a stage that cannot be interrupted and would not fit.

Iterations ask :meth:`Clock.stop_reason`; set-up stages call :meth:`Clock.check`, which raises
:class:`Stopped`. A single OpenCV call (one SIFT detection of a large image: ~1.7 s at 2 MP of
detector input here) cannot be interrupted, so a deadline passing inside it was seen only
after it: a gRPC Align with a 0.3 s deadline on a 3000x3000 pair held its worker for 2.5-3.1 s.
:meth:`Clock.fits` lets such a stage ask first whether even a lower bound of its cost fits the
time left (:meth:`Clock.remaining`: the budget's, or the caller's deadline when ``should_stop``
has a ``remaining()`` -- the server's does), and :meth:`Clock.give_up` stops the call at once
when it does not.
"""

from __future__ import annotations

import time

from .result import CANCELLED, TIME_BUDGET


class Stopped(Exception):
    """Raised by :meth:`Clock.check` (set-up stages: pyramids, Jacobians, feature search) when the
    clock says stop; ``reason`` is ``TIME_BUDGET`` or ``CANCELLED``."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Clock:
    """Shared stopping rule: a time budget and an optional cancellation callable. Once it has
    said stop it keeps saying so without asking ``should_stop`` again."""

    def __init__(self, budget, should_stop):
        self.start = time.perf_counter()
        self.deadline = None if budget is None else self.start + budget
        self.should_stop = should_stop
        self._stopped = None

    def stop_reason(self):
        if self._stopped is None:
            if self.deadline is not None and time.perf_counter() > self.deadline:
                self._stopped = TIME_BUDGET
            elif self.should_stop is not None and self.should_stop():
                self._stopped = CANCELLED
        return self._stopped

    def check(self) -> None:
        reason = self.stop_reason()
        if reason is not None:
            raise Stopped(reason)

    __call__ = check  # a Clock is itself a ``check`` callable (with :meth:`fits` / :meth:`give_up`)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _caller_remaining(self):
        remaining = getattr(self.should_stop, "remaining", None)
        return remaining() if callable(remaining) else None

    def remaining(self) -> float | None:
        """Seconds left: the least of the budget's and the caller's (``should_stop.remaining()``,
        when it has one); ``None`` when neither bounds the call."""
        budget = None if self.deadline is None else self.deadline - time.perf_counter()
        caller = self._caller_remaining()
        return budget if caller is None else caller if budget is None else min(budget, caller)

    def fits(self, seconds: float) -> bool:
        """Whether a stage that takes at least ``seconds`` can end before the clock runs out."""
        left = self.remaining()
        return left is None or seconds <= left

    def give_up(self) -> None:
        """Stop now, as if the time had run out (the next uninterruptible stage would not end in
        time): ``TIME_BUDGET`` when the budget is the nearer limit, else ``CANCELLED`` (the
        caller's deadline), with ``should_stop.expire()`` called when it has one (the server then
        answers DEADLINE_EXCEEDED at once). Raises :class:`Stopped`."""
        if self._stopped is None:
            budget = None if self.deadline is None else self.deadline - time.perf_counter()
            caller = self._caller_remaining()
            if budget is not None and (caller is None or budget <= caller):
                self._stopped = TIME_BUDGET
            else:
                self._stopped = CANCELLED
                expire = getattr(self.should_stop, "expire", None)
                if callable(expire):
                    expire()
        raise Stopped(self._stopped)
