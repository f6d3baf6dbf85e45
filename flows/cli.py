"""The ``unimoe`` command line. It lives in the orchestration layer so that the libraries
(unimoe/, data/, evaluation/) stay free of Prefect and of CLI concerns."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Prefect's embedded (ephemeral) server: no analytics; its 20 s default start-up timeout is too tight on
# a loaded 2-core machine.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import typer

from flows.cli_options import BatchSize, Nproc, Small, Workspace, fail

app = typer.Typer(help="UniMoE-Audio: unified speech and music generation, and its pipeline.", no_args_is_help=True)
model_app = typer.Typer(help="Model presets, parameter counts, checkpoints and generation.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _config(preset: str | None, config: Path | None):
    from unimoe.config import ConfigError, UniMoEConfig, get_preset

    try:
        if config is not None:
            return UniMoEConfig.load(config)
        return get_preset(preset or "tiny")
    except (ConfigError, FileNotFoundError) as e:
        fail(str(e))


def _human(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


@model_app.command("info")
def model_info(
    preset: str = typer.Option("tiny", help="Preset name (tiny, paper)."),
    config: Path = typer.Option(None, help="A YAML/JSON config file instead of a preset."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Total and active parameter counts, computed on the meta device (no weights allocated)."""
    from unimoe.model import parameter_report

    cfg = _config(preset, config)
    report = parameter_report(cfg)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"preset {report['preset']}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
               f"{cfg.num_heads} heads / {cfg.num_kv_heads} KV heads, FFN kinds {sorted(set(cfg.ffn_kinds))}")
    typer.echo(f"  total parameters      {_human(report['total'])}  ({report['total']:,})")
    typer.echo(f"    vision tower        {_human(report['vision_tower'])}")
    typer.echo(f"    routed experts      {_human(report['routed_experts'])}")
    typer.echo(f"  active per token  min {_human(report['active_min'])}   max {_human(report['active_max'])}")
    for k, v in report["active_avg_at_k"].items():
        typer.echo(f"    avg with k={k} dynamic experts selected: {_human(v)}")


@model_app.command("config")
def model_config(
    preset: str = typer.Option("tiny", help="Preset name."),
    fmt: str = typer.Option("yaml", "--format", help="yaml or json"),
):
    """Print a preset's full config (a starting point for a config file)."""
    cfg = _config(preset, None)
    typer.echo(cfg.to_yaml() if fmt == "yaml" else cfg.to_json())


@model_app.command("init")
def model_init(
    out: Path = typer.Argument(..., help="Checkpoint directory to write."),
    preset: str = typer.Option("tiny"),
    config: Path = typer.Option(None),
    text_file: Path = typer.Option(..., help="Text (one sentence per line) to train the tokenizer on when the "
                                             "config names no tokenizer.json."),
    seed: int = typer.Option(0),
):
    """Write a randomly initialised checkpoint (plus its tokenizer). Useful to smoke-test tooling."""
    import torch

    from unimoe.checkpoint import save_checkpoint
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    cfg = _config(preset, config)
    lines = [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=lines)
    torch.manual_seed(seed)
    save_checkpoint(out, UniMoEAudio(cfg), cfg, {"stage": "init", "step": 0, "seed": seed}, tokenizer=tok)
    typer.echo(f"wrote {out}")


