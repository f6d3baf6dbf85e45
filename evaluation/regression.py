"""Regression gate: a benchmark run (the candidate) against a baseline run, on PAIRED differences.

(About 550 lines because this docstring states the gate's rules in full; the intervals the rules use are
computed in ``evaluation.paired_intervals``.)

Scope. Rows of the ``aggregate`` and ``items`` tables with ``system == "model"`` only (a table without
a ``system`` column is all model rows; ``ground_truth`` / ``codec_resynth`` topline rows are never
gated). One decision per (benchmark, task, metric) of the BASELINE's model rows.

Pairing. Only the (item_id, seed) pairs present, with a finite score, in BOTH runs are compared
(``n_pairs``; ``n_items`` = items with at least one such pair). Each decision row records the rule it
used (``rule``), whether the two runs measured the same thing (``comparable``) and why not (``reason``).

Rules (``rule`` column):

1. ``paired-item-bootstrap``: per-item metrics, i.e. those aggregated as a mean of per-item values
   (``evaluation.aggregate`` rule 1: WER/CER per utterance, SIM, DNSMOS, UTMOS, CLAP, key/tempo
   adherence, token NLL, ...; recognised by having rows of that metric in the items table).
   ``delta`` = candidate - baseline of the aggregate statistic (mean over seeds of the mean over items)
   computed on the per-pair differences, i.e. the mean per-item difference. Its 95% interval is a
   percentile bootstrap that resamples ITEMS with replacement, each item keeping all its seeds together
   (seeds are not independent replicates of the population of items), ``N_BOOT`` resamples, fixed RNG,
   as an EXPANDED percentile interval (Hesterberg 2015, "What teachers should know about the
   bootstrap"): the percentiles are taken at the level alpha' with z(1 - alpha'/2) =
   sqrt(n / (n - 1)) * t(n - 1, 1 - alpha/2), n = paired items. The plain percentile interval is too
   narrow for small n (the bootstrap's plug-in variance divides by n and the normal tails are too
   light); the expansion corrects both and vanishes as n grows (n = 8: alpha' = 1.1%; n = 40: 4.0%).
   Per-item pairing removes the item-difficulty variance, which dominates the unpaired CI: a shift that
   is small against the spread of items but consistent per item is detected. With two or more seeds the
   bootstrap also resamples SEEDS (independently of the items, the same seed labels on both sides: the
   two-way "pigeonhole" bootstrap of a crossed items x seeds design, Owen 2007, conservative by
   construction): the generation RNG is seeded per batch, so a seed's draw is shared by every item of a
   run, and a new checkpoint generates different audio from the same seed, so that seed-level variance
   does not cancel between two nightly runs. Resampling items alone treated seeds as fixed and raised
   false alarms on metrics with a strong seed effect (measured by ``benchmarks/regression_power.py``:
   21% of null pairs with items alone on the demo codec's audio). Metrics that do not depend on the
   seed (token NLL) get the same interval as before.
2. ``paired-subsample``: set-level metrics computed from the whole set, not as a mean of per-item
   values (``aggregate_set``: FAD, KL over the set, IS; and the corpus error rates ``*_corpus`` =
   sum of errors / sum of reference lengths). A bootstrap WITH replacement is biased for these:
   duplicated items shrink the covariance (FAD), repeat posteriors (IS) or reweight utterances, so the
   resampled statistic is not distributed around the full-set value. Instead: ``N_SUB`` subsets of
   ``m = n // 2`` items are drawn WITHOUT replacement (the same subset for baseline and candidate, seeds
   kept together), the set statistic is computed on each side and differenced: ``D_m``. With ``D_n`` the
   full-set difference, the interval is

       [D_n - s * q(1 - a/2),  D_n - s * q(a/2)],   q = quantiles of (D_m - mean(D_m)),  s = sqrt(m / (n - m))

   Why this scaling: for a statistic that is asymptotically linear in the items, a size-m subset drawn
   without replacement from n has Var(T_m - T_n) = sigma^2 (1/m - 1/n) = sigma^2 (n - m) / (m n) (the
   finite-population correction), while the sampling variance of the full-set statistic is
   Var(T_n) = sigma^2 / n; so sqrt(m / (n - m)) maps the spread of subsample deviations onto the
   spread of T_n. With m = n/2 the factor is exactly 1 (half-sampling, the delete-n/2 jackknife).
   Centring the deviations on their own mean rather than on D_n removes the size-dependent small-sample
   bias of non-linear statistics (the bias of FAD on m items is larger than on n), so the interval is
   centred on the full-set difference. Needs n >= 4 items; with fewer, the threshold alone decides.
   For strongly non-linear statistics at small n the interval is conservative: half-sampling counts
   the quadratic part of the variance (n + m) / m times (measured for FAD of 8-d embeddings, n = 30-40:
   1.3 to 1.4 times the true width) -- a gate errs on the side of fewer false alarms there.
   The corpus rates' per-item inputs (``M_errors``, ``M_ref_len``) are in the items table, so this rule
   runs for them. FAD / KL / IS are computed from per-item embeddings or posteriors that are cached
   under ``<ws>/bench/cache/embed/`` but NOT stored in the items table (and ``compare`` needs the loaded
   scorer), so the gate cannot recompute them per subset: ``paired_subsample_interval`` is the function
   for them given the arrays, and the gate falls back to rule 3 for them, saying so in ``reason``.
3. ``unpaired-ci-fallback`` (clearly a fallback, named in the report): no per-item inputs on one side
   (set-level metrics from embeddings, or a run recorded before per-item rows existed).
   ``delta = value - baseline_value``; its interval is ``delta +- sqrt(h_c^2 + h_b^2)`` with ``h`` the
   half-widths of the two runs' own 95% bootstrap CIs (independent runs, normal approximation; just
   the candidate's half-width when the baseline has no CI). For set-level statistics these CIs come
   from the aggregate step's half-subsample interval (``evaluation.metrics.subsample_ci``, which
   contains the point value); runs recorded before it carry the biased with-replacement bootstrap.

Decision (every rule). A metric REGRESSES when it is worse than the baseline in its own direction
(``higher_is_better``) by MORE than its threshold AND the 95% interval of the difference lies
entirely on the worse side of 0 (both conditions: a large move inside the noise, or a significant
move smaller than what we care about, are not regressions). A paired rule with fewer than
``MIN_PAIRED_ITEMS`` common items decides nothing: the row is flagged not comparable ("too few paired
items") and does not fail the gate -- two or three items cannot tell a regression from noise, and on the
demo's few music clips (tempo unestimable on many generations) that rule alone caused most false alarms
measured by ``benchmarks/regression_power.py``. Without an interval in the unpaired fallback the
threshold alone decides. Thresholds are absolute (``{abs: x}``) or relative to |baseline| (``{rel: y}``)
per metric, in ONE reviewed file, ``configs/regression_thresholds.yaml`` (``load_thresholds``: exact
name, then longest prefix ``name_``, then ``"*"``), with a second file and a dict as overrides.

Failures (regressed = True, whatever the interval):
- a metric with a finite value in the baseline and no row in the candidate: ``missing in candidate``;
- a metric whose candidate value is NaN: ``all items failed`` when it has per-item rows and every one
  is NaN, else ``value is NaN in the candidate``.

Comparability (``comparable`` = False, with every reason in ``reason``):
- scorer version or run config (``config_hash``) differ: the numbers measure different things, so the
  metric is NOT decided (regressed = False, rule ``not-compared``) -- the report lists it as refused.
  Model scorers (``token_nll``: a metric of the checkpoint itself) name the scored checkpoint in their
  version (``checkpoint sha256:...``); that part says WHAT was measured, not with what, and is ignored;
- item set (``item_set_hash`` = sha256 of the sorted (task, item_id, seed) keys of the metric's per-item
  rows) or ``n`` differ: flagged, and decided on the common (item, seed) pairs only;
- a baseline value that is NaN: nothing to compare, not decided;
- no per-item rows on one side (rule 3): the item set cannot be verified; ``n``, scorer version and
  config still are, and ``comparable`` reflects those (the reason says "item set not verifiable").
A row that is not comparable is marked in the report (⚠️) and listed in the summary's ``incomparable``.

The baseline is a run id, or a name resolved to the newest run whose variant or checkpoint matches
it, or by default the previous run of the same benchmark, kind and variant (another variant's numbers
are an ablation, not a baseline: comparing them would report every design difference as a regression).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation import aggregate as A
from evaluation import results as R
from evaluation.paired_intervals import (  # noqa: F401 - the intervals are part of this module's interface
    ALPHA,
    BOOT_SEED,
    N_BOOT,
    N_SUB,
    effective_n,
    expanded_alpha,
    is_finite,
    paired_item_interval,
    paired_subsample_interval,
    two_way_bootstrap_ci,
    unpaired_fallback_interval,
)
from evaluation.report import fmt_value

THRESHOLDS_PATH = Path(__file__).resolve().parents[1] / "configs" / "regression_thresholds.yaml"
MIN_PAIRED_ITEMS = 5  # fewer common items: the paired rules flag the metric instead of deciding
GATED_SYSTEM = "model"

RULE_PAIRED = "paired-item-bootstrap"
RULE_SUBSAMPLE = "paired-subsample"
RULE_FALLBACK = "unpaired-ci-fallback"
RULE_NOT_COMPARED = "not-compared"
RULE_MISSING = "missing"
RULE_FAILED = "failed"


class BaselineNotFound(LookupError):
    pass


# --------------------------------------------------------------------------------------------------
# thresholds

def _check_thresholds(spec_map: dict, source: str) -> None:
    for metric, spec in spec_map.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("abs", "rel") \
                or not float(next(iter(spec.values()))) >= 0:
            raise ValueError(f"{source}: threshold for {metric!r} must be {{abs: x}} or {{rel: y}} with x, y >= 0; "
                             f"got {spec!r}")


def _read_thresholds_file(path: str | Path) -> dict[str, dict[str, float]]:
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping metric -> {{abs: x}} | {{rel: y}}, got {type(data).__name__}")
    return {str(k): dict(v) if isinstance(v, dict) else v for k, v in data.items()}


def load_thresholds(path: str | Path | None = None, overrides: dict | None = None, *,
                    defaults: str | Path | None = THRESHOLDS_PATH) -> dict[str, dict[str, float]]:
    """The reviewed thresholds file (``configs/regression_thresholds.yaml``; ``defaults=None``: none),
    updated from a YAML/JSON file ``path`` (metric -> {abs: x} | {rel: y}) and then ``overrides``."""
    out: dict[str, dict[str, float]] = {}
    for source in (defaults, path):
        if source is not None:
            part = _read_thresholds_file(source)
            _check_thresholds(part, str(source))
            out.update(part)
    out.update(overrides or {})
    _check_thresholds(out, "thresholds")
    return out


def threshold_for(metric: str, baseline_value: float, thresholds: dict[str, dict[str, float]]) -> float:
    """The absolute threshold for ``metric`` given the baseline value."""
    spec = thresholds.get(metric)
    if spec is None:
        prefixes = [k for k in thresholds if k != "*" and metric.startswith(k + "_")]
        spec = thresholds[max(prefixes, key=len)] if prefixes else thresholds.get("*", {"abs": 0.0})
    kind, x = next(iter(spec.items()))
    return float(x) if kind == "abs" else float(x) * abs(float(baseline_value))


# --------------------------------------------------------------------------------------------------
# decision rules

def is_regression(value: float, baseline: float, higher_is_better: bool, threshold: float,
                  ci_low: float, ci_high: float) -> bool:
    """The dashboard's UNPAIRED display rule (not the gate's): worse than ``baseline`` by more than
    ``threshold`` AND ``baseline`` outside the value's own CI [ci_low, ci_high]."""
    if not (math.isfinite(value) and math.isfinite(baseline)):
        return False
    worse_by = (baseline - value) if higher_is_better else (value - baseline)
    if not worse_by > threshold:
        return False
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return True  # no CI (e.g. one item): the threshold alone decides
    return baseline > ci_high if higher_is_better else baseline < ci_low


