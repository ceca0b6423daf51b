"""The JSONL manifest: one record per image and run, appended as each image finishes.

Record fields (``docs/batch.md`` has the full table)::

    {"input": "a/b.png", "output": "a/b.png", "status": "ok" | "failed", "error": null | "...",
     "job": "warp", "target": "127.0.0.1:50051", "attempts": 1, "bytes": 1234, "sha256": "...",
     "matrix": [[...]] | null, "inverse": [[...]] | null,
     "convergence": {...} | null, "timings": {"read": s, "compute": s, "write": s, "total": s},
     "finished": "2026-01-01T00:00:00.000000+00:00"}

Durability: every record is written with one ``write`` and flushed (a killed client loses at most
the line being written; a torn last line is ignored when the manifest is read back); the file is
``fsync``-ed at most every ``sync_interval`` seconds and at the end, after the output folders.

``--resume`` skips an image when its **last** record says ``ok`` *and* the output named there
exists with the recorded size and SHA-256 (complete and recorded). Everything else is redone.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import threading
import time

from .files import DirSync, file_sha256
from .paths import PathError, resolve_inside, safe_relative


def load(path: pathlib.Path) -> dict[str, dict]:
    """The last record per input name; unparsable lines (a torn last line) are skipped."""
    records: dict[str, dict] = {}
    if not path.exists():
        return records
    with open(path, "rb") as fh:
        for raw in fh:
            try:
                rec = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("input"), str):
                records[rec["input"]] = rec
    return records


def is_complete(record: dict | None, output_dir: pathlib.Path, expected_output: str) -> bool:
    """The record says ``ok`` for the output this run would write, and that file is intact.
    Output names read from the manifest are checked like any other name from a file."""
    if not record or record.get("status") != "ok" or record.get("output") != expected_output:
        return False
    try:
        path = resolve_inside(output_dir, safe_relative(record["output"], "manifest output"), "manifest output")
        st = path.stat()
    except (PathError, OSError, TypeError):
        return False
    if not path.is_file() or st.st_size != record.get("bytes"):
        return False
    return file_sha256(path) == record.get("sha256")


class Writer:
    """Appends records (thread-safe); ``fsync`` batched by time (see module docstring)."""

    def __init__(self, path: pathlib.Path, *, append: bool, dirsync: DirSync, fsync: bool = True,
                 sync_interval: float = 1.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "ab" if append else "wb")
        if append and self._fh.tell() > 0:  # finish a torn last line from a killed run
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write(b"\n")
        self._dirsync = dirsync
        self._fsync = fsync
        self._interval = sync_interval
        self._last_sync = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        try:
            text = json.dumps(record, separators=(",", ":"), allow_nan=False, default=_jsonable)
        except ValueError:  # NaN/inf somewhere: strict JSON has no such numbers, write null
            text = json.dumps(_finite(record), separators=(",", ":"), allow_nan=False, default=_jsonable)
        line = (text + "\n").encode()
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            if self._fsync and time.monotonic() - self._last_sync >= self._interval:
                self._sync()

    def _sync(self) -> None:
        self._dirsync.flush()
        os.fsync(self._fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._fsync:
                self._sync()
            self._fh.close()


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):
        return _finite(value.tolist())
    return value


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
