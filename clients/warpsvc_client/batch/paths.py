"""Which files are images to process, where their outputs go, and the guards on both trees.

Guards (each has a test):

* an output folder inside the input tree is refused unless ``allow_nested`` (and then the output
  tree is never discovered as input);
* no output path may be an input file (inputs are never overwritten);
* names that come from a file (the ``--transforms`` manifest, a ``--resume`` manifest) must be
  relative, without ``..``, and stay inside their folder after resolution (symlinks included);
* file names are escaped for terminals (:func:`printable`) and for drawing (:func:`ascii_label`).
"""

from __future__ import annotations

import fnmatch
import pathlib
from dataclasses import dataclass

IMAGE_EXTS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
# Files the batch client itself writes at the top of OUTPUT_DIR.
RESERVED = ("manifest.jsonl", "report.html", "contact_sheet.png", ".warpsvc-batch.lock")
TEMP_MARK = ".warpsvc-tmp"


class PathError(ValueError):
    """A path that must not be used (escapes its folder, overwrites an input, ...)."""


class MissingDependencyError(RuntimeError):
    """An option needs an optional dependency that is not installed (the message names the extra)."""


def printable(name) -> str:
    """``name`` safe for a terminal or a log line: control characters (newlines, ESC of ANSI
    sequences, DEL, C1), bytes that were not UTF-8 (surrogate escapes) and other unprintable
    characters become ``\\xNN`` / ``\\uNNNN`` escapes, so a file name cannot forge lines or
    colours. Printable Unicode is kept."""
    text = str(name)
    out = []
    for ch in text:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's escape of a non-UTF-8 byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def ascii_label(name) -> str:
    """``name`` as printable ASCII (for drawing with OpenCV's Hershey fonts, which take ASCII
    only: anything else is escaped, so a non-UTF-8 name cannot crash ``cv2.putText``)."""
    return printable(name).encode("ascii", "backslashreplace").decode("ascii")


def image_format(path) -> str | None:
    """``png`` / ``jpeg`` / ``tiff`` from the name's extension (case-insensitive), else ``None``."""
    return IMAGE_EXTS.get(pathlib.PurePath(path).suffix.lower())


def safe_relative(name: str, what: str = "name") -> pathlib.PurePosixPath:
    """``name`` as a relative POSIX path that cannot leave its folder: absolute paths, drive
    letters, ``..`` components and empty names are rejected with :class:`PathError`."""
    if not isinstance(name, str) or not name.strip():
        raise PathError(f"{what}: empty path")
    if "\x00" in name:
        raise PathError(f"{what}: NUL byte in {name!r}")
    text = name.replace("\\", "/")
    pure = pathlib.PurePosixPath(text)
    if pure.is_absolute() or pathlib.PureWindowsPath(name).drive or text.startswith("~"):
        raise PathError(f"{what}: absolute path {name!r} is not allowed (must be relative)")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"{what}: {name!r} contains '..' (must stay inside its folder)")
    if not parts:
        raise PathError(f"{what}: {name!r} names the folder itself")
    return pathlib.PurePosixPath(*parts)


