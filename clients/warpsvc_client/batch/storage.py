"""Where inputs are read and outputs written: a local folder, or any fsspec URL.

Two stores with one interface (``read``, ``write_atomic``, ``stage``/``commit``, ``digest``,
``list``, ``canonical``):

* :class:`LocalStore` (plain paths and ``file://``): every access walks the relative name one
  component at a time with ``openat(parent_fd, part, O_NOFOLLOW)`` from a descriptor of the root
  folder, so no symbolic link is ever followed beneath the root -- not even one swapped in after
  planning (the open of the link itself fails with ``ELOOP``; a file swapped in after the open is
  not the one read). Outputs are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` as a temporary file in
  their folder (by descriptor), ``fsync``-ed, and renamed with ``renameat`` on the same folder
  descriptor: a reader sees the old file or the complete new one.
* :class:`FsspecStore` (``s3://``, ``gs://``, ``memory://``, ...): keys are ``prefix/<relative
  name>`` (names are checked by :func:`.paths.safe_relative` first, so none leaves the prefix).
  On object stores a PUT is atomic (an object appears only complete), so outputs are written in
  one ``pipe_file``; other fsspec file systems get a temporary name and a ``mv``.

Temporary names carry the run's id (``.<name>.<run id>-<random>.warpsvc-tmp``): a run deletes only
the temporary files of runs recorded in its own folder's lock file (:mod:`.files`), never those
of another live run that writes to a sub-folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import re
import secrets
import stat
from dataclasses import dataclass

from .paths import TEMP_MARK, MissingDependencyError, PathError, safe_relative

OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_RE = re.compile(r"^\..+\.(?P<run>[0-9a-f]{12})-[0-9a-f]{8}" + re.escape(TEMP_MARK) + "$")
# Protocols whose single PUT is atomic (an object is visible only once complete).
ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}


class InputError(OSError):
    """An input that cannot be read as a regular file beneath INPUT (symlink, FIFO, unreadable)."""


def new_run_id() -> str:
    return secrets.token_hex(6)


def temp_name(name: str, run_id: str) -> str:
    return f".{name}.{run_id}-{secrets.token_hex(4)}{TEMP_MARK}"


def temp_run_id(name: str) -> str | None:
    """The run id in a temporary file's name, or ``None`` if the name is not one of ours."""
    m = _TEMP_RE.match(name)
    return m.group("run") if m else None


def is_url(text) -> bool:
    return isinstance(text, str) and "://" in text


def open_store(location, storage_options: dict | None = None, *, fsync: bool = True):
    """A :class:`LocalStore` for a path or ``file://`` URL, else an :class:`FsspecStore`."""
    if isinstance(location, (LocalStore, FsspecStore)):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if is_url(text):
        return FsspecStore(text.rstrip("/"), json.dumps(storage_options or {}, sort_keys=True))
    return LocalStore(text, fsync=fsync)


def _sha_of_fd(fd: int) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    while block := os.read(fd, 1 << 20):
        h.update(block)
        size += len(block)
    return size, h.hexdigest()


def _symlink_error(what: str, rel: str, part: str) -> PathError:
    return PathError(f"{what}: {rel!r}: {part!r} is a symbolic link (nothing beneath the folder is followed)")


