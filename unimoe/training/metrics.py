"""Training metrics as append-only Parquet tables under ``<workdir>/metrics/<table>/``.

Every flush writes ONE new part file, atomically (temporary file + rename), named after the key it
holds: ``part-<run_id>-<variant>-s<stage>-<step:08d>.parquet``. A resumed run that re-logs a step
rewrites the same file, so rows are never duplicated; :func:`read_metrics` also de-duplicates on the
key columns (last write wins) for safety.

Tables (all carry ``run_id, variant, stage, step``):

``train``          one row per logging step: ``loss`` (ce + w * aux), ``ce``, ``aux`` (balance loss,
                   unweighted), ``balance_weight``, ``lr``, ``grad_norm`` (before clipping),
                   ``tokens`` / ``target_frames`` / ``sequences`` in the window, ``tokens_per_s``,
                   ``epoch``, ``elapsed_s``, ``per_codebook`` (list: CE per codebook), ``loss_<task>``
                   for each task in ``unimoe.config.TASKS`` (NaN when absent) and ``frames_<task>``.
                   Window values (losses, histograms) cover the optimiser steps since the previous
                   logging step; ``lr`` / ``balance_weight`` / ``grad_norm`` are the logging step's.
``routing_hist``   per MoE layer: ``layer, kind ("dynamic" = routed + null experts selected, the
                   paper's fig. 3; "routed" = routed experts actually run), num_experts, count``
                   (tokens in the window), for num_experts = 0..N.
``routing_tasks``  per MoE layer, task and dynamic expert: ``layer, task, expert, is_null, count``
                   (token selections in the window; paper figs. 4 and 5).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from unimoe.common.files import atomic_path

TABLES = ("train", "routing_hist", "routing_tasks")
KEY = ("run_id", "variant", "stage", "step")
_TABLE_KEYS = {"train": KEY, "routing_hist": KEY + ("layer", "kind", "num_experts"),
               "routing_tasks": KEY + ("layer", "task", "expert")}
_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def _safe(s: Any) -> str:
    return _SAFE.sub("_", str(s)) or "_"


def part_name(run_id: str, variant: str, stage: int, step: int) -> str:
    return f"part-{_safe(run_id)}-{_safe(variant)}-s{int(stage)}-{int(step):08d}.parquet"


class MetricsWriter:
    """Writes rows for one (run_id, variant, stage) to ``<workdir>/metrics/<table>/``."""

    def __init__(self, workdir: str | Path, run_id: str, variant: str, stage: int):
        self.root = Path(workdir) / "metrics"
        self.run_id, self.variant, self.stage = str(run_id), str(variant), int(stage)

    def path(self, table: str, step: int) -> Path:
        return self.root / table / part_name(self.run_id, self.variant, self.stage, step)

    def write(self, table: str, step: int, rows: Sequence[dict[str, Any]]) -> Path | None:
        """One part file holding ``rows`` (each gets the key columns); ``None`` when there are none."""
        if not rows:
            return None
        key = {"run_id": self.run_id, "variant": self.variant, "stage": self.stage, "step": int(step)}
        tbl = pa.Table.from_pylist([{**key, **r} for r in rows])
        path = self.path(table, step)
        with atomic_path(path) as tmp:
            pq.write_table(tbl, tmp)
        return path


def read_metrics(workdir: str | Path, table: str = "train", **filters: Any):
    """All parts of ``table`` as one pandas DataFrame (de-duplicated on the key, sorted), optionally
    filtered by equality on columns, e.g. ``read_metrics(w, "train", run_id="r1", stage=3)``."""
    import pandas as pd

    folder = Path(workdir) / "metrics" / table
    parts = sorted(p for p in folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return pd.DataFrame()
    # Read newest last so "keep last" keeps the latest rewrite of a key.
    parts.sort(key=lambda p: p.stat().st_mtime_ns)
    df = pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)
    for k, v in filters.items():
        df = df[df[k] == v]
    keys = [k for k in _TABLE_KEYS.get(table, KEY) if k in df.columns]
    df = df.drop_duplicates(subset=keys, keep="last")
    return df.sort_values(keys).reset_index(drop=True)