@model_app.command("generate")
def model_generate(
    checkpoint: Path = typer.Option(..., help="Checkpoint directory (with tokenizer.json)."),
    task: str = typer.Option(..., help="zh_tts, en_tts, t2m or v2m"),
    text: str = typer.Option("", help="Words to speak (TTS) or the caption (music)."),
    video: Path = typer.Option(None, help="Video file (v2m)."),
    out: Path = typer.Option(..., help="Output WAV path."),
    max_seconds: float = typer.Option(10.0),
    guidance: float = typer.Option(0.0, help="Classifier-free guidance scale (0 = off)."),
    sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(1.0),
    top_k: int = typer.Option(0),
    top_p: float = typer.Option(1.0),
    seed: int = typer.Option(0),
):
    """Generate one clip and write it as WAV (the codec's label is recorded in a JSON sidecar)."""
    from rich.progress import Progress

    from unimoe.common.audio import save_wav
    from unimoe.common.files import atomic_write_json
    from unimoe.generation import GenerationConfig
    from unimoe.inference import CheckpointGenerator, GenerationRequest

    try:
        request = GenerationRequest(task, text=text, video=str(video) if video is not None else None)
    except ValueError as e:
        fail(str(e))
    generator = CheckpointGenerator(checkpoint)
    codec = generator.codec
    gen = GenerationConfig(max_frames=generator.frames_for(max_seconds), guidance_scale=guidance,
                           greedy=not sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    with Progress(transient=True) as bar:
        job = bar.add_task("generating frames", total=None)
        wav, codes = generator.generate([request], gen, progress=lambda i, n: bar.update(job, completed=i, total=n))[0]
    save_wav(out, wav, codec.sample_rate)
    atomic_write_json(out.with_suffix(".json"), {"checkpoint": str(checkpoint), "stage": generator.state.get("stage"),
                                                 "task": task, "text": text, "frames": codes.shape[1],
                                                 "codec": codec.info(), "generation": gen.__dict__})
    typer.echo(f"wrote {out} ({codes.shape[1]} frames, {len(wav) / codec.sample_rate:.2f} s; codec: {codec.label})")


@app.command("curate")
def curate_cmd(
    workspace: Workspace = None,
    config: Path = typer.Option(None, help="YAML/JSON file of CurateConfig fields (default: the offline demo profile)."),
    corpus: str = typer.Option(None, help="Corpus adapter (librispeech, aishell3, musiccaps, fma, musicnet, v2m, "
                                          "generic, ...): curate your own corpus without a YAML file; needs --root."),
    root: Path = typer.Option(None, help="The corpus folder (with --corpus)."),
    option: list[str] = typer.Option(None, help="Adapter option as key=value (repeatable; the value is read as YAML, "
                                                "so 3, true and [a, b] are typed)."),
    small: Small = False,
    gemini_secret_block: str = typer.Option(None, help="Prefect Secret block holding the Gemini API key."),
    until: str = typer.Option(None, help="'filter': stop after the quality filter (all `unimoe codec train` needs)."),
):
    """Run the curate flow: build/ingest -> segment -> caption -> filter -> balance -> tokenise.

    Without --config or --corpus it curates the offline demo corpus. `--corpus NAME --root DIR` curates a
    corpus on disk with the default profile; --config gives every other setting (and --corpus / --root /
    --option override its fields)."""
    from flows.curate import curate

    try:
        cfg = curate_config_from_cli(config, corpus, root, option or [])
    except ValueError as e:
        fail(str(e))
    result = curate(config=cfg, workspace=str(workspace) if workspace else None,
                    demo_size="small" if small else "default", gemini_secret_block=gemini_secret_block, until=until)
    if until:
        typer.echo(json.dumps({"filtered": result["filtered"]}, indent=2))
        return
    typer.echo(json.dumps({k: result[k] for k in ("curated", "subset", "warmup", "tokens", "summary", "status_counts")},
                          indent=2))
    for s in result["steps"]:
        typer.echo(f"  {s['step']:<14} {'-' if s['rows'] is None else s['rows']:>6} rows  {s['seconds']:>8.2f} s  {s['rows_per_s'] or '-':>8} rows/s")


def curate_config_from_cli(config: Path | None, corpus: str | None, root: Path | None,
                           options: list[str]) -> dict | None:
    """The curate flow's config from the CLI: the --config file's fields, overridden by --corpus, --root and
    --option key=value; None (the demo profile) when none is given. Raises ValueError with the reason."""
    import yaml

    from data.curate import CurateConfig
    from data.sources import check_adapter_options

    if config is None and corpus is None and root is None and not options:
        return None
    cfg = {}
    if config is not None:
        if not config.is_file():
            raise ValueError(f"--config {config}: no such file")
        cfg = yaml.safe_load(config.read_text()) or {}
        if not isinstance(cfg, dict):
            raise ValueError(f"--config {config}: expected a mapping of CurateConfig fields")
    if corpus is not None:
        cfg["corpus"] = corpus
    if root is not None:
        if not root.is_dir():
            raise ValueError(f"--root {root}: not a folder")
        cfg["corpus_root"] = str(root.resolve())
    if options:
        opts = dict(cfg.get("adapter_options") or {})
        for item in options:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--option {item!r}: expected key=value")
            opts[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        cfg["adapter_options"] = opts
    # an unknown corpus name fails here (listing the known ones), and so does an option its adapter lacks
    check_adapter_options(cfg.get("corpus", "demo"), cfg.get("adapter_options") or {})
    if cfg == {"corpus": "demo"}:
        return None  # `--corpus demo` alone: the demo profile
    if cfg.get("corpus", "demo") != "demo" and not cfg.get("corpus_root"):
        raise ValueError(f"corpus {cfg['corpus']!r} needs --root (or corpus_root in --config)")
    CurateConfig.from_dict(cfg)  # every field checked before the flow starts
    return cfg


@app.command("train")
def train_cmd(
    variant: str = typer.Option("unimoe-top-p0.7", help="Variant to train (see --list-variants)."),
    list_variants: bool = typer.Option(False, "--list-variants", help="List the named variants and exit."),
    workspace: Workspace = None,
    preset: str = typer.Option("tiny", help="Model preset the variant overlays."),
    max_steps: int = typer.Option(None, help="Optimiser steps per stage (default: the stage configs')."),
    batch_size: BatchSize = None,
    nproc: Nproc = 1,
    lr_scale: float = typer.Option(None, help="Multiplier on the paper's per-stage learning rates (default 1)."),
):
    """Run the train flow: the variant's curriculum (stage 1 -> 2 -> 3) on the curated data."""
    if list_variants:
        from unimoe.training.variants import list_variants as names

        for name, description in names():
            typer.echo(f"{name:<18} {description}")
        return
    from flows.train import train

    result = train(variant=variant, workspace=str(workspace) if workspace else None, preset=preset,
                   max_steps=max_steps, batch_size=batch_size, nproc=nproc, lr_scale=lr_scale)
    typer.echo(json.dumps(result, indent=2))


# sub-command modules (each adds its commands to ``app``)
__import__("flows.cli_dashboard").cli_dashboard.register(app)
__import__("flows.cli_experiment").cli_experiment.register(app)
__import__("flows.cli_bench").cli_bench.register(app)
__import__("flows.cli_pipeline").cli_pipeline.register(app)
__import__("flows.cli_codec").cli_codec.register(app)


def main() -> None:  # pragma: no cover
    app(prog_name="unimoe")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
