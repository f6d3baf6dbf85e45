"""DuckDB queries over the workspace's Parquet tables, for the ablation dashboard.

Sources (schemas in ``evaluation/results.py`` and ``unimoe/training/metrics.py``):
``<ws>/results/{aggregate,items,regression}/date=YYYY-MM-DD/part-*.parquet`` (hive-partitioned) and
``<ws>/train/<run>/stageN[/<task>]/metrics/<table>/part-*.parquet``.

Every query tolerates missing or unreadable tables: it returns a :class:`Section` whose frame is empty
and whose ``message`` says what is missing and how to produce it, so the page renders the rest.
Files are listed in Python (``part-*.parquet`` only, so in-flight ``.part-*.tmp`` files of atomic
writes are never read) and passed to DuckDB as a parameter; user-supplied values are always bound
parameters, never spliced into SQL.

Comparison "series" are either a variant (its latest result per benchmark/task/metric over all runs)
or a run (that run's results); keys are ``variant:<name>`` / ``run:<run_id>``. Series values, deltas and
the nightly history are the MODEL rows (``system = 'model'``; part files written before the ``system``
column read as model rows). The toplines (``ground_truth``, ``codec_resynth``) are shown beside them:
for each metric, the newest topline row among the runs the comparison shows (``DashboardData.toplines``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import duckdb
import pandas as pd

from evaluation.regression import is_regression, load_thresholds, threshold_for

RESULT_TABLES = ("aggregate", "items", "regression")
MODEL_SYSTEM = "model"
TOPLINE_SYSTEMS = ("ground_truth", "codec_resynth")
TOPLINE_LABELS = {"ground_truth": "ground truth", "codec_resynth": "codec resynthesis"}
# Columns added to result tables later, with what older part files read as (evaluation.results.COLUMN_DEFAULTS).
ADDED_COLUMNS = {"aggregate": {"system": "'model'", "n_asked": "NULL::BIGINT"}, "items": {"system": "'model'"}}
TRAIN_TABLES = ("train", "routing_hist", "routing_tasks")
MAX_CURVE_POINTS = 400  # per line; keeps the SVG small for long runs


@dataclass(frozen=True)
class Series:
    kind: str  # "variant" | "run"
    name: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        return self.name if self.kind == "variant" else f"run {self.name}"


@dataclass
class Section:
    """A query's rows (possibly empty) and, when empty or partial, a message for the reader."""
    df: pd.DataFrame = field(default_factory=pd.DataFrame)
    message: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.df is None or self.df.empty


