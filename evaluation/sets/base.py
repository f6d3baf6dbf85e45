"""Benchmark-set types, the manifest format, and the helpers every set loader shares.

A benchmark set is a list of :class:`BenchItem` (what to generate and what to compare it with) plus an
``info`` dict saying how the set was built: the protocol choices (``info["protocol"]``), every input
row that could not be used and why (``info["rejected"]``: line/ref, id, reason code, detail), items
kept without their reference audio (``info["missing"]``) and rows left out by the protocol itself
(``info["excluded"]``, e.g. LibriSpeech utterances outside 4-10 s). Nothing is dropped silently.

Manifest file (JSONL, written atomically): the first line is a header
``{"unimoe_benchmark_manifest": 1, "name": ..., "info": {...}}``, every further line one
:meth:`BenchItem.to_dict`. :func:`read_manifest` also reads a header-less file of item lines (the set
is then named after the file).

``evaluation`` may not import ``data`` (layering rule, tests/test_layering.py), so the few parsing
helpers the corpus adapters also have (line reading, pinyin stripping) live here in small form.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import soundfile as sf

from unimoe.common.files import atomic_write_text
from unimoe.config import TASKS

MANIFEST_VERSION = 1
_HEADER_KEY = "unimoe_benchmark_manifest"
TTS_LANGUAGE = {"en_tts": "en", "zh_tts": "zh"}
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")


class BenchmarkError(ValueError):
    """A benchmark set cannot be built or read (bad layout, unreadable metadata, bad manifest)."""


class MissingBenchmarkError(BenchmarkError, FileNotFoundError):
    """The benchmark root, or a required metadata file in it, does not exist."""


# --------------------------------------------------------------------------------------------
# types


def _path_str(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(f"{name} must be a file path (str) or None, got {value!r}")


@dataclass(frozen=True)
class BenchItem:
    """One benchmark prompt. Audio/video fields are file paths; ``meta`` is a JSON-able dict."""

    id: str
    task: str
    language: str | None = None
    text: str | None = None  # target transcript (TTS) or caption (music)
    prompt_audio: str | None = None  # voice prompt (TTS voice cloning)
    prompt_text: str | None = None  # transcript of prompt_audio
    reference_audio: str | None = None  # ground truth: the real recording / clip
    video: str | None = None  # V2M input
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"BenchItem.id must be a non-empty string, got {self.id!r}")
        if self.task not in TASKS:
            raise ValueError(f"BenchItem {self.id!r}: task {self.task!r} is not one of {TASKS}")
        for name in ("prompt_audio", "reference_audio", "video"):
            object.__setattr__(self, name, _path_str(getattr(self, name), f"BenchItem {self.id!r}: {name}"))
        for name in ("language", "text", "prompt_text"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"BenchItem {self.id!r}: {name} must be a string or None, got {v!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"BenchItem {self.id!r}: meta must be a dict, got {type(self.meta).__name__}")
        if self.task in TTS_LANGUAGE and not (self.text and self.text.strip()):
            raise ValueError(f"BenchItem {self.id!r}: a {self.task} item needs a target text")
        if self.task == "v2m" and self.video is None:
            raise ValueError(f"BenchItem {self.id!r}: a v2m item needs a video")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (dict(self.meta) if f.name == "meta" else getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchItem":
        if not isinstance(data, dict):
            raise ValueError(f"a BenchItem needs a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BenchItem {data.get('id')!r}: unknown field(s) {unknown}")
        missing = [k for k in ("id", "task") if k not in data]
        if missing:
            raise ValueError(f"BenchItem dict is missing {missing}: {data!r}"[:300])
        return cls(**{**data, "meta": dict(data.get("meta") or {})})


@dataclass(frozen=True)
class BenchmarkSet:
    """A named list of items (ids unique) and how it was built (``info``, JSON-able)."""

    name: str
    items: list[BenchItem]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", list(self.items))
        dup = [k for k, n in Counter(it.id for it in self.items).items() if n > 1]
        if dup:
            raise ValueError(f"benchmark {self.name!r}: duplicate item id(s) {sorted(dup)[:5]}")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[BenchItem]:
        return iter(self.items)

    @property
    def tasks(self) -> list[str]:
        return sorted({it.task for it in self.items})

    def by_task(self, task: str) -> list[BenchItem]:
        return [it for it in self.items if it.task == task]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "items": [it.to_dict() for it in self.items], "info": self.info}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BenchmarkSet":
        return cls(
            name=str(data["name"]),
            items=[BenchItem.from_dict(d) for d in data.get("items", [])],
            info=dict(data.get("info") or {}),
        )


# --------------------------------------------------------------------------------------------
# manifest files


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def write_manifest(path: str | Path, bset: BenchmarkSet) -> Path:
    """Write ``bset`` as a JSONL manifest (header line + one line per item), atomically."""
    path = Path(path)
    dump = lambda obj: json.dumps(obj, ensure_ascii=False, sort_keys=True, default=_json_default)  # noqa: E731
    lines = [dump({_HEADER_KEY: MANIFEST_VERSION, "name": bset.name, "info": bset.info})]
    lines += [dump(it.to_dict()) for it in bset.items]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_manifest(path: str | Path) -> BenchmarkSet:
    """Read a manifest written by :func:`write_manifest` (or a header-less JSONL of item dicts)."""
    path = Path(path)
    if not path.is_file():
        raise MissingBenchmarkError(f"benchmark manifest not found: {path}")
    name, info, items = path.stem, {}, []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise BenchmarkError(f"{path}:{i}: not valid JSON ({e})") from None
            if isinstance(obj, dict) and _HEADER_KEY in obj:
                if i != 1 and items:
                    raise BenchmarkError(f"{path}:{i}: manifest header after item lines")
                if obj[_HEADER_KEY] != MANIFEST_VERSION:
                    raise BenchmarkError(
                        f"{path}: manifest version {obj[_HEADER_KEY]}, this code reads {MANIFEST_VERSION}"
                    )
                name, info = str(obj.get("name") or name), dict(obj.get("info") or {})
                continue
            try:
                items.append(BenchItem.from_dict(obj))
            except (ValueError, TypeError) as e:
                raise BenchmarkError(f"{path}:{i}: {e}") from None
    try:
        return BenchmarkSet(name, items, info)
    except ValueError as e:
        raise BenchmarkError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# shared loader helpers


class Ledger:
    """Collects what a loader could not use: ``rejected`` (bad input rows), ``missing`` (items kept
    without reference audio) and ``excluded`` (rows left out by the protocol, e.g. duration range)."""

    def __init__(self) -> None:
        self.rejected: list[dict[str, Any]] = []
        self.missing: list[dict[str, Any]] = []
        self.excluded: list[dict[str, Any]] = []

    @staticmethod
    def _entry(ref: str, rid: str | None, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
        m = re.search(r":(\d+)$", ref)
        out = {"ref": ref, "line": int(m.group(1)) if m else None, "id": rid, "reason": reason, "detail": detail}
        out.update(extra)
        return out

    def reject(self, ref: str, rid: str | None, reason: str, detail: str, **extra: Any) -> None:
        self.rejected.append(self._entry(ref, rid, reason, detail, **extra))

    def miss(self, ref: str, rid: str | None, reason: str, detail: str, **extra: Any) -> None:
        self.missing.append(self._entry(ref, rid, reason, detail, **extra))

    def exclude(self, ref: str, rid: str | None, reason: str, detail: str, **extra: Any) -> None:
        self.excluded.append(self._entry(ref, rid, reason, detail, **extra))

    def info(self, **more: Any) -> dict[str, Any]:
        return {
            **more,
            "rejected": self.rejected,
            "missing": self.missing,
            "excluded": self.excluded,
            "counts": {
                "rejected": dict(Counter(r["reason"] for r in self.rejected)),
                "missing": dict(Counter(r["reason"] for r in self.missing)),
                "excluded": dict(Counter(r["reason"] for r in self.excluded)),
            },
        }


def finish(name: str, items: list[BenchItem], ledger: Ledger, **info: Any) -> BenchmarkSet:
    """The set, with item counts per task and the ledger in ``info``."""
    out = ledger.info(**info)
    out["counts"]["items"] = dict(sorted(Counter(it.task for it in items).items()))
    return BenchmarkSet(name, items, out)


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise MissingBenchmarkError(f"{what}: {path} does not exist; expected layout:\n{layout}")
    if not path.is_dir():
        raise MissingBenchmarkError(f"{what}: {path} is not a directory; expected layout:\n{layout}")
    return path.resolve()


def require_file(path: Path, what: str, layout: str) -> Path:
    if not path.is_file():
        raise MissingBenchmarkError(f"{what}: {path} not found; expected layout:\n{layout}")
    return path


def read_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, line without newline) — ``None`` for a line that is not valid UTF-8."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield i, None
                continue
            if i == 1:
                line = line.lstrip("\ufeff")
            yield i, line.rstrip("\r\n")


def text_rows(path: Path, ledger: "Ledger", name: str | None = None) -> Iterator[tuple[str, str]]:
    """(ref ``<name>:<line number>``, line) for every non-blank line of a text file; a line that is not
    valid UTF-8 is rejected into ``ledger`` (``non_utf8_text``) instead. ``name`` defaults to the file's."""
    for i, line in read_lines(path):
        ref = f"{name or path.name}:{i}"
        if line is None:
            ledger.reject(ref, None, "non_utf8_text", "line is not valid UTF-8")
        elif line.strip():
            yield ref, line


