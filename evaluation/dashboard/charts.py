"""Server-side SVG charts for the dashboard: radar, grouped bars, heat map, stacked bars, line chart.

No plotting library and nothing fetched at run time. Each element is a ``markupsafe.Markup`` template
(Jinja2's autoescaping layer): every value formatted into it (series, metric, task names) is escaped, so
no call site escapes by hand, and a chart is ``Markup`` that the page templates embed as it is. Shapes
carry ``data-*`` attributes (series, category, value) so tests and browser checks can read what was drawn.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Sequence

from markupsafe import Markup

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2")
FONT = 'font-family="system-ui, sans-serif"'
RADAR_FLOOR = 0.2  # the worst series on a radar axis sits at 20% of the radius, so no polygon collapses


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def tag(template: str, **values: object) -> Markup:
    """``template`` (trusted markup) with ``values`` escaped into its ``{name}`` fields."""
    return Markup(template).format(**values)


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if math.isfinite(x) else "0"


def fmt(v: float | None, signed: bool = False) -> str:
    """Compact number for labels: 3-4 significant digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    a = abs(v)
    s = f"{v:+.4g}" if signed else f"{v:.4g}"
    if a >= 1e4 or (0 < a < 1e-3):
        s = f"{v:+.3e}" if signed else f"{v:.3e}"
    return s.replace("-", "−")


def svg_doc(figure: str, width: int, height: int, body: Sequence[Markup], label: str) -> Markup:
    return tag('<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-figure="{figure}" role="img" '
               'aria-label="{label}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" ' + FONT
               + ' font-size="11"><title>{label}</title>{body}</svg>',
               figure=figure, label=label, w=width, h=height, body=Markup("").join(body))


def _title(title: str) -> list[Markup]:
    return [tag('<text x="8" y="16" font-size="13" font-weight="600">{t}</text>', t=title)] if title else []


def empty_svg(figure: str, message: str, width: int = 420, height: int = 60) -> Markup:
    return svg_doc(figure, width, height, [tag('<text x="10" y="34" fill="#666">{m}</text>', m=message)], message)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def text_width(text: str, px: float = 6.3) -> float:
    """Rough width of ``text`` at the 11 px chart font (no font metrics on the server)."""
    return px * len(str(text))


def _fit(width: float, title: str, legend: Sequence[str] = (), legend_x: float | None = None) -> int:
    """Widen the canvas so the title and the legend (starting at ``legend_x``) are not clipped."""
    need = max(width, 16 + text_width(title, 7.5))
    if legend and legend_x is not None:
        need = max(need, legend_x + 30 + max(text_width(n) for n in legend))
    return int(math.ceil(need))


def _legend(names: Sequence[str], x: float, y: float) -> list[Markup]:
    return [tag('<line x1="{x}" y1="{y}" x2="{x2}" y2="{y}" stroke="{c}" stroke-width="3"/>'
                '<text x="{tx}" y="{ty}">{name}</text>', x=_num(x), y=_num(y + 14 * i), x2=_num(x + 18), c=color(i),
                tx=_num(x + 22), ty=_num(y + 14 * i + 4), name=name)
            for i, name in enumerate(names)]


# -- radar --------------------------------------------------------------------------------------
def normalise(values: Sequence[float | None], higher_is_better: bool) -> list[float | None]:
    """Per-axis scale for the radar: best value -> 1, worst -> RADAR_FLOOR, linear in between (direction
    respected: for lower-is-better metrics the smallest value is best); all equal -> 1; None stays."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return [None for _ in values]
    lo, hi = min(vals), max(vals)
    out: list[float | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        elif hi == lo:
            out.append(1.0)
        else:
            frac = (v - lo) / (hi - lo) if higher_is_better else (hi - v) / (hi - lo)
            out.append(RADAR_FLOOR + (1 - RADAR_FLOOR) * frac)
    return out


def radar_point(value: float, i: int, n: int, cx: float, cy: float, radius: float) -> tuple[float, float]:
    """Axis ``i`` of ``n`` starts at 12 o'clock and goes clockwise; ``value`` in [0, 1] of the radius."""
    ang = -math.pi / 2 + 2 * math.pi * i / n
    return cx + radius * value * math.cos(ang), cy + radius * value * math.sin(ang)