def split_list(values: Iterable[str] | str | None) -> list[str]:
    """``["a,b", "c"]`` or ``"a,b"`` -> ``["a", "b", "c"]`` (order kept, duplicates and blanks dropped)."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for v in values:
        for part in str(v).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


class DashboardData:
    """Read-only view of one workspace. Cheap to build; each query opens its own in-memory DuckDB
    connection, so one instance can serve concurrent requests."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace)
        self.results_root = self.workspace / "results"
        self.train_root = self.workspace / "train"

    # -- plumbing -------------------------------------------------------------------------------
    def files(self, table: str) -> list[str]:
        if table in RESULT_TABLES:
            base = self.results_root / table
            found = base.glob("**/part-*.parquet") if base.is_dir() else []
        elif table in TRAIN_TABLES:
            found = (self.train_root.glob(f"**/metrics/{table}/part-*.parquet") if self.train_root.is_dir() else [])
        else:
            raise ValueError(f"unknown table {table!r}")
        return sorted(str(p) for p in found)

    def missing_message(self, table: str) -> str:
        if table in RESULT_TABLES:
            return (f"No {table} results yet: nothing under {self.results_root / table}/. "
                    "Run `unimoe benchmark` (or the nightly deployment) to write them.")
        return (f"No training metrics yet: no {table} tables under {self.train_root}/<run>/stage*/metrics/. "
                "Run `unimoe train` to write them.")

    def query(self, table: str, sql: str, params: dict[str, Any] | None = None) -> Section:
        """Run ``sql`` in which ``t`` names the table's rows; an empty Section with a message when the
        table has no files or cannot be read."""
        files = self.files(table)
        if not files:
            return Section(message=self.missing_message(table))
        hive = table in RESULT_TABLES
        src = (f"read_parquet($files, hive_partitioning={str(hive).lower()}, union_by_name=true, filename=true)")
        con = duckdb.connect()
        try:
            rows = f"SELECT * FROM {src}"
            added = ADDED_COLUMNS.get(table)
            if added:  # older part files lack these columns: read them as their defaults
                present = {r[0] for r in con.execute(f"DESCRIBE {rows}", {"files": files}).fetchall()}
                replace = [f"coalesce({c}, {d}) AS {c}" for c, d in added.items() if c in present]
                extra = [f"{d} AS {c}" for c, d in added.items() if c not in present]
                rows = (f"SELECT * {'REPLACE (' + ', '.join(replace) + ')' if replace else ''}"
                        f"{', ' + ', '.join(extra) if extra else ''} FROM {src}")
            df = con.sql(f"WITH t AS ({rows}) {sql}",
                         params={"files": files, **(params or {})}).to_arrow_table().to_pandas()
        except duckdb.Error as e:
            # A schema the query does not expect (e.g. an older table version) or a damaged file.
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return Section(message=f"Could not read the {table} table ({len(files)} files): {first}")
        finally:
            con.close()
        return Section(df=df)

    def status(self) -> dict[str, int]:
        return {t: len(self.files(t)) for t in RESULT_TABLES + TRAIN_TABLES}

    # -- pickers --------------------------------------------------------------------------------
    def runs(self) -> Section:
        """One row per benchmark run: kind, variant(s), benchmarks, time."""
        return self.query("aggregate", """
            SELECT run_id, any_value(kind) AS kind, string_agg(DISTINCT variant, ', ' ORDER BY variant) AS variant,
                   string_agg(DISTINCT benchmark, ', ' ORDER BY benchmark) AS benchmarks,
                   max(timestamp) AS timestamp, count(*) AS rows
            FROM t GROUP BY run_id ORDER BY max(timestamp) DESC, run_id""")

    def train_runs(self) -> Section:
        return self.query("train", """
            SELECT run_id, variant, string_agg(DISTINCT CAST(stage AS VARCHAR), ',' ORDER BY CAST(stage AS VARCHAR)) AS stages,
                   max(step) AS last_step FROM t GROUP BY run_id, variant ORDER BY run_id, variant""")

    def variants(self) -> list[str]:
        names: set[str] = set()
        for table in ("aggregate", "train"):
            s = self.query(table, "SELECT DISTINCT variant FROM t WHERE variant IS NOT NULL")
            if not s.empty:
                names |= set(s.df["variant"].astype(str))
        return sorted(names)

    def benchmarks(self) -> list[str]:
        s = self.query("aggregate", "SELECT DISTINCT benchmark FROM t ORDER BY benchmark")
        return [] if s.empty else [str(b) for b in s.df["benchmark"]]

    # -- benchmark results ----------------------------------------------------------------------
    def series_values(self, series: Sequence[Series], benchmark: str | None = None) -> Section:
        """Latest aggregate row per (series, benchmark, task, metric)."""
        variants = [s.name for s in series if s.kind == "variant"]
        runs = [s.name for s in series if s.kind == "run"]
        if not series:
            return Section(message="Pick at least one variant or run." if self.files("aggregate")
                           else self.missing_message("aggregate"))
        bench = "AND benchmark = $benchmark" if benchmark else ""
        cols = ("benchmark, task, metric, higher_is_better, value, ci_low, ci_high, n, n_asked, run_id, variant, kind, "
                "timestamp")
        sql = f"""
            SELECT * FROM (
              SELECT 'variant:' || variant AS series, {cols} FROM t
              WHERE list_contains($variants, variant) AND system = 'model' {bench}
              QUALIFY row_number() OVER (PARTITION BY variant, benchmark, task, metric ORDER BY timestamp DESC, run_id DESC) = 1
              UNION ALL
              SELECT 'run:' || run_id AS series, {cols} FROM t
              WHERE list_contains($runs, run_id) AND system = 'model' {bench}
              QUALIFY row_number() OVER (PARTITION BY run_id, benchmark, task, metric ORDER BY timestamp DESC, variant DESC) = 1
            ) ORDER BY benchmark, task, metric, series"""
        params: dict[str, Any] = {"variants": variants, "runs": runs}
        if benchmark:
            params["benchmark"] = benchmark
        s = self.query("aggregate", sql, params)
        if s.message is None and s.empty:
            s.message = "No results for the selected variants/runs" + (f" on benchmark {benchmark!r}." if benchmark else ".")
        return s

    def toplines(self, run_ids: Sequence[str], benchmark: str | None = None) -> Section:
        """The newest topline row (``ground_truth``, ``codec_resynth``) per (benchmark, task, metric, system)
        among ``run_ids``."""
        if not run_ids:
            return Section(message="No runs selected.")
        bench = "AND benchmark = $benchmark" if benchmark else ""
        params: dict[str, Any] = {"runs": list(run_ids), "systems": list(TOPLINE_SYSTEMS)}
        if benchmark:
            params["benchmark"] = benchmark
        return self.query("aggregate", f"""
            SELECT system, benchmark, task, metric, value, ci_low, ci_high, n, n_asked, run_id, timestamp FROM t
            WHERE list_contains($runs, run_id) AND list_contains($systems, system) {bench}
            QUALIFY row_number() OVER (PARTITION BY system, benchmark, task, metric
                                       ORDER BY timestamp DESC, run_id DESC) = 1
            ORDER BY benchmark, task, metric, system""", params)

    def compare(self, series: Sequence[Series], baseline: Series | None, benchmark: str | None = None,
                threshold: float | None = None) -> Section:
        """The metric table: one row per (benchmark, task, metric) with each series' value and CI and,
        against ``baseline``, its delta, the delta's CI (the series' CI shifted by the baseline value)
        and a status: "regressed", "improved", "same" (within CI/threshold) or None (no baseline).
        Thresholds are the nightly regression check's per-metric ones (``evaluation.regression``), or
        ``threshold`` (a fraction of |baseline|) for every metric when given. ``toplines`` per row: system
        -> cell (value, CI, n, run) of the newest topline row among the runs shown (``meta["toplines"]``:
        the topline systems present)."""
        thresholds = load_thresholds() if threshold is None else {"*": {"rel": float(threshold)}}
        wanted = list(series) + ([baseline] if baseline and baseline not in series else [])
        s = self.series_values(wanted, benchmark)
        if s.empty:
            return s
        rows = []
        for (bench, task, metric), g in s.df.groupby(["benchmark", "task", "metric"], sort=True):
            hib = bool(g["higher_is_better"].iloc[0])
            by = {r.series: r for r in g.itertuples(index=False)}
            base = by.get(baseline.key) if baseline else None
            cells = {}
            for key, r in by.items():
                cell = {"value": _f(r.value), "ci_low": _f(r.ci_low), "ci_high": _f(r.ci_high), "n": _i(r.n),
                        "n_asked": _i(r.n_asked), "run_id": r.run_id, "variant": r.variant, "timestamp": str(r.timestamp),
                        "delta": None, "delta_ci": None, "threshold": None, "status": None}
                if base is not None and key != baseline.key:
                    bv = _f(base.value)
                    cell["delta"] = cell["value"] - bv
                    if not (math.isnan(cell["ci_low"]) or math.isnan(cell["ci_high"])):
                        cell["delta_ci"] = (cell["ci_low"] - bv, cell["ci_high"] - bv)
                    cell["threshold"] = threshold_for(metric, bv, thresholds)
                    cell["status"] = delta_status(cell["value"], cell["ci_low"], cell["ci_high"], bv, hib,
                                                  cell["threshold"])
                cells[key] = cell
            rows.append({"benchmark": bench, "task": task, "metric": metric, "higher_is_better": hib, "cells": cells})
        tops = self.toplines(sorted(set(s.df["run_id"])), benchmark)
        by_metric: dict[tuple, dict] = {}
        if not tops.empty:
            for t in tops.df.itertuples(index=False):
                by_metric.setdefault((t.benchmark, t.task, t.metric), {})[t.system] = {
                    "value": _f(t.value), "ci_low": _f(t.ci_low), "ci_high": _f(t.ci_high), "n": _i(t.n),
                    "n_asked": _i(t.n_asked), "run_id": t.run_id, "timestamp": str(t.timestamp)}
        for r in rows:
            r["toplines"] = by_metric.get((r["benchmark"], r["task"], r["metric"]), {})
        present = [x for x in TOPLINE_SYSTEMS if any(x in r["toplines"] for r in rows)]
        return Section(df=pd.DataFrame(rows), meta={"series": [x.key for x in wanted], "toplines": present})

    def nightly(self, benchmark: str | None = None, variants: Sequence[str] = ()) -> Section:
        """Nightly aggregate rows over time, flagged where the regression table says the run regressed."""
        bench = "AND a.benchmark = $benchmark" if benchmark else ""
        var = "AND list_contains($variants, a.variant)" if variants else ""
        params: dict[str, Any] = {}
        if benchmark:
            params["benchmark"] = benchmark
        if variants:
            params["variants"] = list(variants)
        sql = f"""SELECT a.variant, a.benchmark, a.task, a.metric, a.higher_is_better, a.value, a.ci_low, a.ci_high,
                         a.run_id, a.timestamp FROM t a WHERE a.kind = 'nightly' AND a.system = 'model' {bench} {var}
                  ORDER BY a.benchmark, a.task, a.metric, a.variant, a.timestamp"""
        s = self.query("aggregate", sql, params)
        if s.message:
            return s
        if s.empty and variants:  # the selected variants have no nightly runs: show every nightly series
            s = self.nightly(benchmark)
            if not s.empty:
                s.message = "No nightly runs for the selected variants; showing all nightly runs."
            return s
        if s.empty:
            s.message = "No nightly runs yet (aggregate rows with kind='nightly')" + \
                (f" on benchmark {benchmark!r}." if benchmark else ".")
            return s
        reg = self.regressions(sorted(set(s.df["run_id"])))
        flagged = set()
        if not reg.empty:
            hits = reg.df[reg.df["regressed"].astype(bool)]
            flagged = set(zip(hits["run_id"], hits["benchmark"], hits["task"], hits["metric"]))
        s.df["regressed"] = [(r, b, t, m) in flagged for r, b, t, m in
                             zip(s.df["run_id"], s.df["benchmark"], s.df["task"], s.df["metric"])]
        return s

    def regressions(self, run_ids: Sequence[str]) -> Section:
        if not run_ids:
            return Section(message="No runs selected.")
        return self.query("regression", """
            SELECT run_id, baseline_run_id, benchmark, task, metric, value, baseline_value, delta, threshold,
                   ci_low, ci_high, regressed, timestamp FROM t WHERE list_contains($runs, run_id)
            ORDER BY timestamp, run_id, benchmark, task, metric""", {"runs": list(run_ids)})

    # -- training -------------------------------------------------------------------------------
    def _train_filter(self, table: str, series: Sequence[Series]) -> tuple[str, dict[str, Any], str | None]:
        """A WHERE clause keeping training rows of the selected variants/runs; when none of them has
        training rows, no filter and a note (so the figures still show what exists)."""
        variants = [s.name for s in series if s.kind == "variant"]
        runs = [s.name for s in series if s.kind == "run"]
        if not series:
            return "TRUE", {}, None
        clause = "(list_contains($tv, variant) OR list_contains($tr, run_id))"
        params = {"tv": variants, "tr": runs}
        hit = self.query(table, f"SELECT count(*) AS n FROM t WHERE {clause}", params)
        if not hit.empty and int(hit.df["n"].iloc[0]) > 0:
            return clause, params, None
        return "TRUE", {}, "No training runs for the selected variants/runs; showing every training run."

    def stages(self, table: str = "routing_hist") -> list[int]:
        s = self.query(table, "SELECT DISTINCT stage FROM t ORDER BY stage")
        return [] if s.empty else [int(x) for x in s.df["stage"]]

    def layers(self) -> list[int]:
        s = self.query("routing_tasks", "SELECT DISTINCT layer FROM t ORDER BY layer")
        return [] if s.empty else [int(x) for x in s.df["layer"]]

    def _last_stage(self, table: str, where: str, params: dict[str, Any], none_message: str) -> int | Section:
        """The last training stage with rows of ``table`` matching ``where``; a Section saying why when
        there is none (the table unreadable, or ``none_message``)."""
        s = self.query(table, f"SELECT max(stage) AS stage FROM t WHERE {where}", params)
        if s.message:
            return s
        if s.empty or pd.isna(s.df["stage"].iloc[0]):
            return Section(message=none_message)
        return int(s.df["stage"].iloc[0])

    def experts_per_token(self, series: Sequence[Series] = (), stage: int | None = None) -> Section:
        """Tokens per (training run, layer, number of dynamic experts selected) for one stage (default the
        last stage with routing data), summed over its logging windows; ``meta["mean"]`` holds the mean
        experts per token by (series label, layer)."""
        where, params, note = self._train_filter("routing_hist", series)
        if stage is None:
            stage = self._last_stage("routing_hist", f"{where} AND kind = 'dynamic'", params,
                                     "No dynamic routing histograms (kind='dynamic') in the routing_hist table.")
            if isinstance(stage, Section):
                return stage
        s = self.query("routing_hist", f"""
            SELECT run_id || ' · ' || variant AS series, layer, num_experts, sum(count) AS tokens FROM t
            WHERE {where} AND kind = 'dynamic' AND stage = $stage
            GROUP BY ALL ORDER BY series, layer, num_experts""", {**params, "stage": int(stage)})
        if s.message:
            return s
        if s.empty:
            return Section(message=f"No dynamic routing histograms for stage {stage}.", meta={"stage": stage})
        df = s.df
        df["weighted"] = df["num_experts"] * df["tokens"]
        g = df.groupby(["series", "layer"], sort=True)[["weighted", "tokens"]].sum()
        mean = (g["weighted"] / g["tokens"].where(g["tokens"] > 0)).rename("mean").reset_index()
        return Section(df=df.drop(columns="weighted"), message=note, meta={"stage": stage, "mean": mean})

    def task_share(self, series: Sequence[Series] = (), stage: int | None = None, layer: int | None = None) -> Section:
        """Token selections per (training run, expert, task) for one stage (default the last) and one
        MoE layer (default all layers summed), with each task's share of the expert's selections."""
        where, params, note = self._train_filter("routing_tasks", series)
        if stage is None:
            stage = self._last_stage("routing_tasks", where, params, "The routing_tasks table has no rows.")
            if isinstance(stage, Section):
                return stage
        lay = "AND layer = $layer" if layer is not None else ""
        p = {**params, "stage": int(stage)}
        if layer is not None:
            p["layer"] = int(layer)
        s = self.query("routing_tasks", f"""
            SELECT run_id || ' · ' || variant AS series, expert, bool_or(is_null) AS is_null, task,
                   sum(count) AS count FROM t WHERE {where} AND stage = $stage {lay}
            GROUP BY series, expert, task ORDER BY series, expert, task""", p)
        if s.message:
            return s
        if s.empty:
            return Section(message=f"No routing_tasks rows for stage {stage}" +
                           (f", layer {layer}." if layer is not None else "."), meta={"stage": stage, "layer": layer})
        df = s.df
        tot = df.groupby(["series", "expert"])["count"].transform("sum")
        df["share"] = (df["count"] / tot.where(tot > 0)).fillna(0.0)
        return Section(df=df, message=note, meta={"stage": stage, "layer": layer})

    def loss_curves(self, series: Sequence[Series] = ()) -> Section:
        """Long format ``series, stage, workdir, curve, step, value`` for ``loss`` and every ``loss_<task>``,
        per stage (per-task losses are NaN where a window has no frames of that task and drop out)."""
        where, params, note = self._train_filter("train", series)
        s = self.query("train", f"SELECT * FROM t WHERE {where} ORDER BY run_id, variant, stage, step", params)
        if s.message:
            return s
        if s.empty:
            return Section(message="The train table has no rows for the selection.")
        df = s.df
        root = str(self.train_root.resolve())
        df["workdir"] = [_workdir(f, root) for f in df["filename"]]
        df["series"] = df["run_id"].astype(str) + " · " + df["variant"].astype(str)
        curves = [c for c in df.columns if c == "loss" or (c.startswith("loss_") and c != "loss_weight")]
        long = df.melt(id_vars=["series", "stage", "workdir", "step"], value_vars=curves, var_name="curve", value_name="value")
        long = long[long["value"].notna()]
        # Several folders in one stage (the stage-1 specialists, one task each): their total losses
        # would overlap at the same steps and repeat the per-task curves, so only those are kept.
        n_dirs = df.groupby(["series", "stage"])["workdir"].nunique()
        multi = {k for k, v in n_dirs.items() if v > 1}
        keep = [not (c == "loss" and (s_, st) in multi) for c, s_, st in zip(long["curve"], long["series"], long["stage"])]
        long = long[keep]
        long = (long.groupby(["series", "stage", "curve", "step"], as_index=False)["value"].mean()
                .sort_values(["stage", "series", "curve", "step"]))
        return Section(df=_thin(long, ["series", "stage", "curve"]).reset_index(drop=True), message=note)


