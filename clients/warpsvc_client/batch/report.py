"""``report.html`` and ``contact_sheet.png``: what the run did, summary first.

The page is self-contained (every picture an embedded PNG, no script, no network):

1. **Summary**: counts (ok, failed, skipped, not converged), throughput, then plots made with
   matplotlib (Agg): time per image, ZNCC and residual RMS for ``align``, and the reasons
   (failure kinds, non-convergence reasons) as a bar chart.
2. **Images**, failed and unconverged first, one compact row each (status, name, one line of
   what happened, thumbnails) with the manifest record folded in ``<details>``.

Pictures (the first ``limit`` successful images): the input, the output, the Jacobian-determinant
map ``log2 |det J_{T^{-1}}|`` on the output grid, and for ``align`` the residual
``|image - reference|`` before (raw image) and after (aligned output, where it covers the
reference; the border fill is grey and not counted), in the reference's grey levels: each image
is first taken through its alignment's photometric fit, ``(image - bias) / gain``
(:func:`in_reference_units`), so files of other exposures or bit depths share the run's scale. Every heatmap of one kind
is drawn on **one scale for the run**, stated next to its colour bar: the determinant on a
diverging scale symmetric about 0 (blue: an output pixel covers less than 1 px^2 of input, red:
more), residuals from 0 to the 99th percentile of all "before" residuals of the run (so an
aligned output ~1 grey level off renders nearly black, not bright on a per-row scale). The maps
come from the same engine that did the work (the server, or the library). Float outputs are
stretched from their 1st to their 99th percentile, or in log10 when they are a density whose
positive values span more than 30x between median and 99th percentile (a conserving log-polar
warp, whose inner radii a linear stretch leaves black): the row's note says so and its
contact-sheet title ends in ``[log]``.

No OpenCV here: files are decoded by :func:`.jobs.decode` (OpenCV when installed, else
Pillow/tifffile, whose 8-bit reading of 16-bit colour files is good enough for a picture),
pictures are RGB arrays drawn, shrunk and written by Pillow, and the aligned image's coverage
is computed from the transform (numpy geometry), so the report works in a client-only install.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections import Counter

import numpy as np

from warpsvc.core.transforms import HomographyTransform
from warpsvc_api.alpha_warp import align_inputs, alpha_as_mask, grey_like

from .jobs import CallContext, EncodedImage, decode, decode_image, pixels_of, read_image
from .paths import ascii_label, printable
from .pixels import png as _png
from .transforms import from_record

CELL = 128      # contact sheet cells
THUMB = 96      # report thumbnails
LABEL_H = 18
DET_CMAP, RES_CMAP = "RdBu_r", "inferno"


LOG_DISPLAY_SPAN = 30.0  # p99 / median of the positive brightness above which a float picture is shown in log


def _log_stretch(f: np.ndarray) -> np.ndarray | None:
    """A non-negative density ``f`` (``(H, W)`` or ``(H, W, 3)``) whose positive brightness
    (channel mean) spans more than :data:`LOG_DISPLAY_SPAN` between its median and 99th
    percentile, drawn in 0-1 on a log scale of brightness with the hue kept (Lupton et al.
    2004's ``asinh`` stretch: every channel scaled by ``asinh(L / s) / (L asinh(p99 / s))``,
    ``L`` the pixel's brightness, ``s`` its 1st percentile, then a pixel whose brightest channel
    exceeds 1 scaled down to 1); else ``None`` (linear)."""
    finite = np.isfinite(f)
    if not finite.any() or f[finite].min() < 0:
        return None
    lum = np.where(finite, f, 0).mean(axis=2) if f.ndim == 3 else np.where(finite, f, 0)
    positive = lum[lum > 0]
    if positive.size < 0.1 * lum.size:
        return None
    p1, p50, p99 = np.percentile(positive, (1, 50, 99))
    if not p99 > LOG_DISPLAY_SPAN * p50:
        return None
    top = np.arcsinh(p99 / p1)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(lum > 0, np.arcsinh(lum / p1) / (lum * top), 0.0)
    out = np.where(finite, f, 0) * (gain[:, :, None] if f.ndim == 3 else gain)
    if f.ndim == 3:  # a channel brighter than the mean would clip and shift the hue: scale the pixel
        peak = out.max(axis=2, keepdims=True)
        out = np.where(peak > 1, out / np.where(peak > 1, peak, 1), out)
    return out


def to_u8(img: np.ndarray, scale_out: list | None = None) -> np.ndarray:
    """Any image in OpenCV's layout (BGR(A); uint8/uint16/float, 1-4 channels) as an RGB uint8
    picture for display. Float pictures: linear from their 1st to their 99th percentile, or, for
    a density spanning decades (a conserving log-polar warp: ``|det J|`` grows like ``r^2``
    along the radius, so a linear stretch leaves the inner radii black), :func:`_log_stretch`
    (``scale_out``, a list, then receives ``"log"``)."""
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
        stretched = _log_stretch(f)
        if stretched is not None:
            if scale_out is not None:
                scale_out.append("log")
            a = (np.clip(stretched, 0, 1) * 255).astype(np.uint8)
        else:
            finite = f[np.isfinite(f)]
            lo, hi = (np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0))
            hi = hi if hi > lo else lo + 1.0
            a = (np.clip((np.nan_to_num(f, nan=lo) - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else np.ascontiguousarray(a[:, :, ::-1])


def _lut(name: str) -> np.ndarray:
    """A matplotlib colour map as a (256, 3) RGB uint8 table."""
    import matplotlib

    rgba = matplotlib.colormaps[name](np.linspace(0, 1, 256))
    return (rgba[:, :3] * 255).round().astype(np.uint8)


def log2_det(det: np.ndarray) -> np.ndarray:
    """``log2 |det J|``; NaN where it is undefined (non-finite or not positive)."""
    d = np.asarray(det, np.float64)
    out = np.full(d.shape, np.nan)
    ok = np.isfinite(d) & (d > 0)
    out[ok] = np.log2(d[ok])
    return out


def colour(values: np.ndarray, lo: float, hi: float, cmap: str) -> np.ndarray:
    """``values`` on the fixed scale ``[lo, hi]`` through ``cmap`` (RGB); NaN grey."""
    t = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo), 0, 1)
    out = _lut(cmap)[(t * 255).round().astype(np.intp)]
    out[~np.isfinite(values)] = 128
    return out


def in_reference_units(img: np.ndarray, convergence: dict | None) -> np.ndarray:
    """``(img - bias) / gain`` per channel: an aligned image in its reference's grey levels,
    from the alignment's photometric fit ``image ~ gain * reference + bias`` (the record's
    ``convergence``). So a run's residuals share one unit whatever each file's exposure and
    bit depth: a 16-bit file aligned to an 8-bit reference (gain ~257) had residuals ~100x
    those of the 8-bit files, and on the run's one scale every 8-bit row rendered black.
    Unchanged where the fit is absent, not finite or its gain near 0."""
    a = np.asarray(img, np.float64)
    gain, bias = (np.asarray((convergence or {}).get(k) or [], np.float64) for k in ("gain", "bias"))
    c = a.shape[2] if a.ndim == 3 else 1
    if gain.size != bias.size or gain.size not in (1, c) or not (np.all(np.isfinite(gain)) and
                                                              np.all(np.isfinite(bias)) and np.all(np.abs(gain) > 1e-6)):
        return a
    return (a - bias) / gain if a.ndim == 3 else (a - bias[0]) / gain[0]


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


def covered(dst_from_src: np.ndarray, shape, source_shape, rows: int = 256) -> np.ndarray:
    """Output pixels (``shape`` grid) whose preimage under the 3x3 homography ``dst_from_src``
    lies inside the ``source_shape`` image, pixel centres at integers (``0 <= x <= W-1``,
    ``0 <= y <= H-1``, 1e-3 px slack; in front of the horizon, ``w > 0``): where a constant-border
    bilinear warp sees only image pixels. ``rows`` output rows at a time (bounded memory)."""
    m = np.linalg.inv(np.asarray(dst_from_src, np.float64))  # src_from_dst
    h, w = shape
    sh, sw = source_shape[:2]
    eps = 1e-3
    out = np.empty((h, w), bool)
    x = np.arange(w, dtype=np.float64)
    for r0 in range(0, h, rows):
        y = np.arange(r0, min(h, r0 + rows), dtype=np.float64)[:, None]
        u, v, z = (m[i, 0] * x + m[i, 1] * y + m[i, 2] for i in range(3))  # (rows, W) each
        with np.errstate(divide="ignore", invalid="ignore"):
            u, v = u / z, v / z
        out[r0:r0 + len(y)] = (z > 0) & (u >= -eps) & (u <= sw - 1 + eps) & (v >= -eps) & (v <= sh - 1 + eps)
    return out


def _thumb(rgb: np.ndarray, cell: int = CELL) -> np.ndarray:
    """``rgb`` fitted into a ``cell`` x ``cell`` square on dark grey: area-averaged when shrunk
    (Pillow's box filter), pixel-replicated when enlarged."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = cell / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = np.asarray(Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB").resize(
        size, Image.Resampling.BOX if s < 1 else Image.Resampling.NEAREST))
    out = np.full((cell, cell, 3), 40, np.uint8)
    y, x = (cell - small.shape[0]) // 2, (cell - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _panels(rec, spec, engine, remarks: list) -> dict:
    """The raw pictures of one successful image: ``{label: array}``; maps stay numeric until
    the run's scales are known. How a picture was drawn, if unusual, goes to ``remarks``."""
    source = read_image(spec.inputs.read(rec.input), spec.max_pixels)
    inp = decode_image(source, exact=False)
    data = spec.outputs.read(rec.output)
    out = (np.load(io.BytesIO(data), allow_pickle=False) if rec.output.endswith(".npy")
           else decode(data, spec.max_pixels, exact=False))
    panels = {"input": to_u8(inp)}
    if spec.job == "jacobian":
        panels["log2 |det J|"] = log2_det(out)
        return panels
    scale = []
    panels["output"] = to_u8(out, scale)
    if scale:
        remarks.append("output shown on a log scale of brightness (it spans more than "
                       f"{LOG_DISPLAY_SPAN:g}x between its median and 99th percentile)")
    if spec.job == "align":
        transform = HomographyTransform(np.asarray(rec.matrix, np.float64))
    else:
        transform = from_record(rec.to_dict())  # the record says which transform was used
    panels["log2 |det J|"] = log2_det(engine.jacobian(transform, tuple(out.shape[:2]), CallContext()))
    if spec.job == "align":
        panels["residual before"], panels["residual after"] = _residuals(rec, spec, inp, source.cost.alpha, out,
                                                                         transform)
    return panels


