"""Fast updates of prometheus-client metric children: the per-call hot path of :mod:`.metrics`.

prometheus-client's public ``inc`` / ``observe`` cost 4-9 us each in multiprocess mode (a global
lock, an ``os.getpid()`` fork check, two dict look-ups and a slice assignment into the mmap file
per value; a histogram observation is two of them plus a Python loop over the buckets), and a call
of the server updates ~15 values: ~90 us per call measured, 3-4 % of a 3 ms Align. This module
writes the same values into the same files with the same layout, a few hundred ns each:

* a :class:`Cell` is one stored float of one child (a counter's or gauge's value, a histogram's
  ``_sum`` or one of its per-bucket counts), resolved once from the child: the ``MmapedDict`` file
  and the key of the value (multiprocess mode), or the in-memory ``MutexValue``;
* :class:`Cells` holds one ``threading.Lock`` for all of them; :meth:`Cells.add` applies a batch
  of ``(cell, amount)`` pairs under one acquisition (a call commits its updates in two or three
  batches, not ~15 lock round trips);
* a :class:`HistogramCells` finds the bucket with ``bisect`` (the bucket ``i`` with
  ``upper_bounds[i-1] < v <= upper_bounds[i]``: prometheus-client stores per-bucket counts and the
  collector accumulates them into the cumulative ``le`` series).

Layout written (prometheus-client ``mmap_dict``): at the key's offset, two float64 ``(value,
timestamp)``; counters and histograms write timestamp 0, as ``MmapedValue.inc`` does. The
client's own ``_value`` float is kept in step, so its ``get()`` (and in-memory collection) reads
what was written. The key's offset is looked up on each write (``_positions[key]``, one dict
look-up): the file's mmap may be replaced when another child is added (it grows), the offset
never moves.

These are prometheus-client internals (``_value``, ``_file``, ``_key``, ``_positions``, ``_m``,
``_sum``, ``_buckets``, ``_upper_bounds``; checked against 0.26). :func:`supported` tells whether
a child has them; where it does not, :class:`Cells` falls back to the public ``inc`` per value
(correct, slower). tests/test_metrics_cells.py compares both paths value for value.
"""

from __future__ import annotations

import bisect
import struct
import threading

_PACK_TWO_INTO = struct.Struct("dd").pack_into


class Cell:
    """One stored float (see the module docstring); update it only through :class:`Cells`."""

    __slots__ = ("file", "key", "public", "value")

    def __init__(self, value, public=None):
        self.value = value  # the prometheus-client value object (MmapedValue or MutexValue)
        self.file = getattr(value, "_file", None)  # MmapedDict in multiprocess mode, else None
        self.key = getattr(value, "_key", None)
        self.public = public  # fallback: a callable(amount) of the public API, when internals are absent


def supported(child) -> bool:
    """Whether ``child`` (a labelled Counter/Gauge/Histogram child) exposes the internals used here."""
    values = [child._sum, *child._buckets] if hasattr(child, "_upper_bounds") else [getattr(child, "_value", None)]
    for value in values:
        if value is None or not hasattr(value, "_value"):
            return False
        if getattr(value, "_multiprocess", False):
            file = getattr(value, "_file", None)
            if file is None or not hasattr(file, "_positions") or not hasattr(file, "_m") or not hasattr(value, "_key"):
                return False
    return True


class HistogramCells:
    """The cells of one histogram child: ``sum`` and one per bucket (``+Inf`` last)."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, child, fast: bool):
        self.bounds = tuple(child._upper_bounds) if fast else None
        if fast:
            self.sum = Cell(child._sum)
            self.buckets = tuple(Cell(b) for b in child._buckets)
        else:  # one public observe() per observation
            self.sum = Cell(None, public=child.observe)
            self.buckets = ()

    def pairs(self, seconds: float) -> tuple:
        """The ``(cell, amount)`` updates of one observation."""
        if self.bounds is None:
            return ((self.sum, seconds),)
        return ((self.sum, seconds), (self.buckets[bisect.bisect_left(self.bounds, seconds)], 1.0))


class Cells:
    """Makes cells of children and applies batches of updates under one lock."""

    def __init__(self):
        self._lock = threading.Lock()

    @staticmethod
    def cell(child) -> Cell:
        """The cell of a Counter or Gauge child (``dec`` = add a negative amount)."""
        if supported(child):
            return Cell(child._value)
        return Cell(None, public=child._value.inc if hasattr(child, "_value") else child.inc)

    @staticmethod
    def histogram(child) -> HistogramCells:
        return HistogramCells(child, supported(child))

    def add(self, pairs) -> None:
        """Apply ``(cell, amount)`` pairs: one lock acquisition, one 16-byte store per cell."""
        with self._lock:
            for cell, amount in pairs:
                value = cell.value
                if value is None:
                    cell.public(amount)
                    continue
                value._value += amount
                file = cell.file
                if file is not None:
                    _PACK_TWO_INTO(file._m, file._positions[cell.key], value._value, 0.0)

    def add1(self, cell: Cell, amount: float) -> None:
        """One update (see :meth:`add`)."""
        self.add(((cell, amount),))
