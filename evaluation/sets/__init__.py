"""Benchmark sets: each loader parses one benchmark's real on-disk layout into a :class:`BenchmarkSet`.

    from evaluation.sets import load_benchmark, write_manifest, read_manifest
    bset = load_benchmark("seedtts-en", "/data/seedtts_testset")
    write_manifest("workspace/results/manifests/seedtts-en.jsonl", bset)

Names (case-insensitive, ``_`` = ``-``) and the layout each expects are listed by
:func:`available_benchmarks`; see each module's docstring for the protocol choices.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Callable

from evaluation.sets.base import (BenchItem, BenchmarkError, BenchmarkSet, MissingBenchmarkError,
                                  read_manifest, write_manifest)

# name -> (module, loader function). Imported lazily: loading one set never imports the others.
_REGISTRY: dict[str, tuple[str, str]] = {
    "seedtts-en": ("evaluation.sets.seedtts", "load_seedtts_en"),
    "seedtts-zh": ("evaluation.sets.seedtts", "load_seedtts_zh"),
    "librispeech-test-clean": ("evaluation.sets.librispeech", "load_librispeech_test_clean"),
    "aishell3-test": ("evaluation.sets.aishell3", "load_aishell3_test"),
    "musiccaps": ("evaluation.sets.musiccaps", "load_musiccaps"),
    "v2m-bench": ("evaluation.sets.v2m_bench", "load_v2m_bench"),
    "demo": ("evaluation.sets.demo", "load_demo"),
}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


def available_benchmarks() -> list[str]:
    """The registered benchmark names."""
    return sorted(_REGISTRY)


def get_loader(name: str) -> Callable[..., BenchmarkSet]:
    key = _key(name)
    if key not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {available_benchmarks()}")
    module, fn = _REGISTRY[key]
    return getattr(importlib.import_module(module), fn)


def load_benchmark(name: str, root: str | Path, **opts: Any) -> BenchmarkSet:
    """Load benchmark ``name`` from ``root`` (its layout: the loader module's docstring).

    Unknown options are an error naming the options the loader accepts."""
    loader = get_loader(name)
    params = inspect.signature(loader).parameters
    unknown = sorted(k for k in opts if k not in params)
    if unknown:
        allowed = sorted(k for k, p in params.items() if p.kind is p.KEYWORD_ONLY)
        raise TypeError(f"benchmark {name!r}: unknown option(s) {unknown}; accepted: {allowed}")
    return loader(root, **opts)


__all__ = [
    "BenchItem",
    "BenchmarkError",
    "BenchmarkSet",
    "MissingBenchmarkError",
    "available_benchmarks",
    "get_loader",
    "load_benchmark",
    "read_manifest",
    "write_manifest",
]