def _residuals(rec, spec, inp, alpha: bool, out, transform):
    """``(before, after)`` residual maps of an aligned image, in the reference's grey levels
    (:func:`in_reference_units`), on the colour channels as the alignment saw them: a file's
    alpha is its mask, not a channel, and a grey file decoded as colour is grey
    (``warpsvc_api.alpha_warp.align_inputs``); pixels the alpha leaves out are NaN."""
    reference = pixels_of(spec.reference, exact=False)
    ref_alpha = isinstance(spec.reference, EncodedImage) and bool(spec.reference.cost.alpha)
    reference, ref_seen, inp, inp_seen = align_inputs(reference, ref_alpha, None, inp, alpha, None)
    out, out_seen = alpha_as_mask(out, alpha)
    out = grey_like(out, reference)
    # after: only where the aligned output has image content (the preimage lies inside the
    # image), so the border fill is not counted as misalignment; elsewhere grey (NaN)
    seen = covered(transform.matrix, reference.shape[:2], inp.shape)
    for mask in (ref_seen, out_seen):
        if mask is not None and mask.shape == seen.shape:
            seen &= mask
    after = residual(in_reference_units(out, rec.convergence), reference)
    raw = residual(out, reference)
    # the fit's units are the files' as stored: a picture decoded inexactly (Pillow's 8-bit
    # reading of a 16-bit colour file, client-only install) would come out worse: keep it raw
    fit = rec.convergence if seen.any() and not np.nanmedian(after[seen]) > np.nanmedian(raw[seen]) else None
    after = after if fit is not None else raw
    after[~seen] = np.nan
    before = residual(in_reference_units(inp, fit), reference)
    if inp_seen is not None:  # the raw image's transparent pixels (on the reference's grid, as residual crops)
        hh, ww = min(before.shape[0], inp_seen.shape[0]), min(before.shape[1], inp_seen.shape[1])
        before[:hh, :ww][~inp_seen[:hh, :ww]] = np.nan
    return before, after


