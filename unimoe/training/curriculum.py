"""The three-stage curriculum of a variant, as functions over checkpoint directories.

    stage 1   one dense specialist per task, on that task's whole curated pool
    stage 2   the DCMoE model built from the specialists (routed experts = FFN slices; attention, norms,
              embeddings averaged; vision from the V2M specialist); only router + shared experts train,
              on the warm-up subset
    stage 3   everything trains on the balanced subset, balance-loss weight decaying per optimiser step
    joint     (Unify-Dense) one stage on the balanced subset from random initialisation

Each function takes and returns paths (checkpoints, workdirs) so an orchestrator can run, cache and
resume the stages independently. Data is any dataset with ``by_task``/``by_ids`` (e.g. the curated
``TokenShardReader``); the text tokenizer comes from the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from unimoe.checkpoint import load_checkpoint
from unimoe.config import TASKS, UniMoEConfig
from unimoe.common.files import atomic_write_json
from unimoe.model import UniMoEAudio
from unimoe.training.config import STAGE_LR, TrainConfig
from unimoe.training.stages import build_moe_from_specialists, specialist_config, trainable_predicate
from unimoe.training.trainer import train_stage
from unimoe.training.variants import apply_variant

# Stage from scratch (Unify-Dense's joint stage) uses the stage-1 learning rate: 1e-5 (stage 3) is a
# fine-tuning rate for a model that starts from specialists.
STAGE_FOR_LR = {1: 1, 2: 2, 3: 3, "joint": 1}


def tokenised_ids(ids: Sequence[str], dataset) -> list[str]:
    """The subset ids present in ``dataset`` (a row can fail tokenisation after balancing; it is
    accounted as quarantined in the curated manifest), in the subset's order."""
    have = set(dataset.ids() if callable(getattr(dataset, "ids", None)) else (x.id for x in dataset))
    return [i for i in ids if i in have]


def plan(variant: str, base_cfg: UniMoEConfig) -> dict[str, Any]:
    """What a variant runs: its model config, curriculum and training overlay."""
    model_cfg, curriculum, train_overlay = apply_variant(variant, base_cfg)
    return {"variant": variant, "model_config": model_cfg.to_dict(), "curriculum": curriculum,
            "train_overlay": train_overlay}


