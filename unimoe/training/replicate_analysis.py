"""The analysis of the replicate experiment (:mod:`unimoe.training.replicate`): Student-t intervals over
seeds, paired differences, the three claims' verdicts, the specialists' learning curves, routing
summaries, and the Markdown report. Pure functions of the NLL table and the run's metrics files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from unimoe.common.files import atomic_path
from unimoe.config import TASKS

if TYPE_CHECKING:
    from unimoe.training.replicate import ReplicateConfig

SPECIALIST = "specialist"
MODELS = (SPECIALIST, "unify-dense", "unify-moe-top2", "wo-init", "unimoe-top-p0.7")
MUSIC = ("t2m", "v2m")
AGG_COLUMNS = ("model", "task", "codebook", "mean", "sd", "n_seeds", "ci_low", "ci_high", "seeds")
HOLDS, HOLDS_NS, FAILS = "holds", "holds (not significant)", "does not hold"


# ---- statistics --------------------------------------------------------------------------------------------


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, sd, ci_low, ci_high)``: Student-t interval over independent replicates (sample sd with
    n - 1; NaN bounds for n < 2)."""
    from scipy.stats import t as student_t

    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def with_all_tasks(nll: pd.DataFrame) -> pd.DataFrame:
    """``nll`` plus task ``"all"`` rows (codebook ``"mean"``): the mean over the four tasks of a (model,
    seed)'s codebook-mean NLL, for models that cover every task."""
    m = nll[nll.codebook == "mean"]
    extra = []
    for (model, seed), g in m.groupby(["model", "seed"], sort=False):
        if set(g.task) >= set(TASKS):
            g = g[g.task.isin(TASKS)]
            extra.append({"model": model, "seed": int(seed), "task": "all", "codebook": "mean",
                          "nll": float(g.nll.mean()), "tokens": int(g.tokens.sum()), "items": int(g["items"].sum()),
                          "checkpoint": ""})
    return pd.concat([nll, pd.DataFrame(extra, columns=nll.columns)], ignore_index=True) if extra else nll