def jsonl_rows(path: Path, ledger: "Ledger") -> Iterator[tuple[str, dict[str, Any]]]:
    """(ref, object) for every JSON-object line of a JSONL file; other lines are rejected into ``ledger``
    (``bad_row``; ``non_utf8_text`` via :func:`text_rows`)."""
    for ref, line in text_rows(path, ledger):
        try:
            obj = json.loads(line)
        except ValueError as e:
            ledger.reject(ref, None, "bad_row", f"not valid JSON ({e})")
            continue
        if isinstance(obj, dict):
            yield ref, obj
        else:
            ledger.reject(ref, None, "bad_row", f"expected a JSON object, got {type(obj).__name__}")


def reject_unlisted(files: Iterable[Path], listed: set[Path], root: Path, ledger: "Ledger", where: str) -> None:
    """Reject (``missing_text``) every audio file of ``files`` that no text row named."""
    for p in sorted(files):
        if p not in listed:
            ledger.reject(p.relative_to(root).as_posix(), p.stem, "missing_text", f"audio file has no line in {where}")


def resolve(path: str | Path, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class AudioCheck:
    ok: bool
    reason: str | None = None  # missing_file | not_audio | empty_audio
    detail: str | None = None
    duration: float | None = None
    sample_rate: int | None = None


def check_audio(path: Path) -> AudioCheck:
    """Header-level check of an audio file (exists, libsndfile opens it, has frames); never raises."""
    if not (path.is_file()):
        return AudioCheck(False, "missing_file", f"{path} does not exist")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's errors are plain RuntimeErrors / LibsndfileError
        return AudioCheck(False, "not_audio", f"{path}: cannot open as audio ({e})")
    if info.frames <= 0 or info.samplerate <= 0:
        return AudioCheck(False, "empty_audio", f"{path}: no audio frames")
    return AudioCheck(True, duration=info.frames / info.samplerate, sample_rate=int(info.samplerate))


def find_audio(folder: Path, stems: Iterable[str], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Path | None:
    """The first existing ``folder/<stem><ext>`` over stems x extensions (in that order)."""
    for stem in stems:
        for ext in extensions:
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def checked_reference(ledger: Ledger, ref: str, item_id: str, audio: Path | None,
                      missing: str) -> tuple[Path | None, float | None]:
    """``(audio, duration)`` of an item's reference recording when it was found (``audio``) and reads as
    audio; else ``(None, None)``, with why in the ledger (``missing_file`` with ``missing``, or the
    reason of :func:`check_audio`)."""
    if audio is None:
        ledger.miss(ref, item_id, "missing_file", missing)
        return None, None
    chk = check_audio(audio)
    if not chk.ok:
        ledger.miss(ref, item_id, chk.reason, chk.detail)
        return None, None
    return audio, chk.duration


def rank_key(seed: int, target: str, candidate: str) -> str:
    """Deterministic pseudo-random order of prompt candidates for one target, independent of which
    other files exist (adding a speaker never changes another speaker's prompts)."""
    return hashlib.sha256(f"unimoe-bench-prompt:{seed}:{target}:{candidate}".encode()).hexdigest()


def pick_prompt(target: str, candidates: Iterable[str], seed: int) -> str | None:
    """The candidate id (never ``target`` itself) with the smallest :func:`rank_key`, or None."""
    pool = [c for c in candidates if c != target]
    return min(pool, key=lambda c: rank_key(seed, target, c)) if pool else None


def in_range(value: float | None, lo: float | None, hi: float | None) -> bool:
    if value is None or not math.isfinite(value):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def fmt_range(lo: float | None, hi: float | None) -> str:
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}] s"


