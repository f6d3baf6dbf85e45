"""``unimoe codec ...``: train the project's own DAC, resynthesise audio with a codec, report its quality.
Wiring only: training is unimoe.codec_train, the training audio comes from data.codec_sources; resynthesis
is unimoe.codec.resynthesize_folder; the report is evaluation.codec_report."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from flows.cli_options import BatchSize, MaxItems, Workspace, fail

codec_app = typer.Typer(help="The audio codec: train a DAC on the curated corpus, resynthesise, report.",
                        no_args_is_help=True)


def _train_config(config: Path | None, overrides: dict):
    import yaml

    from unimoe.codec_train import CodecTrainConfig

    data = yaml.safe_load(config.read_text()) if config else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CodecTrainConfig.from_dict(data or {})
    except (TypeError, ValueError) as e:
        fail(str(e))


@codec_app.command("train")
def codec_train_cmd(
    workspace: Workspace = None,
    manifest: Path = typer.Option(None, help="Manifest to train on (default <ws>/curate/filtered.parquet: the filter step's output)."),
    audio_dir: Path = typer.Option(None, help="Train on every audio file under this folder instead of a manifest."),
    split: str = typer.Option("train", help="Manifest split to train on (held-out rows are never used)."),
    out: Path = typer.Option(None, help="Run directory: resumable checkpoint + log (default <ws>/codec/run)."),
    export: Path = typer.Option(None, help="Where to write the DAC safetensors (default <out>/codec.safetensors); "
                                           "a provenance JSON is written beside it."),
    config: Path = typer.Option(None, help="YAML of CodecTrainConfig fields (defaults: the demo codec's)."),
    steps: int = typer.Option(None, help="Total optimiser steps (a resumed run continues to this count)."),
    batch_size: BatchSize = None,
    threads: int = typer.Option(None, help="torch threads (default: torch's)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    init_from: str = typer.Option(None, help="Continue an exported codec (`demo` = the shipped demo codec, or a DAC "
                                             ".safetensors from this command) when --out holds no checkpoint yet."),
    max_minutes: float = typer.Option(None, help="Stop after this many minutes of wall time (a GPU lease, say): "
                                                 "checkpoint saved, codec exported at the step reached."),
):
    """Train (or resume) a DAC with the dac package's losses and discriminator, k-means codebook init and
    dead-code restarts; export it as a DAC safetensors file that the weights store and AudioCodec load."""
    # No Prefect import on this path: a GPU machine without the orchestration stack can run it.
    from data.codec_sources import codec_training_sources, folder_sources
    from unimoe.codec_train import train_codec
    from unimoe.settings import workspace_root

    ws = workspace_root(workspace)
    cfg = _train_config(config, {"steps": steps, "batch_size": batch_size, "threads": threads})
    try:
        if audio_dir is not None:
            sources, corpus_hash = folder_sources(audio_dir)
        else:
            m = manifest or ws / "curate" / "filtered.parquet"
            if not Path(m).is_file():
                fail(f"{m} not found: run `unimoe curate` first, or pass --manifest / --audio-dir")
            sources, corpus_hash = codec_training_sources(m, split)
    except ValueError as e:
        fail(str(e))
    if init_from is not None:
        from unimoe.codec import DEMO_CODEC_WEIGHTS
        from unimoe.io import BUILTIN_PREFIX, builtin_asset

        init_path = builtin_asset(DEMO_CODEC_WEIGHTS[len(BUILTIN_PREFIX):]) if init_from == "demo" else Path(init_from)
        if not init_path.is_file():
            fail(f"--init-from {init_from}: {init_path} not found")
    else:
        init_path = None
    command = "unimoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        result = train_codec(sources, corpus_hash, cfg, out or ws / "codec" / "run", export_path=export,
                             command=command, device=device, log=lambda m: typer.echo(m, err=True),
                             init_from=init_path, max_minutes=max_minutes)
    except ValueError as e:
        fail(str(e))
    typer.echo(json.dumps({k: result[k] for k in ("export", "sha256", "steps", "train_seconds", "corpus_hash")},
                          indent=2))


def _open_codec(spec: str, num_codebooks: int | None, device: str):
    from unimoe.codec import CodecLoadError, open_codec
    from unimoe.io import MissingWeightsError

    try:
        return open_codec(spec, num_codebooks, device=device)
    except (MissingWeightsError, CodecLoadError) as e:
        fail(str(e))


_CODEC_HELP = ("`demo` (the shipped demo codec, unimoe/assets/codecs/demo-dac.safetensors, built by `make demo-codec`) "
               "or the path of a DAC weights file (.pth release or .safetensors from `unimoe codec train`).")


@codec_app.command("resynth")
def codec_resynth_cmd(
    in_dir: Path = typer.Argument(..., help="Folder of audio files (recursive; .wav/.flac/.ogg/.mp3)."),
    out_dir: Path = typer.Argument(..., help="Where <stem>.wav and <stem>.codes.npy go (plus resynth.json)."),
    codec: str = typer.Option("demo", help=_CODEC_HELP),
    num_codebooks: int = typer.Option(None, help="Codebooks to use (default: all of the model's)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
):
    """Encode and decode every audio file: OUT_DIR/<stem>.wav (codec rate) and OUT_DIR/<stem>.codes.npy
    ([codebooks, frames]). Inputs sharing a stem are named by their path (a/x.wav -> a__x). A bad file is
    reported and the rest processed; the exit status is 1 if any file failed."""
    from unimoe.codec import resynthesize_folder

    c = _open_codec(codec, num_codebooks, device)
    if not in_dir.is_dir():
        fail(f"{in_dir} is not a folder")
    try:
        result = resynthesize_folder(c, in_dir, out_dir, log=lambda m: typer.secho(m, fg="yellow", err=True))
    except ValueError as e:
        fail(str(e))
    typer.echo(f"{len(result['written'])} file(s) written to {out_dir} with {c.label}; "
               f"{len(result['failed'])} failed")
    if result["failed"]:
        raise typer.Exit(1)


@codec_app.command("report")
def codec_report_cmd(
    codec: str = typer.Option("demo", help=_CODEC_HELP),
    num_codebooks: int = typer.Option(None, help="Codebooks to use (default: all of the model's)."),
    workspace: Workspace = None,
    manifest: Path = typer.Option(None, help="Curated manifest (default <ws>/curate/curated.parquet)."),
    split: str = typer.Option("test", help="Held-out split to report on (kept rows only)."),
    out: Path = typer.Option(None, help="Output folder for report.json and report.md (default <ws>/codec/report)."),
    max_items: MaxItems = None,
    device: str = typer.Option("cpu", help="cpu or cuda."),
    check: bool = typer.Option(False, "--check", help="Exit 1 unless every target passes."),
    attach_to: Path = typer.Option(None, help="A codec's provenance JSON (written by `codec train` beside the "
                                              "export): the report is also stored there under 'quality_report'."),
):
    """Codec quality on held-out audio: code usage and perplexity, mel distance, English WER and DNSMOS
    (ground truth vs resynthesis), music key/tempo kept; pass/fail per target."""
    from evaluation.codec_report import codec_report, load_heldout_rows, target_status, write_report
    from flows.common import workspace_root

    ws = workspace_root(workspace)
    m = manifest or ws / "curate" / "curated.parquet"
    c = _open_codec(codec, num_codebooks, device)
    try:
        rows = load_heldout_rows(m, split, max_items)
    except (FileNotFoundError, ValueError) as e:
        hint = " (run `unimoe curate` first, or pass --manifest)" if isinstance(e, FileNotFoundError) else ""
        fail(f"{e}{hint}")
    report = codec_report(c, rows, manifest=m, split=split, log=lambda msg: typer.secho(msg, fg="yellow", err=True))
    js, md = write_report(report, out or ws / "codec" / "report")
    if attach_to is not None:
        from unimoe.common.files import atomic_write_json

        prov = json.loads(Path(attach_to).read_text())
        prov["quality_report"] = json.loads(Path(js).read_text())
        atomic_write_json(attach_to, prov)
    for t in report["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        typer.echo(f"{target_status(t['passed']):4s}  {t['name']}: {value} (target {t['op']} {t['threshold']:g})")
    typer.echo(f"wrote {js} and {md} ({report['counts']['scored']} clips, {report['counts']['failed']} failed)")
    if check and not report["all_targets_passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(codec_app, name="codec")
