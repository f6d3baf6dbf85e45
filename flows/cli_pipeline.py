"""``unimoe pipeline``: the whole DAG (flows.pipeline) from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from flows.cli_options import (
    AllowFailedScorers, BatchSize, Benchmark, MaxItems, MaxSeconds, Nproc, Preset, Scorers, Small, Workspace, fail,
    parse_names, parse_seeds,
)  # fmt: skip


def register(app: typer.Typer) -> None:
    @app.command("pipeline")
    def pipeline_cmd(
        workspace: Workspace = None,
        small: Small = False,
        config: Path = typer.Option(None, help="YAML/JSON file of CurateConfig fields (default: the offline demo profile)."),
        variants: str = typer.Option(None, help="Variants to train and benchmark, comma-separated "
                                                "(default unimoe-top-p0.7; see unimoe train --list-variants)."),
        preset: Preset = "tiny",
        max_steps: int = typer.Option(None, help="Optimiser steps per training stage (default: the demo's, "
                                                 "flows.pipeline.DEMO_MAX_STEPS)."),
        batch_size: BatchSize = None,
        lr_scale: float = typer.Option(None, help="Multiplier on the paper's per-stage learning rates (default: the "
                                                  "demo's, flows.pipeline.DEMO_LR_SCALE; 1 = the paper's)."),
        seeds: str = typer.Option("0", help="Benchmark generation seeds, comma-separated."),
        benchmark: Benchmark = "demo",
        baseline: str = typer.Option(None, help="Regression baseline run id or variant name for every variant "
                                                "(default: each variant's previous pipeline run)."),
        max_items: MaxItems = None,
        max_seconds: MaxSeconds = None,
        scorers: Scorers = None,
        dask: str = typer.Option(None, help="Dask scheduler address (or 'local') for curation's shard tasks."),
        nproc: Nproc = 1,
        allow_failed_scorers: AllowFailedScorers = False,
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
        from flows.common import workspace_root
        from flows.pipeline import DEFAULT_VARIANTS, DEMO_LR_SCALE, DEMO_MAX_STEPS, dashboard_command, pipeline

        ws = workspace_root(workspace)
        kwargs = dict(workspace=str(ws), demo_size="small" if small else "default",
                      variants=parse_names(variants, "variants") or list(DEFAULT_VARIANTS), preset=preset,
                      max_steps=DEMO_MAX_STEPS if max_steps is None else max_steps, batch_size=batch_size,
                      lr_scale=DEMO_LR_SCALE if lr_scale is None else lr_scale,
                      seeds=parse_seeds(seeds), benchmark=benchmark, baseline_run=baseline, max_items=max_items,
                      max_seconds=max_seconds, scorers=parse_names(scorers, "scorers"),
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
            fail(str(e))
        total = time.perf_counter() - t0
        if result is not None:
            typer.echo(json.dumps({k: result[k] for k in ("train", "benchmark", "seconds")}, indent=2, default=str))
        typer.echo(f"pipeline {({1: 'REGRESSED', 3: 'SCORERS FAILED'}).get(code, 'done')} in {total:.1f} s")
        typer.echo(f"results: {ws / 'results'} (Parquet tables aggregate/, items/, regression/; "
                   f"unimoe report tables --workspace {ws})")
        typer.echo(f"dashboard: {dashboard_command(ws)}")
        if code:
            raise typer.Exit(code)