def targets_in_range(pool: Iterable["Utterance"], lo: float | None, hi: float | None, ledger: "Ledger") -> list["Utterance"]:
    """The utterances (sorted by id) whose duration is within [lo, hi]; the others are excluded
    (``duration_out_of_range``) into ``ledger``."""
    targets = []
    for u in sorted(pool, key=lambda u: u.id):
        if in_range(u.duration, lo, hi):
            targets.append(u)
        else:
            ledger.exclude(u.ref, u.id, "duration_out_of_range", f"{u.duration:.2f} s outside {fmt_range(lo, hi)}")
    return targets


@dataclass(frozen=True)
class Utterance:
    """A usable speech row before pairing: the target or a prompt candidate of a voice-cloning item."""

    id: str
    speaker: str
    audio: Path
    text: str
    duration: float
    ref: str  # where it came from ("content.txt:12", ...)
    meta: dict[str, Any] = field(default_factory=dict)


def voice_cloning_items(
    targets: Iterable[Utterance],
    prompts: Iterable[Utterance],
    *,
    task: str,
    seed: int,
    ledger: Ledger,
    fallback: Iterable[Utterance] = (),
    primary_note: str = "primary",
    fallback_note: str = "fallback",
) -> list[BenchItem]:
    """One TTS item per target: its prompt is another utterance of the same speaker, picked from
    ``prompts`` by :func:`pick_prompt`; only when the speaker has none there, from ``fallback``
    (recorded in ``meta["prompt_pool"]``). A target with no same-speaker utterance at all is rejected
    ``no_prompt``. The target's own recording is the reference audio."""
    by_spk: dict[str, dict[str, Utterance]] = {}
    for u in prompts:
        by_spk.setdefault(u.speaker, {})[u.id] = u
    fb_spk: dict[str, dict[str, Utterance]] = {}
    for u in fallback:
        fb_spk.setdefault(u.speaker, {})[u.id] = u
    items = []
    for t in targets:
        if not t.speaker:
            ledger.reject(t.ref, t.id, "no_prompt", "no speaker given: cannot pick a same-speaker prompt")
            continue
        pool_name, pool = primary_note, by_spk.get(t.speaker, {})
        pid = pick_prompt(t.id, pool, seed)
        if pid is None:
            pool_name, pool = fallback_note, fb_spk.get(t.speaker, {})
            pid = pick_prompt(t.id, pool, seed)
        if pid is None:
            ledger.reject(t.ref, t.id, "no_prompt", f"speaker {t.speaker!r} has no other usable utterance")
            continue
        p = pool[pid]
        items.append(
            BenchItem(
                id=t.id,
                task=task,
                language=TTS_LANGUAGE[task],
                text=t.text,
                prompt_audio=str(p.audio),
                prompt_text=p.text,
                reference_audio=str(t.audio),
                meta={
                    **t.meta,
                    "speaker": t.speaker,
                    "source_ref": t.ref,
                    "duration": round(t.duration, 6),
                    "prompt_id": p.id,
                    "prompt_duration": round(p.duration, 6),
                    "prompt_pool": pool_name,
                },
            )
        )
    return items
