"""``unimoe experiment ...``: experiments over trained variants. Wiring only: the experiment itself is
unimoe.training.replicate; this module finds the curate flow's outputs and passes them in."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_options import BatchSize, Preset, Small, fail, parse_seeds

experiment_app = typer.Typer(help="Experiments: replicate the paper's ablation claims on the demo corpus.",
                             no_args_is_help=True)


@experiment_app.command("replicate")
def replicate_cmd(
    workspace: Path = typer.Option(None, help="Workspace with the curate flow's outputs (default $UNIMOE_WORKSPACE "
                                              "or ./workspace); results go to <ws>/experiments/replicate/."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated training seeds."),
    stage1_steps: int = typer.Option(None, help="Optimiser steps of each stage-1 specialist."),
    stage2_steps: int = typer.Option(None, help="Optimiser steps of the MoE warm-up."),
    stage3_steps: int = typer.Option(None, help="Optimiser steps of stage 3 (also w/o-init's only stage)."),
    joint_steps: int = typer.Option(None, help="Optimiser steps of Unify-Dense's joint stage."),
    batch_size: BatchSize = None,
    max_frames: int = typer.Option(None, help="Audio frames per example (training crop and evaluation)."),
    lr_scale: float = typer.Option(None, help="Multiplier on the paper's per-stage learning rates."),
    preset: Preset = "tiny",
    curate: bool = typer.Option(False, "--curate", help="Run the curate flow first when its outputs are missing."),
    small: Small = False,
):
    """Train the specialists, Unify-Dense, Unify-MoE (Top-2), w/o-init and UniMoE (Top-P) for each seed,
    score held-out NLL per task and codebook, aggregate over seeds and check the paper's claims."""
    from flows.common import workspace_root
    from unimoe.config import ConfigError
    from unimoe.training.replicate import ReplicateConfig, run_replicate

    ws = workspace_root(workspace)
    cur = ws / "curate"
    needed = [cur / "tokens" / "index.json", cur / "subset.json", cur / "warmup.json"]
    if not all(p.exists() for p in needed):
        if not curate:
            missing = ", ".join(str(p) for p in needed if not p.exists())
            fail(f"curated data not found ({missing}). Run `unimoe curate --workspace {ws}` first, "
                 "or pass --curate to run it now.")
        from flows.curate import curate as curate_flow

        typer.echo(f"curating the {'small' if small else 'default'} demo corpus into {ws} ...")
        curate_flow(workspace=str(ws), demo_size="small" if small else "default")

    from data.balance import read_subset
    from unimoe.training.shards import TokenShardReader

    given = {"stage1_steps": stage1_steps, "stage2_steps": stage2_steps, "stage3_steps": stage3_steps,
             "joint_steps": joint_steps, "batch_size": batch_size, "max_frames": max_frames, "lr_scale": lr_scale}
    try:
        cfg = ReplicateConfig(seeds=parse_seeds(seeds), preset=preset,
                              **{k: v for k, v in given.items() if v is not None}).validate()
    except (ConfigError, ValueError) as e:
        fail(str(e))
    reader = TokenShardReader(cur / "tokens")
    result = run_replicate(reader, reader.load_tokenizer(), read_subset(cur / "subset.json"),
                           read_subset(cur / "warmup.json"), ws / "experiments" / "replicate", cfg,
                           progress=lambda line: typer.echo(line))
    typer.echo(result["report"])
    typer.echo(json.dumps({"paths": result["paths"], "seconds": round(result["info"]["seconds"], 1),
                           "verdicts": {c["claim"]: c["verdict"] for c in result["claims"]}}, indent=2))


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")
