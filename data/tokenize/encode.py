"""Encoding: a shard's rows read, encoded by the codec and tokenized, with a reason code for every
row that cannot be.

Each row's span (``offset``/``duration``, seconds) is read from ``audio_path`` with
:func:`unimoe.common.audio.load_span` (only the span's frames), mixed to mono, right-padded with silence to
``meta.pad_to_seconds``, and encoded by the codec in groups of at most ``max_batch_seconds`` of audio
(the codec resamples); its text is tokenized with ``allow_special=False`` (untrusted text cannot
inject markers). Bad input never crashes the run and is never dropped silently: the row is returned
as failed with a code from :data:`REASONS`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from data.manifest import ManifestRecord
from data.tokenize.plan import row_fields
from unimoe.common.audio import AudioSpanError, load_span, to_mono
from unimoe.common.reasons import Reason
from unimoe.codec import AudioCodec
from unimoe.tokenizer import TextTokenizer
from unimoe.training.shards import ShardRow

log = logging.getLogger(__name__)

# Reason codes for rows that cannot be tokenized (status "quarantined"): the project's one vocabulary
# (unimoe.common.reasons), the audio ones as AudioSpanError reports them.
REASONS: dict[str, str] = {r.value: r.meaning for r in (
    Reason.MISSING_FILE, Reason.CORRUPT_AUDIO, Reason.TRUNCATED, Reason.BAD_SEGMENT, Reason.ZERO_LENGTH,
    Reason.NON_FINITE, Reason.ENCODE_FAILED, Reason.BAD_TEXT, Reason.MISSING_VIDEO, Reason.CORRUPT_VIDEO,
    Reason.INTERNAL_ERROR)}


class RowError(Exception):
    """One row cannot be tokenized; ``reason`` is a code from :data:`REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


def _batches(seconds: list[float], max_batch_seconds: float) -> list[list[int]]:
    """Consecutive index groups whose audio adds up to at most ``max_batch_seconds`` (>= 1 item each)."""
    out: list[list[int]] = []
    cur: list[int] = []
    acc = 0.0
    for i, s in enumerate(seconds):
        if cur and acc + s > max_batch_seconds:
            out.append(cur)
            cur, acc = [], 0.0
        cur.append(i)
        acc += s
    if cur:
        out.append(cur)
    return out


def _encode_group(codec: AudioCodec, ready: list[tuple[ManifestRecord, np.ndarray, int]], batch_size: int,
                  fail) -> list[tuple[ManifestRecord, torch.Tensor]]:
    """Codes of a group of prepared rows; when the batch fails, row by row (to isolate the row that
    breaks it)."""
    try:
        got = codec.encode([m for _, m, _ in ready], [sr for _, _, sr in ready], batch_size=batch_size)
        return [(r, c) for (r, _, _), c in zip(ready, got)]
    except Exception:  # noqa: BLE001
        pairs = []
        for r, m, sr in ready:
            try:
                pairs.append((r, codec.encode([m], [sr], batch_size=batch_size)[0]))
            except Exception as e:  # noqa: BLE001
                fail(r, "encode_failed", f"{type(e).__name__}: {str(e)[:300]}")
        return pairs


def encode_rows(rows: Sequence[ManifestRecord], codec: AudioCodec, tokenizer: TextTokenizer, *,
                video: dict | None, batch_size: int = 8, max_batch_seconds: float = 600.0,
                name: str = "shard") -> tuple[list[ShardRow], list[tuple[str, str, str]]]:
    """The encoded rows (in row order) and ``(id, reason, detail)`` for each row that failed (in row
    order). Audio is loaded and encoded group by group, so at most ``max_batch_seconds`` of it is in
    memory. ``video``: the video options (None: no frames are read)."""
    failed: dict[str, tuple[str, str, str]] = {}
    codes: dict[str, torch.Tensor] = {}
    text_ids: dict[str, list[int]] = {}
    videos: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    def fail(r: ManifestRecord, reason: str, detail: str) -> None:
        failed[r.id] = (r.id, reason, detail)

    est = [float(r.duration) if r.duration and math.isfinite(r.duration) else 0.0 for r in rows]
    for group in _batches(est, max_batch_seconds):
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
        for r, c in _encode_group(codec, ready, batch_size, fail):
            if c.dim() != 2 or c.shape[0] != codec.num_codebooks:
                fail(r, "encode_failed", f"codec returned shape {tuple(c.shape)}")
            elif c.shape[1] == 0:
                fail(r, "zero_length", "the codec returned zero frames")
            elif int(c.min()) < 0 or int(c.max()) >= codec.codebook_size:
                fail(r, "encode_failed", f"codes outside [0, {codec.codebook_size})")
            else:
                codes[r.id] = c
        del ready

    encoded = []
    for r in rows:
        if r.id in failed:
            continue
        if r.id not in codes:  # pragma: no cover - defensive
            fail(r, "internal_error", "row produced no codes")
            continue
        encoded.append(ShardRow(fields=row_fields(r), seconds=seconds[r.id], codes=codes[r.id],
                                text_ids=text_ids[r.id], video=videos.get(r.id)))
    return encoded, [failed[r.id] for r in rows if r.id in failed]
