"""Result tables: schema, append-only part files written atomically, hive date partitions, filters."""

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation import results as R


def agg_row(run_id="r1", metric="wer", value=0.1, **kw):
    row = dict(run_id=run_id, kind="adhoc", checkpoint="/ck", checkpoint_hash="abc", variant="v", benchmark="demo",
               task="en_tts", metric=metric, higher_is_better=False, value=value, ci_low=value - 0.01,
               ci_high=value + 0.01, n=10, scorer="s", scorer_version="1", seeds="0,1,2", git_commit="g",
               config_hash="c")
    row.update(kw)
    return row


def test_schema_partition_and_types(tmp_path):
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    path = R.write_rows(tmp_path, "aggregate", [agg_row()], run_id="r1", when=when)
    assert path.parent.name == "date=2024-05-06" and path.parent.parent.name == "aggregate"
    assert path.name.startswith("part-r1-") and path.suffix == ".parquet"
    schema = pq.read_schema(path)
    assert schema.names == R.SCHEMAS["aggregate"].names
    assert str(schema.field("timestamp").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("n").type) == "int64" and str(schema.field("higher_is_better").type) == "bool"
    df = R.read_table(tmp_path, "aggregate")
    assert df.loc[0, "timestamp"] == pd.Timestamp(when) and df.loc[0, "date"] == "2024-05-06"


def test_append_only_new_part_per_write(tmp_path):
    p1 = R.write_rows(tmp_path, "aggregate", [agg_row("r1")], run_id="r1")
    before = p1.read_bytes()
    p2 = R.write_rows(tmp_path, "aggregate", [agg_row("r2"), agg_row("r2", metric="sim", higher_is_better=True)],
                      run_id="r2")
    assert p1 != p2 and p1.read_bytes() == before  # nothing rewritten
    df = R.read_table(tmp_path, "aggregate")
    assert sorted(df["run_id"]) == ["r1", "r2", "r2"]
    assert not list(tmp_path.rglob(".*.tmp"))  # no temporaries left behind


def test_bad_rows_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="unknown columns"):
        R.write_rows(tmp_path, "aggregate", [dict(agg_row(), secret="x")], run_id="r")
    with pytest.raises(ValueError, match="missing"):
        R.write_rows(tmp_path, "items", [{"run_id": "r"}], run_id="r")
    with pytest.raises(pa.ArrowInvalid,
                       match="Could not convert 'not a number' with type str: tried to convert to double"):
        R.write_rows(tmp_path, "aggregate", [dict(agg_row(), value="not a number")], run_id="r")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
    assert R.write_rows(tmp_path, "aggregate", [], run_id="r") is None


def test_read_filters_and_empty(tmp_path):
    assert list(R.read_table(tmp_path, "regression").columns) == R.SCHEMAS["regression"].names
    R.write_rows(tmp_path, "aggregate", [agg_row("r1"), agg_row("r1", metric="sim")], run_id="r1")
    R.write_rows(tmp_path, "aggregate", [agg_row("r2", benchmark="seedtts-en")], run_id="r2")
    assert len(R.read_table(tmp_path, "aggregate", run_id="r1")) == 2
    assert list(R.read_table(tmp_path, "aggregate", benchmark="seedtts-en")["run_id"]) == ["r2"]
    assert len(R.read_table(tmp_path, "aggregate", run_id=["r1", "r2"], metric="wer")) == 2
    assert R.read_table(tmp_path, "aggregate", run_id="nope").empty
    with pytest.raises(ValueError):
        R.read_table(tmp_path, "aggregate", nonsense=1)
    with pytest.raises(ValueError):
        R.read_table(tmp_path, "secrets")


def test_latest_run(tmp_path):
    t = [datetime(2024, 1, d, tzinfo=timezone.utc) for d in (1, 2, 3)]
    R.write_rows(tmp_path, "aggregate", [agg_row("a", kind="nightly")], run_id="a", when=t[0])
    R.write_rows(tmp_path, "aggregate", [agg_row("b", kind="adhoc")], run_id="b", when=t[1])
    R.write_rows(tmp_path, "aggregate", [agg_row("c", kind="nightly")], run_id="c", when=t[2])
    assert R.latest_run(tmp_path) == "c"
    assert R.latest_run(tmp_path, kind="nightly", exclude="c") == "a"
    assert R.latest_run(tmp_path, before=t[2]) == "b"
    assert R.latest_run(tmp_path, benchmark="other") is None


def test_provenance_helpers():
    assert R.config_hash({"a": 1, "b": [1, 2]}) == R.config_hash({"b": [1, 2], "a": 1}) != R.config_hash({"a": 2})


