"""The one manifest schema every corpus is ingested into.

A manifest is a Parquet table of small records, one row per utterance / track / clip. The same table
carries the accounting: each row has a ``status`` — ``kept``, ``filtered`` (a later stage decided
not to use it) or ``quarantined`` (the input was bad) — and, for the last two, a short stable
``reason`` code plus a human ``detail`` message. Nothing is ever dropped silently.

Rows describe audio *by reference*: ``audio_path`` plus ``offset``/``duration`` (seconds) select the
span to use; ``source_duration`` is the length of the whole file. Clips cut from long music
(:mod:`data.segment`) point into their source file and name it in ``parent_id``.

Validation (on write and on read):
- every row: non-empty ``id``, ``status`` in :data:`STATUSES`, ``task`` null or one of
  :data:`unimoe.config.TASKS`, ``meta`` a JSON object, strings valid UTF-8;
- ``kept``/``filtered`` rows: ids unique among them (a quarantined row may repeat an id — that is how
  duplicates are accounted for);
- ``kept`` rows: a task, an audio path, finite ``duration > 0``, ``sample_rate > 0``,
  ``channels >= 1``, a licence, a split, a 64-hex provenance hash, ``0 <= offset < source_duration``,
  a transcript for TTS rows, a video path for V2M rows, and ``reason`` null;
- ``filtered``/``quarantined`` rows: a non-empty ``reason``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from unimoe.common.files import atomic_path
from unimoe.config import TASKS

SCHEMA_VERSION = "1"
STATUSES = ("kept", "filtered", "quarantined")
TTS_TASKS = ("zh_tts", "en_tts")
MUSIC_TASKS = ("t2m", "v2m")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("task", pa.string()),  # one of TASKS (null only for rows that never got one)
        pa.field("language", pa.string()),  # of the text: "en", "zh"; null for music without text
        pa.field("audio_path", pa.string()),  # absolute, symlinks resolved, inside the corpus root
        pa.field("duration", pa.float64()),  # seconds used from audio_path, starting at offset
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("text", pa.string()),  # transcript (TTS) or caption (music); null = none yet
        pa.field("speaker", pa.string()),
        pa.field("source_corpus", pa.string()),
        pa.field("licence", pa.string()),
        pa.field("split", pa.string()),  # "train" | "dev" | "test" (or a corpus-specific name)
        pa.field("video_path", pa.string()),  # V2M only
        pa.field("provenance_sha256", pa.string()),  # SHA-256 of the whole source audio file
        pa.field("offset", pa.float64()),  # seconds into audio_path where this row starts
        pa.field("source_duration", pa.float64()),  # seconds, the whole source file
        pa.field("parent_id", pa.string()),  # for clips: the id of the row they were cut from
        pa.field("source_ref", pa.string()),  # where the row came from: "content.txt:12", a path, ...
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),  # short stable code; null for kept rows
        pa.field("detail", pa.string()),  # human-readable explanation of the reason
        pa.field("meta", pa.string()),  # JSON object: corpus-specific extras (genre, tempo, midi, ...)
    ],
    metadata={"unimoe.manifest.version": SCHEMA_VERSION},
)
COLUMNS = tuple(SCHEMA.names)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_STR_COLUMNS = tuple(f.name for f in SCHEMA if pa.types.is_string(f.type))


class ManifestError(ValueError):
    """A manifest (or a record headed for one) does not follow the schema."""


@dataclass
class ManifestRecord:
    """One manifest row. ``meta`` is a plain dict here and a JSON string in Parquet."""

    id: str
    task: str | None = None
    language: str | None = None
    audio_path: str | None = None
    duration: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    text: str | None = None
    speaker: str | None = None
    source_corpus: str | None = None
    licence: str | None = None
    split: str | None = None
    video_path: str | None = None
    provenance_sha256: str | None = None
    offset: float | None = None
    source_duration: float | None = None
    parent_id: str | None = None
    source_ref: str | None = None
    status: str = "kept"
    reason: str | None = None
    detail: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def is_kept(self) -> bool:
        return self.status == "kept"

    def replace(self, **changes: Any) -> "ManifestRecord":
        return dataclasses.replace(self, **changes)

    def to_row(self) -> dict[str, Any]:
        """The Parquet row (``meta`` serialised to JSON)."""
        row = {name: getattr(self, name) for name in COLUMNS}
        row["meta"] = json.dumps(self.meta or {}, sort_keys=True, ensure_ascii=False, default=_json_default)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "ManifestRecord":
        values = {name: row.get(name) for name in COLUMNS}
        meta = values.get("meta")
        values["meta"] = json.loads(meta) if meta else {}
        return cls(**values)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return sorted(obj) if isinstance(obj, (set, frozenset)) else list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# validation


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _row_problems(row: dict[str, Any], meta_obj: Any) -> list[tuple[str, str]]:
    """(column, message) pairs for one row (``meta_obj`` is the decoded meta or an Exception)."""
    out: list[tuple[str, str]] = []
    rid, status, task = row.get("id"), row.get("status"), row.get("task")

    for col in _STR_COLUMNS:
        v = row.get(col)
        if v is None:
            continue
        if not isinstance(v, str):
            out.append((col, f"must be a string, got {type(v).__name__}"))
            continue
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            out.append((col, "is not valid UTF-8 text (contains undecodable bytes / lone surrogates)"))
    if not isinstance(rid, str) or not rid.strip():
        out.append(("id", "must be a non-empty string"))
    if status not in STATUSES:
        out.append(("status", f"must be one of {STATUSES}, got {status!r}"))
    if task is not None and task not in TASKS:
        out.append(("task", f"must be one of {TASKS} or null, got {task!r}"))
    if isinstance(meta_obj, Exception):
        out.append(("meta", f"is not a JSON object: {meta_obj}"))
    elif not isinstance(meta_obj, dict):
        out.append(("meta", f"must be a JSON object, got {type(meta_obj).__name__}"))
    for col in ("duration", "offset", "source_duration"):
        v = row.get(col)
        if v is not None and (not _is_num(v) or not math.isfinite(v)):
            out.append((col, f"must be a finite number, got {v!r}"))
    for col in ("sample_rate", "channels"):
        v = row.get(col)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            out.append((col, f"must be an integer, got {v!r}"))

    if status == "kept":
        if row.get("reason") is not None:
            out.append(("reason", f"must be null for kept rows, got {row.get('reason')!r}"))
        if task is None:
            out.append(("task", "kept rows need a task"))
        if not row.get("audio_path"):
            out.append(("audio_path", "kept rows need an audio path"))
        d = row.get("duration")
        if not (_is_num(d) and math.isfinite(d) and d > 0):
            out.append(("duration", f"must be > 0 for kept rows, got {d!r}"))
        sr = row.get("sample_rate")
        if not (isinstance(sr, int) and sr > 0):
            out.append(("sample_rate", f"must be > 0 for kept rows, got {sr!r}"))
        ch = row.get("channels")
        if not (isinstance(ch, int) and ch >= 1):
            out.append(("channels", f"must be >= 1 for kept rows, got {ch!r}"))
        for col in ("licence", "split", "source_corpus"):
            if not row.get(col):
                out.append((col, "kept rows need a non-empty value"))
        h = row.get("provenance_sha256")
        if not (isinstance(h, str) and _HEX64.match(h)):
            out.append(("provenance_sha256", f"kept rows need a 64-hex SHA-256, got {h!r}"))
        off, sd = row.get("offset"), row.get("source_duration")
        if not (_is_num(off) and off >= 0):
            out.append(("offset", f"kept rows need offset >= 0, got {off!r}"))
        if not (_is_num(sd) and sd > 0):
            out.append(("source_duration", f"kept rows need source_duration > 0, got {sd!r}"))
        elif _is_num(off) and off >= sd:
            out.append(("offset", f"offset {off} is not inside the source ({sd} s)"))
        if task in TTS_TASKS and not (isinstance(row.get("text"), str) and row["text"].strip()):
            out.append(("text", "kept TTS rows need a non-empty transcript"))
        if task == "v2m" and not row.get("video_path"):
            out.append(("video_path", "kept v2m rows need a video path"))
    elif status in ("filtered", "quarantined"):
        r = row.get("reason")
        if not (isinstance(r, str) and r.strip()):
            out.append(("reason", f"{status} rows need a reason code"))
    return out


def _validate_rows(rows: Sequence[dict[str, Any]], metas: Sequence[Any], where: str) -> None:
    problems: list[str] = []
    seen: dict[str, int] = {}
    for i, (row, meta_obj) in enumerate(zip(rows, metas, strict=True)):
        for col, msg in _row_problems(row, meta_obj):
            problems.append(f"row {i} (id={row.get('id')!r}): column {col!r} {msg}")
        rid = row.get("id")
        if row.get("status") in ("kept", "filtered") and isinstance(rid, str):
            if rid in seen:
                problems.append(
                    f"row {i} (id={rid!r}): column 'id' duplicates row {seen[rid]}; ids must be unique among "
                    "kept/filtered rows (quarantine the later one with reason 'duplicate_id')"
                )
            else:
                seen[rid] = i
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{where}: {len(problems)} problem(s):\n  {shown}{more}")


def validate_records(records: Iterable[ManifestRecord], where: str = "manifest") -> list[ManifestRecord]:
    """Check records against the schema rules; return them as a list. Raises :class:`ManifestError`."""
    recs = list(records)
    rows, metas = [], []
    for i, r in enumerate(recs):
        if not isinstance(r, ManifestRecord):
            raise ManifestError(f"{where}: row {i} is a {type(r).__name__}, not a ManifestRecord")
        rows.append({name: getattr(r, name) for name in COLUMNS if name != "meta"})
        metas.append(r.meta if r.meta is not None else {})
        try:
            json.dumps(metas[-1], default=_json_default)
        except (TypeError, ValueError) as e:
            metas[-1] = e
    _validate_rows(rows, metas, where)
    return recs


def _decode_meta(s: Any) -> Any:
    if s is None:
        return {}
    try:
        return json.loads(s)
    except (TypeError, ValueError) as e:
        return e


def records_to_table(records: Iterable[ManifestRecord]) -> pa.Table:
    recs = validate_records(records)
    rows = [r.to_row() for r in recs]
    try:
        return pa.Table.from_pylist(rows, schema=SCHEMA)
    except (
        pa.ArrowInvalid,
        pa.ArrowTypeError,
        OverflowError,
    ) as e:  # pragma: no cover - caught by validation
        raise ManifestError(f"manifest: cannot convert records to the schema: {e}") from e


def _conform(table: pa.Table, where: str) -> pa.Table:
    """Check a table's columns and types against :data:`SCHEMA`; return it in schema order."""
    names = set(table.column_names)
    missing = [c for c in COLUMNS if c not in names]
    extra = [c for c in table.column_names if c not in COLUMNS]
    if missing:
        raise ManifestError(
            f"{where}: missing column(s) {missing}; expected the manifest schema {list(COLUMNS)}"
        )
    if extra:
        raise ManifestError(f"{where}: unexpected column(s) {extra}; the manifest schema is {list(COLUMNS)}")
    cols = []
    for f in SCHEMA:
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                raise ManifestError(
                    f"{where}: column {f.name!r} has type {col.type}, expected {f.type}: {e}"
                ) from e
        if not f.nullable and col.null_count:
            row = next(i for i, v in enumerate(col.to_pylist()) if v is None)
            raise ManifestError(f"{where}: row {row}: column {f.name!r} must not be null")
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def validate_table(table: pa.Table, where: str = "manifest") -> pa.Table:
    """Validate a table's schema and values; return it conformed to :data:`SCHEMA`."""
    table = _conform(table, where)
    rows = table.to_pylist()
    metas = [_decode_meta(r["meta"]) for r in rows]
    _validate_rows(rows, metas, where)
    return table


