"""Transforms from the command line (``--matrix``, ``--polar``) and from a per-image file
(``--transforms FILE``, CSV or JSONL), and back from a manifest record.

``--transforms`` rows name an input image (``path``, relative to INPUT_DIR) and its transform:

* JSONL: ``{"path": "a/b.png", "matrix": [[...], [...]] | [6 or 9 numbers],
  "output": "optional/relative/name.png"}`` or ``"polar": {"center": [x, y], "max_radius": R,
  "polar_shape": [H, W], "log": false, "inverse": false, "cartesian_shape": [H, W]}``;
* CSV with a header: ``path,matrix[,output]`` where ``matrix`` holds 6 or 9 numbers separated by
  spaces or semicolons.

Matrices map input-image coordinates to output coordinates (the library's convention); 6 values
make an :class:`~warpsvc.AffineTransform`, 9 a :class:`~warpsvc.HomographyTransform`.
"""

from __future__ import annotations

import csv
import json
import pathlib
import re

import numpy as np

import warpsvc


class TransformSpecError(ValueError):
    pass


def numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[\s,;]+", str(text).strip().strip("[]")) if v]
    except ValueError:
        raise TransformSpecError(f"{what}: not a list of numbers: {text!r}") from None


def from_matrix(values, what: str = "matrix"):
    m = np.asarray(values, dtype=np.float64).ravel()
    if m.size == 6:
        return warpsvc.AffineTransform(m.reshape(2, 3))
    if m.size == 9:
        return warpsvc.HomographyTransform(m.reshape(3, 3))
    raise TransformSpecError(f"{what}: needs 6 (affine) or 9 (homography) numbers, got {m.size}")


def from_polar(p: dict):
    try:
        return warpsvc.PolarTransform(tuple(p["center"]), float(p["max_radius"]), tuple(p["polar_shape"]),
                                      log=bool(p.get("log", False)), inverse=bool(p.get("inverse", False)),
                                      cartesian_shape=tuple(p["cartesian_shape"]) if p.get("cartesian_shape") else None)
    except (KeyError, TypeError) as err:
        raise TransformSpecError(f"polar: needs center, max_radius, polar_shape ({err})") from None


def polar_option(text: str, *, log: bool, inverse: bool, cartesian_shape=None):
    """``--polar CX,CY,RADIUS,H,W``."""
    v = numbers(text, "--polar")
    if len(v) != 5:
        raise TransformSpecError("--polar needs CX,CY,RADIUS,H,W (centre, max radius, polar image rows and columns)")
    return from_polar({"center": v[:2], "max_radius": v[2], "polar_shape": (int(v[3]), int(v[4])), "log": log,
                       "inverse": inverse, "cartesian_shape": cartesian_shape})


def from_record(rec: dict):
    """The transform a manifest (or ``--transforms``) record describes."""
    if rec.get("matrix") is not None:
        return from_matrix(rec["matrix"])
    if rec.get("polar") is not None:
        return from_polar(rec["polar"])
    if rec.get("chain"):
        return warpsvc.compose(*(from_record(step) for step in rec["chain"]))
    raise TransformSpecError("no transform (matrix, polar or chain)")


def read_file(path: pathlib.Path) -> list[dict]:
    """Rows of ``{"path", "output" (optional), "transform"}`` from a CSV or JSONL file."""
    rows = []
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames or "matrix" not in reader.fieldnames:
            raise TransformSpecError(f"{path}: a CSV needs the header path,matrix[,output]")
        for n, row in enumerate(reader, start=2):
            rows.append(_row(row, f"{path.name}:{n}", matrix_text=True))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise TransformSpecError(f"{path.name}:{n}: not JSON ({err})") from None
            if not isinstance(obj, dict):
                raise TransformSpecError(f"{path.name}:{n}: each line must be a JSON object")
            rows.append(_row(obj, f"{path.name}:{n}"))
    return rows


def _row(obj: dict, where: str, matrix_text: bool = False) -> dict:
    name = obj.get("path")
    if not isinstance(name, str) or not name:
        raise TransformSpecError(f"{where}: 'path' is required")
    try:
        if matrix_text:
            transform = from_matrix(numbers(obj["matrix"], "matrix"))
        else:
            transform = from_record(obj)
    except (TransformSpecError, warpsvc.WarpsvcError, ValueError) as err:
        raise TransformSpecError(f"{where}: {err}") from None
    out = obj.get("output") or None
    if out is not None and not isinstance(out, str):
        raise TransformSpecError(f"{where}: 'output' must be a string")
    return {"path": name, "output": out, "transform": transform}
