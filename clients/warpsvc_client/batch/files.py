"""One run per output folder, its temporary files, and durable folder entries.

* :class:`FolderLock`: an exclusive ``flock`` on ``OUTPUT_DIR/.warpsvc-batch.lock`` (opened
  ``O_NOFOLLOW`` beneath OUTPUT_DIR: a symlink planted there is refused, never followed). The
  lock file also lists the ids of the runs whose temporary files may remain in this folder: the
  new run adds its id before it creates any, then deletes the temporary files of the earlier
  (dead: the lock was free) runs and keeps only its own id.
* :func:`sweep_temp_files` deletes temporary files of the given run ids only, walking by folder
  descriptor without following links, and never enters a sub-folder that holds a lock file of
  its own (another run's output folder: its temporary files are that run's business).
* :class:`DirSync`: folders whose entries changed; flushing fsyncs each once, before the manifest
  is made durable (so a durable ``ok`` record never points at a rename still in flight).

Atomic writes themselves are :mod:`.storage`'s (temporary file, fsync, ``renameat``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import threading
import time

from .storage import LocalStore, temp_run_id

LOCK_NAME = ".warpsvc-batch.lock"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DirSync:
    """Output folders (relative names) whose entries changed since the last :meth:`flush`."""

    def __init__(self, store=None, enabled: bool = True):
        self.store = store
        self.enabled = enabled and store is not None
        self._dirs: set[str] = set()
        self._lock = threading.Lock()

    def add(self, rel_output: str) -> None:
        if self.enabled:
            with self._lock:
                self._dirs.add(rel_output.rpartition("/")[0])

    def flush(self) -> None:
        with self._lock:
            dirs, self._dirs = self._dirs, set()
        for d in dirs:
            try:
                self.store.fsync_folder(d)
            except OSError:  # pragma: no cover - a folder removed under us: nothing to make durable
                pass


def sweep_temp_files(root: str | os.PathLike, run_ids: set[str]) -> list[str]:
    """Delete the temporary files of ``run_ids`` under ``root``; returns their relative names."""
    removed = []
    root = os.fspath(root)
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        if dirpath != root and LOCK_NAME in filenames:  # another run's output folder
            dirnames[:] = []
            continue
        for f in filenames:
            if temp_run_id(f) in run_ids:
                try:
                    os.unlink(f, dir_fd=dirfd)
                    removed.append(os.path.relpath(os.path.join(dirpath, f), root))
                except FileNotFoundError:  # pragma: no cover
                    pass
    return removed


class NoLock:
    """The lock of an object-store OUTPUT: object stores have no ``flock``: one run per OUTPUT prefix is the caller's promise."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def sweep_own(self):
        return []


class FolderLock:
    """The output folder's lock and run registry (see the module docstring)."""

    def __init__(self, store: LocalStore, run_id: str, wait: float = 10.0):
        self.store = store
        self.run_id = run_id
        self.wait = wait  # a killed run's worker processes may hold it for a moment
        self._fd = None

    def __enter__(self):
        os.makedirs(self.store.root, exist_ok=True)
        self._fd = self.store.open_file(LOCK_NAME, os.O_RDWR | os.O_CREAT, "lock file")
        deadline = time.monotonic() + self.wait
        waiting = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:  # say so: a silent wait looked like a hang, then like a normal run
                    waiting = True
                    print(f"warpsvc-batch: {self.store.root} is locked by another run (or a killed run's "
                          f"workers); waiting up to {self.wait:g} s", file=sys.stderr, flush=True)
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise OSError(f"another warpsvc-batch run is writing to {self.store.root}") from None
                time.sleep(0.1)
        earlier = self._ids()
        self._set_ids(earlier | {self.run_id})  # before this run creates any temporary file
        self.swept = sweep_temp_files(self.store.root, earlier)
        self._set_ids({self.run_id})
        return self

    def _ids(self) -> set[str]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        text = b""
        while chunk := os.read(self._fd, 65536):
            text += chunk
        return {line for line in text.decode("ascii", "replace").split() if len(line) == 12}

    def _set_ids(self, ids: set[str]) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, "".join(i + "\n" for i in sorted(ids)).encode(), 0)
        if self.store.fsync:
            os.fsync(self._fd)

    def sweep_own(self) -> list[str]:
        """At the end: temporary files of this run left by a worker that died mid-write."""
        return sweep_temp_files(self.store.root, {self.run_id})

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
