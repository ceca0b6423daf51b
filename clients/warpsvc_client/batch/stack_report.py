"""``report.html`` of a ``stack`` run: self-contained (embedded PNGs, no script, no network).

Summary first: counts, time, the reference and settings, then the **trajectory plot**
(matplotlib, Agg): drift ``x`` / ``y`` of each frame's centre in the reference (px), rotation and
scale (the :mod:`.stack_trajectory` conventions), the per-frame corner standard deviation, and a
status strip (one cell per frame: how it was registered, or failed in red); then the stack and
coverage pictures, then **failed frames first**, then every frame's row.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io

import numpy as np

from .paths import printable

MAX_ROWS = 5000
METHOD_COLOURS = {"reference": "#333333", "anchored": "#2e8b57", "keyframe": "#4a7ab5", "chained": "#e0a030",
                  "unregistered": "#c0392b", "failed": "#c0392b"}
CSS = ("body{font-family:sans-serif;margin:1.2em;color:#222} h1{font-size:20px} h2{font-size:16px;margin-top:1.2em}"
       " .plots img{display:inline-block;margin:0 12px 8px 0;vertical-align:top;max-width:100%}"
       " table{border-collapse:collapse} td,th{border-bottom:1px solid #ddd;padding:2px 6px;font-size:12px;"
       "text-align:left} th{color:#555} tr.failed td.st{background:#f4b6b6} tr.ok td.st{background:#bfe6bf}"
       " td.st{font-weight:bold} td.num{text-align:right;font-family:monospace} code{font-size:12px}")


def _png_b64(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _status_of(row) -> str:
    return row["method"] if row["status"] == "ok" and row["method"] else "failed"


def trajectory_plot(rows: list[dict]) -> str:
    """The four-panel trajectory figure as base64 PNG (module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = np.array([r["index"] for r in rows])
    ok = np.array([r["status"] == "ok" and r["drift"] is not None for r in rows])
    failed = idx[[r["status"] != "ok" for r in rows]]

    def series(key, i=None):
        return np.array([(r[key][i] if i is not None else r[key]) if r[key] is not None else np.nan for r in rows],
                        np.float64)

    fig, axes = plt.subplots(4, 1, figsize=(8.0, 7.6), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2, 2, 0.6]})
    ax = axes[0]
    ax.plot(idx[ok], series("drift", 0)[ok], ".-", ms=3, lw=1, color="#1f77b4", label="drift x")
    ax.plot(idx[ok], series("drift", 1)[ok], ".-", ms=3, lw=1, color="#d62728", label="drift y")
    for k in failed:
        for a in axes[:3]:
            a.axvline(k, color="#c0392b", alpha=0.25, lw=2)
    ax.set_ylabel("px (reference)")
    ax.set_title("frame centre in the reference minus its own centre", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(idx[ok], series("rotation_deg")[ok], ".-", ms=3, lw=1, color="#2e8b57", label="rotation")
    ax.set_ylabel("rotation (deg)", color="#2e8b57")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(idx[ok], (series("scale")[ok] - 1) * 100, ".-", ms=3, lw=1, color="#8e44ad", label="scale")
    twin.set_ylabel("scale - 1 (%)", color="#8e44ad")
    ax = axes[2]
    sd = np.array([max(r["corner_sd"]) if r["corner_sd"] else np.nan for r in rows])
    has = ok & np.isfinite(sd) & (sd > 0)
    if has.any():
        ax.plot(idx[has], sd[has], ".", ms=4, color="#555555")
        ax.set_ylim(0, 1.15 * float(sd[has].max()))
    ax.set_ylabel("corner sd (px)")
    ax.grid(alpha=0.3)
    ax = axes[3]
    colours = [METHOD_COLOURS.get(_status_of(r), "#999999") for r in rows]
    ax.bar(idx, np.ones(len(idx)), width=1.0, color=colours, edgecolor="none")
    ax.set_yticks([])
    ax.set_xlabel("frame index")
    ax.set_ylabel("status", rotation=0, ha="right", va="center")
    seen = list(dict.fromkeys(_status_of(r) for r in rows))
    handles = [matplotlib.patches.Patch(color=METHOD_COLOURS.get(s, "#999999"), label=s) for s in seen]
    ax.legend(handles=handles, fontsize=7, ncol=len(handles), loc="upper center", bbox_to_anchor=(0.5, -0.9),
              frameon=False)
    fig.tight_layout()
    return _png_b64(fig)


def image_plots(result) -> list[tuple[str, str]]:
    """The stack (percentile stretch) and the coverage map (colour bar: frames) as base64 PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    img = np.asarray(result.image, np.float64)
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    shown = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0, 1)
    h, w = img.shape[:2]
    size = (4.2, 4.2 * h / w + 0.3) if w >= h else (4.2 * w / h, 4.5)
    fig, ax = plt.subplots(figsize=size)
    if shown.ndim == 3:
        ax.imshow(shown[:, :, ::-1] if shown.shape[2] == 3 else shown.mean(axis=2), cmap="gray")  # BGR -> RGB
    else:
        ax.imshow(shown, cmap="gray")
    ax.set_title(f"stack ({result.combine} of {result.n_frames} frames)", fontsize=10)
    ax.axis("off")
    out.append(("stack", _png_b64(fig)))
    fig, ax = plt.subplots(figsize=(size[0] + 0.8, size[1]))
    im = ax.imshow(result.coverage, cmap="viridis", vmin=0, vmax=max(1.0, float(np.max(result.coverage))))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("frames covering", fontsize=8)
    ax.set_title("coverage", fontsize=10)
    ax.axis("off")
    out.append(("coverage", _png_b64(fig)))
    return out


def _fmt(v, spec=".3f") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return ""
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _row_html(r) -> str:
    esc = html.escape
    kind = "ok" if r["status"] == "ok" else "failed"
    drift = r["drift"] or [None, None]
    sd = max(r["corner_sd"]) if r["corner_sd"] else None
    what = r["error"] if r["status"] != "ok" else r["method"]
    return (f"<tr class='{kind}'><td class='num'>{r['index']}</td><td class='st'>{kind}</td>"
            f"<td>{esc(printable(r['name']))}</td><td>{esc(printable(what or ''))}</td>"
            f"<td class='num'>{_fmt(r['hops'], 'd')}</td><td class='num'>{_fmt(drift[0], '.2f')}</td>"
            f"<td class='num'>{_fmt(drift[1], '.2f')}</td><td class='num'>{_fmt(r['rotation_deg'], '.3f')}</td>"
            f"<td class='num'>{_fmt(r['scale'], '.4f')}</td><td class='num'>{_fmt(sd, '.3f')}</td>"
            f"<td class='num'>{_fmt(r['zncc'], '.3f')}</td></tr>")


HEAD = ("<tr><th>#</th><th>status</th><th>frame</th><th>method / error</th><th>hops</th><th>drift x</th>"
        "<th>drift y</th><th>rotation (deg)</th><th>scale</th><th>corner sd (px)</th><th>zncc</th></tr>")


def page(r, result) -> str:
    esc = html.escape
    t, rows = r.tally, r.trajectory
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    rate = t.registered / t.elapsed if t.elapsed > 0 else 0.0
    ref = r.reference
    stacked = 0 if result is None else result.n_frames
    where = f"frame {ref.index}" if ref.index is not None else "an image outside the sequence"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>warpsvc-batch stack report</title>"
           f"<style>{CSS}</style></head><body>",
           f"<h1>warpsvc-batch stack: {t.ok} ok, {t.failed} failed, {t.skipped} re-used of {len(r.frames)} frames; "
           f"{stacked} stacked ({esc(r.args.combine)})</h1>",
           f"<p>{t.elapsed:.1f} s, {t.registered} frames aligned in this run, {t.registered - t.unregistered} "
           f"registered ({rate:.1f} frames/s)"
           + (f", {t.replayed} replayed to rebuild the chain" if t.replayed else "") + f". {when}<br>"
           f"Reference: <b>{esc(printable(ref.name))}</b> ({where}; {ref.shape[1]}x{ref.shape[0]}"
           f", {ref.channels} channel(s)); model {esc(r.args.model)}; registered by {esc(printable(r.target_name))}"
           + (f"; sigma clip {r.args.sigma_clip}" if r.args.sigma_clip else "") + "<br>"
           f"<code>{esc(printable(r.command))}</code><br>{esc(printable(r.inputs.url))} &rarr; "
           f"{esc(printable(r.outputs.url))}</p>"]
    if t.stack_error:
        out.append(f"<p><b>Stack failed:</b> {esc(printable(t.stack_error))}</p>")
    out.append("<p>Outputs: " + ", ".join(f"<a href='{n}'>{n}</a>" for n in
                                          ("stack.tiff", "coverage.tiff", "trajectory.json", "trajectory.csv",
                                           "manifest.jsonl")) + "; aligned frames under <code>aligned/</code>.</p>")
    out.append("<h2>Trajectory</h2><div class='plots'>")
    try:
        out.append(f"<img alt='trajectory' src='data:image/png;base64,{trajectory_plot(rows)}'>")
        if result is not None:
            out += [f"<img alt='{n}' title='{n}' src='data:image/png;base64,{b}'>" for n, b in image_plots(result)]
    except ImportError:
        out.append("<p><i>Plots need matplotlib: pip install 'warpsvc[batch]'.</i></p>")
    out.append("</div>")
    bad = [row for row in rows if row["status"] != "ok"]
    out.append(f"<h2>Failed frames ({len(bad)})</h2>")
    if bad:
        out.append("<table>" + HEAD + "".join(_row_html(row) for row in bad[:MAX_ROWS]) + "</table>")
    else:
        out.append("<p>None.</p>")
    good = [row for row in rows if row["status"] == "ok"]
    out.append(f"<h2>Frames ({len(good)} ok)</h2><table>" + HEAD
               + "".join(_row_html(row) for row in good[:MAX_ROWS]) + "</table>")
    if len(good) > MAX_ROWS:
        out.append(f"<p>... {len(good) - MAX_ROWS} more in trajectory.csv.</p>")
    out.append("</body></html>")
    return "\n".join(out)


def write(r, result) -> str:
    """Write ``report.html`` into OUTPUT atomically; returns its name."""
    r.outputs.write_atomic("report.html", page(r, result).encode("utf-8"), r.run_id)
    return r.outputs.canonical("report.html")
