"""Which files are images to process, where their outputs go, and the guards on both trees.

Guards (each has a test):

* an output folder inside the input tree is refused unless ``allow_nested`` (and then the output
  tree is never discovered as input);
* no output path may be an input file (inputs are never overwritten);
* names that come from a file (the ``--transforms`` manifest, a ``--resume`` manifest) must be
  relative, without ``..``, and stay inside their folder after resolution (symlinks included).
"""

from __future__ import annotations

import fnmatch
import os
import pathlib
from dataclasses import dataclass

IMAGE_EXTS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff"}
# Files the batch client itself writes at the top of OUTPUT_DIR.
RESERVED = ("manifest.jsonl", "report.html", "contact_sheet.png", ".warpsvc-batch.lock")
TEMP_MARK = ".warpsvc-tmp"


class PathError(ValueError):
    """A path that must not be used (escapes its folder, overwrites an input, ...)."""


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


def resolve_inside(root: pathlib.Path, rel: pathlib.PurePosixPath, what: str = "name") -> pathlib.Path:
    """``root / rel``, checked to stay inside ``root`` once symlinks are resolved."""
    root_real = root.resolve()
    path = root / rel
    real = path.resolve()
    if real != root_real and root_real not in real.parents:
        raise PathError(f"{what}: {str(rel)!r} resolves outside {root} (through a symlink)")
    return path


def is_within(child: pathlib.Path, parent: pathlib.Path) -> bool:
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


def check_trees(input_dir: pathlib.Path, output_dir: pathlib.Path, allow_nested: bool) -> None:
    """Refuse an output folder equal to, or (unless ``allow_nested``) inside, the input tree."""
    if not input_dir.is_dir():
        raise PathError(f"INPUT_DIR {input_dir} is not a folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise PathError(f"OUTPUT_DIR {output_dir} exists and is not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise PathError("OUTPUT_DIR is INPUT_DIR: inputs are never overwritten; choose another folder")
    if is_within(output_dir, input_dir) and not allow_nested:
        raise PathError(f"OUTPUT_DIR {output_dir} is inside INPUT_DIR {input_dir}; pass --allow-nested-output "
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


def discover(input_dir: pathlib.Path, *, include=(), exclude=(), skip: pathlib.Path | None = None) -> list[str]:
    """Relative POSIX paths of the images under ``input_dir``, sorted.

    Every non-folder entry with a PNG/JPEG/TIFF extension counts (a FIFO or an unreadable file
    named ``x.png`` is listed, then recorded as failed, not silently dropped). Hidden folders, the
    batch client's temporary files and the ``skip`` tree (a nested output folder) are left out.
    """
    skip_real = skip.resolve() if skip is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(input_dir):
        here = pathlib.Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if skip_real is not None and (here / d).resolve() == skip_real:
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            if f.startswith(".") or TEMP_MARK in f or image_format(f) is None:
                continue
            rel = (here / f).relative_to(input_dir).as_posix()
            if selected(rel, include, exclude):
                found.append(rel)
    return sorted(found)


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


def plan(inputs: list[tuple[str, str]], input_dir: pathlib.Path, output_dir: pathlib.Path) -> list[Planned]:
    """Check ``(input, output)`` name pairs: safe names, outputs inside OUTPUT_DIR, no output
    overwriting an input, no two images writing the same output (both get an error)."""
    in_real = {}
    out: list[Planned] = []
    for rel_in, rel_out in inputs:
        try:
            in_real[resolve_inside(input_dir, safe_relative(rel_in, "input"), "input").resolve()] = rel_in
        except PathError:
            pass
    owners: dict[str, list[int]] = {}
    input_real = input_dir.resolve()
    nested = input_real in output_dir.resolve().parents  # OUTPUT_DIR inside INPUT_DIR (allowed by now)
    for rel_in, rel_out in inputs:
        error = None
        try:
            safe_relative(rel_in, "input")
            resolve_inside(input_dir, safe_relative(rel_in, "input"), "input")
            rel_o = safe_relative(rel_out, "output")
            if rel_o.as_posix() in RESERVED or TEMP_MARK in rel_o.name:
                raise PathError(f"output: {rel_out!r} is a name the batch client reserves")
            target = resolve_inside(output_dir, rel_o, "output")
            real = target.resolve()
            if real in in_real or (not nested and input_real in real.parents):
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