def decide(delta: float, lo: float, hi: float, higher_is_better: bool, threshold: float) -> bool:
    """The gate: ``delta`` (candidate - baseline) worse by more than ``threshold`` AND its interval
    [lo, hi] entirely on the worse side of 0 (no finite interval: the threshold alone decides)."""
    if not math.isfinite(delta):
        return False
    worse_by = -delta if higher_is_better else delta
    if not worse_by > threshold:
        return False
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return True
    return hi < 0 if higher_is_better else lo > 0


# --------------------------------------------------------------------------------------------------
# helpers over the tables

def gated_rows(df: pd.DataFrame | None) -> pd.DataFrame:
    """The rows of system ``model`` (a frame without a ``system`` column: all of them; a null system
    counts as ``model``)."""
    if df is None:
        return pd.DataFrame()
    system = df.get("system", GATED_SYSTEM)
    if isinstance(system, pd.Series):
        return df[system.fillna(GATED_SYSTEM).astype(str) == GATED_SYSTEM]
    return df


def item_set_hash(items: pd.DataFrame) -> str | None:
    """sha256 (16 hex digits) of the sorted distinct (task, item_id, seed) keys of ``items``; None for none."""
    if items is None or items.empty:
        return None
    keys = sorted({(str(t), str(i), int(s)) for t, i, s in zip(items["task"], items["item_id"], items["seed"])})
    return hashlib.sha256("\n".join(f"{t}\t{i}\t{s}" for t, i, s in keys).encode()).hexdigest()[:16]