def test_git_commit_is_head_marked_dirty_by_tracked_changes(monkeypatch):
    """The commit recorded with results is ``git rev-parse HEAD`` of this checkout, with ``-dirty`` exactly
    when ``git diff HEAD`` (tracked files, staged or not) is non-empty; "unknown" when git cannot run."""
    root = Path(R.__file__).resolve().parents[1]
    git = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)  # noqa: E731
    head = git("rev-parse", "HEAD")
    if shutil.which("git") is None or head.returncode != 0:
        pytest.skip("needs git and a git checkout")
    dirty = git("diff", "--quiet", "HEAD").returncode == 1
    R.git_commit.cache_clear()
    try:
        assert R.git_commit() == head.stdout.strip() + ("-dirty" if dirty else "")

        def no_git(*args, **kwargs):
            raise FileNotFoundError("git")

        monkeypatch.setattr(R.subprocess, "run", no_git)
        R.git_commit.cache_clear()
        assert R.git_commit() == "unknown"
    finally:
        R.git_commit.cache_clear()


def test_older_parts_without_new_columns_read_back_filled(tmp_path):
    """A table written before columns were added to its schema (here the regression table's gate fields)
    reads back with every current column: null in the old rows, filterable without error."""

    old_names = ["run_id", "baseline_run_id", "benchmark", "task", "metric", "value", "baseline_value", "delta",
                 "threshold", "ci_low", "ci_high", "regressed", "timestamp"]
    old_schema = pa.schema([R.SCHEMAS["regression"].field(n) for n in old_names])
    old = {"run_id": "old", "baseline_run_id": "b", "benchmark": "demo", "task": "en_tts", "metric": "wer", "value": 0.2,
           "baseline_value": 0.1, "delta": 0.1, "threshold": 0.01, "ci_low": 0.18, "ci_high": 0.22, "regressed": True,
           "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc)}
    part = tmp_path / "regression" / "date=2024-01-01" / "part-old-00000000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), part)
    df = R.read_table(tmp_path, "regression")
    assert set(R.SCHEMAS["regression"].names) <= set(df.columns)
    assert df.loc[0, "rule"] is None and pd.isna(df.loc[0, "delta_ci_low"]) and df.loc[0, "regressed"]
    assert R.read_table(tmp_path, "regression", rule="paired-item-bootstrap").empty  # no part has the column
    new = {**{k: v for k, v in old.items() if k != "timestamp"}, "run_id": "new", "higher_is_better": False,
           "delta_ci_low": 0.05, "delta_ci_high": 0.15, "rule": "paired-item-bootstrap", "comparable": True, "reason": "",
           "n_items": 10, "n_pairs": 30, "item_set_hash": "h", "baseline_item_set_hash": "h"}
    R.write_rows(tmp_path, "regression", [new], run_id="new")
    df = R.read_table(tmp_path, "regression").set_index("run_id")
    assert pd.isna(df.loc["old", "rule"]) and df.loc["new", "rule"] == "paired-item-bootstrap"
    assert list(R.read_table(tmp_path, "regression", rule="paired-item-bootstrap")["run_id"]) == ["new"]


def test_system_and_n_asked_columns_with_defaults_for_older_parts(tmp_path):
    """``system`` / ``n_asked``: written when given, defaulted ('model' / null) when a row omits them,
    and parts written before the columns existed read as model rows, filters on ``system`` included."""

    assert R.SYSTEMS == ("model", "ground_truth", "codec_resynth")
    old_schema = pa.schema([f for f in R.SCHEMAS["aggregate"] if f.name not in ("system", "n_asked")])
    part = tmp_path / "aggregate" / "date=2024-01-01" / "part-old-00000000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**agg_row("old"), "timestamp": datetime(2024, 1, 1, tzinfo=timezone.utc)}],
                                        schema=old_schema), part)
    df = R.read_table(tmp_path, "aggregate")
    assert list(df["system"]) == ["model"] and pd.isna(df.loc[0, "n_asked"])
    assert list(R.read_table(tmp_path, "aggregate", system="model")["run_id"]) == ["old"]
    assert R.read_table(tmp_path, "aggregate", system="ground_truth").empty
    R.write_rows(tmp_path, "aggregate", [agg_row("new", n=3, n_asked=5),
                                         agg_row("new", system="ground_truth", n=5, n_asked=5),
                                         agg_row("new", system="codec_resynth", n=4, n_asked=5)], run_id="new")
    R.write_rows(tmp_path, "aggregate", [agg_row("defaulted")], run_id="defaulted")  # no system / n_asked given
    df = R.read_table(tmp_path, "aggregate")
    got = sorted((r, s, None if pd.isna(a) else int(a)) for r, s, a in zip(df["run_id"], df["system"], df["n_asked"]))
    assert got == [("defaulted", "model", None), ("new", "codec_resynth", 5), ("new", "ground_truth", 5),
                   ("new", "model", 5), ("old", "model", None)]
    assert sorted(df.loc[df["run_id"] == "new", "n"]) == [3, 4, 5]
    assert sorted(R.read_table(tmp_path, "aggregate", system="model")["run_id"]) == ["defaulted", "new", "old"]
    assert list(R.read_table(tmp_path, "aggregate", run_id="new", system=["ground_truth", "codec_resynth"])["system"]
                .sort_values()) == ["codec_resynth", "ground_truth"]
    with pytest.raises(ValueError, match="system"):
        R.write_rows(tmp_path, "aggregate", [agg_row("bad", system="oracle")], run_id="bad")
    items = [{"run_id": "new", "variant": "v", "benchmark": "demo", "task": "en_tts", "item_id": "i", "seed": 0,
              "metric": "wer", "value": 0.1, "scorer": "s", "scorer_version": "1", "audio_path": "/a.wav"}]
    R.write_rows(tmp_path, "items", items, run_id="new")
    R.write_rows(tmp_path, "items", [{**items[0], "system": "ground_truth"}], run_id="new")
    assert sorted(R.read_table(tmp_path, "items")["system"]) == ["ground_truth", "model"]


