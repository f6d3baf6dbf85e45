"""Content hashes, run and cache paths, and the content-addressed output indexes of the benchmark runner."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from unimoe.common.files import atomic_path, atomic_write_text
from unimoe.io import sha256_file

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(s: str) -> str:
    return _SAFE.sub("_", str(s)).strip("_") or "item"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_hash(path: str | Path | None) -> str | None:
    """SHA-256 of a file (memoised on path, size and mtime within the process)."""
    if not path:
        return None
    st = os.stat(path)
    return _file_sha(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def generation_code_hash() -> str:
    """The model/generation library code (unimoe/, not training): part of the generation cache key."""
    root = Path(__file__).resolve().parents[1] / "unimoe"
    h = hashlib.sha256()
    for py in sorted(root.glob("*.py")):
        h.update(py.name.encode() + py.read_bytes())
    return h.hexdigest()[:16]


def _link(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where possible, else a copy."""
    if dst.exists() and dst.stat().st_ino == src.stat().st_ino:
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def bench_dir(ws: str | Path) -> Path:
    return Path(ws) / "bench"


def results_root(ws: str | Path) -> Path:
    return Path(ws) / "results"


def find_checkpoint(ws: str | Path) -> Path:
    """The newest complete checkpoint (a folder with state.json, not a hidden temporary) under <ws>/train."""
    root = Path(ws) / "train"
    found = [p.parent for p in root.rglob("state.json")
             if not any(part.startswith(".") for part in p.relative_to(root).parts)] if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no checkpoint under {root}: train one first (unimoe train) or pass --checkpoint")
    return max(found, key=lambda p: (p / "state.json").stat().st_mtime_ns)


def benchmark_root(ws: str | Path, name: str) -> Path:
    """Where benchmark ``name``'s data lives: for ``demo`` the workspace itself (the demo loader finds
    the corpus under it, and the curated captions); for the others <ws>/benchmarks/<name>."""
    return Path(ws) if name == "demo" else Path(ws) / "benchmarks" / name


def new_run_id(benchmark: str, variant: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{safe_name(benchmark)}-{safe_name(variant)}-{stamp}-{os.urandom(3).hex()}"



def _write_index(ws: Path, kind: str, rows: list[dict]) -> str:
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    path = bench_dir(ws) / "cache" / kind / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if not path.is_file():
        atomic_write_text(path, text)
    return str(path)


def read_index(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

