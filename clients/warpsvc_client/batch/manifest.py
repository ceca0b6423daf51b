"""The JSONL manifest: one :class:`~.record.Record` line per image and run, the source of truth.

* Local (a path): appended as each image finishes, one ``write(2)`` per record on a descriptor
  opened ``O_NOFOLLOW`` (a symlink or hard link planted at the manifest's name is refused, never
  followed or truncated). A killed client loses at most the line being written; a torn last line
  is ignored when read back and the next run starts on a fresh line. The file is ``fsync``-ed at
  most every ``sync_interval`` seconds and at the end, after the output folders
  (:class:`~.files.DirSync`). A failed write (``ENOSPC``) fails that image's record -- its output
  is not recorded, so ``--resume`` redoes it -- and the run goes on; the next line starts fresh.
* Remote (a URL, e.g. ``OUTPUT=s3://...``): the records are kept and the whole manifest object is
  rewritten with one atomic PUT at most every ``sync_interval`` seconds and at the end. A killed
  client loses the records since the last upload; ``--resume`` then redoes those images (their
  outputs are overwritten atomically), so nothing unrecorded is ever trusted.

``--resume`` skips an image when its **last** record says ``ok`` for the output this run would
write, was made with this run's settings (the record's ``settings`` digest: job, options,
transform or reference, :func:`.jobs.settings_digest`) *and* that output exists with the
recorded size and SHA-256 (complete, recorded and made the way this run would make it).
"""

from __future__ import annotations

import json
import os
import threading
import time

from .paths import PathError, safe_relative
from .record import Record
from .storage import FsspecStore, LocalStore, is_url, open_store


def parse(raw: bytes) -> dict[str, Record]:
    """The last record per input name; unparsable lines (a torn last line) are skipped."""
    records: dict[str, Record] = {}
    for line in raw.split(b"\n"):
        try:
            rec = Record.from_dict(json.loads(line))
        except (ValueError, UnicodeDecodeError):
            continue
        if rec is not None:
            records[rec.input] = rec
    return records


def location(manifest_arg, outputs) -> tuple[object, str]:
    """``(store, name)`` of the manifest: ``--manifest`` (a path or URL), else
    ``OUTPUT/manifest.jsonl``."""
    if manifest_arg is None:
        return outputs, "manifest.jsonl"
    text = os.fspath(manifest_arg)
    head, _, name = text.rstrip("/").rpartition("/")
    if not name:
        raise PathError(f"--manifest {text!r}: not a file name")
    if is_url(text) and not text.startswith("file://"):
        return FsspecStore(head, outputs.options_json if isinstance(outputs, FsspecStore) else "{}"), name
    return LocalStore(head or ".", fsync=getattr(outputs, "fsync", True)), name


def load(store, name: str = "manifest.jsonl") -> dict[str, Record]:
    if isinstance(store, (str, os.PathLike)):  # a path to the manifest file
        text = os.fspath(store)
        head, _, name = text.rpartition("/")
        store = LocalStore(head or ".")
    if isinstance(store, FsspecStore):
        try:
            return parse(store.fs.cat_file(store.key(name)))
        except FileNotFoundError:
            return {}
    try:
        fd = store.open_file(name, os.O_RDONLY, "manifest")
    except FileNotFoundError:
        return {}
    with os.fdopen(fd, "rb") as fh:
        return parse(fh.read())


def is_complete(record: Record | dict | None, outputs, expected_output: str, settings: str | None = None) -> bool:
    """The record says ``ok`` for the output this run would write, with ``settings`` (the
    current run's digest; ``None``: not checked, the stack job checks its own), and that object
    is intact. Output names read from the manifest are checked like any other name from a file."""
    if isinstance(record, dict):
        record = Record.from_dict({"job": "", **record})
    if not record or record.status != "ok" or record.output != expected_output:
        return False
    if settings is not None and record.settings != settings:
        return False
    try:
        rel = safe_relative(record.output, "manifest output").as_posix()
    except PathError:
        return False
    found = open_store(outputs).digest(rel)
    return found is not None and found == (record.bytes, record.sha256)


class Writer:
    """Appends records to a local manifest (thread-safe); see the module docstring."""

    def __init__(self, store: LocalStore, name: str, *, append: bool, dirsync, fsync: bool = True,
                 sync_interval: float = 1.0):
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND
        self.path = os.path.join(store.root, name)
        self._fd = store.open_file(name, flags, "manifest")
        self._torn = False
        if not append:
            os.ftruncate(self._fd, 0)
        else:
            size = os.fstat(self._fd).st_size
            self._torn = size > 0 and os.pread(self._fd, 1, size - 1) != b"\n"  # a killed run's torn line
        self._dirsync = dirsync
        self._fsync = fsync
        self._interval = sync_interval
        self._last_sync = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: Record) -> None:
        """Append one line; ``OSError`` (``ENOSPC``, ``EIO``) when it could not be written whole
        (the next line then starts on a fresh line, so no record is glued to a torn one)."""
        line = record.to_line()
        with self._lock:
            if self._torn:
                line = b"\n" + line
            view = memoryview(line)
            size = os.fstat(self._fd).st_size
            try:
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                if len(view) < len(line):  # part of the line went out: take it back (we are the only
                    try:                   # writer: the folder lock), or start the next line afresh
                        os.ftruncate(self._fd, size)
                    except OSError:
                        self._torn = True
                raise
            self._torn = False
            if self._fsync and time.monotonic() - self._last_sync >= self._interval:
                self._sync()

    def _sync(self) -> None:
        self._dirsync.flush()
        os.fsync(self._fd)
        self._last_sync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            try:
                if self._fsync:
                    self._sync()
            finally:
                os.close(self._fd)


class RemoteWriter:
    """Keeps the records and PUTs the whole manifest object (see the module docstring)."""

    def __init__(self, store: FsspecStore, name: str, *, append: bool, sync_interval: float = 1.0):
        self.store, self.name = store, name
        self.path = store.canonical(name)
        self._lines: list[bytes] = []
        if append:
            try:
                old = store.fs.cat_file(store.key(name))
            except FileNotFoundError:
                old = b""
            self._lines = [ln + b"\n" for ln in old.split(b"\n") if ln.strip()]
        self._interval = sync_interval
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def write(self, record: Record) -> None:
        with self._lock:
            self._lines.append(record.to_line())
            if time.monotonic() - self._last >= self._interval:
                self._upload()

    def _upload(self) -> None:
        t0 = time.monotonic()
        self.store.fs.pipe_file(self.store.key(self.name), b"".join(self._lines))
        # at most ~10 % of the time goes into uploads on a large manifest
        self._last = time.monotonic() + 9 * (time.monotonic() - t0)

    def close(self) -> None:
        with self._lock:
            self._upload()


def open_writer(store, name: str, *, append: bool, dirsync, fsync: bool):
    if isinstance(store, FsspecStore):
        return RemoteWriter(store, name, append=append)
    return Writer(store, name, append=append, dirsync=dirsync, fsync=fsync)
