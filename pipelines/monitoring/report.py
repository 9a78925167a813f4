"""The monitor's report page (``pipelines/monitoring/batch.py``): one self-contained HTML page per batch, with
inline SVG charts (the category shift, the confidence histogram, estimate vs realised over time).
"""

from __future__ import annotations

import numpy as np

from pipelines.monitoring.drift import HIST_BINS, share_array


def fmt4(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


# ------------------------------------------------------------------------------------------
# The HTML page: inline SVG, no script, no network (pipelines/core/templates/monitor_report.html)
# ------------------------------------------------------------------------------------------
def _svg_bars(
    series: list[tuple[str, list[float], str]], names: list[str], width: int = 720, height: int = 220
) -> dict:
    """Grouped vertical bars, one group per name, one colour per series: the shapes the template draws."""
    pad_l, pad_b, pad_t = 60, 70, 24
    n = max(len(names), 1)
    top = max([max(v, default=0) for _, v, _ in series] + [1e-9])
    gw = (width - pad_l - 10) / n
    bw = gw / (len(series) + 1)
    h = height - pad_b - pad_t
    c = _chart(width, height)
    for frac in (0, 0.5, 1):
        y = pad_t + h * (1 - frac)
        c["grid"].append(_grid(pad_l, width, y, f"{top * frac:.2f}"))
    for gi, name in enumerate(names):
        x0 = pad_l + gi * gw
        for si, (_, values, colour) in enumerate(series):
            v = values[gi] if gi < len(values) else 0
            bh = h * v / top
            c["bars"].append(
                {
                    "x": f"{x0 + bw * (si + 0.5):.1f}",
                    "y": f"{pad_t + h - bh:.1f}",
                    "w": f"{bw:.1f}",
                    "h": f"{bh:.1f}",
                    "colour": colour,
                    "title": f"{name}: {v:.4f}",
                }
            )
        c["ticks"].append({"x": f"{x0 + gw / 2:.1f}", "y": f"{height - pad_b + 12:.1f}", "text": name[:22]})
    for si, (label, _, colour) in enumerate(series):
        c["legend"].append({"x": pad_l + 8 + 160 * si, "tx": pad_l + 22 + 160 * si, "colour": colour, "label": label})
    return c


def _chart(width: int, height: int) -> dict:
    shapes = ("grid", "bars", "polylines", "dots", "ticks", "legend")
    return {"width": width, "height": height, **{k: [] for k in shapes}}


def _grid(pad_l: int, width: int, y: float, label: str) -> dict:
    return {"x1": pad_l, "x2": width - 10, "y": f"{y:.1f}", "tx": pad_l - 4, "ty": f"{y + 4:.1f}", "label": label}


def _svg_lines(points: list[tuple[str, float | None, float | None]], width: int = 720, height: int = 220) -> dict:
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

    c = _chart(width, height)
    for frac in (0, 0.5, 1):
        c["grid"].append(_grid(pad_l, width, pad_t + h * (1 - frac), f"{lo + (hi - lo) * frac:.2f}"))
    for col, colour, label in ((1, "#1f77b4", "estimate"), (2, "#ff7f0e", "realised")):
        pts = [(i, p[col]) for i, p in enumerate(points) if p[col] is not None]
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, v) for i, v in pts))
            c["polylines"].append({"points": path, "colour": colour})
        for i, v in pts:
            x, y = xy(i, v)
            c["dots"].append({"x": f"{x:.1f}", "y": f"{y:.1f}", "colour": colour, "title": f"{label} {v:.4f}"})
        lx = pad_l + 8 + (col - 1) * 110
        c["legend"].append({"x": lx, "tx": lx + 14, "colour": colour, "label": label})
    for i, (name, _, _) in enumerate(points):
        x, _ = xy(i, lo)
        c["ticks"].append({"x": f"{x:.1f}", "y": height - pad_b + 12, "text": name[:24]})
    return c


def over_time(history: list[dict], model_name: str | None = None) -> list[tuple[str, float | None, float | None]]:
    """(label, estimate, realised) per monitored batch, oldest first."""
    realised = {h["report_json"]: h["realised"] for h in history if h.get("kind") == "realised"}
    mons = [h for h in history if h.get("kind") == "monitor"]
    return [(f"{h['run_date']} v{h['version']}", h.get("estimate"), realised.get(h["report_json"])) for h in mons[-30:]]


def render_html(r: dict, history: list[dict]) -> str:
    """The report as one self-contained page."""
    from pipelines.core.render import http_url, render

    shifts = r.get("category", {}).get("top_shifts", [])[:20]
    cat_chart = _svg_bars(
        [
            ("reference (test split)", [s["reference_share"] for s in shifts], "#9e9e9e"),
            ("this batch", [s["batch_share"] for s in shifts], "#1f77b4"),
        ],
        [str(s["category"]) for s in shifts],
    )
    conf = r.get("confidence", {})
    ref_hist = share_array(np.asarray(conf.get("reference_hist") or [0] * HIST_BINS)).tolist()
    cur_hist = share_array(np.asarray(conf.get("hist") or [0] * HIST_BINS)).tolist()
    conf_chart = _svg_bars(
        [("reference", ref_hist, "#9e9e9e"), ("this batch", cur_hist, "#1f77b4")],
        [f"{i / HIST_BINS:.2f}" for i in range(HIST_BINS)],
    )
    return render(
        "monitor_report.html",
        r=r,
        mlflow_run_url=http_url(r.get("mlflow_run_url")),  # a link only to an http(s) MLflow UI
        status=str(r["status"]),
        checks=r.get("checks", []),
        estimate=r.get("estimate", {}),
        realised=(r.get("realised") or {}).get("realised"),
        lang=" / ".join(f"{k} {v:.1%}" for k, v in r.get("languages", {}).items()),
        ref_lang=" / ".join(f"{k} {v:.1%}" for k, v in r.get("reference_languages", {}).items()),
        cat_chart=cat_chart,
        conf_chart=conf_chart,
        time_chart=_svg_lines(over_time(history)),
    )
