"""The captioner interface shared by every backend.

A :class:`Captioner` turns :class:`CaptionRequest` s (an audio span plus optional *hints* — the
instruments / tempo / key known from MIDI metadata) into :class:`CaptionResult` s. The contract:

- :meth:`Captioner.caption_batch` returns one result per request, in order, and never raises for
  one bad item: an item that fails (unreadable audio, an empty span, an API error after all
  retries) comes back with ``caption=None`` and ``error`` set, so the caller can filter it with a
  reason. Only a *configuration* error that would fail every item the same way (e.g. the API
  rejecting the key) raises :class:`CaptionerFatalError`.
- The span is read once with :func:`unimoe.common.audio.load_span` (only the frames it covers; a
  missing file, bad bounds, a truncated or empty span or NaN/inf samples raise
  :class:`~unimoe.common.audio.AudioSpanError`, which becomes the item's ``error`` with its reason code)
  and hashed; with a
  :class:`~data.captioning.cache.CaptionCache` the result is looked up under
  ``sha256(span samples) + prompt + model + backend``; a hit is returned with ``cached=True``
  without doing the work again.

Backends implement :meth:`Captioner.cache_prompt` (everything besides the audio that determines
the caption) and :meth:`Captioner._generate`.

:func:`caption_records` applies a captioner to manifest rows (music rows only).
"""

from __future__ import annotations

import hashlib
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from data.manifest import MUSIC_TASKS, ManifestRecord, mark
from unimoe.common.audio import load_span
from unimoe.common.reasons import Reason

if TYPE_CHECKING:  # pragma: no cover
    from data.captioning.cache import CaptionCache

log = logging.getLogger(__name__)

CAPTION_FAILED = Reason.CAPTION_FAILED  # manifest reason code for rows whose captioning failed


class CaptionerFatalError(RuntimeError):
    """A configuration problem that would fail every request the same way (bad key, unknown model)."""


@dataclass
class CaptionRequest:
    """One audio span to caption. ``hints``: ``instruments`` (list), ``tempo_bpm``, ``key`` when known."""

    id: str
    audio_path: str | Path
    offset: float = 0.0
    duration: float | None = None
    hints: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaptionResult:
    """The outcome for one request. ``caption`` is None exactly when ``error`` is set."""

    id: str
    caption: str | None
    backend: str
    model: str
    cached: bool = False
    error: str | None = None
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.caption is not None


# --------------------------------------------------------------------------------------------
# audio spans