_CHECKPOINT_ID = re.compile(r"checkpoint sha256:[0-9a-fA-F]+")


def instrument_version(version: Any) -> str | None:
    """A scorer version without the identity of the checkpoint a model scorer scored (see the module
    docstring: comparability is about the instrument, not the thing measured)."""
    v = _s(version)
    return None if v is None else _CHECKPOINT_ID.sub("checkpoint sha256:*", v)


def _f(x: Any) -> float:
    return float(x) if is_finite(x) else math.nan


def _s(x: Any) -> str | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA else str(x)


def _inputs(items: pd.DataFrame, metric: str) -> tuple[str, list[str]] | None:
    """How a metric is aggregated from the items table: ("item", [metric]) for a per-item metric,
    ("corpus", [errors, ref_len]) for a corpus error rate; None when its inputs are not there."""
    present = set(items["metric"].unique()) if not items.empty else set()
    if metric in present:
        return "item", [metric]
    if metric.endswith(A.CORPUS_SUFFIX):
        base = metric[: -len(A.CORPUS_SUFFIX)]
        err, ref = base + A.ERRORS_SUFFIX, base + A.REF_LEN_SUFFIX
        if err in present and ref in present:
            return "corpus", [err, ref]
    return None


def _cube(items: pd.DataFrame, metrics: list[str], index: list[str], seeds: list[int]) -> np.ndarray:
    """``[items, seeds, len(metrics)]`` values (NaN where absent)."""
    out = []
    for m in metrics:
        sub = items[items["metric"] == m]
        pivot = sub.pivot_table(index="item_id", columns="seed", values="value", aggfunc="mean", dropna=False)
        out.append(pivot.reindex(index=index, columns=seeds).to_numpy(dtype=np.float64))
    return np.stack(out, axis=-1)


