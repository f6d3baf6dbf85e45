"""Result tables: schema, append-only part files written atomically, hive date partitions, filters."""

from datetime import datetime, timezone

import pandas as pd
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
    with pytest.raises(Exception):
        R.write_rows(tmp_path, "aggregate", [agg_row(value="not a number")], run_id="r")
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
    commit = R.git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40
