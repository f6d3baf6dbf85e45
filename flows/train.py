"""The ``train`` flow: the curriculum of one variant (stage 1 -> 2 -> 3, or its own stages) over the
curated token shards. Wiring only: each stage (and each stage-1 specialist) is a task calling
unimoe.training.curriculum; stages resume from their own checkpoints and are cached across runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.common import run_cached, workspace_root
from unimoe.config import TASKS, UniMoEConfig, get_preset


def _data(tokens: str):
    from data.tokenize import TokenShardReader

    reader = TokenShardReader(tokens)
    return reader, reader.load_tokenizer()


@task(name="stage1-specialist")
def stage1(model_cfg: dict, task_name: str, tokens: str, out_dir: str, run_id: str, variant: str,
           overrides: dict, variant_overlay: dict) -> str:
    from unimoe.training.curriculum import train_specialist

    reader, tok = _data(tokens)
    return str(train_specialist(UniMoEConfig.from_dict(model_cfg), task_name, reader, tok, out_dir, run_id=run_id,
                                variant=variant, train_overrides=overrides, variant_overlay=variant_overlay))


@task(name="stage2-moe-warmup")
def stage2(model_cfg: dict, specialists: dict, tokens: str, warmup: str, out_dir: str, run_id: str, variant: str,
           overrides: dict, variant_overlay: dict) -> str:
    from data.balance import read_subset
    from unimoe.training.curriculum import tokenised_ids, train_moe_warmup

    reader, tok = _data(tokens)
    return str(train_moe_warmup(UniMoEConfig.from_dict(model_cfg), specialists, reader, tok, out_dir,
                                warmup_ids=tokenised_ids(read_subset(warmup), reader), run_id=run_id, variant=variant,
                                train_overrides=overrides, variant_overlay=variant_overlay))


@task(name="stage3-joint")
def stage3(model_cfg: dict, init: str | None, tokens: str, subset: str, out_dir: str, run_id: str, variant: str,
           stage: Any, overrides: dict, variant_overlay: dict) -> str:
    from data.balance import read_subset
    from unimoe.training.curriculum import tokenised_ids, train_joint

    reader, tok = _data(tokens)
    return str(train_joint(UniMoEConfig.from_dict(model_cfg), init, reader, tok, out_dir,
                           subset_ids=tokenised_ids(read_subset(subset), reader), run_id=run_id, variant=variant,
                           stage=stage, train_overrides=overrides, variant_overlay=variant_overlay))


@flow(name="train", log_prints=True)
def train(variant: str = "unimoe-top-p0.7", workspace: str | None = None, preset: str = "tiny",
          max_steps: int | None = None, batch_size: int | None = None, run_id: str | None = None,
          tokens: str | None = None, subset: str | None = None, warmup: str | None = None) -> dict:
    """Train ``variant`` on the curated data of ``workspace`` (outputs of the curate flow by default).

    ``max_steps``/``batch_size`` override every stage's (the demo uses a few steps per stage)."""
    from unimoe.training.curriculum import plan

    log = get_run_logger()
    ws = workspace_root(workspace)
    cur = ws / "curate"
    tokens = tokens or str(cur / "tokens")
    subset = subset or str(cur / "subset.json")
    warmup = warmup or str(cur / "warmup.json")
    for p in (tokens, subset, warmup):
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} not found: run the curate flow first (unimoe curate)")
    p = plan(variant, get_preset(preset))
    model_cfg, curriculum, overlay = p["model_config"], p["curriculum"], p["train_overlay"]
    overrides = {k: v for k, v in {"max_steps": max_steps, "batch_size": batch_size}.items() if v is not None}
    if max_steps is not None:
        overrides.update(warmup_steps=max(1, max_steps // 10), checkpoint_every=max(1, max_steps // 2), log_every=1)
    run_id = run_id or f"{variant}-{preset}"
    out = ws / "train" / run_id
    stages = curriculum["stages"]
    log.info(f"variant {variant}: stages {stages}, init {curriculum.get('init')}")
    common = dict(run_id=run_id, variant=variant, overrides=overrides, variant_overlay=overlay)
    done = lambda path: Path(path).exists()  # noqa: E731

    ckpts: dict[str, Any] = {}
    if 1 in stages:
        ckpts["stage1"] = {t: run_cached(stage1, ws, model_cfg, t, tokens, str(out / "stage1" / t),
                                         output_exists=done, **common) for t in TASKS}
    if 2 in stages:
        ckpts["stage2"] = run_cached(stage2, ws, model_cfg, ckpts["stage1"], tokens, warmup, str(out / "stage2"),
                                     output_exists=done, **common)
    final_stage = 3 if 3 in stages else "joint"
    init = ckpts.get("stage2") if curriculum.get("init") != "random" else None
    ckpts["final"] = run_cached(stage3, ws, model_cfg, init, tokens, subset, str(out / "stage3"), stage=final_stage,
                                output_exists=done, **common)
    create_markdown_artifact(key=f"train-{_slug(run_id)}", description=f"Training run {run_id}", markdown="\n".join(
        [f"# Training run `{run_id}`", "", f"Variant **{variant}** on preset `{preset}`; stages {stages}.", "",
         "| stage | checkpoint |", "|---|---|"]
        + [f"| stage 1 ({t}) | `{c}` |" for t, c in ckpts.get("stage1", {}).items()]
        + ([f"| stage 2 | `{ckpts['stage2']}` |"] if "stage2" in ckpts else [])
        + [f"| {final_stage} | `{ckpts['final']}` |", "", f"Metrics: `{out}/**/metrics/`"]))
    return {"run_id": run_id, "variant": variant, "workdir": str(out), "checkpoints": ckpts}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")