def step_overrides(max_steps: int | None = None, batch_size: int | None = None, *, fsdp: bool = False,
                   expert_parallel: bool = False, lr_scale: float | None = None) -> dict[str, Any]:
    """Training-config overrides for a run capped at ``max_steps`` optimiser steps per stage: the LR
    warm-up (a tenth), checkpointing (twice) and logging (every step) scale with the cap. ``lr_scale``
    multiplies each stage's paper learning rate (``stage_train_config``): a tiny model trained for a few
    steps barely moves at the paper's rates, which were set for a 3B model trained for days."""
    out: dict[str, Any] = {k: v for k, v in {"max_steps": max_steps, "batch_size": batch_size,
                                              "lr_scale": lr_scale}.items() if v is not None}
    out.update({k: True for k, on in (("fsdp", fsdp), ("expert_parallel", expert_parallel)) if on})
    if max_steps is not None:
        out.update(warmup_steps=max(1, max_steps // 10), checkpoint_every=max(1, max_steps // 2), log_every=1)
    return out


RUN_KEY_FILE = "run-key.json"


def claim_run_dir(out: str | Path, spec: dict[str, Any], archive: str | Path) -> Path | None:
    """Make ``out`` the run directory of ``spec`` (everything that decides what its stages train: model
    config, curriculum, overrides). A directory left by a run of ANOTHER spec (e.g. after a change of
    learning rate or steps) cannot be resumed -- its checkpoints refuse the new config -- so it is moved
    to ``<archive>/<out name>.<its key>`` (kept, never deleted; outside the training root, so the
    dashboard's metrics do not mix the two runs) and the new run starts fresh. Returns where the old
    run went, or None."""
    import hashlib
    import json

    out = Path(out)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]
    marker = out / RUN_KEY_FILE
    moved = None
    if out.exists():
        old = json.loads(marker.read_text()).get("key") if marker.is_file() else "unkeyed"
        if old != key:
            archive = Path(archive)
            archive.mkdir(parents=True, exist_ok=True)
            moved = archive / f"{out.name}.{old}"
            n = 1
            while moved.exists():
                moved, n = archive / f"{out.name}.{old}.{n}", n + 1
            out.rename(moved)
    out.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        atomic_write_json(marker, {"key": key, "spec": spec})
    return moved


def stage_train_config(stage: int | str, overrides: dict[str, Any] | None, variant_overlay: dict[str, Any]) -> TrainConfig:
    """The stage's TrainConfig: the paper's defaults for the stage, the variant's overlay, then
    ``overrides`` (whose ``lr_scale``, if any, multiplies the stage's paper learning rate unless an
    explicit ``lr`` is given)."""
    merged = {**variant_overlay, **(overrides or {})}
    scale = merged.pop("lr_scale", None)
    if scale is not None and "lr" not in merged:
        merged["lr"] = STAGE_LR[STAGE_FOR_LR[stage]] * float(scale)
    return TrainConfig.for_stage(STAGE_FOR_LR[stage], **merged)


def train_specialist(model_cfg: UniMoEConfig, task: str, dataset, tokenizer, workdir: str | Path, *, run_id: str,
                     variant: str, train_overrides: dict[str, Any] | None = None,
                     variant_overlay: dict[str, Any] | None = None) -> Path:
    """Stage 1 for one task: a dense specialist of ``model_cfg``'s shapes on the task's whole pool."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    spec_cfg = specialist_config(model_cfg)
    tcfg = stage_train_config(1, train_overrides, variant_overlay or {})
    torch.manual_seed(tcfg.seed)
    ckpt, _ = train_stage(UniMoEAudio(spec_cfg), spec_cfg, tcfg, dataset, tokenizer, workdir, run_id=run_id,
                          variant=variant, stage=1, tasks=[task])
    return Path(ckpt)


def train_moe_warmup(model_cfg: UniMoEConfig, specialist_ckpts: dict[str, str | Path], dataset, tokenizer,
                     workdir: str | Path, *, warmup_ids: Sequence[str], run_id: str, variant: str,
                     train_overrides: dict[str, Any] | None = None,
                     variant_overlay: dict[str, Any] | None = None) -> Path:
    """Stage 2: build the DCMoE model from the specialists and warm up router + shared experts."""
    specialists = {task: load_checkpoint(path)[0] for task, path in specialist_ckpts.items()}
    tcfg = stage_train_config(2, train_overrides, variant_overlay or {})
    model, provenance = build_moe_from_specialists(model_cfg, specialists, seed=tcfg.seed,
                                                   sources={t: str(p) for t, p in specialist_ckpts.items()})
    workdir = Path(workdir)
    atomic_write_json(workdir / "provenance.json", provenance)
    ckpt, _ = train_stage(model, model_cfg, tcfg, dataset, tokenizer, workdir, run_id=run_id, variant=variant,
                          stage=2, ids=list(warmup_ids), trainable=trainable_predicate(2))
    return Path(ckpt)


def train_joint(model_cfg: UniMoEConfig, init_ckpt: str | Path | None, dataset, tokenizer, workdir: str | Path, *,
                subset_ids: Sequence[str], run_id: str, variant: str, stage: int | str = 3,
                train_overrides: dict[str, Any] | None = None,
                variant_overlay: dict[str, Any] | None = None) -> Path:
    """Stage 3 (from the stage-2 checkpoint, or random init when ``init_ckpt`` is None) or the joint
    stage of Unify-Dense: every parameter trains on the balanced subset."""
    tcfg = stage_train_config(stage, train_overrides, variant_overlay or {})
    if init_ckpt is None:
        torch.manual_seed(tcfg.seed)
        model = UniMoEAudio(model_cfg)
    else:
        model, saved_cfg, _ = load_checkpoint(init_ckpt)
        if saved_cfg.config_hash() != model_cfg.config_hash():
            raise ValueError(f"{init_ckpt} was trained with another model config than variant {variant!r} uses")
    ckpt, _ = train_stage(model, model_cfg, tcfg, dataset, tokenizer, workdir, run_id=run_id, variant=variant,
                          stage=3, ids=list(subset_ids), trainable=trainable_predicate(3))
    return Path(ckpt)
