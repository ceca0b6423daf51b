"""A least-recently-used cache bounded in bytes, for arrays that depend on shapes only (the warp
Jacobians of a level's pixel grid): repeated alignments of one template size (a sequence, a
server's steady traffic) reuse them, while a stream of new sizes costs at most ``max_bytes``
of memory held between calls (an entry-count bound is no bound: one entry of a 4 Mpx grid
weighed ~380 MiB)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class ByteLRU:
    """``get(key, make)``: the cached tuple of arrays for ``key``, else ``make()``'s (stored read-only
    unless larger than ``max_bytes`` on its own; least recently used entries are evicted until
    the total fits). Thread-safe; ``make`` runs outside the lock (two threads missing the same
    key both compute it; the values are equal)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key, make):
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit[0]
        value = tuple(make())
        for a in value:
            a.setflags(write=False)
        size = sum(int(np.asarray(a).nbytes) for a in value)
        if size > self.max_bytes:
            return value
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, size)
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old) = self._entries.popitem(last=False)
                self._bytes -= old
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
