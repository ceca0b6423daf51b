"""The manifest record: one frozen value per image and run, one writer (:meth:`Record.to_line`).

Every record -- a finished image, a refused name, an image whose worker died -- is a
:class:`Record`; nothing else builds manifest lines. Fields (``docs/batch.md`` has the table)::

    input, output      relative to INPUT / OUTPUT
    status, error      "ok" | "failed"; the error text
    job, target        the job; who answered ("local", a server address, "dask")
    attempts           tries of the image's work: 1 + the retried failures (an align job's two
                       calls are one try); 0 when nothing was tried (a refused name)
    retried            the failures that were retried ("host:port: UNAVAILABLE", ...)
    bytes, sha256      the output file written
    matrix, inverse    the transform (warp/jacobian) or the alignment's template_from_image
    polar, chain       a polar transform's parameters, a chain's steps (instead of matrix)
    convergence        align: converged, reason, iterations, rms_error, zncc, overlap, ...
    shape, dtype       jacobian: the map's
    notes              what the output leaves out of the input (a multi-page TIFF's other pages,
                       a JPEG's EXIF orientation not applied)
    settings           a digest of what made the output (job, options, the transform or the
                       reference's SHA-256): ``--resume`` re-uses an output only for the same
                       digest (:func:`.jobs.settings_digest`)
    timings            seconds: read, compute, write, total

Optional fields (``retried``, ``polar``, ``chain``, ``shape``, ``dtype``, ``notes``, ``settings``) are left out when empty;
non-finite numbers become ``null`` (strict JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

ALWAYS = ("input", "output", "status", "error", "job", "target", "attempts", "bytes", "sha256", "matrix",
          "inverse", "convergence", "timings")
OPTIONAL = ("retried", "polar", "chain", "shape", "dtype", "notes", "settings")
ORDER = ("input", "output", "status", "error", "job", "target", "attempts", "retried", "bytes", "sha256", "matrix",
         "inverse", "polar", "chain", "convergence", "shape", "dtype", "notes", "settings", "timings")


@dataclass(frozen=True)
class Timings:
    """Seconds spent on one image (``None``: the stage did not run)."""

    read: float | None = None
    compute: float | None = None
    write: float | None = None
    total: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d) -> Timings:
        if not isinstance(d, dict):
            return cls()
        return cls(**{k: float(d[k]) for k in ("read", "compute", "write", "total")
                      if isinstance(d.get(k), (int, float))})


@dataclass(frozen=True)
class Record:
    """One image's outcome in one run (see the module docstring)."""

    input: str
    output: str
    job: str
    status: str = "failed"
    error: str | None = None
    target: str | None = None
    attempts: int = 0
    retried: tuple[str, ...] = ()
    bytes: int | None = None
    sha256: str | None = None
    matrix: list | None = None
    inverse: list | None = None
    polar: dict | None = None
    chain: list | None = None
    convergence: dict | None = None
    shape: list | None = None
    dtype: str | None = None
    notes: list | None = None
    settings: str | None = None
    timings: Timings = Timings()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def unconverged(self) -> bool:
        return self.ok and bool(self.convergence) and not self.convergence.get("converged")

    def replace(self, **changes) -> Record:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = {}
        for name in ORDER:
            value = getattr(self, name)
            if name in OPTIONAL and not value:
                continue
            if name == "timings":
                value = value.to_dict()
            elif name == "retried":
                value = list(value)
            out[name] = value
        return out

    def to_line(self) -> bytes:
        """The manifest line: strict JSON (non-finite numbers as ``null``), ASCII (names that
        are not valid UTF-8 keep their escapes), one ``\\n`` at the end."""
        return (json.dumps(_finite(self.to_dict()), separators=(",", ":"), allow_nan=False) + "\n").encode("ascii")

    @classmethod
    def from_dict(cls, d) -> Record | None:
        """A record read back from a manifest (``--resume``); ``None`` if it is not one."""
        if not isinstance(d, dict) or not isinstance(d.get("input"), str) or not isinstance(d.get("job"), str):
            return None
        kw = {k: d[k] for k in ORDER if k in d and k not in ("timings", "retried")}
        if not isinstance(kw.get("output"), str):
            kw["output"] = ""
        kw["retried"] = tuple(str(x) for x in d.get("retried") or ())
        kw["timings"] = Timings.from_dict(d.get("timings"))
        try:
            return cls(**kw)
        except TypeError:
            return None


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _finite(value.tolist())
    return value
