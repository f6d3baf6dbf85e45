"""Cut long music rows into fixed-length clips, by reference (no audio is copied).

A kept row of a segmentable task (default: ``t2m``) covering ``[offset, offset + duration)`` of its
source file becomes clips ``<id>__clip0000``, ``<id>__clip0001``, ... of ``clip_seconds`` each, with
``offset``/``duration`` pointing into the same ``audio_path``, ``parent_id`` naming the row they came
from and everything else (provenance hash, licence, split, text, meta) inherited.

The remainder after the last full clip (the *tail*) follows ``tail``:

- ``"drop"`` (default): the tail becomes a **filtered** row with reason ``short_tail``;
- ``"keep"``: a tail of at least ``min_tail_seconds`` is kept as a shorter clip;
- ``"pad"``: a tail of at least ``min_tail_seconds`` is kept, ``duration`` is the audio actually
  there and ``meta["pad_to_seconds"] = clip_seconds`` tells the loader to pad it with silence.

Tails shorter than ``min_tail_seconds`` are filtered (``short_tail``) under every policy. A row
shorter than one clip is all tail: if the policy drops it, it is filtered with reason
``too_short_for_clip``. Nothing is dropped silently; rows that are not segmented (other tasks,
non-kept rows) pass through unchanged.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

from data.manifest import ManifestRecord
from unimoe.common.reasons import Reason

TAIL_POLICIES = ("drop", "pad", "keep")
_EPS = 1e-6


def clip_id(parent_id: str, index: int) -> str:
    return f"{parent_id}__clip{index:04d}"


def segment_records(
    records: Iterable[ManifestRecord],
    clip_seconds: float = 20.0,
    tail: str = "drop",
    min_tail_seconds: float | None = None,
    tasks: Sequence[str] = ("t2m",),
) -> list[ManifestRecord]:
    """Cut kept rows of ``tasks`` into ``clip_seconds`` clips (see the module doc for the tail policy).

    ``min_tail_seconds`` defaults to a quarter of ``clip_seconds``.
    """
    if not (isinstance(clip_seconds, (int, float)) and math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"clip_seconds must be a positive number, got {clip_seconds!r}")
    if tail not in TAIL_POLICIES:
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    min_tail = clip_seconds / 4 if min_tail_seconds is None else float(min_tail_seconds)
    if min_tail < 0:
        raise ValueError(f"min_tail_seconds must be >= 0, got {min_tail_seconds!r}")
    out: list[ManifestRecord] = []
    for r in records:
        if r.status != "kept" or r.task not in tasks or not r.duration or r.duration <= 0:
            out.append(r)
        else:
            out.extend(_clips(r, clip_seconds, tail, min_tail))
    return out


def _clips(r: ManifestRecord, clip_seconds: float, tail: str, min_tail: float) -> Iterator[ManifestRecord]:
    """The clips of one segmentable row, its tail kept or filtered by the policy."""
    base = float(r.offset or 0.0)
    total = float(r.duration)
    source_duration = float(r.source_duration) if r.source_duration else base + total
    n_full = int(math.floor(total / clip_seconds + _EPS))
    rem = total - n_full * clip_seconds
    if rem < 1e-3:  # sub-millisecond rounding leftovers are not a tail
        rem = 0.0

    def clip(k: int, duration: float, **changes) -> ManifestRecord:
        return r.replace(
            id=clip_id(r.id, k),
            offset=round(base + k * clip_seconds, 6),
            duration=round(duration, 6),
            source_duration=source_duration,
            parent_id=r.id,
            meta=dict(r.meta or {}),
            **changes,
        )

    for k in range(n_full):
        yield clip(k, clip_seconds)
    if rem <= 0:
        return
    if tail != "drop" and rem + _EPS >= min_tail:
        c = clip(n_full, rem)
        if tail == "pad":
            c.meta["pad_to_seconds"] = float(clip_seconds)
        yield c
        return
    code = Reason.SHORT_TAIL if n_full > 0 else Reason.TOO_SHORT_FOR_CLIP
    why = (
        f"tail policy {tail!r} drops tails"
        if tail == "drop"
        else f"shorter than min_tail_seconds={min_tail:g} s (tail policy {tail!r})"
    )
    what = "tail" if n_full > 0 else "whole row"
    yield clip(
        n_full,
        rem,
        status="filtered",
        reason=code,
        detail=f"{what} of {rem:.3f} s after {n_full} clip(s) of {clip_seconds:g} s: {why}",
    )