@dataclass(frozen=True)
class LocalStore:
    """A local folder; every access by descriptor beneath it (see the module docstring)."""

    root: str
    fsync: bool = True

    @property
    def url(self) -> str:
        return self.root

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.root)

    def exists(self) -> bool:
        return os.path.exists(self.root)

    def is_dir(self) -> bool:
        return os.path.isdir(self.root)

    def canonical(self, rel: str | None = None) -> str:
        """The real path of ``root/rel`` (symlinks resolved), refused when it leaves the root."""
        root = os.path.realpath(self.root)
        if rel is None:
            return root
        real = os.path.realpath(os.path.join(self.root, rel))
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise PathError(f"{rel!r} resolves outside {self.root} (through a symlink)")
        return real

    # -- descriptors ---------------------------------------------------------------------------
    def _parent_fd(self, rel: str, *, create: bool, what: str) -> tuple[int, str]:
        """A descriptor of ``rel``'s folder, walked component by component without following
        links (made when ``create``), and the final name."""
        parts = safe_relative(rel, what).parts
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, OPEN_DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                    nxt = os.open(part, OPEN_DIR, dir_fd=fd)
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _symlink_error(what, rel, part) from None
                    raise
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def read(self, rel: str) -> bytes:
        """The bytes of the regular file ``root/rel``, opened beneath the root without following
        links and non-blocking (a FIFO is refused, not waited on)."""
        try:
            pfd, name = self._parent_fd(rel, create=False, what="input")
        except PathError:
            raise
        except OSError as err:
            raise InputError(f"cannot open input: {err.strerror}") from err
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise _symlink_error("input", rel, name) from None
                raise InputError(f"cannot open input: {err.strerror}") from err
        finally:
            os.close(pfd)
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):
                kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a file"
                raise InputError(f"input is {kind}, not a regular file")
            return fh.read()

    def _write_temp(self, pfd: int, name: str, data: bytes, run_id: str, sync: bool) -> str:
        tmp = temp_name(name, run_id)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=pfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink(tmp, pfd)
            raise
        os.close(fd)
        return tmp

    @contextlib.contextmanager
    def _folder(self, rel: str, *, create: bool):
        """``(folder descriptor, final name)`` of the output ``rel``, closed afterwards."""
        pfd, name = self._parent_fd(rel, create=create, what="output")
        try:
            yield pfd, name
        finally:
            os.close(pfd)

    @staticmethod
    def _rename_in(pfd: int, tmp: str, name: str, sync: bool) -> None:
        """fsync ``tmp`` (when ``sync``) and rename it over ``name``, both in folder ``pfd``;
        the temporary file is removed if that fails."""
        try:
            if sync:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            os.replace(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            _unlink(tmp, pfd)
            raise

    def write_atomic(self, rel: str, data: bytes, run_id: str) -> None:
        with self._folder(rel, create=True) as (pfd, name):
            self._rename_in(pfd, self._write_temp(pfd, name, data, run_id, self.fsync), name, sync=False)

    can_stage = True

    def stage(self, rel: str, data: bytes, run_id: str) -> str:
        """First half of :meth:`write_atomic` (a pool process writes the temporary file)."""
        with self._folder(rel, create=True) as (pfd, name):
            return self._write_temp(pfd, name, data, run_id, sync=False)

    def commit(self, rel: str, tmp: str) -> None:
        """Second half: fsync the staged file and rename it over ``rel`` (both by descriptor)."""
        with self._folder(rel, create=False) as (pfd, name):
            self._rename_in(pfd, tmp, name, sync=self.fsync)

    def digest(self, rel: str) -> tuple[int, str] | None:
        """``(size, sha256)`` of the regular file ``rel`` (no link followed), else ``None``."""
        try:
            pfd, name = self._parent_fd(rel, create=False, what="output")
        except (OSError, PathError):
            return None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except OSError:
            return None
        finally:
            os.close(pfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _sha_of_fd(fd)
        finally:
            os.close(fd)

    def fsync_folder(self, rel_folder: str) -> None:
        """fsync the folder ``rel_folder`` ('' is the root) so its renamed entries are durable."""
        if rel_folder in ("", "."):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:  # the descriptor of the folder holding rel_folder/<any name> is rel_folder's own
            fd, _ = self._parent_fd(rel_folder + "/entry", create=False, what="output")
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open_file(self, rel: str, flags: int, what: str) -> int:
        """A descriptor of ``root/rel`` opened with ``flags | O_NOFOLLOW`` (folders made):
        the manifest and lock file; a symlink or a hard-linked file there is refused."""
        pfd, name = self._parent_fd(rel, create=True, what=what)
        try:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=pfd)
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise _symlink_error(what, rel, name) from None
                raise
        finally:
            os.close(pfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            os.close(fd)
            raise PathError(f"{what}: {os.path.join(self.root, rel)} is not a regular file of its own "
                            "(hard-linked or special); refusing to write it")
        return fd

    def list(self, skip: str | None = None):
        """Relative POSIX names of every file beneath the root (hidden entries, our temporary
        files and the ``skip`` folder -- a nested output -- left out), not following links."""
        skip_real = os.path.realpath(skip) if skip else None
        for dirpath, dirnames, filenames in os.walk(self.root):
            kept = []
            for d in sorted(dirnames):
                full = os.path.join(dirpath, d)
                if d.startswith(".") or (skip_real and os.path.realpath(full) == skip_real):
                    continue
                kept.append(d)
            dirnames[:] = kept
            for f in filenames:
                if f.startswith(".") or TEMP_MARK in f:
                    continue
                yield pathlib.Path(dirpath, f).relative_to(self.root).as_posix()


def _unlink(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


_FS_CACHE: dict = {}


@dataclass(frozen=True)
class FsspecStore:
    """A prefix of an fsspec file system (``s3://bucket/prefix``); see the module docstring."""

    url: str
    options_json: str = "{}"

    @property
    def fs_path(self):
        key = (self.url, self.options_json, os.getpid())  # per process: s3fs is not fork-safe
        if key not in _FS_CACHE:
            try:
                import fsspec
            except ImportError:  # pragma: no cover - exercised only without the extra
                raise MissingDependencyError(f"{self.url}: URLs need fsspec (pip install 'warpsvc[batch]'; "
                                             "s3:// also needs s3fs: 'warpsvc[s3]')") from None
            try:
                fs, path = fsspec.core.url_to_fs(self.url, **json.loads(self.options_json))
            except ImportError as err:  # e.g. s3:// without s3fs: fsspec names the package
                raise MissingDependencyError(f"{self.url}: {err}") from None
            _FS_CACHE[key] = (fs, path.rstrip("/"))
        return _FS_CACHE[key]

    @property
    def fs(self):
        return self.fs_path[0]

    def key(self, rel: str) -> str:
        return f"{self.fs_path[1]}/{safe_relative(rel, 'name').as_posix()}"

    @property
    def atomic_put(self) -> bool:
        protocol = self.fs.protocol
        names = {protocol} if isinstance(protocol, str) else set(protocol)
        return bool(names & ATOMIC_PUT)

    def exists(self) -> bool:
        return self.fs.exists(self.fs_path[1])

    def is_dir(self) -> bool:
        fs, path = self.fs_path
        return fs.isdir(path) or (not fs.exists(path) and bool(fs.find(path, maxdepth=1)))

    def canonical(self, rel: str | None = None) -> str:
        if rel is None:
            return f"{self.fs.unstrip_protocol(self.fs_path[1])}"
        return self.fs.unstrip_protocol(self.key(rel))

    def read(self, rel: str) -> bytes:
        try:
            return self.fs.cat_file(self.key(rel))
        except FileNotFoundError as err:
            raise InputError(f"cannot open input: no such object {self.key(rel)!r}") from err

    def write_atomic(self, rel: str, data: bytes, run_id: str) -> None:
        key = self.key(rel)
        if self.atomic_put:
            self.fs.pipe_file(key, data)
            return
        parent, _, name = key.rpartition("/")
        tmp = f"{parent}/{temp_name(name, run_id)}"
        self.fs.pipe_file(tmp, data)
        try:
            self.fs.mv(tmp, key)
        except BaseException:
            self.fs.rm_file(tmp)
            raise

    can_stage = False

    def digest(self, rel: str) -> tuple[int, str] | None:
        try:
            data = self.fs.cat_file(self.key(rel))
        except (OSError, PathError):
            return None
        return len(data), hashlib.sha256(data).hexdigest()

    def fsync_folder(self, rel_folder: str) -> None:
        """Object stores have no folders to sync: a finished PUT is durable."""

    def list(self, skip: str | None = None):
        fs, root = self.fs_path
        skip_key = None
        if skip:
            skip_key = fs.strip_protocol(skip).rstrip("/") + "/"
        for key in sorted(fs.find(root)):
            if skip_key and (key + "/").startswith(skip_key):
                continue
            rel = key[len(root):].lstrip("/")
            if not rel or any(p.startswith(".") for p in rel.split("/")) or TEMP_MARK in rel:
                continue
            yield rel

    def sweep(self, run_ids: set[str]) -> list[str]:
        """Delete temporary objects of the given runs under the prefix."""
        fs, root = self.fs_path
        removed = []
        for key in fs.find(root):
            if temp_run_id(key.rsplit("/", 1)[-1]) in run_ids:
                fs.rm_file(key)
                removed.append(key)
        return removed
