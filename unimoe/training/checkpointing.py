"""The training checkpoint: where it lives and how the optimiser and RNG states are (de)serialised.

Layout: ``<workdir>/checkpoints/step-XXXXXX`` (written by ``unimoe.checkpoint.save_checkpoint``:
safetensors + JSON, atomic) and a ``<workdir>/checkpoints/latest`` pointer file (atomic rename) naming
the newest one. Besides the weights, ``extra.safetensors`` holds

* the AdamW moments and step counts, flat: ``optim.<param name>.<key>`` (the full tensors of a sharded
  run, so a checkpoint resumes under any sharding);
* the torch RNG states: ``rng.torch_cpu`` and ``rng.cuda.<i>``;

and ``state.json`` the JSON-safe rest (optimiser param groups, Python / NumPy RNG states, and what the
trainer adds: step, scheduler, data order, configs; see ``Trainer.checkpoint_state``).

Why not ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict``: it keys the state by
parameter name too, but it initialises an empty optimiser state with a zero-learning-rate step (so a
checkpoint before the first step would gain step counts), and it cannot see the expert-parallel shards
(plain tensors that FSDP ignores). The model weights of a sharded run do go through DCP
(``unimoe.training.shard_layout.ShardLayout``).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from unimoe.checkpoint import STATE, CheckpointError

STATE_KIND = "unimoe.train/1"
LATEST = "latest"
OPTIM_PREFIX = "optim."


# ---- where checkpoints live -----------------------------------------------------------------------------


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{int(step):06d}"


def latest_checkpoint(workdir: str | Path) -> Path | None:
    """The checkpoint ``<workdir>/checkpoints/latest`` points to; without a (valid) pointer, the
    highest complete ``step-*`` checkpoint; ``None`` when there is none."""
    root = checkpoint_dir(workdir)
    pointer = root / LATEST
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if (p / STATE).is_file():
            return p
    steps = sorted((p for p in root.glob("step-*") if (p / STATE).is_file()), key=lambda p: p.name)
    return steps[-1] if steps else None


def remove_stale_temporaries(root: Path) -> None:
    """Half-written checkpoint directories left by a killed run (``.step-XXXXXX.<random>``)."""
    if root.is_dir():
        for p in root.glob(".step-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(root: Path, keep_last: int, keep: Path) -> None:
    """Remove all but the ``keep_last`` newest ``step-*`` checkpoints (never ``keep``; 0 keeps all)."""
    if keep_last <= 0:
        return
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)
    for p in steps[: max(len(steps) - keep_last, 0)]:
        if p != keep:
            shutil.rmtree(p, ignore_errors=True)


# ---- optimiser state ------------------------------------------------------------------------------------


def optimizer_state_tensors(optimizer: torch.optim.Optimizer, group_names: list[list[str]],
                            to_full: Callable[[str, Tensor], Tensor] | None = None
                            ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The optimiser state flattened to ``optim.<param name>.<key>`` tensors + JSON-safe group settings.
    ``group_names`` names the parameters of each param group, in order. ``to_full(name, tensor)`` turns a
    sharded run's state into full tensors (a collective: called for the same tensors in the same order on
    every rank, hence the sorted parameter indices)."""
    sd = optimizer.state_dict()
    names = [n for g in group_names for n in g]
    tensors, scalars = {}, {}
    for idx, st in sorted(sd["state"].items()):
        for key, val in st.items():
            if isinstance(val, Tensor):
                tensors[f"{OPTIM_PREFIX}{names[idx]}.{key}"] = to_full(names[idx], val) if to_full else val
            else:
                scalars.setdefault(names[idx], {})[key] = val
    groups = []
    for g, gnames in zip(sd["param_groups"], group_names):
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        d["param_names"] = gnames
        groups.append(d)
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, group_names: list[list[str]],
                         tensors: dict[str, Tensor], meta: dict[str, Any],
                         to_local: Callable[[str, Tensor], Tensor] | None = None) -> None:
    """Inverse of :func:`optimizer_state_tensors` (``to_local(name, full)``: this rank's shard). The saved
    parameter names must be the optimiser's, in the same order."""
    names = [n for g in group_names for n in g]
    saved = [n for g in meta["param_groups"] for n in g["param_names"]]
    if saved != names:
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        raise CheckpointError(f"optimizer state is for other trainable parameters (missing {missing[:5]}, "
                              f"unexpected {extra[:5]}): was the checkpoint made with another `trainable`?")
    index = {n: i for i, n in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if not key.startswith(OPTIM_PREFIX):
            continue
        pname, field = key[len(OPTIM_PREFIX):].rsplit(".", 1)
        if to_local is not None and val.dim() > 0:
            val = to_local(pname, val)
        state.setdefault(index[pname], {})[field] = val
    for pname, sc in meta.get("scalars", {}).items():
        state.setdefault(index[pname], {}).update(sc)
    groups, start = [], 0
    for g in meta["param_groups"]:
        d = {k: v for k, v in g.items() if k != "param_names"}
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        d["params"] = list(range(start, start + len(g["param_names"])))
        start += len(g["param_names"])
        groups.append(d)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---- RNG state ------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(JSON part, tensors) of the Python, NumPy, torch CPU and CUDA RNG states of this process."""
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    n_cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            n_cuda += 1
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, [int(x) for x in keys], int(pos), int(has_gauss), float(cached)],
             "torch_cpu": "extra:rng.torch_cpu", "cuda_devices": n_cuda}
    return state, tensors


def set_rng_state(state: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if state.get("cuda_devices") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(state["cuda_devices"])])