# --------------------------------------------------------------------------------------------------
# the comparison

KEY = ["benchmark", "task", "metric"]


def _latest(agg: pd.DataFrame) -> pd.DataFrame:
    if agg.empty:
        return agg
    if "timestamp" in agg.columns:
        agg = agg.sort_values("timestamp", kind="stable")
    return agg.drop_duplicates(KEY, keep="last")


def compare_frames(baseline_agg: pd.DataFrame, candidate_agg: pd.DataFrame, baseline_items: pd.DataFrame | None,
                   candidate_items: pd.DataFrame | None, *, thresholds: dict[str, dict[str, float]] | None = None,
                   n_boot: int = N_BOOT, n_sub: int = N_SUB, alpha: float = ALPHA,
                   seed: int = BOOT_SEED) -> tuple[list[dict[str, Any]], list[str]]:
    """The gate on in-memory rows of two runs (aggregate rows, and their items rows; see the module
    docstring). Returns (one decision row per baseline metric, keys only in the candidate). Rows carry
    every ``regression`` table column except run_id, baseline_run_id and timestamp."""
    thresholds = thresholds or load_thresholds()
    base, cur = _latest(gated_rows(baseline_agg)), _latest(gated_rows(candidate_agg))
    bi, ci = gated_rows(baseline_items), gated_rows(candidate_items)
    empty_items = pd.DataFrame(columns=["benchmark", "task", "item_id", "seed", "metric", "value"])
    bi = empty_items if bi is None or bi.empty else bi
    ci = empty_items if ci is None or ci.empty else ci
    b_groups = {k: g for k, g in bi.groupby(["benchmark", "task"])}
    c_groups = {k: g for k, g in ci.groupby(["benchmark", "task"])}
    cur_by = {tuple(k): r for k, r in zip(cur[KEY].itertuples(index=False, name=None), cur.to_dict("records"))}
    rows = []
    for b in sorted(base.to_dict("records"), key=lambda r: tuple(str(r[k]) for k in KEY)):
        k = (b["benchmark"], b["task"], b["metric"])
        c = cur_by.get(k)
        rows.append(_decide_one(b, c, b_groups.get(k[:2], empty_items), c_groups.get(k[:2], empty_items),
                                thresholds, n_boot, n_sub, alpha, seed))
    new = sorted(f"{b}/{t}/{m}" for (b, t, m) in set(cur_by) - {tuple(k) for k in base[KEY].itertuples(index=False)})
    return rows, new


