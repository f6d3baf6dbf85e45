"""``unimoe bench`` (the benchmark flow) and ``unimoe report tables`` (the paper's tables from the results)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_options import (
    AllowFailedScorers, Benchmark, MaxItems, MaxSeconds, Scorers, Workspace, fail, parse_names, parse_seeds,
)  # fmt: skip


def register(app: typer.Typer) -> None:
    report_app = typer.Typer(help="Reports rendered from the benchmark result tables.", no_args_is_help=True)
    app.add_typer(report_app, name="report")

    @app.command("bench")
    def bench_cmd(
        checkpoint: Path = typer.Option(None, help="Checkpoint directory (default: the newest under <workspace>/train)."),
        benchmark: Benchmark = "demo",
        workspace: Workspace = None,
        seeds: str = typer.Option(None, help="Generation seeds, comma-separated (default: the benchmark's; the "
                                             "paper's sets average 0,1,2, the demo set uses 0)."),
        variant: str = typer.Option(None, help="Variant name recorded with the results (default: from the checkpoint)."),
        baseline: str = typer.Option(None, help="Baseline run id, or a variant/checkpoint name (default: the previous "
                                                "run of this benchmark, kind and variant)."),
        kind: str = typer.Option("adhoc", help="adhoc, nightly or pipeline."),
        run_id: str = typer.Option(None, help="Run id (default: generated; an existing one resumes)."),
        scorers: Scorers = None,
        max_items: MaxItems = None,
        max_seconds: MaxSeconds = None,
        greedy: bool = typer.Option(None, "--greedy/--sampling",
                                    help="Greedy decoding, or sampling (temperature 1, top-p 0.95). Default: the "
                                         "benchmark's (greedy for the paper's sets, sampling for the demo set)."),
        speech_prompts: str = typer.Option(None, help="paper: WER/CER and MOS on clips from one predefined voice "
                                                      "prompt, SIM on clips from each item's own prompt; item: all "
                                                      "on the item-prompted clips. Default: the benchmark's."),
        toplines: bool = typer.Option(True, "--toplines/--no-toplines",
                                      help="Also score the ground truth and its codec resynthesis (the toplines)."),
        allow_failed_scorers: AllowFailedScorers = False,
    ):
        """Run the benchmark flow (generate -> toplines -> score -> tables -> regression). Exit code 1 on a
        regression, 3 when a scorer failed on every item of a task (unless --allow-failed-scorers)."""
        from evaluation.runner import SPEECH_PROMPTS
        from flows.benchmark import RegressionFound, ScorersFailed, benchmark as flow

        if speech_prompts is not None and speech_prompts not in SPEECH_PROMPTS:
            raise typer.BadParameter(f"--speech-prompts must be one of {', '.join(SPEECH_PROMPTS)}")
        try:
            result = flow(checkpoint=str(checkpoint) if checkpoint else None, benchmark=benchmark,
                          workspace=str(workspace) if workspace else None,
                          seeds=parse_seeds(seeds) if seeds is not None else None, variant=variant,
                          baseline_run=baseline, kind=kind, run_id=run_id,
                          scorers=parse_names(scorers or None, "scorers"),
                          max_items=max_items, max_seconds=max_seconds, toplines=toplines,
                          allow_failed_scorers=allow_failed_scorers, greedy=greedy, speech_prompts=speech_prompts)
        except ScorersFailed as e:
            fail(str(e), 3)
        except RegressionFound as e:
            typer.secho(str(e), fg="red", err=True)
            raise typer.Exit(1) from None
        except FileNotFoundError as e:
            fail(str(e))
        typer.echo(Path(result["report"]).read_text())
        typer.echo(json.dumps({k: result[k] for k in ("run_id", "results", "skipped", "failed", "regression")}, indent=2))

    @report_app.command("tables")
    def report_tables(
        workspace: Workspace = None,
        results: Path = typer.Option(None, help="Results root (default <workspace>/results)."),
        fmt: str = typer.Option("md", "--format", help="md or html"),
        out: Path = typer.Option(None, help="Write here instead of printing."),
    ):
        """Tables 3 (speech), 4 (music), 5 (ablations) and the demo table, from the Parquet results."""
        from evaluation.report import render
        from flows.common import workspace_root
        from unimoe.common.files import atomic_write_text

        if fmt not in ("md", "html"):
            raise typer.BadParameter("--format must be md or html")
        text = render(results or workspace_root(workspace) / "results", fmt)
        if out is not None:
            atomic_write_text(out, text)
            typer.echo(f"wrote {out}")
        else:
            typer.echo(text)