class Scales:
    """One colour scale per kind of map for the whole run."""

    def __init__(self, shown: list[dict]):
        dets = [np.nanmax(np.abs(p["log2 |det J|"])) for p in shown
                if "log2 |det J|" in p and np.isfinite(p["log2 |det J|"]).any()]
        self.det = max([1.0] + [float(d) for d in dets])
        before = [p["residual before"].ravel() for p in shown if "residual before" in p]
        self.residual = max(1e-12, float(np.percentile(np.concatenate(before), 99))) if before else 1.0

    def picture(self, label: str, value: np.ndarray) -> np.ndarray:
        if label.startswith("log2"):
            return colour(value, -self.det, self.det, DET_CMAP)
        if label.startswith("residual"):
            return colour(value, 0.0, self.residual, RES_CMAP)
        return value


def _label(width: int, texts: list[tuple[int, str]], grey: int, limit: int | None = None) -> np.ndarray:
    """A ``LABEL_H``-high strip of ``grey`` with each ``(x, text)`` written in black, escaped to
    ASCII once (:func:`.paths.ascii_label`), keeping its last ``limit`` characters."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, LABEL_H), (grey, grey, grey))
    draw = ImageDraw.Draw(strip)
    for x, text in texts:
        draw.text((x, 3), ascii_label(text)[-limit:] if limit else ascii_label(text), fill=(0, 0, 0))
    return np.asarray(strip)


def contact_sheet(rows: list[tuple[str, list[tuple[str, np.ndarray]]]]) -> np.ndarray:
    """One row per image (name on top, ASCII-escaped), one column per panel, labels on top (RGB)."""
    ncols = max((len(p) for _, p in rows), default=1)
    width = ncols * CELL
    labels = [(c * CELL + 3, label) for c, (label, _) in enumerate(max((p for _, p in rows), key=len))] if rows else []
    parts = [_label(width, labels, 255)]
    for name, panels in rows:
        title = _label(width, [(3, name)], 230, limit=60)
        row = np.full((CELL, width, 3), 40, np.uint8)
        for c, (_, img) in enumerate(panels):
            row[:, c * CELL:(c + 1) * CELL] = _thumb(img)
        parts += [title, row]
    return np.concatenate(parts, axis=0)


KEPT_NOTE = "kept from an earlier run (--resume): its output was verified (size, SHA-256, settings), not redone"


def write(spec, engine, records, counts, *, limit: int = 24, command: str = "", kept=()):
    """Write ``report.html`` and ``contact_sheet.png`` into OUTPUT (atomically); returns the
    report's name. ``kept``: the earlier records of the images a ``--resume`` run skipped (their
    verified outputs are in OUTPUT too): shown among this run's, each noted :data:`KEPT_NOTE`, so
    the report covers the whole folder (it pictured only what the resumed run redid)."""
    kept_names = {r.input for r in kept}
    records = sorted([*records, *kept], key=lambda r: r.input)
    ok = [r for r in records if r.ok][:limit]
    raw, notes = {}, {name: KEPT_NOTE for name in kept_names}
    for rec in ok:
        remarks = ([KEPT_NOTE] if rec.input in kept_names else []) + list(rec.notes or [])
        try:
            raw[rec.input] = _panels(rec, spec, engine, remarks)
        except Exception as err:  # noqa: BLE001 - a picture that cannot be made is noted, not fatal
            remarks.append(f"no pictures: {type(err).__name__}: {err}")
        if remarks:
            notes[rec.input] = "; ".join(remarks)
    scales = Scales(list(raw.values()))
    pictures = {name: [(label, scales.picture(label, v)) for label, v in p.items()] for name, p in raw.items()}
    extras = {name: [_rms(p[k]) for k in ("residual before", "residual after")]
              for name, p in raw.items() if "residual after" in p}
    sheet = contact_sheet([(name + (" [log]" if "log scale" in notes.get(name, "") else ""), p)
                           for name, p in pictures.items()])
    spec.outputs.write_atomic("contact_sheet.png", _png(sheet), spec.run_id)
    page = _html(spec, records, pictures, extras, notes, scales, counts, command, kept)
    spec.outputs.write_atomic("report.html", page.encode("utf-8"), spec.run_id)
    return spec.outputs.canonical("report.html")


def _rms(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.sqrt(np.mean(finite ** 2))) if finite.size else float("nan")


# -- the page -------------------------------------------------------------------------------------
def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(spec, records, extras, scales) -> list[tuple[str, str]]:
    """(title, base64 PNG) summary plots; empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []

    def hist(title, values, xlabel):
        values = [v for v in values if v is not None and np.isfinite(v)]
        if not values:
            return
        fig, ax = plt.subplots(figsize=(3.6, 2.4))
        ax.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4a7ab5")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("images")
        ax.set_title(title, fontsize=10)
        out.append((title, _fig_png(fig)))

    hist("time per image", [r.timings.total for r in records if r.timings.total is not None], "seconds")
    if spec.job == "align":
        hist("ZNCC after alignment", [(r.convergence or {}).get("zncc") for r in records if r.ok], "ZNCC")
        hist("residual RMS after (shown images)", [v[1] for v in extras.values()], "grey levels")
    reasons = Counter(_reason(r) for r in records if not r.ok or r.unconverged)
    if spec.job == "align":
        reasons.update((r.convergence or {}).get("reason", "?") for r in records if r.ok and not r.unconverged)
    if reasons:
        fig, ax = plt.subplots(figsize=(3.6, 0.45 + 0.3 * len(reasons)))
        names = list(reasons)
        ax.barh(range(len(names)), [reasons[n] for n in names], color="#b55a4a")
        ax.set_yticks(range(len(names)), [ascii_label(n)[:40] for n in names], fontsize=8)
        ax.set_xlabel("images")
        ax.set_title("reasons", fontsize=10)
        out.append(("reasons", _fig_png(fig)))
    for label, lo, hi, cmap, what in (("log2 |det J|", -scales.det, scales.det, DET_CMAP,
                                       "log2 |det J| (blue: shrinks, red: stretches)"),
                                      ("residual", 0.0, scales.residual, RES_CMAP, "|image - reference|, reference grey levels")):
        if spec.job != "align" and label == "residual":
            continue
        fig, ax = plt.subplots(figsize=(3.6, 0.55))
        fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(lo, hi), cmap), cax=ax,
                     orientation="horizontal").set_label(what, fontsize=8)
        out.append((f"scale: {label}", _fig_png(fig)))
    return out