def _decide_one(b: dict, c: dict | None, b_items: pd.DataFrame, c_items: pd.DataFrame, thresholds: dict,
                n_boot: int, n_sub: int, alpha: float, seed: int) -> dict[str, Any]:
    metric = b["metric"]
    hib = bool(b["higher_is_better"] if c is None else c["higher_is_better"])
    bv = _f(b["value"])
    row = dict(benchmark=b["benchmark"], task=b["task"], metric=metric, higher_is_better=hib,
               value=math.nan, baseline_value=bv, delta=math.nan, threshold=math.nan, ci_low=math.nan,
               ci_high=math.nan, delta_ci_low=math.nan, delta_ci_high=math.nan, regressed=False, rule=RULE_FALLBACK,
               comparable=True, reason="", n_items=0, n_pairs=0, item_set_hash=None, baseline_item_set_hash=None)
    b_kind = _inputs(b_items, metric)
    row["baseline_item_set_hash"] = item_set_hash(b_items[b_items["metric"].isin(b_kind[1])]) if b_kind else None
    if not math.isfinite(bv) and c is None:
        return {**row, "rule": RULE_NOT_COMPARED, "comparable": False,
                "reason": "baseline value is NaN and the metric is missing in the candidate: nothing to compare"}
    if c is None:
        return {**row, "rule": RULE_MISSING, "regressed": True, "comparable": False, "reason": "missing in candidate"}
    cv = _f(c["value"])
    c_kind = _inputs(c_items, metric)
    c_rows = c_items[c_items["metric"].isin(c_kind[1])] if c_kind else c_items.iloc[:0]
    row.update(value=cv, ci_low=_f(c["ci_low"]), ci_high=_f(c["ci_high"]),
               item_set_hash=item_set_hash(c_rows) if c_kind else None)
    thr = threshold_for(metric, bv if math.isfinite(bv) else 0.0, thresholds)
    row["threshold"] = thr
    # Runs of another scorer version or model config measured something else: nothing is decided,
    # not even a NaN or failed metric (a new codec may make a scorer fail where the old one did not).
    refused = []
    bver, cver = instrument_version(b.get("scorer_version")), instrument_version(c.get("scorer_version"))
    if bver is not None and cver is not None and bver != cver:
        refused.append(f"scorer version differs ({bver} -> {cver})")
    bcfg, ccfg = _s(b.get("config_hash")), _s(c.get("config_hash"))
    if bcfg is not None and ccfg is not None and bcfg != ccfg:
        refused.append(f"config differs (hash {bcfg} -> {ccfg})")
    if refused:
        return {**row, "rule": RULE_NOT_COMPARED, "comparable": False,
                "reason": "; ".join(refused) + ": not compared"}
    if not math.isfinite(cv):
        inputs = c_rows if c_kind else c_items[c_items["metric"] == metric]
        all_failed = not inputs.empty and not np.isfinite(inputs["value"].to_numpy(np.float64)).any()
        if math.isfinite(bv):
            return {**row, "rule": RULE_FAILED, "regressed": True, "comparable": False,
                    "reason": "all items failed" if all_failed else "value is NaN in the candidate"}
        return {**row, "rule": RULE_NOT_COMPARED, "comparable": False,
                "reason": "NaN in both runs (" + ("all items failed" if all_failed else "no value") + ")"}
    if not math.isfinite(bv):
        return {**row, "rule": RULE_NOT_COMPARED, "comparable": False, "reason": "baseline value is NaN"}

    flagged: list[str] = []
    bn, cn = b.get("n"), c.get("n")
    if is_finite(bn) and is_finite(cn) and int(bn) != int(cn):
        flagged.append(f"n differs ({int(bn)} -> {int(cn)})")
    b_rows = b_items[b_items["metric"].isin(b_kind[1])] if b_kind else b_items.iloc[:0]
    if row["item_set_hash"] and row["baseline_item_set_hash"] and row["item_set_hash"] != row["baseline_item_set_hash"]:
        bk = set(zip(b_rows["item_id"], b_rows["seed"].astype(int)))
        ck = set(zip(c_rows["item_id"], c_rows["seed"].astype(int)))
        flagged.append(f"item set differs (hash {row['baseline_item_set_hash']} -> {row['item_set_hash']}: "
                       f"{len(bk - ck)} baseline (item, seed) pairs not in the candidate, {len(ck - bk)} new)")

    if b_kind and c_kind and b_kind[0] == c_kind[0]:
        kind, metrics = b_kind
        index = sorted(set(b_rows["item_id"]) & set(c_rows["item_id"]))
        seeds = sorted({int(s) for s in b_rows["seed"]} & {int(s) for s in c_rows["seed"]})
        bc, cc = _cube(b_rows, metrics, index, seeds), _cube(c_rows, metrics, index, seeds)
        if kind == "item":
            res = paired_item_interval(bc[..., 0], cc[..., 0], n_boot=n_boot, alpha=alpha, seed=seed)
            rule, base_ref = RULE_PAIRED, res["baseline_mean"]
        else:  # corpus error rate: (errors, ref_len) per (item, seed), both finite on both sides
            ok = np.isfinite(bc).all(-1) & np.isfinite(cc).all(-1)
            keep = ok.any(axis=1)
            bc, cc = np.where(ok[..., None], bc, np.nan)[keep], np.where(ok[..., None], cc, np.nan)[keep]
            res = paired_subsample_interval(bc, cc, A.corpus_rate, n_sub=n_sub, alpha=alpha, seed=seed)
            res["n_pairs"] = int(ok.sum())
            rule, base_ref = RULE_SUBSAMPLE, res["baseline_value"]
        if res["n_items"] > 0 and math.isfinite(res["delta"]):
            thr = threshold_for(metric, base_ref, thresholds)
            decided = res["n_items"] >= MIN_PAIRED_ITEMS
            if not decided:
                flagged.append(f"only {res['n_items']} paired item(s) (< {MIN_PAIRED_ITEMS}): too few to decide")
            elif not (math.isfinite(res["lo"]) and math.isfinite(res["hi"])):
                flagged.append("no interval, the threshold alone decides")
            if flagged:
                flagged.append(f"decided on the {res['n_items']} common items ({res['n_pairs']} pairs)")
            return {**row, "rule": rule, "threshold": thr, "delta": res["delta"], "delta_ci_low": res["lo"],
                    "delta_ci_high": res["hi"], "n_items": res["n_items"], "n_pairs": res["n_pairs"],
                    "regressed": decided and decide(res["delta"], res["lo"], res["hi"], hib, thr),
                    "comparable": not flagged,
                    "reason": "; ".join(flagged)}
        flagged.append("no (item, seed) pair is scored in both runs")
        why = "no common pairs"
    elif not b_kind and not c_kind:
        why = ("no per-item inputs in the items table (a set-level metric computed from embeddings/posteriors, "
               "or runs recorded without per-item rows); item set not verifiable")
    elif b_kind and c_kind:
        why = f"per-item inputs differ in kind ({b_kind[0]} vs {c_kind[0]})"
    else:
        why = f"no per-item scores in the {'candidate' if b_kind else 'baseline'}; item set not verifiable"
    # rule 3
    delta, lo, hi = unpaired_fallback_interval(cv, row["ci_low"], row["ci_high"], bv, _f(b.get("ci_low")),
                                               _f(b.get("ci_high")))
    n_items = int(min(int(bn), int(cn))) if is_finite(bn) and is_finite(cn) else 0
    return {**row, "rule": RULE_FALLBACK, "delta": delta, "delta_ci_low": lo, "delta_ci_high": hi, "n_items": n_items,
            "regressed": decide(delta, lo, hi, hib, thr), "comparable": not flagged,
            "reason": "; ".join(flagged + [f"unpaired fallback: {why}"])}


