"""Writing: one shard per call (plan -> encode -> :func:`unimoe.training.shards.write_shard`), the
failed rows back into the manifest, and the sequential driver over a whole manifest."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Sequence

from data.manifest import ManifestRecord, mark
from data.tokenize.encode import encode_rows
from data.tokenize.plan import ShardPlan, plan_shards, shard_key, video_options
from unimoe.codec import AudioCodec
from unimoe.config import UniMoEConfig
from unimoe.io import sha256_file
from unimoe.tokenizer import TextTokenizer, tokenizer_fingerprint, train_or_load_tokenizer
from unimoe.training.shards import (
    TOKENIZER_NAME,
    ShardResult,
    TokenizeError,
    complete_shard,
    shard_name,
    shard_paths,
    tokenizer_info,
    write_index,
    write_shard,
    write_tokenizer_file,
)

log = logging.getLogger(__name__)


def _shard_rows(plan_rows: ShardPlan | Sequence[ManifestRecord], shard_index: int) -> list[ManifestRecord]:
    """The rows of a plan (checked against its index and ids) or of a plain sequence; kept and unique."""
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
    return rows


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
    rows = _shard_rows(plan_rows, shard_index)
    video = video_options(video_frames, video_fps, video_max_frames, video_size)
    key = shard_key(rows, codec, tokenizer, video=video)
    if isinstance(plan_rows, ShardPlan) and plan_rows.key != key:
        raise TokenizeError(f"{plan_rows.name}: content key differs from the plan's; plan_shards was given "
                            "a different codec, tokenizer or video options than tokenize_shard")
    name = shard_name(shard_index)
    doc = complete_shard(out_dir, shard_index, key)
    if doc is not None and doc.get("shard") == shard_index:
        log.info("%s: complete (same content key), skipped", name)
        return ShardResult.from_doc(doc, sha256_file(shard_paths(out_dir, shard_index)[1]), skipped=True,
                                    elapsed=time.monotonic() - t0)
    encoded, failed = encode_rows(rows, codec, tokenizer, video=video, batch_size=batch_size,
                                  max_batch_seconds=max_batch_seconds, name=name)
    res = write_shard(out_dir, shard_index, key, encoded, failed, num_codebooks=codec.num_codebooks,
                      codebook_size=codec.codebook_size, frame_rate=codec.frame_rate, video=video, started=t0)
    log.info("%s: %d rows, %d frames, %d failed, %.2f s", name, res.num_rows, res.num_frames, len(res.failed),
             res.elapsed_s)
    return res


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
    write_tokenizer_file(out, tokenizer)
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
    quarantined = [{"id": f[0], "reason": f[1], "detail": f[2]} for res in results for f in res.failed]
    secs = sum(sum(r.task_seconds.values()) for r in results)
    return {
        "out_dir": str(out),
        "index_path": str(index_path),
        "num_shards": len(plans),
        "shards_written": sum(not r.skipped for r in results),
        "shards_skipped": sum(r.skipped for r in results),
        "rows_in": len(records),
        "rows_kept": sum(len(p) for p in plans),
        "rows_tokenized": sum(r.num_rows for r in results),
        "num_frames": sum(r.num_frames for r in results),
        "audio_seconds": round(secs, 3),
        "quarantined": quarantined,
        "reasons": dict(sorted(Counter(q["reason"] for q in quarantined).items())),
        "records": apply_failures(records, results),
        "is_random_init": codec.is_random_init,
        "codec_label": codec.label,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "elapsed_s": round(time.monotonic() - t0, 3),
        "results": [r.to_dict() for r in results],
    }