# --------------------------------------------------------------------------------------------
# reading and writing


def write_manifest(path: str | Path, records: Iterable[ManifestRecord]) -> Path:
    """Validate ``records`` and write them to ``path`` (Parquet) atomically. Returns the path."""
    path = Path(path)
    try:
        table = records_to_table(records)
    except ManifestError as e:
        raise ManifestError(f"refusing to write {path}: {e}") from None
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest_table(path: str | Path, ids: Collection[str] | None = None) -> pa.Table:
    """Read and validate a manifest as a pyarrow table (schema order); with ``ids``, only those rows
    (in file order), selected by Arrow before any row becomes a Python object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        wanted = None if ids is None else pa.array(sorted(set(ids)), type=pa.string())
        table = pq.read_table(path, filters=None if wanted is None else pc.field("id").isin(wanted))
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{path}: not a readable Parquet file: {e}") from e
    version = (table.schema.metadata or {}).get(b"unimoe.manifest.version")
    if version is not None and version.decode() != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: manifest schema version {version.decode()}, this code reads {SCHEMA_VERSION}"
        )
    return validate_table(table, where=str(path))


def read_manifest(path: str | Path, ids: Collection[str] | None = None) -> list[ManifestRecord]:
    """Read and validate a manifest; returns its records (with ``ids``: only those rows, in file order).

    A shard task that needs a few rows of a large manifest passes ``ids``: reading every row of a 16K-row
    manifest as records takes ~1 s, selecting 256 of them with Arrow ~0.1 s, so per-shard tasks stay
    linear in the corpus size."""
    table = read_manifest_table(path, ids)
    return [ManifestRecord.from_row(r) for r in table.to_pylist()]


def read_kept_texts(path: str | Path) -> list[str]:
    """The non-empty texts of a manifest's kept rows, sorted by id (what the text tokenizer trains on:
    :func:`unimoe.tokenizer.corpus_texts` of the records), reading three columns only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    table = pq.read_table(path, columns=["id", "status", "text"], filters=[("status", "=", "kept")])
    table = table.sort_by("id")
    return [t for t in table.column("text").to_pylist() if t]


