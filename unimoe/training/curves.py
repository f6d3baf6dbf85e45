"""Loss curves of a training stage, rendered from its ``train`` metrics table (``read_metrics``) as a
markdown table and a self-contained SVG line chart, for reports and the train flow's artifacts."""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path
from typing import Sequence

from unimoe.config import TASKS
from unimoe.training.metrics import read_metrics

COLUMNS = ("step", "loss", "ce", "aux", "lr")
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def curve_frame(df):
    """The curve columns of a ``train`` metrics frame: step, loss, ce, aux, lr and ``loss_<task>`` for
    the tasks the stage saw (all-NaN task columns dropped), sorted by step."""
    if df is None or df.empty:
        return df
    tasks = [f"loss_{t}" for t in TASKS if f"loss_{t}" in df.columns and df[f"loss_{t}"].notna().any()]
    return df[[c for c in COLUMNS if c in df.columns] + tasks].sort_values("step").reset_index(drop=True)


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and (abs(x) < 1e-3 and x != 0):
        return f"{x:.2e}"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def curve_table_markdown(df, max_rows: int = 40) -> str:
    """A markdown table of the curve (every row when there are at most ``max_rows``, else an evenly
    spaced selection that keeps the first and the last step)."""
    c = curve_frame(df)
    if c is None or c.empty:
        return "_no metrics logged_"
    if len(c) > max_rows:
        keep = sorted({round(i * (len(c) - 1) / (max_rows - 1)) for i in range(max_rows)})
        c = c.iloc[keep]
    head = "| " + " | ".join(c.columns) + " |"
    lines = [head, "|" + "---|" * len(c.columns)]
    for row in c.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(int(v) if k == "step" else float(v)) for k, v in zip(c.columns, row)) + " |")
    return "\n".join(lines)


def curve_svg(df, series: Sequence[str] | None = None, *, width: int = 560, height: int = 260, title: str = "") -> str:
    """An SVG line chart of ``series`` (default: ``ce`` and every ``loss_<task>``) over ``step``,
    with axis ranges and a legend. Pure text, no plotting library."""
    c = curve_frame(df)
    if c is None or c.empty:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="40"><text x="8" y="24">no metrics</text></svg>'
    series = list(series) if series is not None else ["ce"] + [k for k in c.columns if k.startswith("loss_")]
    series = [s for s in series if s in c.columns and c[s].notna().any()]
    left, right, top, bottom = 56, 130, 24, 32
    pw, ph = width - left - right, height - top - bottom
    steps = c["step"].astype(float)
    x0, x1 = float(steps.min()), float(steps.max())
    vals = [float(v) for s in series for v in c[s] if not math.isnan(float(v))]
    y0, y1 = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    sx = lambda x: left + (0.5 if x1 == x0 else (x - x0) / (x1 - x0)) * pw  # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * ph  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    if title:
        out.append(f'<text x="{left}" y="15" font-weight="bold">{escape(title)}</text>')
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for x in (x0, x1):
        out.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{int(x)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">optimiser step</text>')
    for i, s in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        pts = [(sx(float(x)), sy(float(y))) for x, y in zip(steps, c[s]) if not math.isnan(float(y))]
        if len(pts) == 1:
            out.append(f'<circle cx="{pts[0][0]:.1f}" cy="{pts[0][1]:.1f}" r="2.5" fill="{colour}"/>')
        elif pts:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>')
        ly = top + 12 + 16 * i
        out.append(f'<line x1="{width - right + 8}" y1="{ly - 4}" x2="{width - right + 24}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{width - right + 28}" y="{ly}">{escape(s)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def stage_curve_markdown(workdir: str | Path, title: str, **filters) -> str:
    """Markdown for one stage's workdir: the chart (an SVG data URI image, so it renders wherever
    markdown images do) and the table, from ``read_metrics(workdir, "train", **filters)``."""
    df = read_metrics(workdir, "train", **filters)
    if df.empty:
        return f"## {title}\n\n_no metrics logged in `{workdir}`_\n"
    last = df.sort_values("step").iloc[-1]
    return "\n".join([f"## {title}", "",
                      f"{len(df)} logged steps, last step {int(last['step'])}: loss {last['loss']:.4f}, "
                      f"ce {last['ce']:.4f}, aux {last['aux']:.4f}, lr {last['lr']:.3g}. Source: `{workdir}/metrics/train/`.",
                      "", f"![loss curve: {escape(title)}]({svg_data_uri(curve_svg(df, title=title))})", "",
                      curve_table_markdown(df), ""])