def audio_sha256(wav: np.ndarray, sample_rate: int) -> str:
    """SHA-256 of the span's samples (float32, ``[channels, samples]``) and its sample rate."""
    a = np.ascontiguousarray(np.asarray(wav, dtype="<f4"))
    h = hashlib.sha256(f"sr={int(sample_rate)};shape={a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# the interface


class Captioner(ABC):
    """Base class: span loading, caching and per-item error handling.

    Subclasses set :attr:`name` (the backend) and :attr:`model`, and implement
    :meth:`cache_prompt` and :meth:`_generate`.
    """

    name: str = "captioner"
    model: str = ""

    def __init__(self, cache: "CaptionCache | None" = None) -> None:
        self.cache = cache

    # -- to implement --------------------------------------------------------------------

    @abstractmethod
    def cache_prompt(self, request: CaptionRequest) -> str:
        """Everything besides the audio, model and backend that determines the caption (for the cache key)."""

    @abstractmethod
    def _generate(self, request: CaptionRequest, wav: np.ndarray, sr: int) -> tuple[str, dict[str, Any]]:
        """Caption one loaded span: ``(caption, features)``; may raise (-> an error result)."""

    # -- provided ------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        """Remove secrets from a message before it is logged or returned (backends with secrets override)."""
        return text

    def caption_one(self, request: CaptionRequest) -> CaptionResult:
        """Caption one request; never raises except :class:`CaptionerFatalError`."""
        try:
            wav, sr = load_span(request.audio_path, request.offset, request.duration)
            key = None
            if self.cache is not None:
                key = self.cache.key(audio_sha256(wav, sr), self.cache_prompt(request), self.model, self.name)
                hit = self.cache.get(key)
                if hit is not None:
                    return CaptionResult(
                        request.id, hit["caption"], self.name, self.model, cached=True,
                        features=dict(hit.get("features") or {}),
                    )
            caption, features = self._generate(request, wav, sr)
            caption = (caption or "").strip()
            if not caption:
                raise ValueError("the backend returned an empty caption")
            features = _jsonable(features)
            if self.cache is not None and key is not None:
                self.cache.put(key, {"caption": caption, "features": features, "backend": self.name,
                                     "model": self.model, "prompt": self.cache_prompt(request)})
            return CaptionResult(request.id, caption, self.name, self.model, cached=False, features=features)
        except CaptionerFatalError:
            raise
        except Exception as e:  # noqa: BLE001 - one bad item must not stop the batch
            msg = self._redact(f"{type(e).__name__}: {e}")
            log.warning("%s: caption failed for %r: %s", self.name, request.id, msg)
            return CaptionResult(request.id, None, self.name, self.model, cached=False, error=msg)

    def caption_batch(self, requests: Sequence[CaptionRequest]) -> list[CaptionResult]:
        """One result per request, in order (see the module docstring for the error contract)."""
        return [self.caption_one(r) for r in requests]

    def close(self) -> None:
        """Release resources (HTTP connections); a no-op by default."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, cache={self.cache!r})"


def _jsonable(obj: Any) -> Any:
    """Features as plain JSON types (numpy scalars -> Python, non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


# --------------------------------------------------------------------------------------------
# manifest rows


def hints_from_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Caption hints from a row's ``meta`` (``instruments``, ``tempo_bpm``, ``key``), valid values only."""
    meta = meta or {}
    hints: dict[str, Any] = {}
    inst = meta.get("instruments")
    if isinstance(inst, str):
        inst = [inst]
    if isinstance(inst, (list, tuple)):
        names = [str(x).strip() for x in inst if isinstance(x, str) and x.strip()]
        if names:
            hints["instruments"] = names
    tempo = meta.get("tempo_bpm")
    if isinstance(tempo, (int, float)) and not isinstance(tempo, bool) and math.isfinite(tempo) and tempo > 0:
        hints["tempo_bpm"] = float(tempo)
    key = meta.get("key")
    if isinstance(key, str) and key.strip():
        hints["key"] = key.strip()
    return hints


def request_for_record(record: ManifestRecord) -> CaptionRequest:
    return CaptionRequest(
        id=record.id,
        audio_path=record.audio_path or "",
        offset=float(record.offset or 0.0),
        duration=record.duration,
        hints=hints_from_meta(record.meta),
    )


def caption_records(
    records: Iterable[ManifestRecord], captioner: Captioner, *, only_missing: bool = False
) -> list[ManifestRecord]:
    """Caption the kept music rows (t2m / v2m) of ``records``; return all rows, in order.

    A captioned row gets the caption as ``text``; the text it had before is kept in
    ``meta["description"]`` (once: re-captioning a row does not overwrite the original description
    with an earlier machine caption) and ``meta["caption"] = {backend, model, features}``.
    A row whose captioning fails becomes ``filtered`` with reason ``caption_failed`` and the error
    in ``detail``. Speech rows, rows that are not kept and — with ``only_missing`` — rows that
    already have text pass through untouched.
    """
    recs = list(records)
    todo = [
        i for i, r in enumerate(recs)
        if r.status == "kept" and r.task in MUSIC_TASKS
        and not (only_missing and isinstance(r.text, str) and r.text.strip())
    ]
    if not todo:
        return recs
    results = captioner.caption_batch([request_for_record(recs[i]) for i in todo])
    if len(results) != len(todo):  # pragma: no cover - a backend bug
        raise RuntimeError(f"{captioner.name}: {len(results)} results for {len(todo)} requests")
    out = list(recs)
    for i, res in zip(todo, results):
        r = recs[i]
        if not res.ok:
            out[i] = mark(r, "filtered", CAPTION_FAILED, f"{res.backend}/{res.model}: {res.error}")
            continue
        meta = dict(r.meta or {})
        if "caption" not in meta and "description" not in meta and r.text is not None:
            meta["description"] = r.text  # the text the row came with, before any machine caption
        # No "cached" flag here: whether a caption came from the cache depends on run history, and
        # the manifest must be the same however often a run was interrupted.
        meta["caption"] = {"backend": res.backend, "model": res.model, "features": res.features}
        out[i] = r.replace(text=res.caption, meta=meta)
    return out
