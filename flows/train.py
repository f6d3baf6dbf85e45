"""The ``train`` flow: the curriculum of one variant (stage 1 -> 2 -> 3, or its own stages) over the
curated token shards. Wiring only: each stage (and each stage-1 specialist) is a task calling
unimoe.training.launch.run_stage (in process, or as a torchrun job when nproc > 1); stages resume from
their own checkpoints and are cached across runs; each publishes its loss curve (unimoe.training.curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.common import run_cached, workspace_root
from unimoe.config import TASKS, get_preset


@task(name="stage1-specialist")
def stage1(model_cfg: dict, task_name: str, tokens: str, out_dir: str, run_id: str, variant: str,
           overrides: dict, variant_overlay: dict, nproc: int = 1) -> str:
    from unimoe.training.launch import run_stage, stage_spec

    return str(run_stage(stage_spec("specialist", model_cfg, tokens, out_dir, run_id, variant, overrides, variant_overlay,
                               task=task_name), nproc))


@task(name="stage2-moe-warmup")
def stage2(model_cfg: dict, specialists: dict, tokens: str, warmup: str, out_dir: str, run_id: str, variant: str,
           overrides: dict, variant_overlay: dict, nproc: int = 1) -> str:
    from data.balance import read_subset
    from unimoe.training.launch import run_stage, stage_spec

    return str(run_stage(stage_spec("warmup", model_cfg, tokens, out_dir, run_id, variant, overrides, variant_overlay,
                               specialists=specialists, warmup_ids=read_subset(warmup)), nproc))


@task(name="stage3-joint")
def stage3(model_cfg: dict, init: str | None, tokens: str, subset: str, out_dir: str, run_id: str, variant: str,
           stage: Any, overrides: dict, variant_overlay: dict, nproc: int = 1) -> str:
    from data.balance import read_subset
    from unimoe.training.launch import run_stage, stage_spec

    return str(run_stage(stage_spec("joint", model_cfg, tokens, out_dir, run_id, variant, overrides, variant_overlay,
                               init=init, subset_ids=read_subset(subset), stage=stage), nproc))


def _curve_artifact(run_id: str, name: str, workdir: Path, title: str) -> None:
    """The stage's loss curve (chart + table from its metrics table) as a markdown artifact."""
    from unimoe.training.curves import stage_curve_markdown

    create_markdown_artifact(key=f"loss-{_slug(run_id)}-{_slug(name)}", description=f"Loss curve: {title}",
                             markdown=stage_curve_markdown(workdir, title, run_id=run_id))


@flow(name="train", log_prints=True)
def train(variant: str = "unimoe-top-p0.7", workspace: str | None = None, preset: str = "tiny",
          max_steps: int | None = None, batch_size: int | None = None, run_id: str | None = None,
          tokens: str | None = None, subset: str | None = None, warmup: str | None = None, nproc: int = 1,
          fsdp: bool = False, expert_parallel: bool = False, lr_scale: float | None = None) -> dict:
    """Train ``variant`` on the curated data of ``workspace`` (outputs of the curate flow by default).

    ``max_steps``/``batch_size`` override every stage's (the demo uses a few steps per stage;
    ``batch_size`` is per process). ``nproc > 1`` runs every stage as a ``torchrun`` job of that many
    data-parallel processes (gloo on CPU, nccl on GPU), with FSDP2 and/or expert parallelism when
    ``fsdp`` / ``expert_parallel`` (TrainConfig fields; no effect in one process); 1 trains in process.
    ``lr_scale`` multiplies every stage's paper learning rate (the demo's few steps need it).
    After each stage a markdown artifact shows its loss curve."""
    from unimoe.training.shards import TokenShardReader
    from unimoe.config import codec_for_tokens
    from unimoe.training.curriculum import claim_run_dir, plan, step_overrides

    log = get_run_logger()
    ws = workspace_root(workspace)
    cur = ws / "curate"
    tokens = tokens or str(cur / "tokens")
    subset = subset or str(cur / "subset.json")
    warmup = warmup or str(cur / "warmup.json")
    for p in (tokens, subset, warmup):
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} not found: run the curate flow first (unimoe curate)")
    # the model decodes with the codec its training tokens were made with (the preset's, or a trained one)
    base_cfg = codec_for_tokens(get_preset(preset), TokenShardReader(tokens, verify="size").index["codec"])
    p = plan(variant, base_cfg)
    model_cfg, curriculum, overlay = p["model_config"], p["curriculum"], p["train_overlay"]
    overrides = step_overrides(max_steps, batch_size, fsdp=fsdp, expert_parallel=expert_parallel, lr_scale=lr_scale)
    run_id = run_id or f"{variant}-{preset}"
    out = ws / "train" / run_id
    moved = claim_run_dir(out, {"model_config": model_cfg, "curriculum": curriculum, "overlay": overlay,
                                "overrides": overrides, "tokens": str(tokens)}, archive=ws / "superseded" / "train")
    if moved is not None:
        log.warning(f"{out} held a run of another configuration: moved to {moved}; training afresh")
    stages = curriculum["stages"]
    log.info(f"variant {variant}: stages {stages}, init {curriculum.get('init')}")
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    common = dict(run_id=run_id, variant=variant, overrides=overrides, variant_overlay=overlay, nproc=nproc)
    done = lambda path: Path(path).exists()  # noqa: E731

    ckpts: dict[str, Any] = {}
    if 1 in stages:
        ckpts["stage1"] = {}
        for t in TASKS:
            ckpts["stage1"][t] = run_cached(stage1, ws, model_cfg, t, tokens, str(out / "stage1" / t),
                                            output_exists=done, **common)
            _curve_artifact(run_id, f"stage1-{t}", out / "stage1" / t, f"{run_id}: stage 1 specialist {t}")
    if 2 in stages:
        ckpts["stage2"] = run_cached(stage2, ws, model_cfg, ckpts["stage1"], tokens, warmup, str(out / "stage2"),
                                     output_exists=done, **common)
        _curve_artifact(run_id, "stage2", out / "stage2", f"{run_id}: stage 2 MoE warm-up")
    final_stage = 3 if 3 in stages else "joint"
    init = ckpts.get("stage2") if curriculum.get("init") != "random" else None
    ckpts["final"] = run_cached(stage3, ws, model_cfg, init, tokens, subset, str(out / "stage3"), stage=final_stage,
                                output_exists=done, **common)
    _curve_artifact(run_id, f"stage{final_stage}", out / "stage3", f"{run_id}: stage {final_stage}")
    create_markdown_artifact(key=f"train-{_slug(run_id)}", description=f"Training run {run_id}", markdown="\n".join(
        [f"# Training run `{run_id}`", "", f"Variant **{variant}** on preset `{preset}`; stages {stages}.", "",
         "| stage | checkpoint |", "|---|---|"]
        + [f"| stage 1 ({t}) | `{c}` |" for t, c in ckpts.get("stage1", {}).items()]
        + ([f"| stage 2 | `{ckpts['stage2']}` |"] if "stage2" in ckpts else [])
        + [f"| {final_stage} | `{ckpts['final']}` |", "", f"Metrics: `{out}/**/metrics/`"]))
    return {"run_id": run_id, "variant": variant, "workdir": str(out), "checkpoints": ckpts}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")
