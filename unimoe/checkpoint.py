"""Checkpoints: a directory holding ``model.safetensors``, ``config.json`` and ``state.json``.

A checkpoint is written into a temporary sibling directory and renamed into place, so a reader never
sees a half-written one. Tensors are stored with safetensors (no pickle); ``state.json`` records the
weights file's SHA-256, which loading verifies.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file

from unimoe.common.files import atomic_write_json
from unimoe.config import UniMoEConfig
from unimoe.io import sha256_file

WEIGHTS, CONFIG, STATE, TOKENIZER = "model.safetensors", "config.json", "state.json", "tokenizer.json"


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: str | Path, model: torch.nn.Module | Mapping[str, torch.Tensor], cfg: UniMoEConfig,
                    state: dict[str, Any] | None = None, *, tokenizer=None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory atomically. ``model``: the module or its state dict (e.g. the full
    one gathered from a sharded run). ``extra_tensors`` (e.g. optimiser moments) go to
    ``extra.safetensors``; ``state`` must be JSON-serialisable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, tmp / WEIGHTS)
        if extra_tensors:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra_tensors.items()}, tmp / "extra.safetensors")
        (tmp / CONFIG).write_text(cfg.to_json())
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER)
        full_state = {"format": 1, "weights_sha256": sha256_file(tmp / WEIGHTS), "config_hash": cfg.config_hash(),
                      **(state or {})}
        atomic_write_json(tmp / STATE, full_state)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_into_place(tmp: Path, path: Path) -> None:
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: str | Path) -> dict[str, Any]:
    p = Path(path) / STATE
    if not p.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {STATE})")
    return json.loads(p.read_text())


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu", verify: bool = True):
    """Return (model, config, state). Weights are read with safetensors; nothing is unpickled."""
    from unimoe.model import UniMoEAudio

    path = Path(path)
    state = read_state(path)
    if verify and sha256_file(path / WEIGHTS) != state["weights_sha256"]:
        raise CheckpointError(f"{path / WEIGHTS}: SHA-256 differs from the one recorded in {STATE}")
    cfg = UniMoEConfig.load(path / CONFIG)
    model = UniMoEAudio(cfg)
    missing, unexpected = model.load_state_dict(load_file(path / WEIGHTS, device=str(device)), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device), cfg, state


def load_extra_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path) / "extra.safetensors"
    return load_file(p) if p.is_file() else {}