# --------------------------------------------------------------------------------------------
# accounting helpers


def split_by_status(records: Iterable[ManifestRecord]) -> dict[str, list[ManifestRecord]]:
    """``{"kept": [...], "filtered": [...], "quarantined": [...]}`` (all three keys always present)."""
    out: dict[str, list[ManifestRecord]] = {s: [] for s in STATUSES}
    for r in records:
        if r.status not in out:
            raise ManifestError(f"record {r.id!r}: unknown status {r.status!r}")
        out[r.status].append(r)
    return out


def kept(records: Iterable[ManifestRecord]) -> list[ManifestRecord]:
    return [r for r in records if r.status == "kept"]


def filtered(records: Iterable[ManifestRecord]) -> list[ManifestRecord]:
    return [r for r in records if r.status == "filtered"]


def quarantined(records: Iterable[ManifestRecord]) -> list[ManifestRecord]:
    return [r for r in records if r.status == "quarantined"]


def status_counts(records: Iterable[ManifestRecord]) -> dict[str, dict[str, int]]:
    """Per status, the number of rows per reason (``"-"`` for kept). For reports and logs."""
    c: dict[str, Counter] = {s: Counter() for s in STATUSES}
    for r in records:
        c.setdefault(r.status, Counter())[r.reason or "-"] += 1
    return {s: dict(sorted(v.items())) for s, v in c.items()}


def mark(record: ManifestRecord, status: str, reason: str, detail: str | None = None) -> ManifestRecord:
    """A copy of ``record`` with a new status/reason (for later stages: ``mark(r, "filtered", "low_utmos")``)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if status == "kept":
        return record.replace(status="kept", reason=None, detail=detail)
    if not reason:
        raise ValueError(f"{status} rows need a reason code")
    return record.replace(status=status, reason=reason, detail=detail)
