"""The audio a codec is trained on: the curated corpus's kept rows of one split (``unimoe codec train``).

Rows are spans (``offset``/``duration``) of their source files, grouped by task so the trainer can
sample speech and music equally; the corpus hash names exactly which audio went in (row ids and the
source files' SHA-256), so a shipped codec can record what it was trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from data.manifest import read_manifest
from unimoe.codec_train import AudioSource


def codec_training_sources(manifest: str | Path, split: str = "train") -> tuple[list[AudioSource], str]:
    """``(sources, corpus_hash)`` for the kept rows of ``split`` in a curated manifest."""
    records = [r for r in read_manifest(manifest) if r.status == "kept" and r.split == split]
    if not records:
        raise ValueError(f"{manifest}: no kept rows in split {split!r} to train a codec on")
    records.sort(key=lambda r: r.id)
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.id}\t{r.provenance_sha256}\t{r.offset}\t{r.duration}\n".encode())
    sources = [AudioSource(path=str(r.audio_path), group=str(r.task or "audio"), offset=r.offset, duration=r.duration)
               for r in records]
    return sources, h.hexdigest()


def folder_sources(folder: str | Path) -> tuple[list[AudioSource], str]:
    """Every audio file under ``folder`` (one group), for training on a plain directory."""
    from unimoe.codec_train import iter_audio_files
    from unimoe.io import sha256_file

    files = list(iter_audio_files(folder))
    if not files:
        raise ValueError(f"{folder}: no audio files (.wav/.flac/.ogg/.mp3/.aiff)")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(folder)}\t{sha256_file(p)}\n".encode())
    return [AudioSource(path=str(p)) for p in files], h.hexdigest()