def test_trust_columns_and_transcripts_read_null_from_older_parts(tmp_path):
    """The columns a comparison needs (manifest / reference-set hashes, decoding, voice prompt, scorer
    protocol, device, dtype, packages; per-item transcripts): written when given, null when a row omits
    them and in parts written before they existed; filters on them work."""

    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    old_agg = pa.schema([f for f in R.SCHEMAS["aggregate"] if f.name not in R.TRUST_COLUMNS])
    old_items = pa.schema([f for f in R.SCHEMAS["items"] if f.name not in ("transcript", "voice_prompt")])
    item = {"run_id": "old", "variant": "v", "benchmark": "demo", "task": "zh_tts", "item_id": "i", "seed": 0,
            "metric": "cer", "value": 0.1, "scorer": "s", "scorer_version": "1", "audio_path": "/a.wav",
            "system": "model"}
    for name, schema, row in (("aggregate", old_agg, {**agg_row("old"), "system": "model", "n_asked": 10}),
                              ("items", old_items, item)):
        part = tmp_path / name / "date=2024-01-01" / "part-old-00000000.parquet"
        part.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{**row, "timestamp": when}], schema=schema), part)
    trust = dict(manifest_hash="m1", reference_hash="r1", decoding="greedy", voice_prompt="fixed",
                 scorer_protocol='{"pooling": "frames", "crop_seed": 0}', device="cuda:0", dtype="bfloat16",
                 packages=R.package_versions())
    R.write_rows(tmp_path, "aggregate", [agg_row("new", **trust)], run_id="new")
    R.write_rows(tmp_path, "aggregate", [agg_row("omitted")], run_id="omitted")
    df = R.read_table(tmp_path, "aggregate").set_index("run_id")
    for col in R.TRUST_COLUMNS:
        assert df.loc["new", col] == trust[col] and pd.isna(df.loc["old", col]) and pd.isna(df.loc["omitted", col])
    assert list(R.read_table(tmp_path, "aggregate", manifest_hash="m1")["run_id"]) == ["new"]
    # rows read back can be written again (a null beside strings comes back through pandas as NaN)
    R.write_rows(tmp_path, "aggregate", [agg_row("mixed", metric="a", decoding="greedy"),
                                         agg_row("mixed", metric="b", system="ground_truth")], run_id="mixed")
    back = R.read_table(tmp_path, "aggregate", run_id="mixed").drop(columns=["date", "timestamp"]).to_dict("records")
    R.write_rows(tmp_path, "aggregate", [{**r, "run_id": "again"} for r in back], run_id="again")
    again = R.read_table(tmp_path, "aggregate", run_id="again").set_index("metric")
    assert again.loc["a", "decoding"] == "greedy" and pd.isna(again.loc["b", "decoding"])
    R.write_rows(tmp_path, "items",
                 [{**item, "run_id": "new", "transcript": "我在NBA打球。", "voice_prompt": "fixed"}], run_id="new")
    items = R.read_table(tmp_path, "items").set_index("run_id")
    assert items.loc["new", "transcript"] == "我在NBA打球。" and items.loc["new", "voice_prompt"] == "fixed"
    assert pd.isna(items.loc["old", "transcript"]) and pd.isna(items.loc["old", "voice_prompt"])


def test_package_versions_come_from_distribution_metadata_not_the_environment(monkeypatch):
    import json
    import platform

    import numpy

    monkeypatch.setenv("UNIMOE_TEST_SECRET", "s3cr3t-value")
    R.package_versions.cache_clear()
    try:
        text = R.package_versions()
    finally:
        R.package_versions.cache_clear()
    got = json.loads(text)
    assert got["python"] == platform.python_version() and got["numpy"] == numpy.__version__
    assert set(got) <= {"python", *R.PACKAGES} and "s3cr3t-value" not in text
