"""``unimoe pipeline``: the whole DAG (flows.pipeline) from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer


def _list(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise typer.BadParameter(f"--{what} needs at least one name")
    return items


def register(app: typer.Typer) -> None:
    @app.command("pipeline")
    def pipeline_cmd(
        workspace: Path = typer.Option(None, help="Workspace for all outputs (default $UNIMOE_WORKSPACE or ./workspace)."),
        small: bool = typer.Option(False, "--small", help="The small demo corpus (tests, smoke runs)."),
        config: Path = typer.Option(None, help="YAML/JSON file of CurateConfig fields (default: the offline demo profile)."),
        variants: str = typer.Option(None, help="Variants to train and benchmark, comma-separated "
                                                "(default unimoe-top-p0.7; see unimoe train --list-variants)."),
        preset: str = typer.Option("tiny", help="Model preset the variants overlay."),
        max_steps: int = typer.Option(None, help="Optimiser steps per training stage (default: the demo's, "
                                                 "flows.pipeline.DEMO_MAX_STEPS)."),
        batch_size: int = typer.Option(None, help="Sequences per training step per process."),
        lr_scale: float = typer.Option(None, help="Multiplier on the paper's per-stage learning rates (default: the "
                                                  "demo's, flows.pipeline.DEMO_LR_SCALE; 1 = the paper's)."),
        seeds: str = typer.Option("0", help="Benchmark generation seeds, comma-separated."),
        benchmark: str = typer.Option("demo", help="Benchmark set."),
        baseline: str = typer.Option(None, help="Regression baseline run id or variant name for every variant "
                                                "(default: each variant's previous pipeline run)."),
        max_items: int = typer.Option(None, help="At most this many benchmark items per task."),
        max_seconds: float = typer.Option(None, help="Ceiling on every benchmark clip in seconds (default: speech capped from its text, music 10 s)."),
        scorers: str = typer.Option(None, help="Comma-separated scorer names (default: the benchmark's)."),
        dask: str = typer.Option(None, help="Dask scheduler address (or 'local') for curation's shard tasks."),
        nproc: int = typer.Option(1, help="Processes per training stage (> 1: torchrun)."),
        allow_failed_scorers: bool = typer.Option(False, "--allow-failed-scorers",
                                                  help="Do not fail when a scorer failed on every item of a task."),
        codec_steps: int = typer.Option(None, help="Train the project's own codec on the curated corpus to this many "
                                                   "steps first and tokenise with it (default: the preset's codec, "
                                                   "the shipped demo codec for tiny)."),
        codec_config: Path = typer.Option(None, help="YAML of CodecTrainConfig fields for --codec-steps "
                                                     "(e.g. configs/codec/demo.yaml)."),
    ):
        """Run the pipeline flow: curate -> train (each variant) -> benchmark -> regression. Exit code 1 on a
        regression, 3 when a scorer failed on every item of a task (after every variant was benchmarked)."""
        import yaml

        from flows.benchmark import RegressionFound, ScorersFailed
        from flows.cli_bench import _seeds
        from flows.common import workspace_root
        from flows.pipeline import DEFAULT_VARIANTS, DEMO_LR_SCALE, DEMO_MAX_STEPS, dashboard_command, pipeline

        ws = workspace_root(workspace)
        kwargs = dict(workspace=str(ws), demo_size="small" if small else "default",
                      variants=_list(variants, "variants") or list(DEFAULT_VARIANTS), preset=preset,
                      max_steps=DEMO_MAX_STEPS if max_steps is None else max_steps, batch_size=batch_size,
                      lr_scale=DEMO_LR_SCALE if lr_scale is None else lr_scale,
                      seeds=_seeds(seeds), benchmark=benchmark, baseline_run=baseline, max_items=max_items,
                      max_seconds=max_seconds, scorers=_list(scorers, "scorers"),
                      curate_config=yaml.safe_load(config.read_text()) if config else None, dask=dask, nproc=nproc,
                      allow_failed_scorers=allow_failed_scorers, codec_steps=codec_steps,
                      codec_config=yaml.safe_load(codec_config.read_text()) if codec_config else None)
        t0 = time.perf_counter()
        code = 0
        try:
            result = pipeline(**kwargs)
        except RegressionFound as e:
            typer.secho(str(e), fg="red", err=True)
            result, code = None, 1
        except ScorersFailed as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            result, code = None, 3
        except FileNotFoundError as e:
            typer.secho(f"error: {e}", fg="red", err=True)
            raise typer.Exit(2) from None
        total = time.perf_counter() - t0
        if result is not None:
            typer.echo(json.dumps({k: result[k] for k in ("train", "benchmark", "seconds")}, indent=2, default=str))
        typer.echo(f"pipeline {({1: 'REGRESSED', 3: 'SCORERS FAILED'}).get(code, 'done')} in {total:.1f} s")
        typer.echo(f"results: {ws / 'results'} (Parquet tables aggregate/, items/, regression/; "
                   f"unimoe report tables --workspace {ws})")
        typer.echo(f"dashboard: {dashboard_command(ws)}")
        if code:
            raise typer.Exit(code)
