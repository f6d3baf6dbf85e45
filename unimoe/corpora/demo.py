"""The built-in demo corpus ``metadata.jsonl``: one reader of its rows for training (``data.sources.demo``)
and evaluation (``evaluation.sets.demo``).

The corpus is written by ``data/demo_corpus.py`` (its ``ROW_FIELDS``): one JSON object per line with
``id, task, language, audio, text, speaker, video, licence, source, midi, instruments, tempo_bpm, key,
sample_rate, duration, split``; ``audio``/``video``/``midi`` are paths relative to the corpus folder,
``split`` is ``"train"`` or ``"test"``. The builder writes strings; a hand-edited row may not, so each
field is read by one rule here:

- ``id``: a non-blank string as written; a number is its decimal string (JSON ``7`` is the id ``"7"``);
  anything else is no id;
- ``text``: the sentence (TTS) or caption (music) with surrounding whitespace and byte-order marks
  removed; a non-string value is its ``str``; ``None`` when absent;
- a path (``audio``, ``video``): a non-blank string, surrounding whitespace removed; else ``None``;
- ``speaker``: its ``str``, ``None`` when absent or empty.
"""

from __future__ import annotations

from typing import Any, Mapping


def row_id(row: Mapping[str, Any]) -> str | None:
    v = row.get("id")
    if isinstance(v, str):
        return v if v.strip() else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return None


def row_text(row: Mapping[str, Any], key: str = "text") -> str | None:
    v = row.get(key)
    if v is None:
        return None
    return (v if isinstance(v, str) else str(v)).replace("\ufeff", "").strip()


def row_path(row: Mapping[str, Any], key: str) -> str | None:
    v = row.get(key)
    return v.strip() if isinstance(v, str) and v.strip() else None


def row_speaker(row: Mapping[str, Any]) -> str | None:
    v = row.get("speaker")
    return None if v is None or v == "" else str(v)