# --------------------------------------------------------------------------------------------------
# runs

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

    @property
    def incomparable(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if not r["comparable"]]

    def to_dict(self) -> dict[str, Any]:
        name = lambda r: f"{r['benchmark']}/{r['task']}/{r['metric']}"  # noqa: E731
        return {"run_id": self.run_id, "baseline_run_id": self.baseline_run_id, "regressed": self.regressed,
                "compared": len(self.rows), "regressions": [name(r) for r in self.regressions],
                "incomparable": {name(r): r["reason"] for r in self.incomparable},
                "new": self.new, "missing": self.missing, "table_path": self.table_path}


def compare_runs(root: str | Path, run_id: str, baseline: str | None = None, *,
                 thresholds: dict[str, dict[str, float]] | None = None, write: bool = True) -> RegressionSummary:
    """Compare ``run_id`` with its baseline, append the rows to the regression table (``write``) and
    return the summary with a markdown report. No baseline (a first run): nothing regresses."""
    thresholds = thresholds or load_thresholds()
    base_id = resolve_baseline(root, run_id, baseline)
    cur = R.read_table(root, "aggregate", run_id=run_id)
    if base_id is None:
        s = RegressionSummary(run_id, None, False, new=sorted(_keys(gated_rows(cur))))
        s.report = render_report(s)
        return s
    base = R.read_table(root, "aggregate", run_id=base_id)
    items = R.read_table(root, "items", run_id=[run_id, base_id])
    decided, new = compare_frames(base, cur, items[items["run_id"] == base_id], items[items["run_id"] == run_id],
                                  thresholds=thresholds)
    rows = [{"run_id": run_id, "baseline_run_id": base_id, **r} for r in decided]
    s = RegressionSummary(run_id, base_id, any(r["regressed"] for r in rows), rows, new=new,
                          missing=sorted(f"{r['benchmark']}/{r['task']}/{r['metric']}" for r in rows
                                         if r["rule"] == RULE_MISSING))
    s.report = render_report(s)
    if write and rows:
        s.table_path = str(R.write_rows(root, "regression", rows, run_id=run_id))
    return s


