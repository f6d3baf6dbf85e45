"""Settings from the environment, in one place: every ``UNIMOE_*`` variable the libraries and flows read.

``settings()`` reads the environment at each call (never at import), so a worker started with another
environment, or a test that sets a variable, sees the value in force at that moment.

    UNIMOE_WEIGHTS        the local weights store scorers and codecs load from (default ./weights)
    UNIMOE_WORKSPACE      where the flows put their outputs (default ./workspace)
    UNIMOE_WORKERS        parallel shard tasks in the flows' thread pool (default one per core)
    UNIMOE_DASK_ADDRESS   a Dask scheduler the flows run shard tasks on ("local": a local cluster)
"""

from __future__ import annotations

import os

from pydantic import ConfigDict, Field

from unimoe.config import ConfigModel


class Settings(ConfigModel):
    """The ``UNIMOE_*`` variables, parsed (a bad value is a ``ConfigError`` naming the variable)."""

    # environment values are strings: "4" is a valid worker count here
    model_config = ConfigDict(strict=False)

    weights: str = Field("weights", alias="UNIMOE_WEIGHTS")
    workspace: str = Field("workspace", alias="UNIMOE_WORKSPACE")
    workers: int | None = Field(None, alias="UNIMOE_WORKERS")  # None: one per core
    dask_address: str = Field("", alias="UNIMOE_DASK_ADDRESS")  # empty: Prefect's thread pool


def settings() -> Settings:
    """The settings the environment gives now."""
    names = [f.alias for f in Settings.model_fields.values()]
    return Settings(**{name: os.environ[name] for name in names if name in os.environ})
