"""What several ``unimoe`` commands share: their common options, declared once in typer's ``Annotated``
form (``workspace: Workspace = None``), the parsers of comma-separated values, and the error exit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

Workspace = Annotated[Optional[Path], typer.Option(
    help="Workspace for all outputs and inputs (default $UNIMOE_WORKSPACE or ./workspace).")]
Small = Annotated[bool, typer.Option("--small", help="The small demo corpus (tests, smoke runs).")]
Preset = Annotated[str, typer.Option(help="Model preset the variants overlay.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Sequences per training step per process.")]
Benchmark = Annotated[str, typer.Option(help="Benchmark set (demo, seedtts-en, seedtts-zh, musiccaps, ...).")]
MaxItems = Annotated[Optional[int], typer.Option(help="At most this many benchmark items per task.")]
MaxSeconds = Annotated[Optional[float], typer.Option(
    help="A ceiling on every benchmark clip in seconds (default none: speech is capped from its target text, "
         "music at 10 s).")]
Scorers = Annotated[Optional[str], typer.Option(help="Comma-separated scorer names (default: the benchmark's).")]
AllowFailedScorers = Annotated[bool, typer.Option(
    "--allow-failed-scorers", help="Do not fail when a scorer failed on every item of a task.")]
Nproc = Annotated[int, typer.Option(help="Processes per training stage: > 1 runs each stage under torchrun "
                                         "(data parallel).")]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` in red on stderr and exit with ``code`` (2: bad input, as click's usage errors)."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a usage error for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise typer.BadParameter("--seeds needs at least one seed")
    return seeds


def parse_names(text: str | None, what: str) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None when the option was not given; a usage error when it names nothing."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise typer.BadParameter(f"--{what} needs at least one name")
    return items
