"""The ablation dashboard: a small stdlib HTTP app (``ThreadingHTTPServer``) over :mod:`.queries`,
rendering the page and its SVG figures on the server (nothing is fetched by the browser).

Routes: ``/`` (query parameters ``runs``, ``variants`` — repeated or comma-separated — ``baseline``
(``variant:<name>``, ``run:<id>`` or a bare name), ``benchmark``, ``threshold`` (relative, e.g. 0.02),
``stage`` and ``layer`` for the routing figures), ``/healthz``, ``/api/status.json``,
``/api/compare.json`` (the metric table as JSON, same parameters as ``/``).

Each section is built on its own: a missing table or a failing query gives that section a message,
never a 500 for the page. The HTML comes from Jinja2 templates with autoescaping (:mod:`.templates`), so
every string from the URL or the data is escaped where it is rendered.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from markupsafe import Markup

from evaluation.dashboard import charts
from evaluation.dashboard.charts import fmt
from evaluation.dashboard.queries import TOPLINE_LABELS, DashboardData, Section, Series, split_list
from evaluation.dashboard.templates import render

log = logging.getLogger(__name__)

SPEECH_TASKS = ("en_tts", "zh_tts")
MUSIC_TASKS = ("t2m", "v2m")
MAX_DEFAULT_VARIANTS = 6
MAX_RUNS_LISTED = 200
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "form-action 'self'; base-uri 'none'")


@dataclass
class View:
    """The page's resolved selection."""
    series: list[Series]  # compared series, baseline first when it has one
    baseline: Series | None
    benchmark: str | None
    threshold: float | None  # None: the regression check's per-metric thresholds
    stage: int | None
    layer: int | None
    variants_all: list[str]
    runs_all: Section
    benchmarks_all: list[str]
    notes: list[str]
    _compare: Section | None = None

    def compare(self, data: DashboardData) -> Section:
        """The metric comparison, computed once per page (three sections use it)."""
        if self._compare is None:
            self._compare = data.compare(self.series, self.baseline, self.benchmark, self.threshold)
        return self._compare


def _one(params: dict[str, list[str]], key: str) -> str | None:
    vals = [v for v in params.get(key, []) if v.strip()]
    return vals[-1].strip() if vals else None


def _int(s: str | None, notes: list[str], what: str) -> int | None:
    if s is None or s in ("", "all", "auto"):
        return None
    try:
        return int(s)
    except ValueError:
        notes.append(f"Ignored {what}={s!r}: not an integer.")
        return None


def resolve(data: DashboardData, params: dict[str, list[str]]) -> View:
    notes: list[str] = []
    variants_all = data.variants()
    runs_all = data.runs()
    run_ids = [] if runs_all.empty else [str(r) for r in runs_all.df["run_id"]]
    variants = split_list(params.get("variants"))
    runs = split_list(params.get("runs"))
    if not variants and not runs:
        result_variants = sorted(set(runs_all.df["variant"].str.split(", ").explode())) if not runs_all.empty else []
        variants = result_variants[:MAX_DEFAULT_VARIANTS]
    series = [Series("variant", v) for v in variants] + [Series("run", r) for r in runs]

    b = _one(params, "baseline")
    baseline: Series | None = None
    if b:
        kind, _, name = b.partition(":")
        if kind in ("variant", "run") and name:
            baseline = Series(kind, name)
        elif b in variants or (b in variants_all and b not in runs):
            baseline = Series("variant", b)
        elif b in run_ids or b in runs:
            baseline = Series("run", b)
        else:
            baseline = Series("variant", b)
    elif series:
        # Default: a series that looks like a baseline, else the first one picked.
        names = [s for s in series if any(w in s.name.lower() for w in ("baseline", "dense"))]
        baseline = (names or series)[0]
    if baseline is not None:
        series = [baseline] + [s for s in series if s != baseline]

    threshold: float | None = None
    t = _one(params, "threshold")
    if t:
        try:
            threshold = float(t)
            if not math.isfinite(threshold) or threshold < 0:
                raise ValueError
        except ValueError:
            notes.append(f"Ignored threshold={t!r}: expected a non-negative number (a fraction of the baseline).")
            threshold = None
    bench = _one(params, "benchmark")
    return View(series=series, baseline=baseline, benchmark=None if bench in (None, "all") else bench,
                threshold=threshold, stage=_int(_one(params, "stage"), notes, "stage"),
                layer=_int(_one(params, "layer"), notes, "layer"), variants_all=variants_all, runs_all=runs_all,
                benchmarks_all=data.benchmarks(), notes=notes)


