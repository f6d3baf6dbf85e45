"""What every corpus adapter shares: the probe-and-account loop.

An adapter subclass only knows its corpus layout. Its :meth:`Adapter.items` walks the layout and
yields one :class:`Item` per input row (an utterance, a track, a CSV line, a pair) — or a finished
quarantined :class:`~data.manifest.ManifestRecord` when the row cannot even be parsed. The base
class turns each item into exactly one record by checking, in order: id present, task valid, id
not already kept (``duplicate_id``), text valid, audio file (:func:`~data.audio_probe.probe_audio`),
video file (V2M), declared sample rate / duration, segment bounds. The first failed check
quarantines the row with its reason; an unexpected exception quarantines it as ``internal_error``
(the scan goes on). A missing corpus root or missing top-level metadata file is a corpus-level
error and raises :class:`SourceError` / :class:`MissingCorpusError` before anything is yielded.
"""

from __future__ import annotations

import json
import math
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from data.audio_probe import (
    ProbeLimits, ProbeResult, QuarantineReason, VideoProbe, check_text, probe_audio, probe_video,
)  # fmt: skip
from data.manifest import TTS_TASKS, ManifestRecord
from unimoe.common.reasons import Reason
from unimoe.common.tables import CsvHeaderError, iter_csv_rows
from unimoe.common.text import has_surrogates, repair_text
from unimoe.config import TASKS

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
# Long music is segmented after ingestion, so music corpora accept long files; beyond this a
# "track" is almost certainly a broken or concatenated file.
LONG_MUSIC_MAX_DURATION = 6 * 3600.0
_SPLITS = {
    "train": "train", "training": "train",
    "dev": "dev", "development": "dev", "val": "dev", "valid": "dev", "validation": "dev",
    "test": "test", "testing": "test",
}  # fmt: skip


class SourceError(ValueError):
    """A corpus-level problem (bad layout, unreadable top-level metadata)."""


class MissingCorpusError(SourceError, FileNotFoundError):
    """The corpus root (or a required top-level file in it) does not exist."""


def normalise_split(split: str | None) -> str | None:
    if split is None:
        return None
    s = str(split).strip()
    return _SPLITS.get(s.lower(), s) if s else None


def id_from_relpath(rel: str | Path) -> str:
    """A stable id from a path relative to the corpus root: ``a/b/x.wav`` -> ``a__b__x``."""
    p = PurePosixPath(str(rel).replace("\\", "/"))
    parts = [x for x in p.with_suffix("").parts if x not in ("/", "")]
    return "__".join(parts)