def radar(axes: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
          raw: Sequence[Sequence[float | None]] | None = None, groups: Sequence[str] | None = None,
          title: str = "", figure: str = "radar", size: int = 460) -> Markup:
    """``series``: (name, normalised value per axis in [0, 1]); missing values are drawn at the centre.
    ``raw`` (same shape) goes into the vertex tooltips; ``groups`` (per axis, e.g. "speech"/"music")
    colours the axis labels."""
    n = len(axes)
    if n < 3 or not series:
        return empty_svg(figure, "A radar needs at least three metrics shared by the selection.")
    legend_h = 14 * len(series) + 10
    side = min(260.0, max(120.0, max(text_width(a) for a in axes) * 0.8))
    w, h = int(size + 2 * side), size + legend_h
    cx, cy, r = w / 2, size / 2 + 4, size / 2 - 70
    body = _title(title)
    for ring in (0.25, 0.5, 0.75, 1.0):
        pts = " ".join(f"{_num(x)},{_num(y)}" for x, y in (radar_point(ring, i, n, cx, cy, r) for i in range(n)))
        body.append(tag('<polygon points="{pts}" fill="none" stroke="#ddd"/>', pts=pts))
    group_color = {"speech": "#1a5fb4", "music": "#a51d2d"}
    for i, name in enumerate(axes):
        x, y = radar_point(1.0, i, n, cx, cy, r)
        lx, ly = radar_point(1.12, i, n, cx, cy, r)
        anchor = "middle" if abs(lx - cx) < 8 else ("start" if lx > cx else "end")
        fill = group_color.get(groups[i], "#333") if groups else "#333"
        body.append(tag('<line x1="{cx}" y1="{cy}" x2="{x}" y2="{y}" stroke="#ccc"/><text x="{lx}" y="{ly}" '
                        'text-anchor="{anchor}" fill="{fill}" class="axis-label">{name}</text>', cx=_num(cx),
                        cy=_num(cy), x=_num(x), y=_num(y), lx=_num(lx), ly=_num(ly + 4), anchor=anchor, fill=fill,
                        name=name))
    for si, (name, vals) in enumerate(series):
        pts = [radar_point(v if v is not None else 0.0, i, n, cx, cy, r) for i, v in enumerate(vals)]
        ptxt = " ".join(f"{_num(x)},{_num(y)}" for x, y in pts)
        body.append(tag('<polygon class="series" data-series="{name}" points="{pts}" fill="{c}" fill-opacity="0.12" '
                        'stroke="{c}" stroke-width="2"/>', name=name, pts=ptxt, c=color(si)))
        for i, (x, y) in enumerate(pts):
            rv = raw[si][i] if raw is not None else None
            tip = f"{name} — {axes[i]}: {fmt(rv)}" if rv is not None else f"{name} — {axes[i]}: n/a"
            body.append(tag('<circle cx="{x}" cy="{y}" r="3" fill="{c}"><title>{tip}</title></circle>',
                            x=_num(x), y=_num(y), c=color(si), tip=tip))
    body += _legend([s[0] for s in series], 10, size + 8)
    return svg_doc(figure, _fit(w, title, [s[0] for s in series], 10), h, body, title or "radar chart")


# -- bars and heat map ---------------------------------------------------------------------------
def _y_axis(ticks: Sequence[float], y_of, x0: float, x1: float, label: str, fmt_tick=None) -> list[Markup]:
    out = [tag('<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/>'
               '<text x="{tx}" y="{ty}" text-anchor="end">{t}</text>', x0=_num(x0), x1=_num(x1), y=_num(y_of(t)),
               tx=_num(x0 - 4), ty=_num(y_of(t) + 4), t=(fmt_tick or fmt)(t)) for t in ticks]
    if label:
        out.append(_vertical_label(12, (y_of(ticks[0]) + y_of(ticks[-1])) / 2, label))
    return out


def _vertical_label(x: float, y: float, label: str) -> Markup:
    return tag('<text x="{x}" y="{y}" text-anchor="middle" transform="rotate(-90 {x} {y})">{label}</text>',
               x=_num(x), y=_num(y), label=label)