# -- sections -------------------------------------------------------------------------------------
def _figures(note: str | None, figs: list[Markup] | None = None, lead: Markup | None = None) -> Markup:
    return render("figures", note=note, lead=lead, figs=figs)


def _msg(text: str | None) -> Markup:
    return _figures(text)


def _section(sid: str, title: str, build: Callable[[], Markup], blurb: str = "") -> Markup:
    inner, error = None, None
    try:
        inner = build()
    except Exception as e:  # one broken section must not take the page down
        log.exception("dashboard section %s failed", sid)
        error = f"This section could not be built: {type(e).__name__}: {e}"
    return render("section", sid=sid, title=title, blurb=blurb, inner=inner, error=error)


def _ci(lo: float, hi: float, signed: bool = False) -> tuple[str, str] | None:
    if lo is None or hi is None or any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return None
    return fmt(lo, signed), fmt(hi, signed)


def _asked(c: dict) -> str:
    return f" of {c['n_asked']} asked" if c.get("n_asked") is not None else ""


def _th(label: str, cls: str | None = None, small: str | None = None) -> dict[str, str | None]:
    return {"label": label, "cls": cls, "small": small}


def _cell(cls: str | None, where: dict[str, str], text: str = "–", ci: tuple[str, str] | None = None,
          **attrs: str | None) -> dict[str, Any]:
    """One ``<td>``: its class, the ``data-*`` attributes saying where it is, then ``attrs``."""
    return {"attrs": {"class": cls, **where, **{k.replace("_", "-"): v for k, v in attrs.items()}},
            "text": text, "ci": ci}


def metric_table(data: DashboardData, v: View) -> Markup:
    cmp = v.compare(data)
    if cmp.empty:
        return _msg(cmp.message)
    others = [s for s in v.series if s != v.baseline]
    head = [_th("benchmark"), _th("task"), _th("metric")]
    if v.baseline:
        head.append(_th(v.baseline.label, "baseline", "baseline"))
    for s in others:
        head += [_th(s.label)] + ([_th(f"Δ {s.label}")] if v.baseline else [])
    toplines = cmp.meta.get("toplines", [])
    head += [_th(TOPLINE_LABELS.get(t, t), "topline", "topline") for t in toplines]
    rows = []
    counts = {"regressed": 0, "improved": 0}
    for r in cmp.df.itertuples(index=False):
        row = [_cell(None, {}, r.benchmark), _cell(None, {}, r.task),
               _cell(None, {}, f"{r.metric} {'↑' if r.higher_is_better else '↓'}",
                     title=f"{'higher' if r.higher_is_better else 'lower'} is better")]
        where_row = {"data-metric": r.metric, "data-task": r.task, "data-benchmark": r.benchmark}
        for s in ([v.baseline] if v.baseline else []) + others:
            c = r.cells.get(s.key)
            where = {"data-series": s.key, **where_row}
            with_delta = v.baseline and s != v.baseline
            if c is None:
                row.append(_cell("value missing", where))
                if with_delta:
                    row.append(_cell("delta missing", {}))
                continue
            row.append(_cell("value", where, fmt(c["value"]), _ci(c["ci_low"], c["ci_high"]),
                             title=f"run {c['run_id']}, n={c['n']}{_asked(c)}, {c['timestamp']}"))
            if with_delta:
                if c["delta"] is None:
                    row.append(_cell("delta missing", where, "no baseline value"))
                    continue
                status = c["status"] or "same"
                counts[status] = counts.get(status, 0) + 1
                row.append(_cell(f"delta {status}", where, fmt(c["delta"], signed=True),
                                 _ci(*c["delta_ci"], signed=True) if c["delta_ci"] else None,
                                 data_delta=f"{c['delta']:.6g}", data_status=status,
                                 title=f"threshold {fmt(c['threshold'])}"))
        tops = getattr(r, "toplines", None) or {}
        for t in toplines:
            where = {"data-topline": t, **where_row}
            c = tops.get(t)
            if c is None:
                row.append(_cell("value topline missing", where))
                continue
            row.append(_cell("value topline", where, fmt(c["value"]), _ci(c["ci_low"], c["ci_high"]),
                             title=f"{TOPLINE_LABELS.get(t, t)} of run {c['run_id']}, n={c['n']}{_asked(c)}, "
                                   f"{c['timestamp']}"))
        rows.append(row)
    threshold = (f"{v.threshold:.1%} of the baseline" if v.threshold is not None
                 else "the regression check's per-metric threshold")
    return render("metric_table", baseline=v.baseline.label if v.baseline else None, counts=counts,
                  threshold=threshold, message=cmp.message, head=head, rows=rows)


