"""Replicate the paper's ablation claims on the demo corpus with the tiny preset (``unimoe experiment
replicate``).

For every seed: the four stage-1 specialists (trained ONCE per seed and shared by every variant that
starts from specialists), then ``unify-dense``, ``unify-moe-top2``, ``wo-init`` and ``unimoe-top-p0.7``
with their own curricula (:mod:`unimoe.training.curriculum`). Each trained model is scored on the
held-out rows (split "test", never trained on) by token NLL per codebook; a specialist is scored on its
own task only (the ``specialist`` model row of a task is that task's specialist).

NLL (nats per target token)
  For a (model, seed, task): per codebook k, the sum of the cross-entropy of every held-out target
  token of the task's items divided by their number (token-weighted, exactly the training CE with
  condition dropout off and the ``start`` crop at ``max_frames``); ``"mean"`` is the mean over
  codebooks (the training objective's form). Task ``"all"`` is the mean of the four tasks' ``"mean"``.

Confidence intervals
  Over SEEDS, never over items: every seed retrains everything (init, data order, dropout), so the
  seed-to-seed spread is the uncertainty of a training recipe. 95% Student-t interval,
  ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (n = number of seeds; NaN for one seed). Claims compare
  models by PAIRED per-seed differences (models of a seed share the data order seed and, for the
  three-stage variants, the specialists), with the same t-interval on the differences.

Claims (verdicts are computed from the table; see :func:`evaluate_claims`)
  1. Unify-Dense is worse than the specialists on every task, most on music (t2m / v2m).
  2. UniMoE (top-p 0.7) matches or beats the specialists on every task (within ``match_tolerance``,
     relative to the specialist's NLL).
  3. Top-P (p=0.7) beats Top-2, which beats w/o initialisation (task ``"all"``).
  Verdict: ``holds`` (directions right and every interval excludes the wrong side), ``holds (not
  significant)`` (directions right, some interval does not), ``does not hold`` (a direction wrong).

Resumable: every stage resumes from its own checkpoints and returns at once when complete; every
evaluation is cached as a small Parquet file next to the checkpoints. The run folder is keyed by a
hash of the experiment config (seeds excluded), so changing steps starts a fresh run instead of
extending old ones. No Prefect and no ``data`` import: the caller passes the dataset (token shards),
the tokenizer and the subset / warm-up ids.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from pydantic import Field, model_validator

from unimoe.common.config import check
from unimoe.common.files import atomic_write_json, atomic_write_text
from unimoe.config import TASKS, ConfigModel, UniMoEConfig
from unimoe.training.config import STAGE_LR, TrainConfig
from unimoe.training.data import BatchMaker, held_out_positions
from unimoe.training.replicate_analysis import (AGG_COLUMNS, FAILS, HOLDS, HOLDS_NS, MODELS, MUSIC, SPECIALIST,
                                                aggregate, curve_summary, evaluate_claims, paired_difference,
                                                report_markdown, routing_summary, t_interval, with_all_tasks,
                                                write_parquet)
from unimoe.training.variants import DEFAULT_VARIANT

VARIANTS = MODELS[1:]
NLL_COLUMNS = ("model", "seed", "task", "codebook", "nll", "tokens", "items", "checkpoint")
STEP_FIELDS = ("stage1_steps", "stage2_steps", "stage3_steps", "joint_steps", "batch_size", "max_frames")

__all__ = ["ReplicateConfig", "run_replicate", "held_out_items", "heldout_nll", "nll_rows", "SPECIALIST", "MODELS",
           "VARIANTS", "MUSIC", "NLL_COLUMNS", "AGG_COLUMNS", "HOLDS", "HOLDS_NS", "FAILS", "t_interval",
           "with_all_tasks", "aggregate", "paired_difference", "evaluate_claims", "write_parquet", "curve_summary",
           "routing_summary", "report_markdown"]


# ---- config ------------------------------------------------------------------------------------------------


class ReplicateConfig(ConfigModel):
    """The experiment. Steps are optimiser steps per stage; learning rates are the paper's per-stage
    rates (1e-4 / 3e-5 / 1e-5) times ``lr_scale`` (the tiny model trains for minutes, not days, so the
    paper's rates would barely move it; the scale keeps their ratios). Unify-Dense's joint stage and
    w/o-init's stage 3 use ``joint_steps`` / ``stage3_steps``."""

    section = "replicate"

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    preset: str = "tiny"
    # Defaults measured on the default demo: 193 s for one seed on 2 uncontended CPU cores (3 seeds ~10 min);
    # 24 min for 3 seeds while the cores were shared with other jobs (load ~3.5).
    stage1_steps: int = 200
    stage2_steps: int = 50
    stage3_steps: int = 200
    joint_steps: int = 450         # = stage 1 + 2 + 3: as many updates as UniMoE's path through one specialist
    batch_size: int = 8
    max_frames: int = 200          # 4 s at 50 Hz: every stage and the evaluation crop to the same length
    lr_scale: float = 30.0
    warmup_fraction: float = 0.1
    match_tolerance: float = 0.01  # claim 2: "matches" = within 1 % of the specialist's NLL
    # held-out NLL of each specialist at this many evenly spaced steps (its learning curve), and the
    # plateau rule: the last interval improved it by less than ``plateau_tolerance`` (relative)
    curve_points: int = 5
    plateau_tolerance: float = 0.01

    @model_validator(mode="after")
    def _check_ranges(self) -> "ReplicateConfig":
        return self.validate()

    def validate(self) -> "ReplicateConfig":
        """The range checks (run at construction; again by ``run_replicate``, for a config changed since)."""
        check(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
              f"need distinct seeds, got {self.seeds}", "seeds")
        for k in STEP_FIELDS:
            check(getattr(self, k) >= 1, "must be >= 1", k)
        check(self.curve_points >= 2, "must be >= 2", "curve_points")
        check(self.lr_scale > 0, "must be > 0", "lr_scale")
        check(0 <= self.warmup_fraction < 1, "must be in [0, 1)", "warmup_fraction")
        check(self.match_tolerance >= 0, "must be >= 0", "match_tolerance")
        return self

    def run_key(self) -> str:
        """Hash of everything that changes what a seed trains (not the seeds, not the claim tolerance)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("seeds", "match_tolerance", "plateau_tolerance")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    def train_overrides(self, stage: int | str, seed: int) -> dict[str, Any]:
        """The ``TrainConfig`` fields of ``stage`` (1, 2, 3 or "joint") for ``seed``."""
        steps = {1: self.stage1_steps, 2: self.stage2_steps, 3: self.stage3_steps, "joint": self.joint_steps}[stage]
        lr_stage = 1 if stage == "joint" else int(stage)  # as curriculum.STAGE_FOR_LR
        out = {"max_steps": steps, "batch_size": self.batch_size, "max_frames": self.max_frames, "seed": int(seed),
               "lr": STAGE_LR[lr_stage] * self.lr_scale, "warmup_steps": max(1, int(steps * self.warmup_fraction)),
               "log_every": max(1, steps // 20), "checkpoint_every": max(1, steps // 2), "keep_last": 1}
        if stage == 1:  # every curve point's checkpoint is kept for the specialists' held-out curves
            out.update(checkpoint_every=max(1, steps // int(self.curve_points)), keep_last=0)
        return out


# ---- held-out NLL ------------------------------------------------------------------------------------------


def held_out_items(dataset: Any) -> dict[str, list[int]]:
    """Positions of the held-out (split "test") rows of ``dataset`` per task."""
    out: dict[str, list[int]] = {t: [] for t in TASKS}
    for i in held_out_positions(dataset):
        task = dataset.row(i)["task"] if callable(getattr(dataset, "row", None)) else dataset[i].task
        out[task].append(i)
    return out


@torch.no_grad()
def heldout_nll(model, model_cfg: UniMoEConfig, dataset: Any, builder, positions: Sequence[int],
                max_frames: int) -> pd.DataFrame:
    """Per item: summed CE and target-token count per codebook on ``positions`` of ``dataset`` (always
    conditional, ``start`` crop at ``max_frames``). Reuses the trainer's objective (``TrainLoss``) on
    one item at a time, so the NLL is computed exactly as the training CE. Columns: item_id, task,
    codebook, nll_sum, tokens."""
    from unimoe.training.trainer import TrainLoss

    maker = BatchMaker(model_cfg, TrainConfig(max_frames=max_frames, crop="start", cond_dropout=0.0), builder)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss = TrainLoss(model)
    rows = []
    try:
        for i in positions:
            item = dataset[i]
            loss(maker.batch(dataset, [(0, int(i))]).to(device), 0.0, 1.0)
            t = TASKS.index(item.task)
            ce, cnt = loss.last["task_ce"][t].cpu(), loss.last["task_cnt"][t].cpu()
            for k in range(ce.shape[0]):
                rows.append({"item_id": item.id, "task": item.task, "codebook": k, "nll_sum": float(ce[k]),
                             "tokens": int(cnt[k])})
    finally:
        loss.remove_hooks()
        model.train(was_training)
    return pd.DataFrame(rows, columns=["item_id", "task", "codebook", "nll_sum", "tokens"])


def nll_rows(items: pd.DataFrame, model: str, seed: int, checkpoints: dict[str, str]) -> list[dict]:
    """Table rows of one (model, seed) from per-item sums: per task, per codebook (token-weighted) and
    the codebook mean."""
    rows = []
    for task, g in items.groupby("task", sort=False):
        per_cb = g.groupby("codebook").agg(nll_sum=("nll_sum", "sum"), tokens=("tokens", "sum")).sort_index()
        vals = (per_cb["nll_sum"] / per_cb["tokens"]).tolist()
        base = {"model": model, "seed": int(seed), "task": task, "items": int(g["item_id"].nunique()),
                "checkpoint": checkpoints[task]}
        for k, v in zip(per_cb.index, vals):
            rows.append({**base, "codebook": str(int(k)), "nll": float(v), "tokens": int(per_cb.loc[k, "tokens"])})
        rows.append({**base, "codebook": "mean", "nll": float(np.mean(vals)), "tokens": int(per_cb["tokens"].sum())})
    return rows


# ---- the experiment ----------------------------------------------------------------------------------------


def _specialist_key(spec_cfg: UniMoEConfig) -> str:
    """Dense specialists' weights do not depend on the router settings: key them by everything else, so
    Top-P and Top-2 share one set per seed."""
    d = spec_cfg.to_dict()
    for k in ("moe", "name"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


def run_replicate(dataset: Any, tokenizer, subset_ids: Sequence[str], warmup_ids: Sequence[str], out_dir: str | Path,
                  cfg: ReplicateConfig | None = None, *, base_cfg: UniMoEConfig | None = None,
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, evaluate and report (see the module docstring). ``dataset`` holds every tokenised row
    (train and test splits; test rows are only evaluated); ``subset_ids`` / ``warmup_ids`` are the
    balanced subset and its warm-up part. Writes ``nll.parquet``, ``nll_aggregate.parquet``,
    ``nll_items.parquet``, ``claims.json`` and ``report.md`` under ``out_dir``."""
    from unimoe.checkpoint import load_checkpoint
    from unimoe.config import get_preset
    from unimoe.sequence import SequenceBuilder
    from unimoe.training.curriculum import plan, train_joint, train_moe_warmup, train_specialist
    from unimoe.training.stages import specialist_config

    from unimoe.training.curriculum import tokenised_ids

    cfg = (cfg or ReplicateConfig()).validate()
    base_cfg = base_cfg or get_preset(cfg.preset)
    # a subset row can fail tokenisation after balancing (accounted as quarantined by curation)
    subset_ids, warmup_ids = tokenised_ids(subset_ids, dataset), tokenised_ids(warmup_ids, dataset)
    out = Path(out_dir)
    run = out / "runs" / cfg.run_key()
    atomic_write_json(run / "config.json", cfg.to_dict())
    held = held_out_items(dataset)
    missing = [t for t in TASKS if not held[t]]
    if missing:
        raise ValueError(f"no held-out (split 'test') rows for task(s) {missing}: re-run curation with a demo "
                         "corpus that marks a test split")
    t_start = time.perf_counter()
    n_total = len(cfg.seeds) * (len(TASKS) + 6)  # 4 specialists + 2 + 2 + 1 + 1 stages per seed
    done = [0]

    def stage(label: str, fn: Callable[[], Path]) -> Path:
        t0 = time.perf_counter()
        path = fn()
        done[0] += 1
        progress(f"[{done[0]:>3}/{n_total}] {label}: {Path(path).name} ({time.perf_counter() - t0:.1f} s, "
                 f"{time.perf_counter() - t_start:.0f} s total)")
        return path

    def evaluate(model_name: str, seed: int, ckpts: dict[str, Path]) -> pd.DataFrame:
        cache = run / f"seed{seed}" / "eval" / f"{model_name}.parquet"
        if cache.is_file():
            return pq.read_table(cache).to_pandas()
        frames = []
        for ck in sorted(set(ckpts.values())):
            model, mcfg, _ = load_checkpoint(ck)
            tasks = [t for t, c in ckpts.items() if c == ck]
            pos = [i for t in tasks for i in held[t]]
            frames.append(heldout_nll(model, mcfg, dataset, SequenceBuilder(mcfg, tokenizer), pos, cfg.max_frames))
        items = pd.concat(frames, ignore_index=True)
        items.insert(0, "seed", int(seed))
        items.insert(0, "model", model_name)
        write_parquet(items, cache)
        return items

    rows, item_frames, timings, curve_rows = [], [], {}, []
    for seed in cfg.seeds:
        t_seed = time.perf_counter()
        sdir = run / f"seed{seed}"
        plans = {v: plan(v, base_cfg) for v in VARIANTS}
        specialists: dict[str, dict[str, Path]] = {}

        def get_specialists(model_cfg: UniMoEConfig) -> dict[str, Path]:
            key = _specialist_key(specialist_config(model_cfg))
            if key not in specialists:
                specialists[key] = {
                    t: stage(f"seed {seed} specialist {t}",
                             lambda t=t: train_specialist(model_cfg, t, dataset, tokenizer, sdir / "stage1" / key / t,
                                                          run_id=f"replicate-s{seed}-specialist", variant=SPECIALIST,
                                                          train_overrides=cfg.train_overrides(1, seed)))
                    for t in TASKS}
            return specialists[key]

        for variant in VARIANTS:
            p = plans[variant]
            mcfg = UniMoEConfig.from_dict(p["model_config"])
            stages, overlay = p["curriculum"]["stages"], p["train_overlay"]
            vdir, run_id = sdir / variant, f"replicate-s{seed}-{variant}"
            init = None
            if 1 in stages:
                spec = get_specialists(mcfg)
            if 2 in stages:
                init = stage(f"seed {seed} {variant} stage 2",
                             lambda: train_moe_warmup(mcfg, spec, dataset, tokenizer, vdir / "stage2",
                                                      warmup_ids=warmup_ids, run_id=run_id, variant=variant,
                                                      train_overrides=cfg.train_overrides(2, seed), variant_overlay=overlay))
            final_stage = 3 if 3 in stages else "joint"
            final = stage(f"seed {seed} {variant} stage {final_stage}",
                          lambda: train_joint(mcfg, init if p["curriculum"].get("init") != "random" else None, dataset,
                                              tokenizer, vdir / "stage3", subset_ids=subset_ids, run_id=run_id,
                                              variant=variant, stage=final_stage,
                                              train_overrides=cfg.train_overrides(final_stage, seed),
                                              variant_overlay=overlay))
            items = evaluate(variant, seed, {t: final for t in TASKS})
            item_frames.append(items)
            rows += nll_rows(items, variant, seed, {t: str(final) for t in TASKS})
        # Each task's own specialist on its task (the default variant's specialists: trained above).
        spec = get_specialists(UniMoEConfig.from_dict(plans[DEFAULT_VARIANT]["model_config"]))
        for t, final in spec.items():  # its held-out curve: every kept step checkpoint of the stage
            for ck in sorted(Path(final).parent.glob("step-*")):
                step = int(ck.name.split("-")[1])
                items = evaluate(f"{SPECIALIST}-{t}-step{step}", seed, {t: ck})
                g = items.groupby("codebook")[["nll_sum", "tokens"]].sum()
                curve_rows.append({"seed": int(seed), "task": t, "step": step,
                                   "nll": float((g["nll_sum"] / g["tokens"]).mean())})
        items = evaluate(SPECIALIST, seed, spec)
        item_frames.append(items)
        rows += nll_rows(items, SPECIALIST, seed, {t: str(c) for t, c in spec.items()})
        timings[f"seed{seed}"] = time.perf_counter() - t_seed
        progress(f"seed {seed}: done in {timings[f'seed{seed}']:.0f} s")

    nll = pd.DataFrame(rows, columns=list(NLL_COLUMNS))
    agg = aggregate(nll)
    claims = evaluate_claims(nll, cfg.match_tolerance)
    seconds = time.perf_counter() - t_start
    curves = pd.DataFrame(curve_rows, columns=["seed", "task", "step", "nll"])
    routing = routing_summary({v: [run / f"seed{s}" / v / "stage3" for s in cfg.seeds]
                               for v in VARIANTS if UniMoEConfig.from_dict(plan(v, base_cfg)["model_config"]).is_moe})
    info = {"seconds": seconds, "timings": timings, "run_dir": str(run),
            "held_out_items": {t: len(v) for t, v in held.items()},
            "curves": curve_summary(curves, cfg.plateau_tolerance) if len(curves) else None, "routing": routing}
    paths = {"nll": write_parquet(nll, out / "nll.parquet"),
             "aggregate": write_parquet(agg, out / "nll_aggregate.parquet"),
             "items": write_parquet(pd.concat(item_frames, ignore_index=True), out / "nll_items.parquet"),
             "curves": write_parquet(curves, out / "specialist_curves.parquet")}
    atomic_write_json(out / "routing.json", routing)
    paths["routing"] = out / "routing.json"
    report = report_markdown(cfg, agg, claims, info)
    info = {**info, "curves": None if info["curves"] is None else info["curves"].to_dict("records")}
    atomic_write_json(out / "claims.json", {"config": cfg.to_dict(), "claims": claims, "info": info})
    paths["report"] = out / "report.md"
    atomic_write_text(paths["report"], report)
    return {"paths": {k: str(v) for k, v in paths.items()}, "claims": claims, "info": info, "report": report}