def _clean(value: Any) -> Any:
    """Strings made safe for Parquet (undecodable bytes -> U+FFFD), recursively for meta."""
    if isinstance(value, str):
        return repair_text(value) if has_surrogates(value) else value
    if isinstance(value, dict):
        return {str(_clean(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _str(value: Any) -> str | None:
    return None if value is None else _clean(value if isinstance(value, str) else str(value))


@dataclass
class Item:
    """One input row, as an adapter found it (nothing checked yet)."""

    source_ref: str  # where it came from, e.g. "content.txt:12" or "train-clean-100/19/198/19-198-0001.flac"
    id: str | None
    audio: str | Path | None  # relative to the corpus root (or absolute); None = not found
    task: str | None = None
    language: str | None = None
    text: str | bytes | None = None  # None = not provided; "" = provided but empty
    require_text: bool = False  # TTS rows always require it
    speaker: str | None = None
    split: str | None = None
    licence: str | None = None
    video: str | Path | None = None
    require_video: bool = False  # V2M rows always require it
    declared_sample_rate: int | None = None
    declared_duration: float | None = None
    segment: tuple[float, float] | None = None  # (start, end) s when the row is a span of a longer file
    meta: dict[str, Any] = field(default_factory=dict)
    problem: QuarantineReason | None = None  # a parse-level problem the adapter already found
    missing_audio_hint: str | None = None  # what was looked for, for the missing_file message


_DEFAULT = object()
_TTS_LANGUAGE = {"en_tts": "en", "zh_tts": "zh"}


class Adapter:
    """Base class: ``Adapter(root, **options).scan() -> Iterator[ManifestRecord]``.

    Common options (every adapter): ``licence`` and ``split`` (override the corpus defaults),
    ``source_corpus`` (name recorded in the manifest), ``max_duration`` (seconds; ``None`` = no
    limit) and ``limits`` (a :class:`~data.audio_probe.ProbeLimits` or a dict of its fields).
    """

    name: ClassVar[str] = ""
    source_corpus: ClassVar[str] = ""
    default_licence: ClassVar[str] = "unspecified"
    default_split: ClassVar[str] = "train"
    default_max_duration: ClassVar[float | None] = 1800.0

    def __init__(
        self,
        root: str | Path,
        *,
        licence: str | None = None,
        split: str | None = None,
        source_corpus: str | None = None,
        max_duration: Any = _DEFAULT,
        limits: ProbeLimits | dict | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise MissingCorpusError(f"{self.name}: corpus root {self.root} does not exist")
        if not self.root.is_dir():
            raise MissingCorpusError(f"{self.name}: corpus root {self.root} is not a directory")
        self.root = self.root.resolve()
        if limits is None:
            limits = ProbeLimits(max_duration=self.default_max_duration)
        elif isinstance(limits, dict):
            limits = ProbeLimits(**{"max_duration": self.default_max_duration, **limits})
        if max_duration is not _DEFAULT:
            limits = limits.with_(max_duration=max_duration)
        self.limits: ProbeLimits = limits
        self.licence = licence
        self.split = split
        self.corpus_name = source_corpus or self.source_corpus or self.name

    # ---- to implement -------------------------------------------------------------------------

    def items(self) -> Iterator[Item | ManifestRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- the loop -----------------------------------------------------------------------------

    def scan(self) -> Iterator[ManifestRecord]:
        """Yield exactly one record (kept or quarantined) per input row; never raises on bad rows."""
        kept_ids: set[str] = set()
        n = 0
        for item in self.items():
            n += 1
            if isinstance(item, ManifestRecord):
                rec = item
            else:
                try:
                    rec = self._finish(item, kept_ids)
                except Exception as e:  # a bug or an OS error on one item must not end the scan
                    tb = traceback.format_exception_only(type(e), e)[-1].strip()
                    ref = str(getattr(item, "source_ref", None) or f"item {n}")
                    rid = item.id if isinstance(getattr(item, "id", None), str) and item.id.strip() else None
                    rec = self.quarantine(ref, rid, Reason.INTERNAL_ERROR, tb)
            if rec.status == "kept":
                kept_ids.add(rec.id)
            yield rec

    def quarantine(
        self, source_ref: str, rid: str | None, code: Reason | str, message: str, **fields: Any
    ) -> ManifestRecord:
        """A quarantined record for a row that could not be turned into an :class:`Item`. ``code``: a
        :class:`~unimoe.common.reasons.Reason`, or a corpus builder's own code (:func:`is_reason_code`)."""
        source_ref = repair_text(str(source_ref))
        if not (isinstance(rid, str) and rid.strip() and not has_surrogates(rid)):
            rid = f"{self.name}:{source_ref}"
        fields = {k: _clean(v) for k, v in fields.items()}
        if fields.get("task") not in TASKS:
            fields["task"] = None
        return ManifestRecord(
            id=rid,
            source_corpus=self.corpus_name,
            source_ref=source_ref,
            status="quarantined",
            reason=code,
            detail=f"{source_ref}: {repair_text(str(message))}",
            **fields,
        )

    # ---- for adapters: the corpus's files and table rows --------------------------------------

    def required_file(self, relpath: str | Path, what: str, hint: str = "") -> Path:
        """``root/relpath``, which must be a file: without it the folder is not this corpus."""
        path = self.root / relpath
        if not path.is_file():
            raise MissingCorpusError(f"{self.name}: {what} {path} not found{hint}")
        return path

    def find_table(
        self, given: str | None, default_names: Sequence[str], suffixes: Sequence[str], option: str
    ) -> Path:
        """The metadata table: ``given`` (relative to the root); else the one of ``default_names`` in
        the root; else the only file in the root ending in one of ``suffixes``."""
        if given is not None:
            return self.required_file(given, "metadata table")
        named = [self.root / n for n in default_names if (self.root / n).is_file()]
        found = named or sorted(p for p in self.root.iterdir() if p.suffix in suffixes and p.is_file())
        if len(found) != 1:
            raise MissingCorpusError(
                f"{self.name}: expected {' or '.join(default_names)} or exactly one {'/'.join(suffixes)} file "
                f"in {self.root}, found {[p.name for p in found]}; pass {option}=..."
            )
        return found[0]

    def table_items(
        self,
        table: Path,
        rows: Iterable[tuple[int, dict[str, Any] | QuarantineReason]],
        row_item: Callable[[str, dict[str, Any]], Item | ManifestRecord | None],
        task: str | None = None,
    ) -> Iterator[Item | ManifestRecord]:
        """``row_item(source_ref, row)`` for each row of ``table`` the reader could parse (None: the row
        is not an input row of this scan); a row it could not parse is quarantined as ``task``."""
        table_ref = rel(table, self.root)
        for line, row in rows:
            ref = f"{table_ref}:{line}"
            if isinstance(row, QuarantineReason):
                yield self.quarantine(ref, None, row.code, row.message, task=task)
                continue
            item = row_item(ref, row)
            if item is not None:
                yield item

    def unlisted_audio(
        self, folder: Path, extensions: tuple[str, ...], used: set[Path], table: Path, id_prefix: str,
        **fields: Any,
    ) -> Iterator[Item]:
        """A ``missing_metadata`` item for each audio file under ``folder`` that no row of ``table``
        named (``used``): every file of the corpus is accounted for, listed or not."""
        for audio in find_audio_files(folder, extensions):
            if audio in used:
                continue
            where = rel(audio, self.root)
            why = f"{where} has no row in {rel(table, self.root)}"
            yield Item(
                source_ref=where,
                id=f"{id_prefix}{audio.stem}",
                audio=audio,
                problem=QuarantineReason(Reason.MISSING_METADATA, why),
                **fields,
            )

    # ---- helpers ------------------------------------------------------------------------------

    def _base_record(self, item: Item, fallback_id: str) -> ManifestRecord:
        rid = item.id.strip() if isinstance(item.id, str) else None
        if not rid or has_surrogates(rid):
            rid = f"{self.name}:{repair_text(item.source_ref)}" if item.source_ref else fallback_id
        audio_path = None
        if item.audio is not None:
            p = Path(item.audio)
            audio_path = str(p if p.is_absolute() else self.root / p)
        video_path = None
        if item.video is not None:
            p = Path(item.video)
            video_path = str(p if p.is_absolute() else self.root / p)
        text = item.text
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        return ManifestRecord(
            id=_clean(rid),
            task=item.task if item.task in TASKS else None,
            language=_str(item.language),
            audio_path=_clean(audio_path),
            text=_str(text.strip() if isinstance(text, str) else text),
            speaker=_str(item.speaker),
            source_corpus=self.corpus_name,
            licence=_str(self.licence or item.licence or self.default_licence),
            split=_str(normalise_split(self.split or item.split or self.default_split)),
            video_path=_clean(video_path),
            source_ref=_clean(item.source_ref),
            meta=_clean(dict(item.meta)),
        )

    def _finish(self, item: Item, kept_ids: set[str]) -> ManifestRecord:
        if isinstance(item.id, (int, float)) and not isinstance(item.id, bool):
            item.id = str(item.id)
        rec = self._base_record(item, fallback_id=f"{self.name}:?")

        def q(code: Reason, message: str, **changes: Any) -> ManifestRecord:
            return rec.replace(
                status="quarantined",
                reason=code,
                detail=repair_text(f"{rec.source_ref}: {message}"),
                **changes,
            )

        if item.problem is not None:
            return q(item.problem.code, item.problem.message, provenance_sha256=item.problem.sha256)
        if not isinstance(item.id, str) or not item.id.strip():
            return q(Reason.MISSING_ID, "row has no id")
        if has_surrogates(item.id):
            return q(Reason.BAD_ROW, f"id {repair_text(item.id)!r} is not valid UTF-8")
        if item.task not in TASKS:
            return q(Reason.INVALID_TASK, f"task {repair_text(str(item.task))!r} is not one of {TASKS}")
        if rec.id in kept_ids:
            return q(Reason.DUPLICATE_ID, f"id {rec.id!r} was already kept from an earlier row")

        if rec.language is None and item.task in _TTS_LANGUAGE:
            rec = rec.replace(language=_TTS_LANGUAGE[item.task])
        require_text = item.require_text or item.task in TTS_TASKS
        text: str | None = None
        if item.text is None:
            if require_text:
                what = "transcript" if item.task in TTS_TASKS else "caption"
                return q(Reason.MISSING_TEXT, f"no {what} found for this audio")
        else:
            checked = check_text(
                item.text, required=True, what="transcript" if item.task in TTS_TASKS else "caption"
            )
            if isinstance(checked, QuarantineReason):
                return q(checked.code, checked.message)
            text = checked

        if item.audio is None:
            return q(
                Reason.MISSING_FILE,
                f"no audio file found{' (' + item.missing_audio_hint + ')' if item.missing_audio_hint else ''}",
            )
        probe = probe_audio(item.audio, self.root, self.limits)
        if isinstance(probe, QuarantineReason):
            return q(probe.code, probe.message, provenance_sha256=probe.sha256)
        assert isinstance(probe, ProbeResult)
        rec = rec.replace(audio_path=str(probe.path), provenance_sha256=probe.sha256)

        video_path = None
        if item.video is not None or item.require_video or item.task == "v2m":
            if item.video is None:
                return q(Reason.MISSING_VIDEO, "no video file found for this pair")
            vp = probe_video(item.video, self.root, hash_files=self.limits.hash_files)
            if isinstance(vp, QuarantineReason):
                return q(vp.code, vp.message)
            assert isinstance(vp, VideoProbe)
            video_path = str(vp.path)
            rec.meta["video_sha256"] = vp.sha256
            rec.meta["video_container"] = vp.container

        if item.declared_sample_rate is not None and int(item.declared_sample_rate) != probe.sample_rate:
            return q(
                Reason.SAMPLE_RATE_MISMATCH,
                f"metadata declares {item.declared_sample_rate} Hz, the file is {probe.sample_rate} Hz",
            )
        if item.declared_duration is not None:
            tol = max(0.1, 0.02 * float(item.declared_duration))
            if abs(float(item.declared_duration) - probe.duration) > tol:
                return q(
                    Reason.DURATION_MISMATCH,
                    f"metadata declares {float(item.declared_duration):.3f} s, the file holds {probe.duration:.3f} s",
                )

        offset, duration = 0.0, probe.duration
        if item.segment is not None:
            start, end = item.segment
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                return q(Reason.BAD_SEGMENT, f"segment [{start}, {end}] s is not a valid span")
            if start >= probe.duration or end > probe.duration + 0.05:
                return q(
                    Reason.BAD_SEGMENT,
                    f"segment [{start}, {end}] s lies outside the file ({probe.duration:.3f} s)",
                )
            offset, duration = float(start), float(min(end, probe.duration) - start)

        return rec.replace(
            text=text,
            video_path=video_path,
            duration=duration,
            sample_rate=probe.sample_rate,
            channels=probe.channels,
            offset=offset,
            source_duration=probe.duration,
            status="kept",
            reason=None,
            detail=None,
        )


# --------------------------------------------------------------------------------------------
# robust readers shared by adapters: one bad line never spoils the rest of the file


def read_text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) pairs; undecodable bytes kept as surrogates for the checks."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as f:
        for i, line in enumerate(f, 1):
            if i == 1:
                line = line.lstrip("\ufeff")
            yield i, line.rstrip("\r\n")


def iter_csv(
    path: Path, header_rows: int = 1, **reader_kwargs: Any
) -> Iterator[tuple[int, dict[str, Any] | QuarantineReason]]:
    """(line number, row dict or a ``bad_row`` reason) for each data row of a CSV with a header
    (:func:`unimoe.common.tables.iter_csv_rows`); an unparsable header is a :class:`SourceError`."""
    try:
        for line, row in iter_csv_rows(path, header_rows, **reader_kwargs):
            yield line, QuarantineReason(Reason.BAD_ROW, row) if isinstance(row, str) else row
    except CsvHeaderError as e:
        raise SourceError(str(e)) from e


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | QuarantineReason]]:
    """(line number, object or a ``bad_row`` reason) for each non-blank line of a JSONL file."""
    for i, line in read_text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield i, QuarantineReason(Reason.BAD_ROW, f"not valid JSON ({e})")
            continue
        if not isinstance(obj, dict):
            yield i, QuarantineReason(Reason.BAD_ROW, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield i, obj


def read_bytes(path: Path) -> tuple[bytes | None, QuarantineReason | None]:
    """A small side file's bytes (a per-utterance transcript), or why it could not be read."""
    try:
        return path.read_bytes(), None
    except OSError as e:
        return None, QuarantineReason(Reason.MISSING_TEXT, f"cannot read {path.name}: {e.strerror or e}")


def find_audio_files(folder: Path, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list[Path]:
    """Audio files under ``folder`` (recursively, symlinks included, sorted for determinism)."""
    if not folder.is_dir():
        return []
    out = [p for p in folder.rglob("*") if p.suffix.lower() in extensions and (p.is_file() or p.is_symlink())]
    return sorted(out)


def rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


_CODE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


def is_reason_code(s: str) -> bool:
    return bool(_CODE.match(s))