def radar_section(data: DashboardData, v: View) -> Markup:
    cmp = v.compare(data)
    if cmp.empty:
        return _msg(cmp.message)
    keys = [s.key for s in v.series]
    multi_bench = cmp.df["benchmark"].nunique() > 1
    axes, groups, raw_cols, dirs = [], [], [], []
    dropped = 0
    order = {t: i for i, t in enumerate(SPEECH_TASKS + MUSIC_TASKS)}
    rows = sorted(cmp.df.itertuples(index=False), key=lambda r: (order.get(r.task, 99), r.benchmark, r.metric))
    for r in rows:
        vals = [r.cells.get(k, {}).get("value") for k in keys]
        if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in vals):
            dropped += 1
            continue
        label = f"{r.metric} ({r.task}{', ' + r.benchmark if multi_bench else ''})"
        axes.append(label + (" ↑" if r.higher_is_better else " ↓"))
        groups.append("speech" if r.task in SPEECH_TASKS else "music" if r.task in MUSIC_TASKS else "other")
        raw_cols.append(vals)
        dirs.append(bool(r.higher_is_better))
    norm_cols = [charts.normalise(col, hib) for col, hib in zip(raw_cols, dirs)]
    series = [(s.label, [norm_cols[a][i] for a in range(len(axes))]) for i, s in enumerate(v.series)]
    raw = [[raw_cols[a][i] for a in range(len(axes))] for i in range(len(v.series))]
    note = f"{dropped} metric(s) left out: not measured for every selected series." if dropped else ""
    title = "Speech and music metrics" + (f" — {v.benchmark}" if v.benchmark else "")
    return _msg(note) + charts.radar(axes, series, raw=raw, groups=groups, title=title)


def experts_section(data: DashboardData, v: View) -> Markup:
    s = data.experts_per_token(v.series, v.stage)
    if s.empty:
        return _msg(s.message)
    mean = s.meta["mean"]
    layers = sorted(set(int(x) for x in mean["layer"]))
    names = list(dict.fromkeys(mean["series"]))
    lookup = {(a, int(b)): float(m) for a, b, m in zip(mean["series"], mean["layer"], mean["mean"])}
    bars = charts.grouped_bars([f"L{layer}" for layer in layers],
                               [(n, [lookup.get((n, layer)) for layer in layers]) for n in names],
                               title=f"Mean dynamic experts per token by layer (stage {s.meta['stage']})",
                               y_label="experts / token", figure="experts-per-token")
    maps = []
    df = s.df
    ks = sorted(set(int(k) for k in df["num_experts"]))
    for n in names[:4]:
        sub = df[df["series"] == n]
        matrix = []
        for layer in layers:
            row = sub[sub["layer"] == layer]
            tot = float(row["tokens"].sum()) or 1.0
            by_k = {int(k): float(t) for k, t in zip(row["num_experts"], row["tokens"])}
            matrix.append([by_k.get(k, 0.0) / tot for k in ks])
        maps.append(charts.heatmap([f"L{layer}" for layer in layers], [str(k) for k in ks], matrix,
                                   title=f"Share of tokens by experts selected — {n}", row_title="layer",
                                   col_title="dynamic experts selected", figure="experts-heatmap"))
    return _figures(s.message, maps, lead=bars)


def task_share_section(data: DashboardData, v: View) -> Markup:
    s = data.task_share(v.series, v.stage, v.layer)
    if s.empty:
        return _msg(s.message)
    df = s.df
    tasks = sorted(set(df["task"]), key=lambda t: (list(SPEECH_TASKS + MUSIC_TASKS) + [t]).index(t))
    figs = []
    where = f"layer {s.meta['layer']}" if s.meta.get("layer") is not None else "all MoE layers"
    for n in list(dict.fromkeys(df["series"]))[:6]:
        sub = df[df["series"] == n]
        experts = sorted(set(int(e) for e in sub["expert"]))
        null = {int(e): bool(x) for e, x in zip(sub["expert"], sub["is_null"])}
        share = {(int(e), t): float(x) for e, t, x in zip(sub["expert"], sub["task"], sub["share"])}
        cats = [f"{'N' if null[e] else 'E'}{e}" for e in experts]
        stacks = [(t, [share.get((e, t), 0.0) for e in experts]) for t in tasks]
        figs.append(charts.stacked_bars(cats, stacks, title=f"Task share per expert — {n} (stage {s.meta['stage']}, {where})",
                                        figure="task-share"))
    return _figures(s.message, figs)