def aggregate(nll: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Mean over seeds with the t-interval, per (model, task, codebook), task ``"all"`` included."""
    rows = []
    for (model, task, cb), g in with_all_tasks(nll).groupby(["model", "task", "codebook"], sort=False):
        mean, sd, lo, hi = t_interval(g.sort_values("seed").nll.tolist(), confidence)
        rows.append({"model": model, "task": task, "codebook": cb, "mean": mean, "sd": sd, "n_seeds": len(g),
                     "ci_low": lo, "ci_high": hi, "seeds": ",".join(str(s) for s in sorted(g.seed))})
    return pd.DataFrame(rows, columns=list(AGG_COLUMNS))


def paired_difference(nll: pd.DataFrame, a: str, b: str, task: str) -> dict[str, float]:
    """``a - b`` of the codebook-mean NLL on ``task``, paired by seed: mean, t-interval, seeds used."""
    m = with_all_tasks(nll)
    m = m[(m.codebook == "mean") & (m.task == task)]
    va = m[m.model == a].set_index("seed").nll
    vb = m[m.model == b].set_index("seed").nll
    seeds = sorted(set(va.index) & set(vb.index))
    d = [float(va[s] - vb[s]) for s in seeds]
    mean, sd, lo, hi = t_interval(d)
    return {"a": a, "b": b, "task": task, "mean": mean, "ci_low": lo, "ci_high": hi, "n_seeds": len(seeds),
            "b_mean": float(np.mean([vb[s] for s in seeds])) if seeds else math.nan}


def _verdict(directions: Sequence[bool], significant: Sequence[bool]) -> str:
    if not directions or not all(directions):
        return FAILS
    return HOLDS if all(significant) else HOLDS_NS


def evaluate_claims(nll: pd.DataFrame, match_tolerance: float = 0.01) -> list[dict[str, Any]]:
    """The three claims, each ``{"claim", "verdict", "details": [paired differences ...], "note"}``,
    decided from the numbers in ``nll`` (see the module docstring)."""
    claims = []
    # 1. joint dense worse than the specialists, most on music
    diffs = [paired_difference(nll, "unify-dense", SPECIALIST, t) for t in TASKS]
    worst = max(diffs, key=lambda d: -math.inf if math.isnan(d["mean"]) else d["mean"])
    most_on_music = worst["task"] in MUSIC
    v = _verdict([d["mean"] > 0 for d in diffs] + [most_on_music],
                 [d["ci_low"] > 0 for d in diffs] + [True])
    claims.append({"claim": "Unify-Dense is worse than the specialists on every task, most on music",
                   "verdict": v, "details": diffs,
                   "note": f"largest gap on {worst['task']} ({worst['mean']:+.4f} nats)"})
    # 2. UniMoE matches or beats the specialists
    diffs = [paired_difference(nll, "unimoe-top-p0.7", SPECIALIST, t) for t in TASKS]
    tol = [match_tolerance * d["b_mean"] for d in diffs]
    v = _verdict([d["mean"] <= e for d, e in zip(diffs, tol)], [d["ci_high"] <= e for d, e in zip(diffs, tol)])
    beats = [d["task"] for d in diffs if d["ci_high"] < 0]
    claims.append({"claim": "UniMoE (Top-P 0.7) matches or beats the specialists on every task",
                   "verdict": v, "details": diffs,
                   "note": f"match = within {match_tolerance:.0%} of the specialist's NLL; significantly better on "
                           f"{beats or 'no task'}"})
    # 3. top-p > top-2 > w/o init (lower NLL is better)
    diffs = [paired_difference(nll, "unify-moe-top2", "unimoe-top-p0.7", "all"),
             paired_difference(nll, "wo-init", "unify-moe-top2", "all")]
    v = _verdict([d["mean"] > 0 for d in diffs], [d["ci_low"] > 0 for d in diffs])
    claims.append({"claim": "Top-P beats Top-2, which beats w/o initialisation (mean over tasks)",
                   "verdict": v, "details": diffs, "note": "differences are NLL(worse) - NLL(better); > 0 = as claimed"})
    return claims


# ---- tables and report ------------------------------------------------------------------------------------


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    return path


def curve_summary(curves: pd.DataFrame, tolerance: float) -> pd.DataFrame:
    """Per task: the specialists' held-out NLL (codebook mean) at each curve step, mean over seeds, the
    step where it was lowest, and its trend over the last interval (relative change ``tolerance``):
    ``falling`` (still improving), ``plateau``, or ``rising`` (overfitting: the held-out NLL went up)."""
    m = curves.groupby(["task", "step"], as_index=False)["nll"].mean().sort_values(["task", "step"])
    rows = []
    for task, g in m.groupby("task", sort=False):
        v = g["nll"].to_numpy()
        last_gain = float((v[-2] - v[-1]) / v[-2]) if len(v) > 1 else math.nan
        trend = "falling" if last_gain >= tolerance else "rising" if last_gain <= -tolerance else "plateau"
        rows.append({"task": task, "steps": [int(x) for x in g["step"]], "nll": [float(x) for x in v],
                     "best_step": int(g["step"].iloc[int(np.argmin(v))]), "last_interval_gain": last_gain,
                     "trend": trend, "plateaued": trend != "falling"})
    return pd.DataFrame(rows)


def routing_summary(workdirs: dict[str, Sequence[Path]]) -> dict[str, Any]:
    """From each MoE variant's final-stage routing tables (``unimoe.training.metrics``), summed over its
    seeds' whole final stage: mean dynamic experts per token by layer (the paper's fig. 3), and per
    expert its task distribution with a specialisation score ``1 - H(task share) / ln(#tasks)`` (0 =
    used equally by every task, 1 = used by one task only; the paper's figs. 4-5)."""
    from unimoe.training.metrics import read_metrics

    out: dict[str, Any] = {}
    for variant, dirs in workdirs.items():
        hist = pd.concat([read_metrics(d, "routing_hist") for d in dirs], ignore_index=True)
        tasks = pd.concat([read_metrics(d, "routing_tasks") for d in dirs], ignore_index=True)
        if hist.empty or tasks.empty:
            continue
        dyn = hist[hist["kind"] == "dynamic"]
        per_layer = {}
        for layer, g in dyn.groupby("layer"):
            tok = g.groupby("num_experts")["count"].sum()
            per_layer[int(layer)] = {"mean_experts_per_token": float((tok.index * tok).sum() / tok.sum()),
                                     "histogram": {int(k): int(v) for k, v in tok.items()}}
        experts = []
        for (layer, expert), g in tasks.groupby(["layer", "expert"]):
            c = g.groupby("task")["count"].sum().reindex(list(TASKS), fill_value=0).astype(float)
            total = c.sum()
            share = c / total if total > 0 else c
            p = share[share > 0].to_numpy()
            spec = float(1 - (-(p * np.log(p)).sum()) / math.log(len(TASKS))) if total > 0 else math.nan
            experts.append({"layer": int(layer), "expert": int(expert), "is_null": bool(g["is_null"].any()),
                            "selections": int(total), "specialisation": spec,
                            **{f"share_{t}": float(share[t]) for t in TASKS}})
        out[variant] = {"layers": per_layer, "experts": experts}
    return out


def report_markdown(cfg: ReplicateConfig, agg: pd.DataFrame, claims: list[dict], info: dict[str, Any]) -> str:
    f = lambda x: "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"  # noqa: E731
    lines = ["# Replication of the UniMoE-Audio ablation claims (demo corpus, tiny preset)", "",
             f"Seeds {cfg.seeds}; steps per stage: stage 1 {cfg.stage1_steps}, stage 2 {cfg.stage2_steps}, "
             f"stage 3 {cfg.stage3_steps}, joint (Unify-Dense) {cfg.joint_steps}; batch {cfg.batch_size}, "
             f"crop {cfg.max_frames} frames; learning rates = paper's x {cfg.lr_scale:g}. "
             f"Wall time {info.get('seconds', math.nan):.0f} s.", "",
             "Metric: held-out (split \"test\", never trained on) token NLL in nats, token-weighted per codebook, "
             "then the mean over codebooks; `specialist` = each task's own specialist. Intervals: 95 % "
             "Student-t over seeds (each seed retrains everything); claims use paired per-seed differences "
             "with the same interval. Bootstrap over items is NOT used: items are shared by all models and "
             "seeds, the seed is the replicate unit.", "",
             "## Held-out NLL (codebook mean), mean over seeds [95 % CI]", "",
             "| model | " + " | ".join(list(TASKS) + ["all"]) + " |", "|---" * (len(TASKS) + 2) + "|"]
    m = agg[agg.codebook == "mean"].set_index(["model", "task"])
    for model in MODELS:
        cells = []
        for task in list(TASKS) + ["all"]:
            if (model, task) in m.index:
                r = m.loc[(model, task)]
                cells.append(f"{f(r['mean'])} [{f(r['ci_low'])}, {f(r['ci_high'])}]")
            else:
                cells.append("-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims", ""]
    for i, c in enumerate(claims, 1):
        lines += [f"{i}. **{c['claim']}**: **{c['verdict']}** ({c['note']})", ""]
        lines += ["   | difference | task | mean | 95 % CI | seeds |", "   |---|---|---|---|---|"]
        for d in c["details"]:
            lines.append(f"   | {d['a']} - {d['b']} | {d['task']} | {d['mean']:+.4f} | "
                         f"[{f(d['ci_low'])}, {f(d['ci_high'])}] | {d['n_seeds']} |")
        lines.append("")
    lines += ["Verdicts: *holds* = every difference in the claimed direction with its interval excluding the "
              "other side; *holds (not significant)* = directions right, some interval crosses the bound; "
              "*does not hold* = some direction wrong. Tables: `nll.parquet` (model, seed, task, codebook), "
              "`nll_aggregate.parquet`, `specialist_curves.parquet`, `routing.json`.", ""]
    curves = info.get("curves")
    if curves is not None and len(curves):
        lines += ["## Specialists' held-out NLL by training step (mean over seeds)", "",
                  f"Trend over the last interval (relative change {cfg.plateau_tolerance:.0%}): *falling* = still "
                  "improving, *plateau*, *rising* = the held-out NLL went up (the specialist overfits its task's "
                  "training clips; the stage keeps its last checkpoint, as the paper's recipe does).", "",
                  "| task | " + " | ".join(f"step {s}" for s in curves.iloc[0]["steps"])
                  + " | best step | last-interval gain | trend |",
                  "|---" * (len(curves.iloc[0]["steps"]) + 4) + "|"]
        for _, r in curves.iterrows():
            lines.append(f"| {r['task']} | " + " | ".join(f"{v:.4f}" for v in r["nll"])
                         + f" | {r['best_step']} | {r['last_interval_gain']:+.2%} | {r['trend']} |")
        lines.append("")
    routing = info.get("routing") or {}
    if routing:
        lines += ["## Routing in the final stage (all seeds)", "",
                  "Dynamic experts per token (routed + null selected) by layer; expert specialisation = "
                  "1 - H(task share) / ln 4 (0: every task uses the expert equally, 1: one task only).", "",
                  "| variant | layer | experts / token | mean specialisation (routed) | max specialisation (routed) |",
                  "|---|---|---|---|---|"]
        for variant, r in routing.items():
            for layer, d in sorted(r["layers"].items()):
                spec = [e["specialisation"] for e in r["experts"] if e["layer"] == layer and not e["is_null"]
                        and not math.isnan(e["specialisation"])]
                lines.append(f"| {variant} | {layer} | {d['mean_experts_per_token']:.2f} | "
                             f"{np.mean(spec) if spec else math.nan:.3f} | {max(spec) if spec else math.nan:.3f} |")
        lines.append("")
    return "\n".join(lines)
