"""Resumable, deterministic builds of many items into one output folder (the offline demo corpus).

Each item records what it produced under ``out/.state/<kind>/<item>.json`` (:class:`ItemState`): a key
that names everything its outputs depend on, and the size of each file it wrote. A re-run reuses an item
while its key matches and its files are intact, and rebuilds it otherwise, so a killed build started again
redoes only unfinished or damaged items. Files are written atomically (``unimoe.common.files.atomic_path``),
one build holds a folder at a time (:func:`build_lock`), and files no current item owns are pruned.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

from unimoe.common.files import atomic_path


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` unless the file already holds it (a finished re-run leaves its outputs untouched)."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


class ItemState:
    """Per-item records under ``out_dir/.state``: what an item produced, valid while its files are."""

    def __init__(self, out_dir: Path):
        self.out = out_dir
        self.dir = out_dir / ".state"

    def path(self, kind: str, item: str) -> Path:
        return self.dir / kind / f"{item}.json"

    def load(self, kind: str, item: str, key: str) -> dict | None:
        p = self.path(kind, item)
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if rec.get("key") != key:
            return None
        for rel, size in rec.get("files", {}).items():
            f = self.out / rel
            try:
                if f.stat().st_size != size:
                    return None
            except OSError:
                return None
        return rec

    def save(self, kind: str, item: str, key: str, rec: dict) -> dict:
        rec = dict(rec)
        rec["key"] = key
        rec["files"] = {rel: (self.out / rel).stat().st_size for rel in rec.get("files", {})}
        write_text(self.path(kind, item), json.dumps(rec, ensure_ascii=False, sort_keys=True))
        return rec


class Progress:
    """Log lines and tqdm bars on stderr, or nothing (``enabled=False``)."""

    def __init__(self, enabled: bool, name: str):
        self.enabled = enabled
        self.name = name
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        if self.enabled:
            print(f"[{self.name} {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def bar(self, it, total: int, desc: str):
        if not self.enabled:
            return it
        try:
            from tqdm import tqdm

            return tqdm(it, total=total, desc=desc, file=sys.stderr, leave=False)
        except Exception:
            return it


@contextlib.contextmanager
def build_lock(out: Path, what: str) -> Iterator[None]:
    """Hold ``out`` for one build; a second build of ``what`` into it fails at once instead of racing."""
    import fcntl

    (out / ".state").mkdir(parents=True, exist_ok=True)
    f = open(out / ".state" / "lock", "a")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(f"another {what} build is running in {out}") from None
        yield
    finally:
        f.close()


def clean_stale_temps(out: Path, folders: Iterable[str]) -> None:
    """Remove temporary files a killed build left behind (atomic writes use ``.NAME.*.tmp``)."""
    for sub in folders:
        d = out / sub
        if d.is_dir():
            for p in d.rglob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
    for p in out.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def prune_unowned(out: Path, keep: set[Path], folders: Iterable[str]) -> None:
    """Delete the files under ``folders`` that are not in ``keep``, then the folders left empty."""
    for sub in folders:
        d = out / sub
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*"), reverse=True):
            if p.is_file() and p not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()
            elif p.is_dir():
                with contextlib.suppress(OSError):
                    p.rmdir()  # only succeeds when empty


def run_items(items: list, fn: Callable, workers: int, progress: Progress, desc: str) -> list:
    """``[fn(item) for item in items]``, on ``workers`` threads (external tools do the work), in order."""
    if workers <= 1 or len(items) <= 1:
        return [fn(it) for it in progress.bar(items, len(items), desc)]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(progress.bar(ex.map(fn, items), len(items), desc))