def _reason(rec) -> str:
    if not rec.ok:
        return (rec.error or "failed").split(":", 1)[0]
    return f"not converged: {(rec.convergence or {}).get('reason', '?')}"


def _line(rec, extras) -> str:
    if not rec.ok:
        return str(rec.error)
    c = rec.convergence
    bits = []
    if c:
        bits.append(f"{c.get('reason')}, zncc {c.get('zncc') or float('nan'):.3f}, "
                    f"{sum(c.get('iterations') or [])} iterations")
    if rec.input in extras:
        b, a = extras[rec.input]
        bits.append(f"residual RMS {b:.2f} -> {a:.2f} (where the aligned image covers the reference)")
    bits.append(f"{rec.timings.total or 0:.2f} s")
    return "; ".join(bits)


CSS = ("body{font-family:sans-serif;margin:1.2em;color:#222} h1{font-size:20px} h2{font-size:16px;margin-top:1.2em}"
       " .plots img{display:inline-block;margin:0 10px 8px 0;vertical-align:top} table{border-collapse:collapse}"
       " td{border-bottom:1px solid #ddd;padding:3px 6px;vertical-align:top;font-size:13px}"
       " td.st{font-weight:bold;width:6em} tr.failed td.st{background:#f4b6b6} tr.unconverged td.st{background:#f7dc8f}"
       " tr.ok td.st{background:#bfe6bf} td.pics{white-space:nowrap} td.pics img{display:inline-block;margin-right:3px}"
       " td.txt{max-width:34em} th{text-align:left;font-size:12px;color:#555}"
       " details pre{font-size:11px;max-width:70em;white-space:pre-wrap} code{font-size:12px}")


