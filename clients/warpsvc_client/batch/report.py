"""``report.html`` and ``contact_sheet.png``: what the run did, in pictures.

Per image (the first ``limit`` successes, failures always listed): the input, the output, the
Jacobian-determinant map ``|det J_{T^{-1}}|`` on the output grid as a diverging heatmap of
``log2`` (blue: the warp shrinks that area, white: area kept, red: it stretches), and for
``align`` the absolute residual against the reference before (the raw image) and after (the
aligned output), on one shared scale. The Jacobian maps come from the same engine that did the
work (the server, or the library for ``--target local``).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import pathlib

import numpy as np

from . import files
from .jobs import CallContext, decode
from .transforms import from_record

CELL = 128
LABEL_H = 18


def to_u8(img: np.ndarray) -> np.ndarray:
    """Any image (uint8/uint16/float, 1-4 channels) as a BGR uint8 picture for display."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    elif a.ndim == 3 and a.shape[2] not in (1, 3):
        a = a.mean(axis=2)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.dtype == np.uint16:
        a = (a / 257.0).astype(np.uint8)
    elif a.dtype != np.uint8:
        f = np.asarray(a, np.float64)
        finite = f[np.isfinite(f)]
        lo, hi = (np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0))
        hi = hi if hi > lo else lo + 1.0
        a = (np.clip((np.nan_to_num(f, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR) if a.ndim == 2 else a


def heatmap(det: np.ndarray, span: float | None = None) -> tuple[np.ndarray, float]:
    """``log2 |det J|`` in blue-white-red (BGR), symmetric about 0; non-finite pixels grey."""
    d = np.asarray(det, np.float64)
    ok = np.isfinite(d) & (d > 0)
    lg = np.zeros_like(d)
    lg[ok] = np.log2(d[ok])
    if span is None:
        span = max(0.1, float(np.abs(lg[ok]).max()) if ok.any() else 0.1)
    t = np.clip(lg / span, -1, 1)  # -1 blue, 0 white, 1 red
    out = np.empty(d.shape + (3,), np.float64)
    neg, pos = np.minimum(t, 0), np.maximum(t, 0)
    out[..., 0] = 1 - pos                         # B: 1 on the blue side, falls to 0 on red
    out[..., 1] = 1 - np.abs(t) * 0.85            # G
    out[..., 2] = 1 + neg                         # R: 1 on the red side, falls to 0 on blue
    out = (np.clip(out, 0, 1) * 255).astype(np.uint8)
    out[~ok] = 128
    return out, span


def residual(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` (channel mean) on ``b``'s grid (``a`` cropped / zero-padded to it)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    h, w = b.shape[:2]
    fit = np.zeros_like(b)
    hh, ww = min(h, a.shape[0]), min(w, a.shape[1])
    if a.ndim == b.ndim:
        fit[:hh, :ww] = a[:hh, :ww]
    r = np.abs(fit - b)
    return r.mean(axis=2) if r.ndim == 3 else r


def _thumb(img_bgr: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img_bgr.shape[:2]
    s = CELL / max(h, w)
    small = cv2.resize(img_bgr, (max(1, round(w * s)), max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    cell = np.full((CELL, CELL, 3), 40, np.uint8)
    y, x = (CELL - small.shape[0]) // 2, (CELL - small.shape[1]) // 2
    cell[y:y + small.shape[0], x:x + small.shape[1]] = small
    return cell


def _png(img: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", img)[1].tobytes()


class _Det:
    """A determinant map waiting for the run's common colour scale."""

    def __init__(self, det):
        self.det = np.asarray(det, np.float64)

    def span(self) -> float:
        d = self.det[np.isfinite(self.det) & (self.det > 0)]
        return float(np.abs(np.log2(d)).max()) if d.size else 0.0


def _colour(rows):
    """Replace every :class:`_Det` by its heatmap on one scale: +-max(1, largest |log2 det|)."""
    span = max([1.0] + [img.span() for _, panels in rows for _, img in panels if isinstance(img, _Det)])
    for _, panels in rows:
        for i, (label, img) in enumerate(panels):
            if isinstance(img, _Det):
                panels[i] = (f"{label} +-{span:.2g}", heatmap(img.det, span)[0])
    return span


def _panels(rec: dict, spec, engine, ref_u8) -> list[tuple[str, np.ndarray]]:
    """The pictures of one successful image, as (label, BGR uint8) pairs."""
    import warpsvc

    inp = decode(files.read_input(spec.input_dir / rec["input"]))
    out_path = spec.output_dir / rec["output"]
    out = np.load(out_path, allow_pickle=False) if out_path.suffix == ".npy" else decode(files.read_input(out_path))
    ctx = CallContext(deadline=None)
    panels = [("input", to_u8(inp))]
    if spec.job == "jacobian":
        panels.append(("|det J| (log2)", _Det(out)))
        return panels
    panels.append(("output", to_u8(out)))
    if spec.job == "align":
        transform = warpsvc.HomographyTransform(np.asarray(rec["matrix"], np.float64))
    else:
        transform = from_record(rec)  # the record says which transform was used
    det = engine.jacobian(transform, tuple(out.shape[:2]), ctx)
    panels.append(("|det J| (log2)", _Det(det)))
    if spec.job == "align":
        before = residual(inp, spec.reference)
        after = residual(out, spec.reference)
        scale = max(1e-12, float(np.percentile(before, 99)))
        for label, r in (("residual before", before), ("residual after", after)):
            g = (np.clip(r / scale, 0, 1) * 255).astype(np.uint8)
            import cv2

            panels.append((label, cv2.applyColorMap(g, cv2.COLORMAP_INFERNO)))
        rec.setdefault("report", {})["residual_rms"] = [float(np.sqrt((before ** 2).mean())),
                                                        float(np.sqrt((after ** 2).mean()))]
    return panels


def contact_sheet(rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> np.ndarray:
    """One row per image (name on top), one column per panel, labels in a header row."""
    import cv2

    ncols = max((len(p) for _, p in rows), default=1)
    width = ncols * CELL
    header = np.full((LABEL_H, width, 3), 255, np.uint8)
    if rows:
        for c, (label, _) in enumerate(max((p for _, p in rows), key=len)):
            cv2.putText(header, label, (c * CELL + 3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    parts = [header]
    for name, panels in rows:
        title = np.full((LABEL_H, width, 3), 230, np.uint8)
        cv2.putText(title, name[-60:], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        row = np.full((CELL, width, 3), 40, np.uint8)
        for c, (_, img) in enumerate(panels):
            row[:, c * CELL:(c + 1) * CELL] = _thumb(img)
        parts += [title, row]
    return np.concatenate(parts, axis=0)


def write(spec, engine, records: list[dict], counts, *, limit: int = 24, command: str = "") -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``report.html`` and ``contact_sheet.png`` into OUTPUT_DIR (atomically)."""
    ok = [r for r in records if r.get("status") == "ok"][:limit]
    failed = [r for r in records if r.get("status") != "ok"]
    rows, shown = [], []
    for rec in ok:
        try:
            rows.append((rec["input"], _panels(rec, spec, engine, None)))
            shown.append(rec)
        except Exception as err:  # noqa: BLE001 - a picture that cannot be made is noted, not fatal
            rec.setdefault("report", {})["error"] = f"{type(err).__name__}: {err}"
    _colour(rows)
    sheet = contact_sheet(rows)
    sheet_path = spec.output_dir / "contact_sheet.png"
    files.atomic_write(sheet_path, _png(sheet), fsync=spec.fsync)
    html_path = spec.output_dir / "report.html"
    files.atomic_write(html_path, _html(spec, records, shown, rows, failed, counts, command).encode(), fsync=spec.fsync)
    return html_path, sheet_path


def _img_tag(img: np.ndarray, alt: str) -> str:
    data = base64.b64encode(_png(_thumb(img))).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html(spec, records, shown, rows, failed, counts, command) -> str:
    esc = html.escape
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>warpsvc-batch report</title><style>",
        "body{font-family:sans-serif;margin:1.5em} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
        "padding:3px 6px;vertical-align:top;font-size:13px} .failed{background:#fdd} img{display:block}"
        "code{font-size:12px}</style></head><body>",
        f"<h1>warpsvc-batch {esc(spec.job)}</h1>",
        f"<p><code>{esc(command)}</code><br>{esc(str(spec.input_dir))} &rarr; {esc(str(spec.output_dir))}, {when}</p>",
        f"<p><b>{counts.ok} ok</b>, <b>{counts.failed} failed</b>, {counts.skipped} skipped (resume)"
        + (f", {counts.unconverged} not converged" if spec.job == "align" else "")
        + f"; {counts.elapsed:.1f} s, {counts.rate():.1f} images/s.</p>",
        "<p>Jacobian heatmaps show log2 |det J| of the inverse map on the output grid, on one scale for the "
        "run (the header gives its range): blue where an output pixel covers less input area than 1 px&sup2;, "
        "white where area is kept, red where it covers more; grey where it is undefined. "
        "Residuals are |image &minus; reference| on one scale per row (before: the raw image; after: the "
        "aligned output).</p>",
        '<p>Contact sheet: <a href="contact_sheet.png">contact_sheet.png</a></p>',
    ]
    if failed:
        out.append(f"<h2>Failed ({len(failed)})</h2><table><tr><th>input</th><th>error</th></tr>")
        out += [f"<tr class='failed'><td>{esc(r['input'])}</td><td>{esc(str(r.get('error')))}</td></tr>"
                for r in failed]
        out.append("</table>")
    out.append(f"<h2>Images ({len(shown)} shown of {len(records)})</h2><table><tr><th>image</th>")
    if rows:
        out += [f"<th>{esc(label)}</th>" for label, _ in max((p for _, p in rows), key=len)]
    out.append("<th>details</th></tr>")
    for rec, (_, panels) in zip(shown, rows):
        details = {k: rec.get(k) for k in ("output", "matrix", "convergence", "timings", "attempts", "target")}
        if rec.get("report"):
            details["report"] = rec["report"]
        out.append(f"<tr><td>{esc(rec['input'])}</td>")
        out += [f"<td>{_img_tag(img, label)}</td>" for label, img in panels]
        out.append(f"<td><pre>{esc(json.dumps(details, indent=1, default=str))}</pre></td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)