def delta_status(value: float, ci_low: float, ci_high: float, baseline: float, higher_is_better: bool,
                 threshold: float = 0.0) -> str:
    """The nightly check's rule (``evaluation.regression.is_regression``: worse by more than the absolute
    ``threshold`` AND the baseline outside the value's CI) gives "regressed"; the mirror image gives
    "improved"; anything else is "same"."""
    if is_regression(value, baseline, higher_is_better, threshold, ci_low, ci_high):
        return "regressed"
    if is_regression(value, baseline, not higher_is_better, threshold, ci_low, ci_high):
        return "improved"
    return "same"


def _workdir(filename: str, train_root: str) -> str:
    """``<root>/<run>/stage1/en_tts/metrics/train/part-x.parquet`` -> ``<run>/stage1/en_tts``."""
    p = str(Path(filename).resolve())
    head = p.split("/metrics/", 1)[0]
    return head[len(train_root) + 1:] if head.startswith(train_root + "/") else head


def _thin(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """At most about MAX_CURVE_POINTS rows per group (every k-th row, the last always kept)."""
    g = df.groupby(keys, sort=False)
    i, n = g.cumcount(), g["step"].transform("size")
    stride = -(-n // MAX_CURVE_POINTS)
    return df[(i % stride == 0) | (i == n - 1)]


def _f(x: Any) -> float:
    try:
        return float(x) if x is not None and not pd.isna(x) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _i(x: Any) -> int | None:
    try:
        return int(x) if x is not None and not pd.isna(x) else None
    except (TypeError, ValueError):
        return None
