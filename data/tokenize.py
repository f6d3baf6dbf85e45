"""Tokenisation into shards (DESIGN §2.3–2.4, §4): DAC codes and text ids that training reads with
random access.

Pipeline
--------
``plan_shards`` -> ``tokenize_shard`` (one call per shard; a flow runs one task per shard) ->
``write_index``. ``tokenize_manifest`` runs the three in sequence.

- **Plan.** The kept rows, sorted by id, are cut into groups of ``rows_per_shard``. Each
  :class:`ShardPlan` carries its index, its ids and a *content key*: the SHA-256 of everything the
  shard's bytes depend on (every written row field, provenance hash, offset, duration, text, meta, the
  codec's identity — its info and a hash of its weights — the tokenizer's hash and the options).
- **Shard.** Each row's span (``offset``/``duration``, seconds) is read from ``audio_path`` with
  :func:`unimoe.audio_io.load_span` (only the span's frames), mixed to mono and encoded by the codec
  in batches (the codec resamples); its text is tokenized with ``allow_special=False`` (untrusted
  text cannot inject markers). Output is two files, each written atomically (temporary file +
  rename):

  ``shard-00003.safetensors``
      ``codes``    int16 ``[K, total_frames]`` (int32 when ``codebook_size > 32767``): the rows' code
                   matrices concatenated along time;
      ``text_ids`` int32 ``[total_text]``: the rows' text ids concatenated;
      ``video``    uint8 ``[total_video_frames, S, S, 3]`` (only with ``video_frames=True``);
      one metadata entry ``unimoe.tokens`` (JSON: format, shard index, content key).
  ``shard-00003.json``
      format, key, the safetensors file's SHA-256 and size, K, codebook size, frame rate, and per
      row: id, task, language, speaker, split, source_corpus, text, video_path, duration (seconds of
      audio read; the frames also cover any ``meta.pad_to_seconds`` silence), offset,
      provenance_sha256, meta, frame_offset, num_frames, text_offset, num_text (and video_offset,
      num_video); plus ``failed``: ``[id, reason, detail]`` for the rows not written.

  The safetensors file is written first and the JSON (which names its hash) last, so a shard counts
  as done only when both are in place and agree. A shard whose JSON records the same key and whose
  safetensors file has the recorded hash is skipped (nothing is rewritten), which makes re-runs
  idempotent and a killed run, started again, finish with the same bytes as an uninterrupted one.
- **Failures.** A row whose audio cannot be read or encoded (or whose text cannot be tokenized) is not
  written; it is returned in :attr:`ShardResult.failed` as ``(id, reason, detail)`` with a reason code
  from :data:`REASONS`, recorded in the shard JSON and the index, and :func:`apply_failures` turns it
  into a ``quarantined`` manifest row. Bad input never crashes the run and is never dropped silently.
- **Index.** ``index.json`` lists the shards (file names, SHA-256s, rows, frames, keys), rows /
  frames / seconds per task, the codec info (with ``is_random_init`` and its label), the tokenizer
  hash, K and codebook size, and every failure.
- **Read.** :class:`TokenShardReader` validates the index against the files and gives random access
  to items, keeping an LRU of memory-mapped shards (``safetensors.safe_open``, sliced lazily).

No pickle anywhere: tensors are safetensors, everything else JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from data.manifest import ManifestRecord, mark
from unimoe.audio_io import AudioSpanError, load_span, to_mono
from unimoe.codec import AudioCodec
from unimoe.config import TokenizerConfig, UniMoEConfig
from unimoe.io import atomic_write_bytes, sha256_file
from unimoe.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

FORMAT = "unimoe.tokens/1"
INDEX_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
SHARD_PREFIX = "shard-"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(safetensors|json)$")
_TMP_RE = re.compile(
    r"^\.(shard-\d{5,}\.(safetensors|json)|index\.json|tokenizer\.json(\.meta\.json)?)\..*\.tmp$"
)
_ST_META_KEY = "unimoe.tokens"

# Reason codes for rows that cannot be tokenized (status "quarantined"); the audio ones are the
# reason codes of unimoe.audio_io.AudioSpanError (SPAN_REASONS), which match data.audio_probe.REASONS
# where the meaning is the same.
REASONS: dict[str, str] = {
    "missing_file": "audio file does not exist",
    "corrupt_audio": "audio header or stream cannot be decoded",
    "truncated": "file holds less audio than the row's span asks for",
    "bad_segment": "offset/duration outside the file or invalid",
    "zero_length": "span has no samples (the codec would give zero frames)",
    "non_finite": "NaN or infinite samples",
    "encode_failed": "the codec failed on this audio",
    "bad_text": "text cannot be tokenized",
    "missing_video": "video file does not exist (video_frames=True)",
    "corrupt_video": "video cannot be decoded (video_frames=True)",
    "internal_error": "unexpected error while tokenizing this row (a bug: please report)",
}


class TokenizeError(ValueError):
    """Shards or their index are missing, inconsistent, or were made with different settings."""


class RowError(Exception):
    """One row cannot be tokenized; ``reason`` is a code from :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# ------------------------------------------------------------------------------------------------
