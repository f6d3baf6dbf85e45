"""A generic folder of audio described by a CSV or JSONL file.

Columns / keys (aliases in brackets; only ``path`` is required):

    path [audio, audio_path, file]   audio file, relative to the corpus root
    text [transcript, caption]       transcript (TTS) or caption (music)
    task                             zh_tts | en_tts | t2m | v2m (default: the ``task`` option)
    language, speaker, split, id     id defaults to the path without extension ("a/b.wav" -> "a__b")
    licence [license]                per-row licence (default: the ``licence`` option)
    video [video_path]               V2M video, relative to the root
    sample_rate, duration            declared values, checked against the file when present
    anything else                    kept in ``meta``

One line is one input row, and ends as exactly one record: kept, or quarantined with a reason.
Text rules: TTS rows need a non-empty transcript. A music row without a text column (or with a
null value) is fine — the captioner fills it later — but a text cell that is present and blank is
``empty_text`` unless ``require_text=False``. ``require_text=True`` demands text on every row.
"""

from __future__ import annotations

from typing import Any, Iterator

from data.manifest import ManifestRecord
from data.sources.base import Adapter, Item, QuarantineReason, id_from_relpath, iter_csv, iter_jsonl

_ALIASES = {
    "path": ("path", "audio", "audio_path", "file"),
    "text": ("text", "transcript", "caption"),
    "licence": ("licence", "license"),
    "video": ("video", "video_path"),
}
_KNOWN = {a for v in _ALIASES.values() for a in v} | {
    "task",
    "language",
    "speaker",
    "split",
    "id",
    "sample_rate",
    "duration",
}
_DEFAULT_NAMES = ("metadata.csv", "metadata.jsonl", "manifest.csv", "manifest.jsonl")


def _pick(row: dict[str, Any], key: str) -> tuple[bool, Any]:
    for alias in _ALIASES.get(key, (key,)):
        if alias in row:
            return True, row[alias]
    return False, None


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


class GenericAdapter(Adapter):
    """Options: ``manifest`` (CSV/JSONL file name; default metadata.csv/.jsonl, manifest.csv/.jsonl
    or the only .csv/.jsonl in the root), ``task``, ``language`` (defaults for rows without them),
    ``require_text`` (None = the rules above), ``source_corpus``, ``licence``, ``split``."""

    name = "generic"
    source_corpus = "generic"

    def __init__(
        self,
        root,
        *,
        manifest: str | None = None,
        task: str | None = None,
        language: str | None = None,
        require_text: bool | None = None,
        **common,
    ) -> None:
        super().__init__(root, **common)
        self.manifest = self.find_table(manifest, _DEFAULT_NAMES, (".csv", ".jsonl"), "manifest")
        if self.manifest.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"generic: {self.manifest.name} must be a .csv or .jsonl file")
        self.task = task
        self.language = language
        self.require_text = require_text

    def _rows(self) -> Iterator[tuple[int, dict[str, Any] | QuarantineReason]]:
        if self.manifest.suffix == ".jsonl":
            return iter_jsonl(self.manifest)
        return iter_csv(self.manifest)

    def items(self) -> Iterator[Item | ManifestRecord]:
        return self.table_items(self.manifest, self._rows(), self._row_item, task=self.task)

    def _row_item(self, ref: str, row: dict[str, Any]) -> Item:
        _, path = _pick(row, "path")
        has_text, text = _pick(row, "text")
        _, licence = _pick(row, "licence")
        _, video = _pick(row, "video")
        task = row.get("task") if not _blank(row.get("task")) else self.task
        task = task.strip() if isinstance(task, str) else task
        rid = row.get("id")
        if _blank(rid) and isinstance(path, str) and path.strip():
            rid = id_from_relpath(path.strip())
        meta = {k: v for k, v in row.items() if k not in _KNOWN}

        problem = None
        declared_sr = declared_dur = None
        try:
            if not _blank(row.get("sample_rate")):
                declared_sr = int(float(row["sample_rate"]))
            if not _blank(row.get("duration")):
                declared_dur = float(row["duration"])
        except (TypeError, ValueError):
            problem = QuarantineReason(
                "bad_row",
                f"sample_rate={row.get('sample_rate')!r} / duration={row.get('duration')!r} are not numbers",
            )
        if problem is None and (not isinstance(path, str) or not path.strip()):
            problem = QuarantineReason("bad_row", "no audio path (column path/audio/audio_path/file)")

        if self.require_text is False and _blank(text):
            text = None
        elif not has_text:
            text = None
        require = bool(self.require_text) if self.require_text is not None else False
        return Item(
            source_ref=ref,
            id=str(rid).strip() if rid is not None and not _blank(rid) else None,
            audio=path.strip() if isinstance(path, str) and path.strip() else None,
            task=task,
            language=row.get("language") if not _blank(row.get("language")) else self.language,
            text=text if text is None or isinstance(text, (str, bytes)) else str(text),
            require_text=require,
            speaker=row.get("speaker") if not _blank(row.get("speaker")) else None,
            split=row.get("split") if not _blank(row.get("split")) else None,
            licence=licence if not _blank(licence) else None,
            video=video.strip() if isinstance(video, str) and video.strip() else None,
            declared_sample_rate=declared_sr,
            declared_duration=declared_dur,
            meta=meta,
            problem=problem,
        )
