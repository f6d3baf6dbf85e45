"""A disk cache of captions, one JSON file per key, written atomically.

The key is ``sha256`` over the span's audio hash, the prompt (everything else that determines the
caption), the model and the backend — so changing any of them misses. Only successful captions are
stored. A corrupt or unreadable entry is treated as a miss (and overwritten by the next ``put``).
Safe to share between threads and processes: writes go to a temporary file and are renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from unimoe.common.files import atomic_write_text

log = logging.getLogger(__name__)

CACHE_VERSION = 1


class CaptionCache:
    """``CaptionCache(dir)``: ``key(...)``, ``get(key) -> dict | None``, ``put(key, entry)``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def __repr__(self) -> str:
        return f"CaptionCache({str(self.dir)!r})"

    @staticmethod
    def key(audio_sha256: str, prompt: str, model: str, backend: str) -> str:
        payload = json.dumps(
            {"v": CACHE_VERSION, "audio": audio_sha256, "prompt": prompt, "model": model, "backend": backend},
            sort_keys=True, ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("caption cache: ignoring unreadable entry %s: %s", p, e)
            return None
        if not (isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("caption"), str)
                and entry["caption"].strip()):
            log.warning("caption cache: ignoring malformed entry %s", p)
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> Path:
        p = self.path(key)
        rec = {**entry, "key": key, "version": CACHE_VERSION, "created_unix": round(time.time(), 3)}
        atomic_write_text(p, json.dumps(rec, indent=1, sort_keys=True, ensure_ascii=False))
        return p

    def __len__(self) -> int:
        return sum(1 for _ in self.dir.glob("??/*.json")) if self.dir.is_dir() else 0
