"""Audio captioning: a captioner interface with an offline and a Gemini backend.

- :class:`OfflineCaptioner` — captions from audio analysis (tempo, key, loudness, brightness,
  texture; instruments from MIDI metadata hints). No network; deterministic.
- :class:`GeminiCaptioner` — the Gemini REST API (rate-limited, retried, cached). The API key is
  passed in: :func:`api_key_from_env` or, in a Prefect flow, a Secret block's value.
- :class:`CaptionCache` — captions on disk, keyed by audio hash + prompt + model + backend.
- :func:`caption_records` — caption the music rows of a manifest.

Library code: nothing here imports Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data.captioning.base import (
    CAPTION_FAILED,
    Captioner,
    CaptionerFatalError,
    CaptionRequest,
    CaptionResult,
    audio_sha256,
    caption_records,
    hints_from_meta,
    request_for_record,
)
from data.captioning.cache import CaptionCache
from data.captioning.gemini import (
    DEFAULT_MODEL as GEMINI_DEFAULT_MODEL,
    GeminiCaptioner,
    GeminiError,
    MissingAPIKeyError,
    TokenBucket,
    api_key_from_env,
)
from data.captioning.offline import OfflineCaptioner, analyse, describe
from unimoe.common.audio import AudioSpanError, load_span  # re-exported: the one span reader

BACKENDS = ("offline", "gemini")


def make_captioner(
    backend: str, *, api_key: str | None = None, cache_dir: str | Path | None = None, **options: Any
) -> Captioner:
    """A captioner by name. ``gemini`` takes ``api_key`` (default: :func:`api_key_from_env`) and its
    constructor options; ``cache_dir`` turns on the disk cache for either backend."""
    cache = CaptionCache(cache_dir) if cache_dir is not None else None
    if backend == "offline":
        if options:
            raise TypeError(f"offline captioner takes no options, got {sorted(options)}")
        return OfflineCaptioner(cache=cache)
    if backend == "gemini":
        return GeminiCaptioner(api_key if api_key is not None else api_key_from_env(), cache=cache, **options)
    raise ValueError(f"unknown captioning backend {backend!r}; choose one of {BACKENDS}")


__all__ = [
    "BACKENDS", "CAPTION_FAILED", "AudioSpanError", "CaptionCache", "CaptionRequest", "CaptionResult",
    "Captioner", "CaptionerFatalError", "GEMINI_DEFAULT_MODEL", "GeminiCaptioner", "GeminiError",
    "MissingAPIKeyError", "OfflineCaptioner", "TokenBucket", "analyse", "api_key_from_env", "audio_sha256",
    "caption_records", "describe", "hints_from_meta", "load_span", "make_captioner", "request_for_record",
]
