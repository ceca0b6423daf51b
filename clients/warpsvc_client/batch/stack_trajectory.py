"""``trajectory.json`` / ``trajectory.csv`` of a ``stack`` run: one row per frame, from the manifest.

Every row is built from the frame's manifest record (this run's, or the verified one a resumed
run re-used), so a resumed run writes the same bytes as an uninterrupted one; nothing that
depends on timing is in these files (the manifest keeps the timings).

Conventions (``docs/conventions.md``): points are ``(x, y)`` pixel centres, ``matrix`` is
``reference_from_frame`` (``warp(frame, matrix, reference_shape)`` brings the frame onto the
reference grid), normalised so that ``matrix[2][2] = 1``.

Per-frame motion summary, computed from ``matrix = H``:

* ``drift``: where the frame's centre ``c = ((w-1)/2, (h-1)/2)`` lands in the reference, minus
  ``c``: ``H(c) - c`` (px, reference grid). For a camera shaking over a scene this is the
  trajectory the plot shows.
* ``rotation_deg``, ``scale``: of the similarity closest (Frobenius) to the Jacobian
  ``J = dH/dx`` at ``c``: ``rotation = atan2(J10 - J01, J00 + J11)``, ``scale = sqrt(|det J|)``
  (exact for a similarity; for an affine map or a homography the local rotation and area scale
  at the frame centre).
* ``corner_displacement``: ``H(x_i) - x_i`` for the frame corners TL, TR, BR, BL
  (``(0, 0), (w-1, 0), (w-1, h-1), (0, h-1)``), and ``corner_displacement_max`` its largest norm.
* ``corner_sd``: the library's per-corner standard deviation (px, square root of the larger
  eigenvalue of each 2x2 block of the propagated (8, 8) corner covariance), ``covariance`` that
  matrix (JSON only); ``None`` when the result has none.
* ``method``: how the frame's transform was found (the library's ``FrameResult.method``:
  ``reference``, ``anchored`` = aligned directly to the reference starting from the chained
  estimate, ``keyframe``, ``chained`` = the product of frame-to-frame steps, ``unregistered``),
  ``hops`` the alignments composed between the frame and the reference, ``anchor`` /
  ``previous`` the frames (by index in this list) it was aligned to.
"""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np

CSV_COLUMNS = ("index", "name", "status", "reason", "registered", "method", "hops", "anchor", "previous",
               "drift_x", "drift_y", "rotation_deg", "scale", "corner_displacement_max", "corner_sd_max",
               "zncc", "rms_error", "alignments", "m00", "m01", "m02", "m10", "m11", "m12", "m20", "m21", "m22",
               "aligned", "error")


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ m.T
    return p[:, :2] / p[:, 2:3]


def motion_summary(matrix, frame_shape) -> dict:
    """Drift, rotation, scale and corner displacement of ``reference_from_frame`` (module docstring)."""
    m = np.asarray(matrix, np.float64)
    h, w = int(frame_shape[0]), int(frame_shape[1])
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1.0]])
    drift = _apply(m, c[None])[0] - c
    # Jacobian of x -> (A x + t) / (g.x + 1) at c: (A - H(c) g^T) / (g.x + 1)
    hc = _apply(m, c[None])[0]
    denom = m[2, 0] * c[0] + m[2, 1] * c[1] + m[2, 2]
    jac = (m[:2, :2] - np.outer(hc, m[2, :2])) / denom
    rotation = math.degrees(math.atan2(jac[1, 0] - jac[0, 1], jac[0, 0] + jac[1, 1]))
    scale = math.sqrt(abs(float(np.linalg.det(jac))))
    disp = _apply(m, corners) - corners
    return {"drift": [float(drift[0]), float(drift[1])], "rotation_deg": rotation, "scale": scale,
            "corner_displacement": disp.tolist(),
            "corner_displacement_max": float(np.linalg.norm(disp, axis=1).max())}


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def row(index: int, rec) -> dict:
    """The trajectory row of one frame from its manifest record (a :class:`~.record.Record`)."""
    conv = rec.convergence or {}
    out = {"index": index, "name": rec.input, "status": rec.status,
           "reason": conv.get("reason") if conv else (rec.error or "failed").split(":", 1)[0],
           "registered": bool(conv.get("converged")) if conv else False,
           "method": conv.get("method"), "hops": conv.get("hops"), "anchor": conv.get("anchor"),
           "previous": conv.get("previous"), "matrix": rec.matrix, "inverse": rec.inverse}
    if rec.matrix is not None and conv.get("frame_shape"):
        out.update(motion_summary(rec.matrix, conv["frame_shape"]))
    else:
        out.update({"drift": None, "rotation_deg": None, "scale": None, "corner_displacement": None,
                    "corner_displacement_max": None})
    out.update({"corner_sd": conv.get("corner_sd"), "covariance": conv.get("covariance"),
                "zncc": _finite(conv.get("zncc")), "rms_error": _finite(conv.get("rms_error")),
                "alignments": conv.get("alignments"), "step": conv.get("step"),
                "aligned": rec.output if rec.ok else None, "error": rec.error})
    return out


def to_json(header: dict, rows: list[dict]) -> bytes:
    """``{"reference": ..., "settings": ..., "frames": [rows]}`` as strict JSON (NaN -> null)."""
    doc = {**header, "frames": rows}
    return (json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n").encode("utf-8")


def to_csv(rows: list[dict]) -> bytes:
    """One line per frame, :data:`CSV_COLUMNS` (matrix row-major in ``m00..m22``; empty = none)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        m = np.asarray(r["matrix"], np.float64).reshape(-1).tolist() if r["matrix"] is not None else [None] * 9
        drift = r["drift"] or [None, None]
        sd = r["corner_sd"]
        values = [r["index"], r["name"], r["status"], r["reason"], r["registered"], r["method"], r["hops"],
                  r["anchor"], r["previous"], drift[0], drift[1], r["rotation_deg"], r["scale"],
                  r["corner_displacement_max"], max(sd) if sd else None, r["zncc"], r["rms_error"],
                  r["alignments"], *m, r["aligned"], r["error"]]
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
    return buf.getvalue().encode("utf-8")


def _clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
