"""Planning: the kept rows cut into deterministic shards, each with a content key.

The key is the SHA-256 of everything a shard's bytes depend on: every written row field, provenance
hash, offset, duration, text, meta, the codec's identity (its info and a hash of its weights), the
tokenizer's hash and the options. The writer skips a complete shard with the same key.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from data.manifest import ManifestRecord
from unimoe.codec import AudioCodec
from unimoe.tokenizer import TextTokenizer, tokenizer_fingerprint
from unimoe.training.shards import FORMAT, shard_name


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


def row_fields(r: ManifestRecord) -> dict:
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


def video_options(video_frames: bool, fps: float, max_frames: int, size: int) -> dict | None:
    return {"fps": float(fps), "max_frames": int(max_frames), "size": int(size)} if video_frames else None


def shard_key(rows: Sequence[ManifestRecord], codec: AudioCodec | str, tokenizer: TextTokenizer | str,
              *, video: dict | None = None) -> str:
    """The content key of a shard holding ``rows`` (in that order)."""
    rows_fp = [
        {**row_fields(r), "duration": None if r.duration is None else float(r.duration),
         "audio_sha256": r.provenance_sha256}
        for r in rows
    ]
    options = {"format": FORMAT, "codec": codec_fingerprint(codec),
               "tokenizer": tokenizer_fingerprint(tokenizer), "video": video}
    return _sha256_json({"options": options, "rows": rows_fp})


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
    content key; pass the same ones to ``tokenize_shard``.
    """
    if not isinstance(rows_per_shard, int) or isinstance(rows_per_shard, bool) or rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    kept = [r for r in records if r.status == "kept"]
    dup = [i for i, n in Counter(r.id for r in kept).items() if n > 1]
    if dup:
        raise ValueError(f"kept rows must have unique ids; duplicated: {sorted(dup)[:10]}")
    kept.sort(key=lambda r: r.id)
    cfp, tfp = codec_fingerprint(codec), tokenizer_fingerprint(tokenizer)
    video = video_options(video_frames, video_fps, video_max_frames, video_size)
    plans = []
    for n, start in enumerate(range(0, len(kept), rows_per_shard)):
        rows = tuple(kept[start:start + rows_per_shard])
        key = shard_key(rows, cfp, tfp, video=video)
        plans.append(ShardPlan(index=n, ids=tuple(r.id for r in rows), key=key, rows=rows))
    return plans