def _keys(df: pd.DataFrame) -> set[str]:
    return {f"{b}/{t}/{m}" for b, t, m in zip(df["benchmark"], df["task"], df["metric"])}


def _status(r: dict) -> str:
    return "❌" if r["regressed"] else ("⚠️" if not r["comparable"] else "✅")


def render_report(s: RegressionSummary, directions: dict[str, bool] | None = None) -> str:
    """Markdown: verdict, the rules, then one line per compared metric (regressions first, then the
    metrics that are not comparable)."""
    if s.baseline_run_id is None:
        return (f"# Regression check: `{s.run_id}`\n\nNo baseline run found (first run of this benchmark/kind): "
                f"nothing compared, nothing regressed. {len(s.new)} metrics recorded.\n")
    bad = s.incomparable
    verdict = (f"**REGRESSED**: {len(s.regressions)} of {len(s.rows)} metrics" if s.regressed
               else f"**OK**: no regression in {len(s.rows)} metrics")
    if bad:
        verdict += f"; **{len(bad)} not comparable** (⚠️, see the reason)"
    lines = [f"# Regression check: `{s.run_id}` vs baseline `{s.baseline_run_id}`", "", verdict, "",
             "A metric regresses when it is worse than the baseline by more than its threshold AND the 95% interval "
             f"of the difference lies on the worse side of 0. Rules: `{RULE_PAIRED}` (per-item metrics: bootstrap over "
             f"items of the paired per-item differences), `{RULE_SUBSAMPLE}` (set-level metrics: common half-subsets "
             f"without replacement), `{RULE_FALLBACK}` (no per-item inputs: the runs' own CIs combined). A metric "
             "missing in this run, or NaN, fails. Only `system = model` rows are gated.", "",
             "| | benchmark | task | metric | better | rule | items / pairs | value | baseline | delta [95% interval] "
             "| threshold | comparable | reason |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(s.rows, key=lambda r: (not r["regressed"], r["comparable"], r["benchmark"], r["task"], r["metric"])):
        better = "higher" if r.get("higher_is_better") else "lower"
        delta = "" if not is_finite(r["delta"]) else f"{r['delta']:+.4g} [{fmt_value(r['delta_ci_low'])}, {fmt_value(r['delta_ci_high'])}]"
        lines.append(f"| {_status(r)} | {r['benchmark']} | {r['task']} | {r['metric']} | {better} | {r['rule']} | "
                     f"{r['n_items']} / {r['n_pairs']} | {fmt_value(r['value'])} | {fmt_value(r['baseline_value'])} | {delta} | "
                     f"{fmt_value(r['threshold'])} | {'yes' if r['comparable'] else 'NO'} | {r['reason']} |")
    if s.new:
        lines += ["", "Only in this run (not compared): " + ", ".join(f"`{k}`" for k in s.new)]
    if s.missing:
        lines += ["", "Only in the baseline (missing from this run: a failure): " + ", ".join(f"`{k}`" for k in s.missing)]
    return "\n".join(lines) + "\n"