def loss_section(data: DashboardData, v: View) -> Markup:
    s = data.loss_curves(v.series)
    if s.empty:
        return _msg(s.message)
    df = s.df
    series_names = list(dict.fromkeys(df["series"]))
    curve_color = {"loss": 7, **{f"loss_{t}": i for i, t in enumerate(SPEECH_TASKS + MUSIC_TASKS)}}
    figs = []
    for stage in sorted(set(int(x) for x in df["stage"])):
        sub = df[df["stage"] == stage]
        lines = []
        for (name, curve), g in sub.groupby(["series", "curve"], sort=True):
            lines.append({"name": f"{curve} · {name}" if len(series_names) > 1 else curve,
                          "xs": [float(x) for x in g["step"]], "ys": [float(y) for y in g["value"]],
                          "color": curve_color.get(curve, 8), "dash": series_names.index(name)})
        figs.append(charts.line_chart(lines, title=f"Stage {stage}: training loss", x_label="step", y_label="loss",
                                      figure="loss-curves", width=620))
    return _figures(s.message, figs)


def nightly_section(data: DashboardData, v: View) -> Markup:
    variants = [s.name for s in v.series if s.kind == "variant"]
    s = data.nightly(v.benchmark, variants)
    if s.empty:
        return _msg(s.message)
    df = s.df
    figs = []
    for (bench, task, metric), g in df.groupby(["benchmark", "task", "metric"], sort=True):
        lines = []
        for i, (variant, h) in enumerate(g.groupby("variant", sort=True)):
            xs = [t.timestamp() for t in h["timestamp"]]
            lines.append({"name": variant, "xs": xs, "ys": [float(x) for x in h["value"]],
                          "lo": [float(x) for x in h["ci_low"]], "hi": [float(x) for x in h["ci_high"]],
                          "flags": [bool(x) for x in h["regressed"]], "color": i})
        hib = bool(g["higher_is_better"].iloc[0])
        figs.append(charts.line_chart(lines, title=f"{metric} {'↑' if hib else '↓'} — {task}, {bench}", time_axis=True,
                                      y_label=metric, figure="nightly", width=520, height=220))
    return _figures(s.message, figs)


def regression_section(data: DashboardData, v: View) -> Markup:
    cmp = v.compare(data)
    runs = {s.name for s in v.series if s.kind == "run"}
    if not cmp.empty:
        runs |= {c["run_id"] for cells in cmp.df["cells"] for c in cells.values()}
    s = data.regressions(sorted(runs))
    if s.empty:
        return _msg(s.message or "No regression checks were recorded for the runs shown above.")
    return render("regression_table", rows=list(s.df.itertuples(index=False)))


# -- page ------------------------------------------------------------------------------------------
def _controls(v: View) -> Markup:
    runs = [] if v.runs_all.empty else [
        {"run_id": r.run_id, "benchmarks": r.benchmarks, "kind": r.kind, "variant": r.variant,
         "ts": str(r.timestamp)[:16]} for r in v.runs_all.df.head(MAX_RUNS_LISTED).itertuples(index=False)]
    base_opts = [("", "(none)")] + [(f"variant:{x}", f"variant {x}") for x in v.variants_all]
    base_opts += [(f"run:{r['run_id']}", f"run {r['run_id']}") for r in runs]
    if v.baseline and v.baseline.key not in {k for k, _ in base_opts}:
        base_opts.append((v.baseline.key, v.baseline.key))
    return render("controls", chosen={s.key for s in v.series}, variants=v.variants_all, runs=runs,
                  baseline_options=base_opts, baseline=v.baseline.key if v.baseline else "",
                  benchmarks=v.benchmarks_all, benchmark=v.benchmark,
                  threshold="" if v.threshold is None else v.threshold, stage=v.stage or "",
                  layer="" if v.layer is None else v.layer)


