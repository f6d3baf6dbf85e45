"""Settings from the environment, in one place: every ``UNIMOE_*`` variable the libraries and flows read.

``settings()`` reads the environment at each call (never at import), so a worker started with another
environment, or a test that sets a variable, sees the value in force at that moment.

    UNIMOE_WEIGHTS        the local weights store scorers and codecs load from (default ./weights)
    UNIMOE_WORKSPACE      where the flows put their outputs (default ./workspace)
    UNIMOE_WORKERS        parallel shard tasks in the flows' thread pool (default one per core)
    UNIMOE_DASK_ADDRESS   a Dask scheduler the flows run shard tasks on ("local": a local cluster)
    UNIMOE_DEVICE         where curation runs its neural scorers and codec: "cpu", "cuda", or "auto"
                          (default: "cuda" when this process sees a GPU, else "cpu")

On a Dask cluster every worker reads its own environment: UNIMOE_WEIGHTS (a relative value is relative to
the worker's working directory) and UNIMOE_DEVICE are per machine. The workspace, the corpus root and a
curate config's codec file reach the workers as absolute paths the flow resolved, so every machine must see
them at the same paths (a shared mount).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ConfigDict, Field

from unimoe.common.config import ConfigModel


class Settings(ConfigModel):
    """The ``UNIMOE_*`` variables, parsed (a bad value is a ``ConfigError`` naming the variable)."""

    # environment values are strings: "4" is a valid worker count here
    model_config = ConfigDict(strict=False)

    weights: str = Field("weights", alias="UNIMOE_WEIGHTS")
    workspace: str = Field("workspace", alias="UNIMOE_WORKSPACE")
    workers: int | None = Field(None, alias="UNIMOE_WORKERS")  # None: one per core
    dask_address: str = Field("", alias="UNIMOE_DASK_ADDRESS")  # empty: Prefect's thread pool
    device: str = Field("auto", alias="UNIMOE_DEVICE", pattern=r"^(auto|cpu|cuda(:\d+)?)$")


def settings() -> Settings:
    """The settings the environment gives now."""
    names = [f.alias for f in Settings.model_fields.values()]
    return Settings(**{name: os.environ[name] for name in names if name in os.environ})


def workspace_root(path: str | os.PathLike | None = None) -> Path:
    """Where bulky outputs go: the argument, else $UNIMOE_WORKSPACE, else ./workspace (created)."""
    root = Path(path or settings().workspace).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def compute_device() -> str:
    """The torch device this process runs models on: ``$UNIMOE_DEVICE``, or with ``auto`` (the default)
    ``cuda`` when a GPU is visible (a Dask worker started with ``CUDA_VISIBLE_DEVICES=i``), else ``cpu``."""
    device = settings().device
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
