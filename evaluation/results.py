"""Benchmark result tables: append-only Parquet datasets under ``<workspace>/results/``.

Three tables (schemas below, fixed: the dashboard reads them):

- ``aggregate``  one row per (run, variant, benchmark, task, metric): value, 95% bootstrap CI, n, ...
- ``items``      one row per (run, item, seed, metric): the per-clip scores behind the aggregates
- ``regression`` one row per compared (run, baseline, benchmark, task, metric)

Layout: ``<root>/<table>/date=YYYY-MM-DD/part-<run_id>-<uuid8>.parquet`` (hive partitions by the UTC
date of the write). Every write is a NEW part file written to a temporary name and renamed into
place, so readers never see a half-written file and nothing is ever rewritten. Timestamps are UTC.
Rows carry the git commit of this repository and a hash of the run configuration; never anything
from the environment (no secrets can leak into a table).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from unimoe.io import atomic_path

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "aggregate": pa.schema([
        ("run_id", pa.string()), ("kind", pa.string()), ("checkpoint", pa.string()), ("checkpoint_hash", pa.string()),
        ("variant", pa.string()), ("benchmark", pa.string()), ("task", pa.string()), ("metric", pa.string()),
        ("higher_is_better", pa.bool_()), ("value", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
        ("n", pa.int64()), ("scorer", pa.string()), ("scorer_version", pa.string()), ("seeds", pa.string()),
        ("git_commit", pa.string()), ("config_hash", pa.string()), ("timestamp", TS),
    ]),
    "items": pa.schema([
        ("run_id", pa.string()), ("variant", pa.string()), ("benchmark", pa.string()), ("task", pa.string()),
        ("item_id", pa.string()), ("seed", pa.int64()), ("metric", pa.string()), ("value", pa.float64()),
        ("scorer", pa.string()), ("scorer_version", pa.string()), ("audio_path", pa.string()), ("timestamp", TS),
    ]),
    "regression": pa.schema([
        ("run_id", pa.string()), ("baseline_run_id", pa.string()), ("benchmark", pa.string()), ("task", pa.string()),
        ("metric", pa.string()), ("value", pa.float64()), ("baseline_value", pa.float64()), ("delta", pa.float64()),
        ("threshold", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("regressed", pa.bool_()),
        ("timestamp", TS),
    ]),
}
KINDS = ("adhoc", "nightly", "pipeline")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the repository this code lives in (``-dirty`` appended when tracked files are modified);
    ``"unknown"`` outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if sha and dirty else (sha or "unknown")


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable run configuration (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def table_dir(root: str | Path, name: str) -> Path:
    if name not in SCHEMAS:
        raise ValueError(f"unknown table {name!r}; choose from {sorted(SCHEMAS)}")
    return Path(root) / name


def write_rows(root: str | Path, name: str, rows: Iterable[dict[str, Any]], *, run_id: str,
               when: datetime | None = None) -> Path | None:
    """Append ``rows`` to table ``name`` as one new part file; returns its path (None for no rows).

    Rows must have exactly the table's columns, except ``timestamp``, which defaults to now (UTC).
    Values are cast to the schema (an impossible cast raises; nothing is written then)."""
    folder = table_dir(root, name)
    schema = SCHEMAS[name]
    rows = list(rows)
    if not rows:
        return None
    when = (when or utc_now()).astimezone(timezone.utc)
    cols = set(schema.names)
    for i, r in enumerate(rows):
        extra, missing = set(r) - cols, cols - set(r) - {"timestamp"}
        if extra or missing:
            raise ValueError(f"{name} row {i}: unknown columns {sorted(extra)}, missing {sorted(missing)}")
    data = {c: [r.get(c, when) if c == "timestamp" else r[c] for r in rows] for c in schema.names}
    table = pa.Table.from_pydict(data, schema=schema)
    out = folder / f"date={when:%Y-%m-%d}" / f"part-{_SAFE.sub('_', run_id)}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def read_table(root: str | Path, name: str, **filters: Any) -> pd.DataFrame:
    """All rows of table ``name`` (empty frame with the table's columns when nothing was written),
    read with DuckDB over the part files (hive partitioning: the ``date`` column comes from the folder).

    ``filters``: column=value (equality) or column=[values] (membership), e.g.
    ``read_table(root, "aggregate", benchmark="demo", run_id=["a", "b"])``."""
    import duckdb

    folder = table_dir(root, name)
    schema = SCHEMAS[name]
    parts = sorted(p for p in folder.glob("date=*/part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return _empty(schema)
    where, params = [], []
    for col, val in filters.items():
        if col not in schema.names and col != "date":
            raise ValueError(f"{name} has no column {col!r}")
        if isinstance(val, (list, tuple, set)):
            vals = list(val)
            if not vals:
                return _empty(schema)
            where.append(f'"{col}" IN ({", ".join("?" * len(vals))})')
            params += vals
        else:
            where.append(f'"{col}" = ?')
            params.append(val)
    glob = str(folder / "date=*" / "part-*.parquet")
    sql = "SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY timestamp"
    con = duckdb.connect()
    try:
        df = con.execute(sql, [glob, *params]).df()
    finally:
        con.close()
    if "date" in df.columns:
        df["date"] = df["date"].astype(str)
    if "timestamp" in df.columns:
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df.reset_index(drop=True)


def _empty(schema: pa.Schema) -> pd.DataFrame:
    return schema.empty_table().to_pandas()


def runs(root: str | Path, **filters: Any) -> pd.DataFrame:
    """One row per run in the aggregate table (run_id, kind, variant, benchmark, checkpoint, started),
    oldest first; ``filters`` as in ``read_table``."""
    df = read_table(root, "aggregate", **filters)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "kind", "variant", "benchmark", "checkpoint", "timestamp"])
    g = df.groupby("run_id", sort=False).agg(kind=("kind", "first"), variant=("variant", "first"),
                                             benchmark=("benchmark", "first"), checkpoint=("checkpoint", "first"),
                                             timestamp=("timestamp", "min")).reset_index()
    return g.sort_values(["timestamp", "run_id"]).reset_index(drop=True)


def latest_run(root: str | Path, *, exclude: str | Iterable[str] | None = None, before: datetime | None = None,
               **filters: Any) -> str | None:
    """The run_id of the newest run (by its first aggregate row) matching ``filters`` (e.g.
    benchmark="demo", kind="nightly", variant=...), skipping ``exclude`` and runs written at or after
    ``before``; None when there is none."""
    r = runs(root, **filters)
    if exclude is not None:
        r = r[~r["run_id"].isin([exclude] if isinstance(exclude, str) else list(exclude))]
    if before is not None:
        r = r[r["timestamp"] < pd.Timestamp(before)]
    return None if r.empty else str(r.iloc[-1]["run_id"])