def render_page(data: DashboardData, params: dict[str, list[str]]) -> str:
    v = resolve(data, params)
    sections = [
        _section("metrics", "Metrics", lambda: metric_table(data, v),
                 "Latest result per variant (or the run's own result) with its 95% bootstrap CI; Δ = value − baseline, "
                 "with the value's CI shifted by the baseline. Red: worse than the baseline by more than the threshold "
                 "and the baseline outside the CI (the nightly regression rule); green: the same, better. "
                 "Topline columns: the same scorers on the ground-truth recordings and on their codec resynthesis "
                 "(the ceiling, and the codec's share of the gap), newest among the runs shown."),
        _section("radar", "Speech and music metrics (fig. 1)", lambda: radar_section(data, v),
                 "Each axis is scaled across the selected series: best on the outer ring, worst at 20% of the radius; "
                 "↓ axes (lower is better) are inverted. Speech axes in blue, music in red; hover a vertex for its value."),
        _section("experts", "Experts per token by layer (fig. 3)", lambda: experts_section(data, v),
                 "Dynamic experts (routed + null) selected per token, from routing_hist kind='dynamic', summed over the "
                 "stage's logging windows."),
        _section("task-share", "Per-expert task share (fig. 5)", lambda: task_share_section(data, v),
                 "Share of each expert's token selections coming from each task (routing_tasks); N = null expert."),
        _section("loss", "Training loss by stage (fig. 4)", lambda: loss_section(data, v),
                 "Total loss and per-task loss against the optimiser step; stage 1 shows each specialist's task loss."),
        _section("nightly", "Nightly history", lambda: nightly_section(data, v),
                 "Nightly runs (kind='nightly') per metric over time with the CI band; red rings mark recorded regressions."),
        _section("regressions", "Recorded regression checks", lambda: regression_section(data, v)),
    ]
    files = ", ".join(f"{k}: {n}" for k, n in data.status().items())
    return str(render("page", workspace=data.workspace, files=files, controls=_controls(v), notes=v.notes,
                      sections=sections))


def compare_json(data: DashboardData, params: dict[str, list[str]]) -> dict[str, Any]:
    v = resolve(data, params)
    cmp = v.compare(data)
    rows = [] if cmp.empty else [
        {**{k: getattr(r, k) for k in ("benchmark", "task", "metric", "higher_is_better")},
         "cells": {key: {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in c.items()}
                   for key, c in r.cells.items()},
         "toplines": {sys_: {k: (None if isinstance(x, float) and math.isnan(x) else x) for k, x in c.items()}
                      for sys_, c in (getattr(r, "toplines", None) or {}).items()}}
        for r in cmp.df.itertuples(index=False)]
    return {"series": [s.key for s in v.series], "baseline": v.baseline.key if v.baseline else None,
            "benchmark": v.benchmark, "threshold": v.threshold, "rows": rows, "message": cmp.message}


# -- HTTP -------------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    server_version = "unimoe-dashboard/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.info("%s - %s", self.address_string(), format % args)

    def _send(self, status: int, body: str, ctype: str) -> None:
        raw = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if ctype == "text/html":
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=False)
        data = self.server.data
        try:
            if url.path == "/":
                self._send(200, render_page(data, params), "text/html")
            elif url.path == "/healthz":
                self._send(200, json.dumps({"status": "ok", "workspace": str(data.workspace)}), "application/json")
            elif url.path == "/api/status.json":
                self._send(200, json.dumps({"workspace": str(data.workspace), "files": data.status()}), "application/json")
            elif url.path == "/api/compare.json":
                self._send(200, json.dumps(compare_json(data, params), default=str), "application/json")
            else:
                self._send(404, str(render("not_found", path=url.path)), "text/html")
        except Exception as e:  # the last resort; sections already catch their own failures
            log.error("dashboard request %s failed:\n%s", self.path, traceback.format_exc())
            self._send(500, str(render("error", error=f"{type(e).__name__}: {e}")), "text/html")


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, workspace: str | Path, host: str = "127.0.0.1", port: int = 8765):
        self.data = DashboardData(workspace)
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"


def make_server(workspace: str | Path, host: str = "127.0.0.1", port: int = 8765) -> DashboardServer:
    """A bound server (``port=0`` picks a free port; see ``.url``); call ``serve_forever()``."""
    return DashboardServer(workspace, host, port)
