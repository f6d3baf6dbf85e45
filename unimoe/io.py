"""Checksums and the local weights store (atomic writes live in :mod:`unimoe.common.files`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from unimoe.settings import settings


class MissingWeightsError(FileNotFoundError):
    """A model's weights are not in the local weights store."""


class ChecksumError(ValueError):
    """A file's SHA-256 differs from the one recorded in config."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_root() -> Path:
    """The local weights store: $UNIMOE_WEIGHTS, else ./weights."""
    return Path(settings().weights)


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