def grouped_bars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
                 title: str = "", y_label: str = "", figure: str = "bars", height: int = 280) -> Markup:
    if not categories or not series:
        return empty_svg(figure, "Nothing to plot.")
    vals = [v for _, vs in series for v in vs if v is not None and math.isfinite(v)]
    ticks = nice_ticks(min(0.0, min(vals, default=0.0)), max(vals, default=1.0))
    left, top, bottom = 56, 28, 40
    group_w = max(24.0, 14.0 * len(series) + 12)
    plot_w = group_w * len(categories)
    w, h = _fit(left + plot_w + 20, title, [s[0] for s in series], left + plot_w + 20), height
    y0, y1 = h - bottom, top
    lo, hi = ticks[0], ticks[-1]
    y_of = lambda v: y0 - (v - lo) / (hi - lo) * (y0 - y1)  # noqa: E731
    body = _title(title) + _y_axis(ticks, y_of, left, left + plot_w, y_label)
    bar_w = (group_w - 12) / len(series)
    for ci, cat in enumerate(categories):
        gx = left + ci * group_w + 6
        for si, (name, vs) in enumerate(series):
            v = vs[ci]
            if v is None or not math.isfinite(v):
                continue
            ya, yb = sorted((y_of(v), y_of(max(lo, 0.0))))
            body.append(tag('<rect class="bar" data-series="{name}" data-category="{cat}" data-value="{v:.6g}" '
                            'x="{x}" y="{y}" width="{w}" height="{h}" fill="{c}"><title>{tip}</title></rect>',
                            name=name, cat=cat, v=v, x=_num(gx + si * bar_w), y=_num(ya), w=_num(max(bar_w - 1, 1)),
                            h=_num(max(yb - ya, 0.5)), c=color(si), tip=f"{name} — {cat}: {fmt(v)}"))
        body.append(_x_label(gx + (group_w - 12) / 2, y0 + 14, cat))
    body.append(_x_axis(left, left + plot_w, y0))
    body += _legend([s[0] for s in series], left + plot_w + 20, top + 6)
    return svg_doc(figure, w, h, body, title or "bar chart")


def _x_label(x: float, y: float, label: str) -> Markup:
    return tag('<text x="{x}" y="{y}" text-anchor="middle">{label}</text>', x=_num(x), y=_num(y), label=label)


def _x_axis(x0: float, x1: float, y: float) -> Markup:
    return tag('<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#333"/>', x0=x0, x1=_num(x1), y=_num(y))


def _mix(frac: float) -> str:
    """White -> dark blue."""
    frac = min(max(frac, 0.0), 1.0)
    a, b = (255, 255, 255), (8, 48, 107)
    return "#" + "".join(f"{round(x + (y - x) * frac):02x}" for x, y in zip(a, b))


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], matrix: Sequence[Sequence[float]],
            title: str = "", row_title: str = "", col_title: str = "", figure: str = "heatmap",
            cell: int = 34) -> Markup:
    """Cell shade = value / the largest value; the value is printed in each cell."""
    if not row_labels or not col_labels:
        return empty_svg(figure, "Nothing to plot.")
    vmax = max((v for row in matrix for v in row if math.isfinite(v)), default=1.0) or 1.0
    left, top = 70, 40
    w = _fit(left + cell * len(col_labels) + 20, title)
    h = top + cell * len(row_labels) + 36
    body = _title(title)
    for j, c in enumerate(col_labels):
        body.append(tag('<text x="{x}" y="{y}" text-anchor="middle">{c}</text>', x=left + cell * j + cell / 2,
                        y=top - 6, c=c))
    for i, rl in enumerate(row_labels):
        body.append(tag('<text x="{x}" y="{y}" text-anchor="end">{rl}</text>', x=left - 6,
                        y=top + cell * i + cell / 2 + 4, rl=rl))
        for j, c in enumerate(col_labels):
            v = matrix[i][j]
            frac = v / vmax if math.isfinite(v) else 0.0
            body.append(tag('<rect class="cell" data-row="{rl}" data-col="{c}" data-value="{v:.6g}" x="{x}" y="{y}" '
                            'width="{side}" height="{side}" fill="{fill}"><title>{tip}</title></rect>'
                            '<text x="{tx}" y="{ty}" text-anchor="middle" font-size="9" fill="{ink}">{v:.2f}</text>',
                            rl=rl, c=c, v=v, x=left + cell * j, y=top + cell * i, side=cell - 1, fill=_mix(frac),
                            tip=f"{row_title} {rl}, {col_title} {c}: {fmt(v)}", tx=left + cell * j + cell / 2,
                            ty=top + cell * i + cell / 2 + 4, ink="#fff" if frac > 0.55 else "#222"))
    body.append(tag('<text x="{x}" y="{y}" text-anchor="middle">{t}</text>', x=left + cell * len(col_labels) / 2,
                    y=h - 8, t=col_title))
    body.append(tag('<text x="12" y="{y}" text-anchor="middle" transform="rotate(-90 12 {y})">{t}</text>',
                    y=top + cell * len(row_labels) / 2, t=row_title))
    return svg_doc(figure, w, h, body, title or "heat map")


