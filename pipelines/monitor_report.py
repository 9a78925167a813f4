"""The monitor's report page (``pipelines/monitor.py``): one self-contained HTML page per batch, with
inline SVG charts (the category shift, the confidence histogram, estimate vs realised over time).
"""

from __future__ import annotations

import html

import numpy as np

from pipelines.monitor_drift import HIST_BINS, _shares


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------------------
# The HTML page: inline SVG, no script, no network
# ------------------------------------------------------------------------------------------
def _svg_bars(series: list[tuple[str, list[float], str]], names: list[str], width: int = 720, height: int = 220) -> str:
    """Grouped vertical bars, one group per name, one colour per series."""
    pad_l, pad_b, pad_t = 60, 70, 24
    n = max(len(names), 1)
    top = max([max(v, default=0) for _, v, _ in series] + [1e-9])
    gw = (width - pad_l - 10) / n
    bw = gw / (len(series) + 1)
    h = height - pad_b - pad_t
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        y = pad_t + h * (1 - frac)
        out.append(f'<line x1="{pad_l}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{top * frac:.2f}</text>')
    for gi, name in enumerate(names):
        x0 = pad_l + gi * gw
        for si, (_, values, colour) in enumerate(series):
            v = values[gi] if gi < len(values) else 0
            bh = h * v / top
            out.append(
                f'<rect x="{x0 + bw * (si + 0.5):.1f}" y="{pad_t + h - bh:.1f}" width="{bw:.1f}" '
                f'height="{bh:.1f}" fill="{colour}"><title>{html.escape(name)}: {v:.4f}</title></rect>'
            )
        tx, ty = x0 + gw / 2, height - pad_b + 12
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="9" text-anchor="end" '
            f'transform="rotate(-40 {tx:.1f} {ty:.1f})">{html.escape(name[:22])}</text>'
        )
    for si, (label, _, colour) in enumerate(series):
        out.append(f'<rect x="{pad_l + 8 + 160 * si}" y="4" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{pad_l + 22 + 160 * si}" y="13" font-size="11">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _svg_lines(points: list[tuple[str, float | None, float | None]], width: int = 720, height: int = 220) -> str:
    """Estimate (blue) and realised (orange) macro-recall per monitored batch, in time order."""
    pad_l, pad_b, pad_t = 60, 60, 24
    vals = [v for _, e, r in points for v in (e, r) if v is not None]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05)
    hi = hi if hi > lo else lo + 0.1
    w, h = width - pad_l - 10, height - pad_b - pad_t
    n = len(points)

    def xy(i, v):
        x = pad_l + (w * i / (n - 1) if n > 1 else w / 2)
        return x, pad_t + h * (1 - (v - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for frac in (0, 0.5, 1):
        y = pad_t + h * (1 - frac)
        out.append(f'<line x1="{pad_l}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(
            f'<text x="{pad_l - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{lo + (hi - lo) * frac:.2f}</text>'
        )
    for col, colour, label in ((1, "#1f77b4", "estimate"), (2, "#ff7f0e", "realised")):
        pts = [(i, p[col]) for i, p in enumerate(points) if p[col] is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, v in pts:
            x, y = xy(i, v)
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"><title>{label} {v:.4f}</title></circle>'
            )
        lx = pad_l + 8 + (col - 1) * 110
        out.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="13" font-size="11">{label}</text>')
    for i, (name, _, _) in enumerate(points):
        x, _ = xy(i, lo)
        ty = height - pad_b + 12
        out.append(
            f'<text x="{x:.1f}" y="{ty}" font-size="9" text-anchor="end" '
            f'transform="rotate(-40 {x:.1f} {ty})">{html.escape(name[:24])}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def over_time(history: list[dict], model_name: str | None = None) -> list[tuple[str, float | None, float | None]]:
    """(label, estimate, realised) per monitored batch, oldest first."""
    realised = {h["report_json"]: h["realised"] for h in history if h.get("kind") == "realised"}
    mons = [h for h in history if h.get("kind") == "monitor"]
    return [(f"{h['run_date']} v{h['version']}", h.get("estimate"), realised.get(h["report_json"])) for h in mons[-30:]]


def _check_row(c: dict) -> str:
    e = html.escape
    value = "n/a" if c["value"] is None else f"{c['value']:.4f}"
    return (
        f'<tr class="{"bad" if c["breached"] else ""}"><td>{e(c["check"])}</td><td>{value}</td>'
        f"<td>{c['threshold']:.4f}</td><td>{'BREACH' if c['breached'] else 'ok'}</td><td>{e(c['message'])}</td></tr>"
    )


def render_html(r: dict, history: list[dict]) -> str:
    """The report as one self-contained page."""
    e = html.escape
    status = r["status"]
    colour = {"ok": "#2e7d32", "drift": "#c62828"}.get(status, "#666")
    rows = "".join(_check_row(c) for c in r.get("checks", []))
    shifts = r.get("category", {}).get("top_shifts", [])[:20]
    cat_svg = _svg_bars(
        [
            ("reference (test split)", [s["reference_share"] for s in shifts], "#9e9e9e"),
            ("this batch", [s["batch_share"] for s in shifts], "#1f77b4"),
        ],
        [s["category"] for s in shifts],
    )
    conf = r.get("confidence", {})
    ref_hist = _shares(np.asarray(conf.get("reference_hist") or [0] * HIST_BINS)).tolist()
    cur_hist = _shares(np.asarray(conf.get("hist") or [0] * HIST_BINS)).tolist()
    conf_svg = _svg_bars(
        [("reference", ref_hist, "#9e9e9e"), ("this batch", cur_hist, "#1f77b4")],
        [f"{i / HIST_BINS:.2f}" for i in range(HIST_BINS)],
    )
    time_svg = _svg_lines(over_time(history))
    est = r.get("estimate", {})
    realised = (r.get("realised") or {}).get("realised")
    lang = " / ".join(f"{k} {v:.1%}" for k, v in r.get("languages", {}).items())
    ref_lang = " / ".join(f"{k} {v:.1%}" for k, v in r.get("reference_languages", {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Monitor {e(r["model_name"])} v{e(r["version"])} {e(r["run_date"])}</title>
<style>body{{font-family:sans-serif;margin:24px;max-width:900px;color:#222}}h1{{font-size:20px}}
.status{{color:#fff;background:{colour};padding:2px 8px;border-radius:4px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
tr.bad td{{background:#fdecea}}h2{{font-size:16px;margin-top:24px}}</style>
</head><body>
<h1>Monitor: {e(r["model_name"])} v{e(r["version"])}, batch of {e(r["run_date"])}
<span class="status">{e(status.upper())}</span></h1>
<p>{e(r.get("reason") or "All checks within thresholds.")}</p>
<ul><li>{r.get("rows", 0)} rows, {r.get("scored_rows", 0)} scored; input <code>{e(r["scored"])}</code></li>
<li>estimated macro-recall (label-free, CBPE) <b>{_f(est.get("macro_recall"))}</b>; champion's test macro-recall
{_f(est.get("reference_macro_recall"))}; realised on labelled rows: <b>{_f(realised)}</b></li>
<li>language mix: {e(lang)} (reference {e(ref_lang)})</li>
<li>MLflow run <code>{e(str(r.get("mlflow_run_id", "")))}</code></li></ul>
<h2>Checks</h2>
<table><tr><th>check</th><th>value</th><th>threshold</th><th></th><th>meaning</th></tr>{rows}</table>
<h2>Predicted-category shift (top 20 by share difference)</h2>{cat_svg}
<h2>Confidence (top-1 probability) histogram</h2>{conf_svg}
<h2>Estimated vs realised macro-recall over time</h2>{time_svg}
</body></html>
"""
