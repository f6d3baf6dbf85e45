"""Atomic file writes, checksums and the local weights store.

Everything bulky is written to a temporary file beside its destination and renamed into place, so
a killed process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class MissingWeightsError(FileNotFoundError):
    """A model's weights are not in the local weights store."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the one recorded in config."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; final files get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_root() -> Path:
    """The local weights store: $UNIMOE_WEIGHTS, else ./weights."""
    return Path(os.environ.get("UNIMOE_WEIGHTS", "weights"))


# Weights that ship inside the package (the demo codec): ``builtin:codecs/demo-dac.safetensors``.
BUILTIN_PREFIX = "builtin:"


def builtin_asset(relative: str) -> Path:
    """A file under ``unimoe/assets/`` (shipped with the repository)."""
    return Path(__file__).resolve().parent / "assets" / relative


def resolve_weights(relative_or_abs: str | Path, *, sha256: str | None, what: str, origin: str) -> Path:
    """Find a weights file in the local store and verify its checksum.

    ``what`` names the model ("DAC 16 kHz codec") and ``origin`` says where the file comes from, so
    the error tells an operator exactly what to fetch and where to put it.
    """
    p = Path(relative_or_abs)
    if str(relative_or_abs).startswith(BUILTIN_PREFIX):
        p = builtin_asset(str(relative_or_abs)[len(BUILTIN_PREFIX):])
    elif not p.is_absolute():
        p = weights_root() / p
    if not p.is_file():
        raise MissingWeightsError(
            f"{what}: weights file not found at {p}. Download it from {origin} and place it there "
            f"(the weights store is $UNIMOE_WEIGHTS, currently {weights_root()}); nothing is downloaded at run time."
        )
    if sha256 is not None:
        got = sha256_file(p)
        if got != sha256.lower():
            raise ChecksumError(f"{what}: {p} has SHA-256 {got}, expected {sha256} (from config); the file is corrupt or a different release")
    return p