def is_under(child: str, parent: str) -> bool:
    """Canonical names (real paths or full URLs): ``child`` is ``parent`` or beneath it."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _store(location):
    from .storage import open_store

    return open_store(location)


def check_trees(inputs, outputs, allow_nested: bool) -> None:
    """Refuse an output folder (or prefix) equal to, or (unless ``allow_nested``) inside, the
    input tree. ``inputs``/``outputs``: stores, paths or URLs."""
    inputs, outputs = _store(inputs), _store(outputs)
    if not inputs.is_dir():
        raise PathError(f"INPUT {inputs.url} is not a folder")
    if outputs.exists() and not outputs.is_dir():
        raise PathError(f"OUTPUT {outputs.url} exists and is not a folder")
    if inputs.canonical() == outputs.canonical():
        raise PathError("OUTPUT_DIR is INPUT_DIR: inputs are never overwritten; choose another folder")
    if is_under(outputs.canonical(), inputs.canonical()) and not allow_nested:
        raise PathError(f"OUTPUT_DIR {outputs.url} is inside INPUT_DIR {inputs.url}; pass --allow-nested-output "
                        "to accept it (the output tree is then skipped during discovery)")


def _matches(rel: str, patterns) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def selected(rel: str, include=(), exclude=()) -> bool:
    """Glob filter on the relative POSIX path (or the bare file name): included (when any include
    pattern is given) and not excluded."""
    if include and not _matches(rel, include):
        return False
    return not _matches(rel, exclude)


def discover(inputs, *, include=(), exclude=(), skip=None) -> list[str]:
    """Relative POSIX paths of the images under ``inputs`` (a store, path or URL), sorted.

    Every non-folder entry with a PNG/JPEG/TIFF extension counts (a FIFO or an unreadable file
    named ``x.png`` is listed, then recorded as failed, not silently dropped). Hidden entries, the
    batch client's temporary files and the ``skip`` tree (a nested output folder) are left out.
    """
    store = _store(inputs)
    skip_text = None if skip is None else getattr(skip, "url", None) or str(skip)
    return sorted(rel for rel in store.list(skip=skip_text)
                  if image_format(rel) is not None and selected(rel, include, exclude))


def shard(names: list[str], index: int, count: int) -> list[str]:
    """The ``index``-th of ``count`` interleaved slices of the *sorted* names (``--shard I/N``):
    deterministic, disjoint, covering, sizes within one of each other."""
    if count < 1 or not 0 <= index < count:
        raise PathError(f"--shard {index}/{count}: need 0 <= INDEX < COUNT")
    return sorted(names)[index::count]


@dataclass(frozen=True)
class Planned:
    """One image: its input (relative to INPUT_DIR) and output (relative to OUTPUT_DIR) names."""

    input: str
    output: str
    error: str | None = None  # set when the image cannot be processed (bad name, collision)


def with_suffix(rel: str, suffix: str) -> str:
    """``a/b.png`` -> ``a/b.tif``; keeps the name when the suffix is already right."""
    p = pathlib.PurePosixPath(rel)
    if p.suffix.lower() == suffix.lower():
        return rel
    return p.with_suffix(suffix).as_posix()


def plan(inputs: list[tuple[str, str]], input_dir, output_dir) -> list[Planned]:
    """Check ``(input, output)`` name pairs: safe names, outputs inside OUTPUT, no output
    overwriting an input, no two images writing the same output (both get an error).
    ``input_dir``/``output_dir``: stores, paths or URLs (compared by canonical name: real paths
    with symlinks resolved, or full URLs)."""
    in_store, out_store = _store(input_dir), _store(output_dir)
    in_root, out_root = in_store.canonical(), out_store.canonical()
    in_real = set()
    for rel_in, _ in inputs:
        try:
            in_real.add(in_store.canonical(safe_relative(rel_in, "input").as_posix()))
        except PathError:
            pass
    owners: dict[str, list[int]] = {}
    nested = out_root != in_root and is_under(out_root, in_root)  # OUTPUT inside INPUT (allowed by now)
    out: list[Planned] = []
    for rel_in, rel_out in inputs:
        error = None
        try:
            _canonical(in_store, safe_relative(rel_in, "input").as_posix(), "input")
            rel_o = safe_relative(rel_out, "output")
            if rel_o.as_posix() in RESERVED or TEMP_MARK in rel_o.name:
                raise PathError(f"output: {rel_out!r} is a name the batch client reserves")
            real = _canonical(out_store, rel_o.as_posix(), "output")
            if real in in_real or (not nested and is_under(real, in_root)):
                raise PathError(f"output: {rel_out!r} would land on an input (inside INPUT_DIR); "
                                "inputs are never overwritten")
            rel_out = rel_o.as_posix()
        except PathError as err:
            error = str(err)
        out.append(Planned(rel_in, rel_out, error))
        if error is None:
            owners.setdefault(rel_out, []).append(len(out) - 1)
    for rel_out, idx in owners.items():
        if len(idx) > 1:
            names = ", ".join(out[i].input for i in idx)
            for i in idx:
                out[i] = Planned(out[i].input, rel_out, f"output: {rel_out!r} would be written by several images "
                                                        f"({names})")
    return out


def _canonical(store, rel: str, what: str) -> str:
    try:
        return store.canonical(rel)
    except PathError as err:
        raise PathError(f"{what}: {err}") from None
