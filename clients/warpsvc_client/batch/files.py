"""Reading inputs and writing outputs so that nothing is ever half-written.

An output is written to a temporary file *in the same folder* (same file system, so the rename
is atomic), flushed and ``fsync``-ed, then moved over the final name with ``os.replace``. A reader
(or a ``--resume``) therefore sees either the old state or the complete new file, never a
partial one; a killed run leaves at most ``.<name>.<random>.warpsvc-tmp`` files, which the next
run on the same folder deletes (:func:`sweep_temp_files`) while it holds the folder's lock.
Folder entries are made durable with :class:`DirSync` before the manifest records them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import stat
import tempfile
import threading
import time

from .paths import TEMP_MARK

LOCK_NAME = ".warpsvc-batch.lock"


class InputError(OSError):
    """An input that cannot be read as a file (not a regular file, unreadable)."""


def read_input(path: pathlib.Path) -> bytes:
    """The bytes of a regular file. FIFOs, sockets, devices and folders are refused before
    opening (a FIFO would block), and the file is opened non-blocking as a second guard."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise InputError(f"cannot stat input: {err.strerror}") from err
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a file"
        raise InputError(f"input is {kind}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise InputError(f"cannot open input: {err.strerror}") from err
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # swapped between stat and open
            raise InputError("input is not a regular file")
        return fh.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: pathlib.Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_MARK)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_temp(path: pathlib.Path, data: bytes) -> str:
    """First half of :func:`atomic_write`: ``data`` in a new temporary file next to ``path``
    (not yet synced); returns its name for :func:`commit_temp`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_MARK)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
    except BaseException:
        discard_temp(tmp)
        raise
    return tmp


def commit_temp(tmp: str, path: pathlib.Path, *, fsync: bool = True) -> None:
    """Second half: fsync the temporary file (any process may have written it) and rename it
    over ``path``."""
    try:
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        discard_temp(tmp)
        raise


def discard_temp(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DirSync:
    """Folders whose entries changed since the last :meth:`flush`; flushing fsyncs each once
    (so a manifest record made durable after it never points at a rename still in flight)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._dirs: set[pathlib.Path] = set()
        self._lock = threading.Lock()

    def add(self, path: pathlib.Path) -> None:
        if self.enabled:
            with self._lock:
                self._dirs.add(path.parent)

    def flush(self) -> None:
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for d in dirs:
            try:
                fsync_dir(d)
            except OSError:  # pragma: no cover - a folder removed under us: nothing to make durable
                pass


def sweep_temp_files(output_dir: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporary files a killed run left under ``output_dir``; returns them."""
    removed = []
    for dirpath, _dirs, files in os.walk(output_dir):
        for f in files:
            if f.startswith(".") and f.endswith(TEMP_MARK):
                p = pathlib.Path(dirpath) / f
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:  # pragma: no cover
                    pass
    return removed


class FolderLock:
    """An exclusive ``flock`` on ``OUTPUT_DIR/.warpsvc-batch.lock``: one run per output folder,
    so sweeping temporary files never deletes another live run's file."""

    def __init__(self, output_dir: pathlib.Path, wait: float = 10.0):
        self.path = output_dir / LOCK_NAME
        self.wait = wait  # a killed run's worker processes may hold it for a moment
        self._fh = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._fh.close()
                    raise OSError(f"another warpsvc-batch run is writing to {self.path.parent}") from None
                time.sleep(0.1)

    def __exit__(self, *exc):
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        self._fh.close()