def _html(spec, records, pictures, extras, notes, scales, counts, command, kept=()) -> str:
    esc = html.escape
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    per_image = [r.timings.total for r in records if r.timings.total is not None]
    # the title counts this run; kept images (a --resume run's skipped ones) are counted apart,
    # since the table shows them too (a title "0 not converged" above a kept unconverged row)
    kept_note = ""
    if kept:
        kept_unconverged = sum(r.unconverged for r in kept)
        kept_note = (f"<p>The table also shows the {len(kept)} image(s) this run kept from earlier runs "
                     f"(--resume: verified, not redone)"
                     + (f", {kept_unconverged} of them not converged" if spec.job == "align" else "") + ".</p>")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>warpsvc-batch report</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>warpsvc-batch {esc(spec.job)}: {counts.ok} ok, {counts.failed} failed, {counts.skipped} skipped"
           + (f", {counts.unconverged} not converged" if spec.job == "align" else "") + " (this run)" * bool(kept)
           + "</h1>" + kept_note,
           f"<p>{counts.total} images in {counts.elapsed:.1f} s ({counts.rate():.1f} images/s"
           + (f"; median {np.median(per_image):.3f} s per image" if per_image else "") + f"). {when}<br>"
           f"<code>{esc(printable(command))}</code><br>{esc(printable(spec.inputs.url))} &rarr; "
           f"{esc(printable(spec.outputs.url))}</p>",
           "<div class='plots'>"]
    plots = _plots(spec, records, extras, scales)
    out += [f"<img alt='{esc(t)}' title='{esc(t)}' src='data:image/png;base64,{b}'>" for t, b in plots]
    if not plots:
        out.append("<p><i>Summary plots need matplotlib: pip install 'warpsvc[batch]'.</i></p>")
    out.append("</div>")
    scale_note = f"log2 |det J| on one scale for the run, &plusmn;{scales.det:.3g}"
    if spec.job == "align":
        scale_note += (f"; residuals on one scale for the run, 0 to {scales.residual:.3g} grey levels of the reference "
                       "(each image taken through its alignment's gain and bias)")
    out.append(f"<p>Pictures: {scale_note} (colour bars above). Contact sheet: "
               "<a href='contact_sheet.png'>contact_sheet.png</a>.</p>")
    order = sorted(records, key=lambda r: (0 if not r.ok else 1 if r.unconverged else 2, r.input))
    labels = next((", ".join(label for label, _ in p) for p in pictures.values()), "")
    out.append(f"<h2>Images ({len(records)}; failed and not converged first, {len(pictures)} pictured)</h2><table>"
               f"<tr><th>status</th><th>image</th><th>{esc(labels)}</th></tr>")
    for rec in order:
        kind = "failed" if not rec.ok else "unconverged" if rec.unconverged else "ok"
        pics = "".join(f"<img alt='{esc(label)}' title='{esc(label)}' "
                       f"src='data:image/png;base64,{base64.b64encode(_png(_thumb(img, THUMB))).decode()}'>"
                       for label, img in pictures.get(rec.input, []))
        note = f"<br><i>{esc(printable(notes[rec.input]))}</i>" if rec.input in notes else ""
        details = json.dumps(rec.to_dict(), indent=1, default=str, ensure_ascii=True)
        out.append(f"<tr class='{kind}'><td class='st'>{'not converged' if kind == 'unconverged' else kind}</td>"
                   f"<td class='txt'><b>{esc(printable(rec.input))}</b><br>{_line_html(rec, extras)}{note}"
                   f"<details><summary>record</summary><pre>{esc(details)}</pre></details></td>"
                   f"<td class='pics'>{pics}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def _line_html(rec, extras) -> str:
    return html.escape(printable(_line(rec, extras)))
