"""The ``codec`` flow: train (or resume) the project's own DAC on a curated manifest and export it.
Wiring only: training is unimoe.codec_train.train_codec, the audio list data.codec_sources. Runs
after the curate flow's filter step (it reads ``<ws>/curate/filtered.parquet``: the kept rows of the
train split), so a pipeline can train a codec before tokenising with it."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from flows.common import workspace_root


@task(name="train-codec")
def train_codec_task(manifest: str, config: dict, out_dir: str, export: str | None, split: str = "train",
                     command: str | None = None) -> dict:
    from data.codec_sources import codec_training_sources
    from unimoe.codec_train import CodecTrainConfig, train_codec

    sources, corpus_hash = codec_training_sources(manifest, split)
    return train_codec(sources, corpus_hash, CodecTrainConfig.from_dict(config), out_dir, export_path=export,
                       command=command, progress=False)


@flow(name="codec", log_prints=True)
def codec(workspace: str | None = None, manifest: str | None = None, config: dict | None = None,
          out_dir: str | None = None, export: str | None = None, split: str = "train") -> dict:
    """Train the codec on ``manifest`` (default ``<ws>/curate/filtered.parquet``) into ``out_dir``
    (default ``<ws>/codec/run``); resumes from the run's checkpoint."""
    ws = workspace_root(workspace)
    manifest = manifest or str(ws / "curate" / "filtered.parquet")
    out = out_dir or str(ws / "codec" / "run")
    result = train_codec_task(manifest, config or {}, out, export, split,
                              command=f"prefect flow codec (workspace={ws}, manifest={manifest})")
    create_markdown_artifact(
        key="codec-train", description="Codec training",
        markdown=(f"# Codec\n\nExported `{result['export']}` (sha256 `{result['sha256'][:16]}`) after "
                  f"{result['steps']} steps ({result['train_seconds'] / 60:.1f} min of training) on corpus "
                  f"`{result['corpus_hash'][:16]}` ({result['training_clips']} clips, {result['training_hours']} h).\n"))
    return {k: result[k] for k in ("export", "sha256", "steps", "train_seconds", "corpus_hash")} | {"out_dir": str(Path(out))}