# fingerprints and keys


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(
        json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
        .encode("utf-8")
    ).hexdigest()


_CODEC_FP: "weakref.WeakKeyDictionary[AudioCodec, str]" = weakref.WeakKeyDictionary()


def codec_fingerprint(codec: AudioCodec | str) -> str:
    """A hash naming the codec: its info (minus the local path) and its weights (the release file's
    SHA-256, or for a random-init codec a hash of the state dict). A string is returned as is."""
    if isinstance(codec, str):
        return codec
    fp = _CODEC_FP.get(codec)
    if fp is None:
        info = {k: v for k, v in codec.info().items() if k != "weights_path"}
        weights = codec.weights_sha256
        if not weights:
            h = hashlib.sha256()
            for name, t in sorted(codec.model.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(name.encode())
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            weights = "state_dict:" + h.hexdigest()
        fp = _sha256_json({"info": info, "weights": weights})
        _CODEC_FP[codec] = fp
    return fp


def tokenizer_fingerprint(tokenizer: TextTokenizer | str) -> str:
    """SHA-256 of the tokenizer's serialised form (equal to the SHA-256 of the ``tokenizer.json`` it
    writes with ``save``). A string is returned as is."""
    if isinstance(tokenizer, str):
        return tokenizer
    return hashlib.sha256(tokenizer.backend.to_str(pretty=False).encode("utf-8")).hexdigest()


def tokenizer_info(tokenizer: TextTokenizer, tok_cfg: TokenizerConfig | None = None) -> dict:
    """What the index records about the tokenizer (nothing run-dependent such as where it was read)."""
    return {
        "sha256": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "kind": "trained" if tok_cfg is None or not tok_cfg.path else "file",
        "configured_path": None if tok_cfg is None else tok_cfg.path,
        "trained_vocab_size": None if tok_cfg is None or tok_cfg.path else tok_cfg.trained_vocab_size,
        "file": TOKENIZER_NAME,
    }


_tokenizer_info = tokenizer_info  # (write_index has a parameter of that name)


def _row_fields(r: ManifestRecord) -> dict:
    """The manifest fields a shard records for a row (and that its key covers)."""
    return {
        "id": r.id,
        "task": r.task,
        "language": r.language,
        "speaker": r.speaker,
        "split": r.split,
        "source_corpus": r.source_corpus,
        "text": r.text,
        "video_path": r.video_path,
        "offset": None if r.offset is None else float(r.offset),
        "provenance_sha256": r.provenance_sha256,
        "meta": r.meta or {},
    }


def _options(codec_fp: str, tok_fp: str, video: dict | None) -> dict:
    return {"format": FORMAT, "codec": codec_fp, "tokenizer": tok_fp, "video": video}


def shard_key(rows: Sequence[ManifestRecord], codec: AudioCodec | str, tokenizer: TextTokenizer | str,
              *, video: dict | None = None) -> str:
    """The content key of a shard holding ``rows`` (in that order)."""
    rows_fp = [
        {**_row_fields(r), "duration": None if r.duration is None else float(r.duration),
         "audio_sha256": r.provenance_sha256}
        for r in rows
    ]
    options = _options(codec_fingerprint(codec), tokenizer_fingerprint(tokenizer), video)
    return _sha256_json({"options": options, "rows": rows_fp})


def _video_options(video_frames: bool, fps: float, max_frames: int, size: int) -> dict | None:
    return {"fps": float(fps), "max_frames": int(max_frames), "size": int(size)} if video_frames else None


# ------------------------------------------------------------------------------------------------
# planning


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{int(index):05d}"


@dataclass(frozen=True)
class ShardPlan:
    """One shard to make: its index, its rows' ids (sorted) and its content key. ``rows`` holds the
    records themselves, so a flow can hand a plan to a worker as is."""

    index: int
    ids: tuple[str, ...]
    key: str
    rows: tuple[ManifestRecord, ...] = field(repr=False, compare=False, default=())

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def __len__(self) -> int:
        return len(self.ids)


def plan_shards(records: Iterable[ManifestRecord], rows_per_shard: int = 256, *,
                codec: AudioCodec | str, tokenizer: TextTokenizer | str, video_frames: bool = False,
                video_fps: float = 2.0, video_max_frames: int = 16, video_size: int = 112) -> list[ShardPlan]:
    """Deterministic shards of the kept rows: sorted by id, ``rows_per_shard`` per shard.

    ``codec`` / ``tokenizer`` (objects or their fingerprints) and the video options enter each shard's
    content key; pass the same ones to :func:`tokenize_shard`.
    """
    if not isinstance(rows_per_shard, int) or isinstance(rows_per_shard, bool) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    kept = [r for r in records if r.status == "kept"]
    dup = [i for i, n in Counter(r.id for r in kept).items() if n > 1]
    if dup:
        raise ValueError(f"kept rows must have unique ids; duplicated: {sorted(dup)[:10]}")
    kept.sort(key=lambda r: r.id)
    cfp, tfp = codec_fingerprint(codec), tokenizer_fingerprint(tokenizer)
    video = _video_options(video_frames, video_fps, video_max_frames, video_size)
    plans = []
    for n, start in enumerate(range(0, len(kept), rows_per_shard)):
        rows = tuple(kept[start:start + rows_per_shard])
        key = shard_key(rows, cfp, tfp, video=video)
        plans.append(ShardPlan(index=n, ids=tuple(r.id for r in rows), key=key, rows=rows))
    return plans


# ------------------------------------------------------------------------------------------------
# one shard


@dataclass
class ShardResult:
    """What a shard holds (or why rows are missing from it). ``skipped``: it was already complete."""

    index: int
    name: str
    key: str
    num_rows: int
    num_frames: int
    num_text: int
    sha256: str
    json_sha256: str
    task_rows: dict[str, int] = field(default_factory=dict)
    task_frames: dict[str, int] = field(default_factory=dict)
    task_seconds: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: bool = False
    elapsed_s: float = 0.0  # wall time of this call (not written anywhere)

    def to_dict(self) -> dict:
        return {k: (list(map(list, v)) if k == "failed" else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardResult":
        d = dict(d)
        d["failed"] = [tuple(x) for x in d.get("failed", [])]
        return cls(**d)


def _prepare_row(r: ManifestRecord, tokenizer: TextTokenizer) -> tuple[np.ndarray, int, float, list[int]]:
    """Mono span (right-padded with silence per ``meta.pad_to_seconds``), its rate, the seconds of real
    audio in it, and the text ids; RowError on bad input."""
    try:
        wav, sr = load_span(r.audio_path, r.offset, r.duration)
    except AudioSpanError as e:
        raise RowError(e.reason, e.detail) from None
    mono = to_mono(wav)
    seconds = len(mono) / sr
    pad_to = (r.meta or {}).get("pad_to_seconds")
    if isinstance(pad_to, (int, float)) and not isinstance(pad_to, bool) and math.isfinite(pad_to):
        want = int(round(float(pad_to) * sr))
        if want > len(mono):
            mono = np.pad(mono, (0, want - len(mono)))
    try:
        ids = [] if r.text is None else tokenizer.encode(r.text, allow_special=False)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure quarantines the row
        raise RowError("bad_text", f"{type(e).__name__}: {e}") from None
    return mono, sr, seconds, ids


def _load_video(r: ManifestRecord, video: dict) -> np.ndarray:
    from unimoe.vision import read_video_frames

    if not r.video_path:
        return np.zeros((0, video["size"], video["size"], 3), np.uint8)
    p = Path(r.video_path)
    if not p.is_file():
        raise RowError("missing_video", f"video file not found: {p}")
    try:
        return read_video_frames(p, fps=video["fps"], max_frames=video["max_frames"], size=video["size"])
    except Exception as e:  # noqa: BLE001
        raise RowError("corrupt_video", f"{type(e).__name__}: {str(e)[:300]}") from None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _complete_shard(json_path: Path, st_path: Path, key: str | None) -> dict | None:
    """The shard's JSON if both files are in place, agree with each other and (when given) carry ``key``."""
    doc = _read_json(json_path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if key is not None and doc.get("key") != key:
        return None
    try:
        if st_path.stat().st_size != doc.get("bytes"):
            return None
    except OSError:
        return None
    if sha256_file(st_path) != doc.get("sha256"):
        return None
    return doc


def _result_from_doc(doc: dict, json_sha256: str, *, skipped: bool, elapsed: float) -> ShardResult:
    task_rows: Counter = Counter()
    task_frames: Counter = Counter()
    task_seconds: dict[str, float] = {}
    for row in doc["rows"]:
        task_rows[row["task"]] += 1
        task_frames[row["task"]] += row["num_frames"]
        task_seconds[row["task"]] = task_seconds.get(row["task"], 0.0) + row["duration"]
    return ShardResult(
        index=doc["shard"], name=doc["name"], key=doc["key"], num_rows=len(doc["rows"]),
        num_frames=doc["num_frames"], num_text=doc["num_text"], sha256=doc["sha256"], json_sha256=json_sha256,
        task_rows=dict(sorted(task_rows.items())), task_frames=dict(sorted(task_frames.items())),
        task_seconds={k: round(v, 6) for k, v in sorted(task_seconds.items())},
        failed=[tuple(x) for x in doc["failed"]], skipped=skipped, elapsed_s=elapsed,
    )


def _codes_dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= 32767 else torch.int32


def _batches(items: list, seconds: list[float], max_batch_seconds: float) -> list[list[int]]:
    """Consecutive index groups whose audio adds up to at most ``max_batch_seconds`` (>= 1 item each)."""
    out: list[list[int]] = []
    cur: list[int] = []
    acc = 0.0
    for i in range(len(items)):
        if cur and acc + seconds[i] > max_batch_seconds:
            out.append(cur)
            cur, acc = [], 0.0
        cur.append(i)
        acc += seconds[i]
    if cur:
        out.append(cur)
    return out


def tokenize_shard(plan_rows: ShardPlan | Sequence[ManifestRecord], out_dir: str | Path, shard_index: int,
                   codec: AudioCodec, tokenizer: TextTokenizer, *, video_frames: bool = False,
                   batch_size: int = 8, max_batch_seconds: float = 600.0, video_fps: float = 2.0,
                   video_max_frames: int = 16, video_size: int = 112) -> ShardResult:
    """Tokenize one shard's rows into ``out_dir/shard-NNNNN.{safetensors,json}`` (atomic writes).

    ``plan_rows``: a :class:`ShardPlan` or its records (in plan order). Audio is read row by row and
    encoded in groups of at most ``max_batch_seconds`` of audio (``batch_size`` windows per forward).
    Rows that fail are returned in ``failed`` (and recorded in the JSON), not written. A shard
    already complete with the same content key is not touched (``skipped=True``).
    """
    t0 = time.monotonic()
    if isinstance(plan_rows, ShardPlan):
        if plan_rows.index != shard_index:
            raise ValueError(f"shard_index {shard_index} differs from the plan's index {plan_rows.index}")
        rows = list(plan_rows.rows)
        if [r.id for r in rows] != list(plan_rows.ids):
            raise ValueError(f"{plan_rows.name}: the plan's rows do not match its ids")
    else:
        rows = list(plan_rows)
    if any(r.status != "kept" for r in rows):
        raise ValueError("tokenize_shard takes kept rows only")
    if len({r.id for r in rows}) != len(rows):
        raise ValueError("tokenize_shard: duplicate ids in one shard")
    video = _video_options(video_frames, video_fps, video_max_frames, video_size)
    key = shard_key(rows, codec, tokenizer, video=video)
    if isinstance(plan_rows, ShardPlan) and plan_rows.key != key:
        raise TokenizeError(f"{plan_rows.name}: content key differs from the plan's; plan_shards was given "
                            "a different codec, tokenizer or video options than tokenize_shard")

    out = Path(out_dir)
    name = shard_name(shard_index)
    st_path, json_path = out / f"{name}.safetensors", out / f"{name}.json"
    doc = _complete_shard(json_path, st_path, key)
    if doc is not None and doc.get("shard") == shard_index:
        log.info("%s: complete (same content key), skipped", name)
        return _result_from_doc(doc, sha256_file(json_path), skipped=True, elapsed=time.monotonic() - t0)

    failed: dict[str, tuple[str, str, str]] = {}
    codes: dict[str, torch.Tensor] = {}
    text_ids: dict[str, list[int]] = {}
    videos: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def fail(r: ManifestRecord, reason: str, detail: str) -> None:
        failed[r.id] = (r.id, reason, detail)

    # Load and encode group by group, so at most max_batch_seconds of audio is in memory.
    est = [float(r.duration) if r.duration and math.isfinite(r.duration) else 0.0 for r in rows]
    for group in _batches(rows, est, max_batch_seconds):
        ready: list[tuple[ManifestRecord, np.ndarray, int]] = []
        for i in group:
            r = rows[i]
            try:
                mono, sr, secs, ids = _prepare_row(r, tokenizer)
                if video is not None:
                    videos[r.id] = _load_video(r, video)
            except RowError as e:
                fail(r, e.reason, e.detail)
                continue
            except Exception as e:  # noqa: BLE001 - never crash the run on one row
                log.exception("%s: unexpected error on row %s", name, r.id)
                fail(r, "internal_error", f"{type(e).__name__}: {str(e)[:300]}")
                continue
            text_ids[r.id] = ids
            seconds[r.id] = secs
            ready.append((r, mono, sr))
        if not ready:
            continue
        try:
            got = codec.encode([m for _, m, _ in ready], [sr for _, _, sr in ready], batch_size=batch_size)
            pairs = list(zip(ready, got))
        except Exception:  # noqa: BLE001 - isolate the row that breaks the batch
            pairs = []
            for item in ready:
                r, m, sr = item
                try:
                    pairs.append((item, codec.encode([m], [sr], batch_size=batch_size)[0]))
                except Exception as e:  # noqa: BLE001
                    fail(r, "encode_failed", f"{type(e).__name__}: {str(e)[:300]}")
        for (r, _, _), c in pairs:
            if c.dim() != 2 or c.shape[0] != codec.num_codebooks:
                fail(r, "encode_failed", f"codec returned shape {tuple(c.shape)}")
            elif c.shape[1] == 0:
                fail(r, "zero_length", "the codec returned zero frames")
            elif int(c.min()) < 0 or int(c.max()) >= codec.codebook_size:
                fail(r, "encode_failed", f"codes outside [0, {codec.codebook_size})")
            else:
                codes[r.id] = c
        del ready, pairs

    # Assemble in row order.
    K = codec.num_codebooks
    dtype = _codes_dtype(codec.codebook_size)
    row_docs, code_parts, text_parts, video_parts = [], [], [], []
    fo = to = vo = 0
    for r in rows:
        if r.id in failed or r.id not in codes:
            if r.id not in failed:  # pragma: no cover - defensive
                fail(r, "internal_error", "row produced no codes")
            continue
        c, ids = codes[r.id], text_ids[r.id]
        d = {**_row_fields(r), "duration": round(seconds[r.id], 6),
             "frame_offset": fo, "num_frames": int(c.shape[1]), "text_offset": to, "num_text": len(ids)}
        code_parts.append(c.to(dtype))
        text_parts.append(torch.tensor(ids, dtype=torch.int32))
        fo += int(c.shape[1])
        to += len(ids)
        if video is not None:
            v = videos[r.id]
            d["video_offset"], d["num_video"] = vo, int(v.shape[0])
            video_parts.append(v)
            vo += int(v.shape[0])
        row_docs.append(d)

    tensors = {
        "codes": torch.cat(code_parts, dim=1).contiguous() if code_parts else torch.zeros(K, 0, dtype=dtype),
        "text_ids": torch.cat(text_parts).contiguous() if text_parts else torch.zeros(0, dtype=torch.int32),
    }
    if video is not None:
        s = video["size"]
        tensors["video"] = (torch.from_numpy(np.concatenate(video_parts)) if video_parts
                            else torch.zeros(0, s, s, 3, dtype=torch.uint8)).contiguous()
    from safetensors.torch import save as st_save

    meta = json.dumps({"format": FORMAT, "shard": shard_index, "key": key}, sort_keys=True)
    blob = st_save(tensors, metadata={_ST_META_KEY: meta})  # one metadata entry: byte-deterministic
    doc = {
        "format": FORMAT, "shard": shard_index, "name": name, "key": key,
        "file": st_path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
        "num_codebooks": K, "codebook_size": codec.codebook_size, "frame_rate": codec.frame_rate,
        "codes_dtype": str(dtype).replace("torch.", ""), "num_frames": fo, "num_text": to,
        "video": video, "num_video": vo if video is not None else None,
        "rows": row_docs,
        "failed": [list(failed[r.id]) for r in rows if r.id in failed],
    }
    atomic_write_bytes(st_path, blob)  # first the data ...
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
    atomic_write_bytes(json_path, text.encode("utf-8"))  # ... then the record that vouches for it
    res = _result_from_doc(doc, hashlib.sha256(text.encode("utf-8")).hexdigest(), skipped=False,
                           elapsed=time.monotonic() - t0)
    log.info("%s: %d rows, %d frames, %d failed, %.2f s", name, res.num_rows, res.num_frames, len(res.failed),
             res.elapsed_s)
    return res


# ------------------------------------------------------------------------------------------------
# index


def _clean_temporaries(out: Path) -> list[str]:
    """Remove temporary files an interrupted run left behind (ours only, by name)."""
    gone = []
    for p in out.iterdir():
        if p.is_file() and _TMP_RE.match(p.name):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def write_index(out_dir: str | Path, shard_results: Sequence[ShardResult], codec_info: dict | AudioCodec,
                tokenizer_info: dict | TextTokenizer, *, prune: bool = True) -> Path:
    """Write ``out_dir/index.json`` atomically (only if its bytes change) after checking every listed
    shard is on disk and matches its result. With ``prune``, shard files not listed (from an earlier
    run with other rows) and temporary files of interrupted writes are removed. Returns the path."""
    out = Path(out_dir)
    if isinstance(codec_info, AudioCodec):
        codec_info = codec_info.info()
    if isinstance(tokenizer_info, TextTokenizer):
        tokenizer_info = _tokenizer_info(tokenizer_info)
    codec_info = dict(codec_info)
    if "is_random_init" not in codec_info or not isinstance(codec_info["is_random_init"], bool):
        raise ValueError("codec_info must record is_random_init (true/false): use codec.info()")
    if not tokenizer_info.get("sha256"):
        raise ValueError("tokenizer_info must record the tokenizer's sha256 (use tokenizer_info(tok))")
    results = sorted(shard_results, key=lambda r: r.index)
    if len({r.index for r in results}) != len(results):
        raise TokenizeError("write_index: two results for the same shard index")

    shards, failed, seen = [], [], {}
    tasks: dict[str, dict[str, float]] = {}
    K = codec_info.get("num_codebooks")
    for res in results:
        st_path, json_path = out / f"{res.name}.safetensors", out / f"{res.name}.json"
        doc = _complete_shard(json_path, st_path, res.key)
        if doc is None:
            raise TokenizeError(
                f"write_index: {res.name} is missing, incomplete or from other inputs in {out}")
        json_sha = sha256_file(json_path)
        if (doc["sha256"], json_sha, len(doc["rows"])) != (res.sha256, res.json_sha256, res.num_rows):
            raise TokenizeError(f"write_index: {res.name} on disk differs from its result (rewritten since?)")
        if K is not None and doc["num_codebooks"] != K:
            raise TokenizeError(
                f"write_index: {res.name} has {doc['num_codebooks']} codebooks, codec has {K}")
        for row in doc["rows"]:
            if row["id"] in seen:
                raise TokenizeError(f"write_index: id {row['id']!r} is in {seen[row['id']]} and {res.name}")
            seen[row["id"]] = res.name
            t = tasks.setdefault(row["task"], {"rows": 0, "frames": 0, "seconds": 0.0})
            t["rows"] += 1
            t["frames"] += row["num_frames"]
            t["seconds"] += row["duration"]
        failed += [list(f) for f in doc["failed"]]
        shards.append({"index": res.index, "name": res.name, "file": st_path.name, "json": json_path.name,
                       "sha256": doc["sha256"], "bytes": doc["bytes"], "json_sha256": json_sha,
                       "key": res.key, "rows": len(doc["rows"]), "frames": doc["num_frames"],
                       "text_tokens": doc["num_text"],
                       "failed": len(doc["failed"])})
    for t in tasks.values():
        t["seconds"] = round(t["seconds"], 3)
    first = _read_json(out / f"{results[0].name}.json") if results else None
    tok_file = out / TOKENIZER_NAME
    index = {
        "format": FORMAT,
        "num_shards": len(shards),
        "num_rows": sum(s["rows"] for s in shards),
        "num_frames": sum(s["frames"] for s in shards),
        "num_failed": len(failed),
        "num_codebooks": K,
        "codebook_size": codec_info.get("codebook_size"),
        "frame_rate": codec_info.get("frame_rate"),
        "codes_dtype": None if first is None else first["codes_dtype"],
        "video": None if first is None else first["video"],
        "is_random_init": codec_info["is_random_init"],
        "codec_label": codec_info.get("label"),
        "codec": codec_info,
        "tokenizer": {**tokenizer_info,
                      "file": TOKENIZER_NAME if tok_file.is_file() else None,
                      "file_sha256": sha256_file(tok_file) if tok_file.is_file() else None},
        "tasks": dict(sorted(tasks.items())),
        "shards": shards,
        "failed": sorted(failed),
    }
    if prune:
        listed = {s["file"] for s in shards} | {s["json"] for s in shards}
        for p in out.iterdir():
            if p.is_file() and _SHARD_RE.match(p.name) and p.name not in listed:
                p.unlink()
        _clean_temporaries(out)
    path = out / INDEX_NAME
    text = json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    try:
        unchanged = path.read_bytes() == text
    except OSError:
        unchanged = False
    if not unchanged:
        atomic_write_bytes(path, text)
    return path


# ------------------------------------------------------------------------------------------------
# reading


@dataclass
class TokenizedItem:
    """One tokenized row. ``codes``: LongTensor ``[K, T]``; ``text_ids``: LongTensor ``[N]``;
    ``video``: uint8 ``[F, S, S, 3]`` when the shards were made with ``video_frames=True``."""

    id: str
    task: str
    codes: torch.Tensor
    text_ids: torch.Tensor
    speaker: str | None
    language: str | None
    video_path: str | None
    meta: dict
    text: str | None = None
    duration: float = 0.0
    split: str | None = None
    video: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


class TokenShardReader:
    """Random access to tokenized rows in ``out_dir`` (validated against ``index.json``).

    ``verify``: ``"hash"`` (default) checks every shard file's SHA-256 against the index; ``"size"``
    checks only sizes (faster for very large datasets). Shards are opened lazily and memory-mapped;
    at most ``max_open_shards`` stay open (LRU). Safe to share with DataLoader workers (open handles
    are not pickled).
    """

    def __init__(self, out_dir: str | Path, *, verify: str = "hash", max_open_shards: int = 8):
        if verify not in ("hash", "size"):
            raise ValueError(f"verify must be 'hash' or 'size', got {verify!r}")
        self.out_dir = Path(out_dir)
        self.max_open_shards = max(1, int(max_open_shards))
        ipath = self.out_dir / INDEX_NAME
        if not ipath.is_file():
            raise TokenizeError(f"no {INDEX_NAME} in {self.out_dir}: tokenisation has not finished there")
        index = _read_json(ipath)
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            got = index.get("format") if isinstance(index, dict) else "unreadable JSON"
            raise TokenizeError(f"{ipath}: not a token index of format {FORMAT} (got {got})")
        self.index = index
        self._rows: list[dict] = []
        self._loc: list[tuple[int, int]] = []  # (position in self._files, row within shard)
        self._files: list[Path] = []
        for s in index["shards"]:
            st_path, json_path = self.out_dir / s["file"], self.out_dir / s["json"]
            for p in (st_path, json_path):
                if not p.is_file():
                    raise TokenizeError(f"{p.name} (listed in {ipath}) is missing; re-run tokenisation")
            if st_path.stat().st_size != s["bytes"]:
                raise TokenizeError(f"{st_path}: {st_path.stat().st_size} bytes, the index says {s['bytes']}")
            if verify == "hash" and sha256_file(st_path) != s["sha256"]:
                raise TokenizeError(f"{st_path}: SHA-256 differs from the index (corrupt or rewritten)")
            if sha256_file(json_path) != s["json_sha256"]:
                raise TokenizeError(f"{json_path}: SHA-256 differs from the index (corrupt or rewritten)")
            doc = _read_json(json_path)
            if not isinstance(doc, dict) or doc.get("key") != s["key"] or doc.get("sha256") != s["sha256"]:
                raise TokenizeError(f"{json_path}: does not match the index entry for {s['name']}")
            if len(doc["rows"]) != s["rows"] or doc["num_frames"] != s["frames"]:
                raise TokenizeError(f"{json_path}: {len(doc['rows'])} rows / {doc['num_frames']} frames, "
                                    f"the index says {s['rows']} / {s['frames']}")
            fpos = len(self._files)
            self._files.append(st_path)
            for j, row in enumerate(doc["rows"]):
                self._rows.append(row)
                self._loc.append((fpos, j))
        self._by_id = {r["id"]: i for i, r in enumerate(self._rows)}
        if len(self._by_id) != len(self._rows):
            raise TokenizeError(f"{ipath}: duplicate ids across shards")
        if len(self._rows) != index["num_rows"]:
            raise TokenizeError(f"{ipath}: lists {index['num_rows']} rows, the shards hold {len(self._rows)}")
        self._open: "OrderedDict[int, Any]" = OrderedDict()
        self._lock = threading.Lock()

    # ---- info ----------------------------------------------------------------------------------------
    @property
    def codec_info(self) -> dict:
        return self.index["codec"]

    @property
    def is_random_init(self) -> bool:
        return bool(self.index["is_random_init"])

    @property
    def num_codebooks(self) -> int:
        return int(self.index["num_codebooks"])

    @property
    def tokenizer_path(self) -> Path:
        return self.out_dir / TOKENIZER_NAME

    def load_tokenizer(self) -> TextTokenizer:
        """The tokenizer the text ids were made with (checked against the index's hash)."""
        tok = TextTokenizer.load(self.tokenizer_path)
        if tokenizer_fingerprint(tok) != self.index["tokenizer"]["sha256"]:
            raise TokenizeError(f"{self.tokenizer_path} is not the tokenizer these shards were made with")
        return tok

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        return [r["id"] for r in self._rows]

    def row(self, i: int) -> dict:
        """The shard JSON's record for item ``i`` (no tensors are read)."""
        return self._rows[self._norm(i)]

    def num_frames(self, i: int) -> int:
        return int(self._rows[self._norm(i)]["num_frames"])

    def by_task(self, task: str) -> list[int]:
        return [i for i, r in enumerate(self._rows) if r["task"] == task]

    def by_ids(self, ids: Iterable[str]) -> list[int]:
        ids = list(ids)
        missing = [x for x in ids if x not in self._by_id]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the tokenized set: {missing[:10]}")
        return [self._by_id[x] for x in ids]

    # ---- items ---------------------------------------------------------------------------------------
    def _norm(self, i: int) -> int:
        n = len(self._rows)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} out of range for {n} items")
        return i

    def _handle(self, fpos: int):
        from safetensors import safe_open

        with self._lock:
            h = self._open.get(fpos)
            if h is not None:
                self._open.move_to_end(fpos)
                return h
            h = safe_open(str(self._files[fpos]), framework="pt")
            self._open[fpos] = h
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
            return h

    def __getitem__(self, i: int) -> TokenizedItem:
        i = self._norm(i)
        row = self._rows[i]
        fpos, _ = self._loc[i]
        h = self._handle(fpos)
        fo, nf, to, nt = row["frame_offset"], row["num_frames"], row["text_offset"], row["num_text"]
        codes = h.get_slice("codes")[:, fo:fo + nf].to(torch.long)
        text = h.get_slice("text_ids")[to:to + nt].to(torch.long)
        video = None
        if "video_offset" in row:
            vo, nv = row["video_offset"], row["num_video"]
            video = h.get_slice("video")[vo:vo + nv].numpy() if nv else None
        return TokenizedItem(id=row["id"], task=row["task"], codes=codes, text_ids=text,
                             speaker=row["speaker"], language=row["language"], video_path=row["video_path"],
                             meta=dict(row["meta"]),
                             text=row["text"], duration=row["duration"], split=row["split"], video=video)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TokenShardReader({self.out_dir}, {len(self)} items in {len(self._files)} shards"
                f"{', RANDOM-INIT codec' if self.is_random_init else ''})")


# ------------------------------------------------------------------------------------------------
# tokenizer, accounting and the sequential driver


def corpus_texts(records: Iterable[ManifestRecord]) -> list[str]:
    """The texts the tokenizer is trained on: those of the kept rows, sorted by id."""
    return [r.text for r in sorted((r for r in records if r.status == "kept"), key=lambda r: r.id) if r.text]


def train_or_load_tokenizer(tok_cfg: TokenizerConfig, records: Iterable[ManifestRecord],
                            cache_path: str | Path | None) -> TextTokenizer:
    """``tok_cfg.path`` if configured (a local Qwen tokenizer.json); otherwise the tokenizer trained on
    the kept rows' texts (sorted by id), reused from ``cache_path`` when it was trained on the same."""
    return TextTokenizer.from_config(tok_cfg, corpus_texts=corpus_texts(records), cache_path=cache_path)


def apply_failures(records: Iterable[ManifestRecord], results: Iterable[ShardResult]) -> list[ManifestRecord]:
    """``records`` with every kept row that a shard failed on marked ``quarantined`` (reason, detail)."""
    bad = {f[0]: f for res in results for f in res.failed}
    out = []
    for r in records:
        f = bad.get(r.id) if r.status == "kept" else None
        out.append(mark(r, "quarantined", f[1], f[2]) if f else r)
    return out


def tokenize_manifest(records: Iterable[ManifestRecord], out_dir: str | Path, cfg: UniMoEConfig, *,
                      rows_per_shard: int = 256,
                      progress: Callable[[int, int, ShardResult], None] | None = None,
                      video_frames: bool = False, batch_size: int = 8, codec: AudioCodec | None = None,
                      tokenizer: TextTokenizer | None = None) -> dict:
    """Plan, tokenize every shard (sequentially) and write the index. Re-running is cheap: complete
    shards are skipped. ``progress(done, total, result)`` is called after each shard.

    Returns the accounting: shards written/skipped, rows in/kept/tokenized, ``quarantined`` (id,
    reason, detail per failed row), ``records`` (the input with failed kept rows quarantined), totals.
    """
    t0 = time.monotonic()
    records = list(records)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = train_or_load_tokenizer(cfg.tokenizer, records, out / TOKENIZER_NAME)
    _ensure_tokenizer_file(out / TOKENIZER_NAME, tokenizer)
    if codec is None:
        codec = AudioCodec.from_model_config(cfg)
    if codec.num_codebooks != cfg.audio.num_codebooks:
        raise ValueError(
            f"codec has {codec.num_codebooks} codebooks, config asks for {cfg.audio.num_codebooks}")
    plans = plan_shards(records, rows_per_shard, codec=codec, tokenizer=tokenizer, video_frames=video_frames)
    results = []
    for n, plan in enumerate(plans):
        res = tokenize_shard(plan, out, plan.index, codec, tokenizer, video_frames=video_frames,
                             batch_size=batch_size)
        results.append(res)
        if progress is not None:
            progress(n + 1, len(plans), res)
    index_path = write_index(out, results, codec.info(), tokenizer_info(tokenizer, cfg.tokenizer))
    updated = apply_failures(records, results)
    quarantined = [{"id": f[0], "reason": f[1], "detail": f[2]} for res in results for f in res.failed]
    rows_written = sum(r.num_rows for r in results)
    secs = sum(sum(r.task_seconds.values()) for r in results)
    elapsed = time.monotonic() - t0
    return {
        "out_dir": str(out),
        "index_path": str(index_path),
        "num_shards": len(plans),
        "shards_written": sum(not r.skipped for r in results),
        "shards_skipped": sum(r.skipped for r in results),
        "rows_in": len(records),
        "rows_kept": sum(len(p) for p in plans),
        "rows_tokenized": rows_written,
        "num_frames": sum(r.num_frames for r in results),
        "audio_seconds": round(secs, 3),
        "quarantined": quarantined,
        "reasons": dict(sorted(Counter(q["reason"] for q in quarantined).items())),
        "records": updated,
        "is_random_init": codec.is_random_init,
        "codec_label": codec.label,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "elapsed_s": round(elapsed, 3),
        "results": [r.to_dict() for r in results],
    }


def _ensure_tokenizer_file(path: Path, tokenizer: TextTokenizer) -> None:
    """``out_dir/tokenizer.json`` holds exactly the tokenizer the ids come from (written only if it
    differs; then its training sidecar, which would no longer describe it, is removed)."""
    text = tokenizer.backend.to_str(pretty=False).encode("utf-8")
    try:
        if path.read_bytes() == text:
            return
    except OSError:
        pass
    path.with_name(path.name + ".meta.json").unlink(missing_ok=True)
    atomic_write_bytes(path, text)
