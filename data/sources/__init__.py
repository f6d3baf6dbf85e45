"""Corpus adapters: one per raw corpus layout, all producing :class:`data.manifest.ManifestRecord`.

Usage::

    from data.sources import get_adapter
    records = list(get_adapter("librispeech")("/corpora/LibriSpeech", split=None).scan())

or in one go, with the manifest written atomically::

    from data.sources import ingest
    ingest("musicnet", "/corpora/musicnet", "workspace/manifests/musicnet.parquet", max_duration=None)

Every adapter yields exactly one record per input row — kept, or quarantined with a stable reason
code (see :class:`unimoe.common.reasons.Reason`) — and never raises on a bad item; a missing corpus
root or top-level metadata file raises :class:`MissingCorpusError`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from data.manifest import write_manifest
from data.sources.aishell3 import AIShell3Adapter
from data.sources.base import Adapter, Item, MissingCorpusError, SourceError
from data.sources.demo import DemoAdapter
from data.sources.fma import FMAAdapter
from data.sources.generic import GenericAdapter
from data.sources.librispeech import LibriSpeechAdapter, LibriTTSAdapter
from data.sources.musiccaps import MusicCapsAdapter
from data.sources.musicnet import MusicNetAdapter
from data.sources.v2m import V2MAdapter

ADAPTERS: dict[str, type[Adapter]] = {
    cls.name: cls
    for cls in (
        LibriSpeechAdapter,
        LibriTTSAdapter,
        AIShell3Adapter,
        FMAAdapter,
        MusicNetAdapter,
        MusicCapsAdapter,
        V2MAdapter,
        GenericAdapter,
        DemoAdapter,
    )
}


def get_adapter(name: str) -> type[Adapter]:
    """The adapter class registered under ``name`` (case-insensitive)."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    for k, cls in ADAPTERS.items():
        if k.replace("_", "") == key:
            return cls
    raise ValueError(f"unknown corpus adapter {name!r}; known: {sorted(ADAPTERS)}")


def adapter_options(name: str) -> list[str] | None:
    """The keyword options adapter ``name`` takes: its own and those it passes on (``**common``) to the
    classes above it; None when the chain of ``**kwargs`` never ends in named options."""
    known: set[str] = set()
    for cls in get_adapter(name).__mro__:
        if "__init__" not in cls.__dict__:
            continue
        if cls is object:
            return None
        params = inspect.signature(cls.__init__).parameters
        known |= {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return sorted(known)


def check_adapter_options(name: str, options: dict[str, Any]) -> None:
    """ValueError naming the options adapter ``name`` does not take (before any corpus is scanned)."""
    known = adapter_options(name)
    unknown = sorted(set(options) - set(known)) if known is not None else []
    if unknown:
        raise ValueError(
            f"corpus adapter {get_adapter(name).__name__} has no option(s) {unknown}; its options: {known}"
        )


def ingest(name: str, root: str | Path, out: str | Path, **options: Any) -> Path:
    """Scan a corpus with adapter ``name`` and write its manifest (kept + quarantined rows) to ``out``."""
    records = list(get_adapter(name)(root, **options).scan())
    return write_manifest(out, records)


__all__ = [
    "ADAPTERS",
    "Adapter",
    "adapter_options",
    "check_adapter_options",
    "Item",
    "MissingCorpusError",
    "SourceError",
    "get_adapter",
    "ingest",
    "AIShell3Adapter",
    "DemoAdapter",
    "FMAAdapter",
    "GenericAdapter",
    "LibriSpeechAdapter",
    "LibriTTSAdapter",
    "MusicCapsAdapter",
    "MusicNetAdapter",
    "V2MAdapter",
]
