"""The built-in offline demo corpus (written by ``data/demo_corpus*.py``).

Layout::

    root/metadata.jsonl   one object per line: id, task, language, audio (relative path), text,
                          speaker, video (relative or null), licence, source, midi, instruments
                          (list), tempo_bpm, key, sample_rate, duration [, split]
    root/failures.jsonl   optional: {"source": ..., "reason": ...} per item the builder could not make

Each metadata line is checked like any corpus row (the declared ``sample_rate``/``duration`` must
match the file); each failures line becomes a quarantined row (reason: the builder's reason when
it is a short code, else ``build_failed``; the full text is in ``detail``). ``source``, ``midi``,
``instruments``, ``tempo_bpm`` and ``key`` go into ``meta`` (``midi`` as an absolute path when it
is inside the root). Row fields (id, text, paths, speaker) are read by :mod:`unimoe.corpora.demo`, the
reader the ``demo`` benchmark set uses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from data.audio_probe import resolve_in_root
from data.manifest import ManifestRecord
from data.sources.base import LONG_MUSIC_MAX_DURATION, Adapter, Item, QuarantineReason, is_reason_code, iter_jsonl
from unimoe.corpora.demo import row_id, row_path, row_speaker, row_text

_META_KEYS = ("source", "midi", "instruments", "tempo_bpm", "key")


def _num(v: Any, kind: type) -> Any:
    if v is None or isinstance(v, bool):
        return None
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ValueError(f"{v!r} is not a number") from None


class DemoAdapter(Adapter):
    """Options: ``metadata`` ("metadata.jsonl"), ``failures`` ("failures.jsonl")."""

    name = "demo"
    source_corpus = "unimoe-demo"
    default_licence = "generated (UniMoE-Audio offline demo corpus)"
    default_max_duration = LONG_MUSIC_MAX_DURATION

    def __init__(
        self, root, *, metadata: str = "metadata.jsonl", failures: str = "failures.jsonl", **common
    ) -> None:
        super().__init__(root, **common)
        self.metadata = self.required_file(metadata, "metadata file", " (build the demo corpus first)")
        self.failures = self.root / failures

    def items(self) -> Iterator[Item | ManifestRecord]:
        yield from self.table_items(self.metadata, iter_jsonl(self.metadata), self._row_item)
        if self.failures.is_file():
            yield from self.table_items(self.failures, iter_jsonl(self.failures), self._failure_record)

    def _row_item(self, ref: str, row: dict[str, Any]) -> Item:
        meta = {k: row.get(k) for k in _META_KEYS if row.get(k) is not None}
        midi = row.get("midi")
        if isinstance(midi, str) and midi:
            resolved = resolve_in_root(midi, self.root)
            if isinstance(resolved, Path):
                meta["midi"] = str(resolved)
        problem = None
        try:
            sr = _num(row.get("sample_rate"), int)
            dur = _num(row.get("duration"), float)
        except ValueError as e:
            sr = dur = None
            problem = QuarantineReason("bad_row", f"sample_rate/duration: {e}")
        audio = row_path(row, "audio")
        if problem is None and audio is None:
            problem = QuarantineReason("bad_row", "no audio path")
        return Item(
            source_ref=ref,
            id=row_id(row),
            audio=audio,
            task=row.get("task"),
            language=row.get("language"),
            text=row_text(row),
            speaker=row_speaker(row),
            split=row.get("split"),
            licence=row.get("licence") or row.get("license"),
            video=row_path(row, "video"),
            declared_sample_rate=sr,
            declared_duration=dur,
            meta=meta,
            problem=problem,
        )

    def _failure_record(self, ref: str, row: dict[str, Any]) -> ManifestRecord:
        """A line of failures.jsonl: an item the builder could not make, quarantined with its reason."""
        reason = str(row.get("reason") or "").strip()
        source = row.get("source")
        code = reason if is_reason_code(reason) else "build_failed"
        rid = row.get("id")
        line = int(ref.rsplit(":", 1)[1])
        return self.quarantine(
            ref,
            str(rid) if rid not in (None, "") else f"demo-failure-{line:05d}",
            code,
            f"builder failure for {source!r}: {reason or 'no reason given'}",
            task=row.get("task"),
            meta={"source": source} if source is not None else {},
        )
