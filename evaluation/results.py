"""Benchmark result tables: append-only Parquet datasets under ``<workspace>/results/``.

Three tables (schemas below, fixed: the dashboard reads them):

- ``aggregate``  one row per (run, variant, benchmark, system, task, metric): value, 95% bootstrap CI,
                 ``n`` (items with a finite score), ``n_asked`` (items given to the scorer), ...
- ``items``      one row per (run, system, item, seed, metric): the per-clip scores behind the aggregates
- ``regression`` one row per compared (run, baseline, benchmark, task, metric)

Layout: ``<root>/<table>/date=YYYY-MM-DD/part-<run_id>-<uuid8>.parquet`` (hive partitions by the UTC
date of the write). Every write is a NEW part file written to a temporary name and renamed into
place, so readers never see a half-written file and nothing is ever rewritten. Timestamps are UTC.
Rows carry the git commit of this repository and a hash of the run configuration; never anything
from the environment (no secrets can leak into a table).

``system`` (aggregate and items) says what was scored: ``model`` (the checkpoint's generations, and
metrics of the checkpoint itself such as token NLL), ``ground_truth`` (the benchmark's real recordings)
or ``codec_resynth`` (those recordings encoded and decoded by the checkpoint's codec): the toplines
that show the ceiling and the codec's share of the gap. Part files written before the column existed
read as ``model`` (and ``n_asked`` as null); ``write_rows`` fills both defaults when a row omits them.

What a row records so that two runs can be trusted to be comparable (columns added later; older part
files, and rows that omit them, read them as null; ``COLUMN_DEFAULTS``):

- ``aggregate``: ``manifest_hash`` (the benchmark items as generated: ids, texts, conditioning and the
  SHA-256 of every prompt / reference / video file, and the predefined voice prompt; not the paths),
  ``reference_hash`` (set-level metrics: the reference recordings the set was compared with, item id +
  file SHA-256), ``decoding`` (greedy or the sampling settings, guidance), ``voice_prompt`` (speech: which
  generation was scored, ``fixed`` = the benchmark's predefined voice prompt, ``item`` = the item's own),
  ``scorer_protocol`` (JSON: the scorer's ``info()`` plus its device and precision: pooling, crop seed,
  windows, weights checksum, ...), ``device`` / ``dtype`` (what generated the clips) and ``packages``
  (JSON: versions of the packages that produce the numbers, ``package_versions``);
- ``items``: ``transcript`` (ASR scorers: the recogniser's raw transcript of the clip) and
  ``voice_prompt``.

None of these come from environment variables: package versions are read from the installed
distributions' metadata, never from the environment (no secrets can leak into a table).
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

from unimoe.common.files import atomic_path

TS = pa.timestamp("us", tz="UTC")

SCHEMAS: dict[str, pa.Schema] = {
    "aggregate": pa.schema([
        ("run_id", pa.string()), ("kind", pa.string()), ("checkpoint", pa.string()), ("checkpoint_hash", pa.string()),
        ("variant", pa.string()), ("benchmark", pa.string()), ("task", pa.string()), ("metric", pa.string()),
        ("higher_is_better", pa.bool_()), ("value", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()),
        ("n", pa.int64()), ("scorer", pa.string()), ("scorer_version", pa.string()), ("seeds", pa.string()),
        ("git_commit", pa.string()), ("config_hash", pa.string()), ("system", pa.string()), ("n_asked", pa.int64()),
        # added so a comparison can be trusted (see the module docstring); older parts read back with these null
        ("manifest_hash", pa.string()), ("reference_hash", pa.string()), ("decoding", pa.string()),
        ("voice_prompt", pa.string()), ("scorer_protocol", pa.string()), ("device", pa.string()),
        ("dtype", pa.string()), ("packages", pa.string()),
        ("timestamp", TS),
    ]),
    "items": pa.schema([
        ("run_id", pa.string()), ("variant", pa.string()), ("benchmark", pa.string()), ("task", pa.string()),
        ("item_id", pa.string()), ("seed", pa.int64()), ("metric", pa.string()), ("value", pa.float64()),
        ("scorer", pa.string()), ("scorer_version", pa.string()), ("audio_path", pa.string()), ("system", pa.string()),
        ("transcript", pa.string()), ("voice_prompt", pa.string()),
        ("timestamp", TS),
    ]),
    "regression": pa.schema([
        ("run_id", pa.string()), ("baseline_run_id", pa.string()), ("benchmark", pa.string()), ("task", pa.string()),
        ("metric", pa.string()), ("value", pa.float64()), ("baseline_value", pa.float64()), ("delta", pa.float64()),
        ("threshold", pa.float64()), ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("regressed", pa.bool_()),
        # added with the paired gate (evaluation/regression.py); older parts read back with these null
        ("higher_is_better", pa.bool_()), ("delta_ci_low", pa.float64()), ("delta_ci_high", pa.float64()),
        ("rule", pa.string()), ("comparable", pa.bool_()), ("reason", pa.string()), ("n_items", pa.int64()),
        ("n_pairs", pa.int64()), ("item_set_hash", pa.string()), ("baseline_item_set_hash", pa.string()),
        ("timestamp", TS),
    ]),
}
KINDS = ("adhoc", "nightly", "pipeline")
# What a row scored: the checkpoint, or one of the toplines (see the module docstring).
MODEL, GROUND_TRUTH, CODEC_RESYNTH = "model", "ground_truth", "codec_resynth"
SYSTEMS = (MODEL, GROUND_TRUTH, CODEC_RESYNTH)
SYSTEM_LABELS = {MODEL: "model", GROUND_TRUTH: "ground truth", CODEC_RESYNTH: "codec resynthesis"}
# Columns added after the first tables were written: the value a row (or an old part file) without them has.
TRUST_COLUMNS = ("manifest_hash", "reference_hash", "decoding", "voice_prompt", "scorer_protocol", "device", "dtype",
                 "packages")
COLUMN_DEFAULTS: dict[str, dict[str, Any]] = {
    "aggregate": {"system": MODEL, "n_asked": None, **{c: None for c in TRUST_COLUMNS}},
    "items": {"system": MODEL, "transcript": None, "voice_prompt": None},
}
# The distributions whose versions can move a number (generation, audio I/O, scorers); ``package_versions``.
PACKAGES = ("unimoe-audio", "torch", "torchaudio", "numpy", "scipy", "soundfile", "soxr", "librosa", "resampy",
            "transformers", "openai-whisper", "funasr", "jiwer", "opencc-python-reimplemented", "zhconv",
            "resemblyzer", "speechmos", "onnxruntime", "laion-clap", "hear21passt", "torchopenl3",
            "audiobox-aesthetics", "pocketsphinx")
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


@functools.lru_cache(maxsize=1)
def package_versions() -> str:
    """JSON ``{"python": ..., <distribution>: <version>}`` of the installed ``PACKAGES`` (absent ones left
    out), read from the distributions' metadata (nothing from the environment)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return json.dumps(out, sort_keys=True)


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

    Rows must have exactly the table's columns, except ``timestamp``, which defaults to now (UTC), and the
    columns of ``COLUMN_DEFAULTS`` (``system``: ``"model"``, the others null). Values are cast to the
    schema (an impossible cast raises; nothing is written then)."""
    folder = table_dir(root, name)
    schema = SCHEMAS[name]
    defaults = COLUMN_DEFAULTS.get(name, {})
    rows = [{**defaults, **r} for r in rows]
    if not rows:
        return None
    when = (when or utc_now()).astimezone(timezone.utc)
    cols = set(schema.names)
    for i, r in enumerate(rows):
        extra, missing = set(r) - cols, cols - set(r) - {"timestamp"}
        if extra or missing:
            raise ValueError(f"{name} row {i}: unknown columns {sorted(extra)}, missing {sorted(missing)}")
        if "system" in r and r["system"] not in SYSTEMS:
            raise ValueError(f"{name} row {i}: system {r['system']!r} is not one of {SYSTEMS}")
    # A null read back through pandas can be NaN in a column of any type (an all-null string column of
    # a part file reads as float NaN): rows read from a table are written back with it as null again.
    data = {f.name: [r.get(f.name, when) if f.name == "timestamp" else _null_if_nan(r[f.name], f.type) for r in rows]
            for f in schema}
    table = pa.Table.from_pydict(data, schema=schema)
    out = folder / f"date={when:%Y-%m-%d}" / f"part-{_SAFE.sub('_', run_id)}-{uuid.uuid4().hex[:8]}.parquet"
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


def _null_if_nan(value: Any, typ: pa.DataType) -> Any:
    if isinstance(value, float) and value != value and not pa.types.is_floating(typ):
        return None
    return value


def read_table(root: str | Path, name: str, **filters: Any) -> pd.DataFrame:
    """All rows of table ``name`` (empty frame with the table's columns when nothing was written),
    read with DuckDB over the part files (hive partitioning: the ``date`` column comes from the folder).

    ``filters``: column=value (equality) or column=[values] (membership), e.g.
    ``read_table(root, "aggregate", benchmark="demo", run_id=["a", "b"])``. A column of ``COLUMN_DEFAULTS``
    reads as its default in part files written before it existed (``system`` = ``"model"``), and a filter
    on it matches those rows accordingly."""
    import duckdb

    folder = table_dir(root, name)
    schema = SCHEMAS[name]
    parts = sorted(p for p in folder.glob("date=*/part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return _empty(schema)
    defaults = COLUMN_DEFAULTS.get(name, {})
    where, params, late = [], [], {}
    for col, val in filters.items():
        if col not in schema.names and col != "date":
            raise ValueError(f"{name} has no column {col!r}")
        if col in defaults:  # filtered after the defaults are filled in
            late[col] = list(val) if isinstance(val, (list, tuple, set)) else [val]
            continue
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
    src = "SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)"
    # Rows of one write share a timestamp: ties keep the written order (file, then row), so reads are
    # deterministic (e.g. a run's model and topline rows of one metric).
    ordered = ("SELECT * EXCLUDE (filename, file_row_number) FROM read_parquet(?, hive_partitioning = true, "
               "union_by_name = true, filename = true, file_row_number = true)")
    sql = ordered + (" WHERE " + " AND ".join(where) if where else "") + \
        " ORDER BY timestamp, filename, file_row_number"
    con = duckdb.connect()
    try:
        # Columns added to a schema later are absent from older parts (union_by_name fills them with
        # NULL where some part has them); a filter on a column no part has matches nothing.
        present = {d[0] for d in con.execute(src + " LIMIT 0", [glob]).description}
        if any(col not in present for col in filters if col not in late):
            return _empty(schema)
        df = con.execute(sql, [glob, *params]).df()
    finally:
        con.close()
    if "date" in df.columns:
        df["date"] = df["date"].astype(str)
    if "timestamp" in df.columns:
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df = fill_defaults(_fill_missing(df, schema), name)
    for col, vals in late.items():
        df = df[df[col].isin(vals)]
    return df.reset_index(drop=True)


def fill_defaults(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """``df`` with the columns of ``COLUMN_DEFAULTS[name]`` present and their nulls (rows from part files
    written before the column existed) set to the default."""
    for col, default in COLUMN_DEFAULTS.get(name, {}).items():
        if col not in df.columns:
            df[col] = default
        elif default is not None:
            df[col] = df[col].where(df[col].notna(), default)
    return df


def _fill_missing(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Add the schema's columns that no part file has (tables written before a column was added):
    NaN for float columns, None otherwise."""
    for f in schema:
        if f.name not in df.columns:
            df[f.name] = pd.Series([float("nan") if pa.types.is_floating(f.type) else None] * len(df),
                                   index=df.index, dtype="float64" if pa.types.is_floating(f.type) else object)
    return df


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