def stacked_bars(categories: Sequence[str], stacks: Sequence[tuple[str, Sequence[float]]], title: str = "",
                 y_label: str = "share", figure: str = "stacked", height: int = 260) -> Markup:
    """One bar per category, stacked bottom-up in ``stacks`` order; values are shares (summing to <= 1)."""
    if not categories or not stacks:
        return empty_svg(figure, "Nothing to plot.")
    left, top, bottom = 56, 28, 40
    bw = max(18, min(40, 600 // max(len(categories), 1)))
    plot_w = (bw + 6) * len(categories)
    w, h = _fit(left + plot_w + 20, title, [s[0] for s in stacks], left + plot_w + 20), height
    y0, y1 = h - bottom, top
    y_of = lambda v: y0 - v * (y0 - y1)  # noqa: E731
    body = _title(title) + _y_axis([0, 0.25, 0.5, 0.75, 1.0], y_of, left, left + plot_w, y_label, lambda t: f"{t:.0%}")
    for ci, cat in enumerate(categories):
        x, acc = left + ci * (bw + 6) + 3, 0.0
        for si, (name, vs) in enumerate(stacks):
            v = float(vs[ci]) if math.isfinite(vs[ci]) else 0.0
            if v <= 0:
                continue
            body.append(tag('<rect class="bar" data-series="{name}" data-category="{cat}" data-value="{v:.6g}" '
                            'x="{x}" y="{y}" width="{w}" height="{h}" fill="{c}"><title>{tip}</title></rect>',
                            name=name, cat=cat, v=v, x=x, y=_num(y_of(acc + v)), w=bw, h=_num(v * (y0 - y1)),
                            c=color(si), tip=f"{cat} — {name}: {v:.1%}"))
            acc += v
        body.append(tag('<text x="{x}" y="{y}" text-anchor="middle">{cat}</text>', x=x + bw / 2, y=_num(y0 + 14),
                        cat=cat))
    body += _legend([s[0] for s in stacks], left + plot_w + 20, top + 6)
    return svg_doc(figure, w, h, body, title or "stacked bars")


# -- lines ----------------------------------------------------------------------------------------
def _dash(pattern: str) -> Markup:
    return tag(' stroke-dasharray="{d}"', d=pattern) if pattern else Markup("")


def _date_label(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d")


def line_chart(lines: Sequence[dict], title: str = "", x_label: str = "", y_label: str = "",
               time_axis: bool = False, figure: str = "lines", width: int = 560, height: int = 260) -> Markup:
    """``lines``: dicts with ``name``, ``xs``, ``ys`` and optionally ``lo``/``hi`` (a shaded CI band),
    ``flags`` (bool per point: drawn as a red ring), ``color`` index and ``dash`` index. With
    ``time_axis`` the xs are POSIX seconds and ticks are dates."""
    pts = [(x, y) for ln in lines for x, y in zip(ln["xs"], ln["ys"]) if math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return empty_svg(figure, "Nothing to plot.")
    ys = [y for _, y in pts] + [v for ln in lines for k in ("lo", "hi") for v in ln.get(k) or [] if math.isfinite(v)]
    xs = [x for x, _ in pts]
    yt = nice_ticks(min(ys), max(ys))
    xlo, xhi = min(xs), max(xs)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    left, top, bottom = 60, 28, 40
    plot_w = width - left - 10 - 170
    n_x = max(2, min(5, int(plot_w // 80)))
    xt = [xlo + (xhi - xlo) * k / (n_x - 1) for k in range(n_x)] if time_axis else nice_ticks(xlo, xhi, n_x)
    if not time_axis:
        xlo, xhi = min(xlo, xt[0]), max(xhi, xt[-1])
    y0, y1 = height - bottom, top
    x_of = lambda x: left + (x - xlo) / (xhi - xlo) * plot_w  # noqa: E731
    y_of = lambda y: y0 - (y - yt[0]) / (yt[-1] - yt[0]) * (y0 - y1)  # noqa: E731
    body = _title(title) + _y_axis(yt, y_of, left, left + plot_w, y_label)
    for t in xt:
        if xlo <= t <= xhi:
            body.append(_x_label(x_of(t), y0 + 14, _date_label(t) if time_axis else fmt(t)))
    body.append(_x_axis(left, left + plot_w, y0))
    if x_label:
        body.append(tag('<text x="{x}" y="{y}" text-anchor="middle">{t}</text>', x=_num(left + plot_w / 2),
                        y=height - 6, t=x_label))
    names = []
    for li, ln in enumerate(lines):
        c, d = color(ln.get("color", li)), DASHES[ln.get("dash", 0) % len(DASHES)]
        names.append((ln["name"], c, d))
        seq = [(x, y, i) for i, (x, y) in enumerate(zip(ln["xs"], ln["ys"])) if math.isfinite(x) and math.isfinite(y)]
        if ln.get("lo") is not None and ln.get("hi") is not None:
            band = [(x_of(ln["xs"][i]), y_of(ln["hi"][i])) for _, _, i in seq if math.isfinite(ln["hi"][i])]
            band += [(x_of(ln["xs"][i]), y_of(ln["lo"][i])) for _, _, i in reversed(seq) if math.isfinite(ln["lo"][i])]
            if len(band) > 2:
                body.append(tag('<polygon class="band" points="{pts}" fill="{c}" fill-opacity="0.15" stroke="none"/>',
                                pts=" ".join(f"{_num(x)},{_num(y)}" for x, y in band), c=c))
        path = " ".join(f"{'M' if k == 0 else 'L'}{_num(x_of(x))},{_num(y_of(y))}" for k, (x, y, _) in enumerate(seq))
        body.append(tag('<path class="line" data-series="{name}" data-points="{n}" d="{path}" fill="none" '
                        'stroke="{c}" stroke-width="1.8"{dash}/>', name=ln["name"], n=len(seq), path=path, c=c,
                        dash=_dash(d)))
        if len(seq) <= 40:
            for x, y, i in seq:
                tip = f"{ln['name']} @ {_date_label(x) if time_axis else fmt(x)}: {fmt(y)}"
                body.append(tag('<circle cx="{x}" cy="{y}" r="2.5" fill="{c}"><title>{tip}</title></circle>',
                                x=_num(x_of(x)), y=_num(y_of(y)), c=c, tip=tip))
        for x, y, i in seq:
            if ln.get("flags") and ln["flags"][i]:
                body.append(tag('<circle class="flag" cx="{x}" cy="{y}" r="6" fill="none" stroke="#d00" '
                                'stroke-width="2"><title>regressed</title></circle>', x=_num(x_of(x)), y=_num(y_of(y))))
    lx = left + plot_w + 16
    for i, (name, c, d) in enumerate(names[:14]):
        yy = top + 6 + 14 * i
        body.append(tag('<line x1="{x}" y1="{y}" x2="{x2}" y2="{y}" stroke="{c}" stroke-width="2.5"{dash}/>'
                        '<text x="{tx}" y="{ty}">{name}</text>', x=lx, y=yy, x2=lx + 18, c=c, dash=_dash(d),
                        tx=lx + 22, ty=yy + 4, name=name))
    if len(names) > 14:
        body.append(tag('<text x="{x}" y="{y}">… {n} more</text>', x=lx, y=top + 6 + 14 * 14 + 4, n=len(names) - 14))
    shown = [n for n, _, _ in names[:14]]
    return svg_doc(figure, _fit(width, title, shown, lx), height, body, title or "line chart")
