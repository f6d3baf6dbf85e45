"""Regression check: a benchmark run against a baseline run.

For every (benchmark, task, metric) present in both runs' aggregate rows:

- ``delta = value - baseline_value``; the run is WORSE when delta points against the metric's
  direction (``higher_is_better``);
- the threshold is absolute (``{"abs": 0.02}``) or relative to the baseline (``{"rel": 0.05}`` means
  5% of ``|baseline_value|``), per metric from a thresholds config, with defaults (``DEFAULT_THRESHOLDS``;
  metric names match exactly, then by prefix, e.g. ``wer`` covers ``wer_corpus``; else ``"*"``);
- a metric REGRESSES when it is worse by more than its threshold AND the baseline value lies outside
  the current run's 95% bootstrap CI (both conditions: a large move inside the noise, or a
  significant move smaller than what we care about, are not regressions).

Metrics only in one of the runs are listed in the report (``new`` / ``missing``), never regressions.
The baseline is a run id, or a name resolved to the newest run whose variant or checkpoint matches
it, or by default the previous run of the same benchmark, kind and variant (another variant's numbers
are an ablation, not a baseline: comparing them would report every design difference as a regression).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation import results as R

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    # error rates and distances are reported as fractions/nats: absolute points are what people quote
    "wer": {"abs": 0.01}, "cer": {"abs": 0.01},
    "fad": {"rel": 0.05}, "kl": {"rel": 0.05},
    "*": {"rel": 0.02},
}


class BaselineNotFound(LookupError):
    pass


def load_thresholds(path: str | Path | None = None, overrides: dict | None = None) -> dict[str, dict[str, float]]:
    """DEFAULT_THRESHOLDS, updated from a YAML/JSON file (metric -> {abs: x} | {rel: y}) and ``overrides``."""
    out = {k: dict(v) for k, v in DEFAULT_THRESHOLDS.items()}
    if path is not None:
        import yaml

        out.update(yaml.safe_load(Path(path).read_text()) or {})
    out.update(overrides or {})
    for metric, spec in out.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("abs", "rel") \
                or not float(next(iter(spec.values()))) >= 0:
            raise ValueError(f"threshold for {metric!r} must be {{abs: x}} or {{rel: y}} with x, y >= 0; got {spec!r}")
    return out


def threshold_for(metric: str, baseline_value: float, thresholds: dict[str, dict[str, float]]) -> float:
    """The absolute threshold for ``metric`` given the baseline value."""
    spec = thresholds.get(metric)
    if spec is None:
        prefixes = [k for k in thresholds if k != "*" and metric.startswith(k + "_")]
        spec = thresholds[max(prefixes, key=len)] if prefixes else thresholds.get("*", {"abs": 0.0})
    kind, x = next(iter(spec.items()))
    return float(x) if kind == "abs" else float(x) * abs(float(baseline_value))


def is_regression(value: float, baseline: float, higher_is_better: bool, threshold: float,
                  ci_low: float, ci_high: float) -> bool:
    """Worse than ``baseline`` by more than ``threshold`` AND ``baseline`` outside [ci_low, ci_high]."""
    if not (math.isfinite(value) and math.isfinite(baseline)):
        return False
    worse_by = (baseline - value) if higher_is_better else (value - baseline)
    if not worse_by > threshold:
        return False
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return True  # no CI (e.g. one item): the threshold alone decides
    return baseline > ci_high if higher_is_better else baseline < ci_low


def resolve_baseline(root: str | Path, run_id: str, baseline: str | None = None) -> str | None:
    """The baseline run id for ``run_id`` (see module docstring); None when there is no earlier run."""
    agg = R.read_table(root, "aggregate")
    if agg.empty or run_id not in set(agg["run_id"]):
        raise BaselineNotFound(f"run {run_id!r} has no rows in {root}/aggregate")
    cur = agg[agg["run_id"] == run_id]
    benchmark, kind, variant = cur["benchmark"].iloc[0], cur["kind"].iloc[0], cur["variant"].iloc[0]
    started = cur["timestamp"].min()
    if baseline is None:
        return R.latest_run(root, benchmark=benchmark, kind=kind, variant=variant, exclude=run_id, before=started)
    if baseline in set(agg["run_id"]):
        return baseline
    named = agg[(agg["benchmark"] == benchmark) & (agg["run_id"] != run_id)
                & ((agg["variant"] == baseline) | (agg["checkpoint"] == baseline))]
    if named.empty:
        raise BaselineNotFound(f"baseline {baseline!r}: no run id, variant or checkpoint of that name has "
                               f"results for benchmark {benchmark!r} in {root}")
    return str(named.sort_values("timestamp")["run_id"].iloc[-1])


@dataclass
class RegressionSummary:
    run_id: str
    baseline_run_id: str | None
    regressed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    report: str = ""
    table_path: str | None = None

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["regressed"]]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "baseline_run_id": self.baseline_run_id, "regressed": self.regressed,
                "compared": len(self.rows), "regressions": [f"{r['benchmark']}/{r['task']}/{r['metric']}" for r in self.regressions],
                "new": self.new, "missing": self.missing, "table_path": self.table_path}


def compare_runs(root: str | Path, run_id: str, baseline: str | None = None, *,
                 thresholds: dict[str, dict[str, float]] | None = None, write: bool = True) -> RegressionSummary:
    """Compare ``run_id`` with its baseline, append the rows to the regression table (``write``) and
    return the summary with a markdown report. No baseline (a first run): nothing regresses."""
    thresholds = thresholds or load_thresholds()
    base_id = resolve_baseline(root, run_id, baseline)
    cur = R.read_table(root, "aggregate", run_id=run_id)
    if base_id is None:
        s = RegressionSummary(run_id, None, False, new=sorted(_keys(cur)))
        s.report = render_report(s)
        return s
    base = R.read_table(root, "aggregate", run_id=base_id)
    key = ["benchmark", "task", "metric"]
    # a run written twice (resumed) keeps its newest row per metric
    cur = cur.sort_values("timestamp").drop_duplicates(key, keep="last")
    base = base.sort_values("timestamp").drop_duplicates(key, keep="last")
    both = cur.merge(base[key + ["value"]].rename(columns={"value": "baseline_value"}), on=key, how="inner")
    rows = []
    for r in both.sort_values(key).itertuples(index=False):
        thr = threshold_for(r.metric, r.baseline_value, thresholds)
        rows.append(dict(run_id=run_id, baseline_run_id=base_id, benchmark=r.benchmark, task=r.task, metric=r.metric,
                         value=float(r.value), baseline_value=float(r.baseline_value),
                         delta=float(r.value - r.baseline_value), threshold=thr, ci_low=float(r.ci_low),
                         ci_high=float(r.ci_high),
                         regressed=is_regression(r.value, r.baseline_value, bool(r.higher_is_better), thr,
                                                 r.ci_low, r.ci_high)))
    s = RegressionSummary(run_id, base_id, any(r["regressed"] for r in rows), rows,
                          new=sorted(_keys(cur) - _keys(base)), missing=sorted(_keys(base) - _keys(cur)))
    s.report = render_report(s, directions=dict(zip(cur["metric"], cur["higher_is_better"])))
    if write and rows:
        s.table_path = str(R.write_rows(root, "regression", rows, run_id=run_id))
    return s


def _keys(df: pd.DataFrame) -> set[str]:
    return {f"{b}/{t}/{m}" for b, t, m in zip(df["benchmark"], df["task"], df["metric"])}


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.4g}"


def render_report(s: RegressionSummary, directions: dict[str, bool] | None = None) -> str:
    """Markdown: verdict, then one line per compared metric (regressions first)."""
    directions = directions or {}
    if s.baseline_run_id is None:
        return (f"# Regression check: `{s.run_id}`\n\nNo baseline run found (first run of this benchmark/kind): "
                f"nothing compared, nothing regressed. {len(s.new)} metrics recorded.\n")
    verdict = (f"**REGRESSED**: {len(s.regressions)} of {len(s.rows)} metrics" if s.regressed
               else f"**OK**: no regression in {len(s.rows)} metrics")
    lines = [f"# Regression check: `{s.run_id}` vs baseline `{s.baseline_run_id}`", "", verdict, "",
             "A metric regresses when it is worse than the baseline by more than its threshold AND the baseline "
             "lies outside this run's 95% bootstrap CI.", "",
             "| | benchmark | task | metric | better | value | 95% CI | baseline | delta | threshold |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(s.rows, key=lambda r: (not r["regressed"], r["benchmark"], r["task"], r["metric"])):
        hib = directions.get(r["metric"])
        better = "higher" if hib else ("lower" if hib is not None else "")
        lines.append(f"| {'❌' if r['regressed'] else '✅'} | {r['benchmark']} | {r['task']} | {r['metric']} | {better} | "
                     f"{_fmt(r['value'])} | [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {_fmt(r['baseline_value'])} | "
                     f"{r['delta']:+.4g} | {_fmt(r['threshold'])} |")
    if s.new:
        lines += ["", "Only in this run (not compared): " + ", ".join(f"`{k}`" for k in s.new)]
    if s.missing:
        lines += ["", "Only in the baseline (missing from this run): " + ", ".join(f"`{k}`" for k in s.missing)]
    return "\n".join(lines) + "\n"


def summary_json(s: RegressionSummary) -> str:
    return json.dumps(s.to_dict(), indent=2)
