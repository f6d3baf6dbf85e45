"""The manifest schema (data.manifest) and long-music segmentation (data.segment)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.manifest import (
    COLUMNS,
    SCHEMA,
    ManifestError,
    ManifestRecord,
    kept,
    mark,
    read_kept_texts,
    read_manifest,
    read_manifest_table,
    split_by_status,
    status_counts,
    validate_records,
    write_manifest,
)
from data.segment import segment_records
from unimoe.config import TASKS
from unimoe.tokenizer import corpus_texts

SHA = "ab" * 32


def rec(i: str = "a", **kw) -> ManifestRecord:
    base = dict(
        id=i,
        task="en_tts",
        language="en",
        audio_path=f"/corpus/{i}.wav",
        duration=2.5,
        sample_rate=16000,
        channels=1,
        text="hello world",
        speaker="s1",
        source_corpus="test",
        licence="CC-BY-4.0",
        split="train",
        provenance_sha256=SHA,
        offset=0.0,
        source_duration=2.5,
        source_ref=f"{i}.wav",
    )
    base.update(kw)
    return ManifestRecord(**base)


def music(i: str, duration: float, **kw) -> ManifestRecord:
    kw.setdefault("source_duration", duration)
    return rec(i, task="t2m", language=None, text=None, speaker=None, duration=duration, **kw)


# ---------------------------------------------------------------- schema and round trip


def test_schema_has_the_design_fields():
    for name in (
        "id", "task", "language", "audio_path", "duration", "sample_rate", "channels", "text", "speaker",
        "source_corpus", "licence", "split", "video_path", "provenance_sha256", "offset", "source_duration",
        "status", "reason",
    ):  # fmt: skip
        assert name in COLUMNS
    assert SCHEMA.field("id").nullable is False and SCHEMA.field("status").nullable is False
    assert set(COLUMNS) == {f.name for f in __import__("dataclasses").fields(ManifestRecord)}


def test_round_trip_keeps_every_field(tmp_path):
    rows = [
        rec("a", meta={"subset": "dev-clean", "instruments": [1, 41]}),
        rec("v", task="v2m", video_path="/corpus/v.mp4", text=None, language=None),
        ManifestRecord(id="bad", status="quarantined", reason="missing_file", detail="x.wav: does not exist"),
        rec("f", status="filtered", reason="low_utmos", detail="utmos 2.1 < 3.0"),
        rec("zh", task="zh_tts", language="zh", text="广州女大学生"),
    ]
    path = write_manifest(tmp_path / "m.parquet", rows)
    back = read_manifest(path)
    assert back == rows
    assert pq.read_schema(path).metadata[b"unimoe.manifest.version"] == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["m.parquet"]  # no temp files left behind


def test_split_by_status_and_counts():
    rows = [rec("a"), rec("b", status="filtered", reason="low_utmos"),
            ManifestRecord(id="c", status="quarantined", reason="missing_file")]  # fmt: skip
    parts = split_by_status(rows)
    assert [r.id for r in parts["kept"]] == ["a"]
    assert [r.id for r in parts["filtered"]] == ["b"]
    assert [r.id for r in parts["quarantined"]] == ["c"]
    assert split_by_status([]) == {"kept": [], "filtered": [], "quarantined": []}
    assert status_counts(rows) == {
        "kept": {"-": 1},
        "filtered": {"low_utmos": 1},
        "quarantined": {"missing_file": 1},
    }
    assert [r.id for r in kept(rows)] == ["a"]
    m = mark(rows[0], "filtered", "low_clap", "clap 0.1")
    assert (m.status, m.reason, rows[0].status) == ("filtered", "low_clap", "kept")
    with pytest.raises(ValueError):
        mark(rows[0], "filtered", "")


# ---------------------------------------------------------------- validation on write


@pytest.mark.parametrize(
    "bad, column",
    [
        (rec("a", task="tts"), "task"),
        (rec(""), "id"),
        (rec("   "), "id"),
        (rec("a", duration=0.0), "duration"),
        (rec("a", duration=float("nan")), "duration"),
        (rec("a", sample_rate=0), "sample_rate"),
        (rec("a", channels=0), "channels"),
        (rec("a", audio_path=None), "audio_path"),
        (rec("a", provenance_sha256="abc"), "provenance_sha256"),
        (rec("a", licence=None), "licence"),
        (rec("a", text="  "), "text"),
        (rec("a", task="v2m", video_path=None), "video_path"),
        (rec("a", reason="oops"), "reason"),
        (rec("a", status="maybe"), "status"),
        (rec("a", status="quarantined", reason=None), "reason"),
        (rec("a", offset=3.0, source_duration=2.5), "offset"),
        (rec("a", text="caf\udce9"), "text"),
        (rec("a", meta={"x": object()}), "meta"),
    ],
)
def test_write_rejects_bad_records_naming_the_column(tmp_path, bad, column):
    with pytest.raises(ManifestError) as e:
        write_manifest(tmp_path / "m.parquet", [rec("ok"), bad])
    msg = str(e.value)
    assert f"column {column!r}" in msg and "row 1" in msg
    assert not (tmp_path / "m.parquet").exists()


def test_ids_unique_among_kept_but_quarantined_duplicates_are_accounted(tmp_path):
    with pytest.raises(ManifestError, match="duplicates row 0"):
        validate_records([rec("a"), rec("a")])
    rows = [rec("a"), rec("a", status="quarantined", reason="duplicate_id")]
    assert len(read_manifest(write_manifest(tmp_path / "m.parquet", rows))) == 2


def test_quarantined_rows_need_only_id_status_reason():
    bare = ManifestRecord(id="x", status="quarantined", reason="not_audio")
    assert validate_records([bare]) == [bare]
    # The same row without a reason code, or blank, is one problem; as a kept row it lacks everything a kept
    # row needs, starting with its task.
    for reason in (None, "  "):
        with pytest.raises(ManifestError, match=r"1 problem\(s\):\n  row 0 \(id='x'\): column 'reason' "
                                                 "quarantined rows need a reason code$"):
            validate_records([ManifestRecord(id="x", status="quarantined", reason=reason)])
    with pytest.raises(ManifestError, match="column 'task' kept rows need a task"):
        validate_records([ManifestRecord(id="x", status="kept")])


def test_failed_write_keeps_the_previous_manifest(tmp_path):
    path = write_manifest(tmp_path / "m.parquet", [rec("a")])
    with pytest.raises(ManifestError):
        write_manifest(path, [rec("b", task="nope")])
    assert [r.id for r in read_manifest(path)] == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["m.parquet"]


# ---------------------------------------------------------------- validation on read


def _raw_table(rows):
    return pa.Table.from_pylist([r.to_row() for r in rows], schema=SCHEMA)


def test_read_rejects_values_written_behind_its_back(tmp_path):
    table = _raw_table([rec("a"), rec("b")])
    dur = table.column("duration").to_pylist()
    dur[1] = -1.0
    table = table.set_column(
        table.schema.get_field_index("duration"), "duration", pa.array(dur, pa.float64())
    )
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"row 1 \(id='b'\): column 'duration'"):
        read_manifest(tmp_path / "m.parquet")


def test_read_rejects_missing_extra_and_mistyped_columns(tmp_path):
    table = _raw_table([rec("a")])
    pq.write_table(table.drop_columns(["licence"]), tmp_path / "missing.parquet")
    with pytest.raises(ManifestError, match="missing column.*licence"):
        read_manifest(tmp_path / "missing.parquet")
    pq.write_table(table.append_column("score", pa.array([1.0])), tmp_path / "extra.parquet")
    with pytest.raises(ManifestError, match="unexpected column.*score"):
        read_manifest(tmp_path / "extra.parquet")
    bad = table.set_column(table.schema.get_field_index("sample_rate"), "sample_rate", pa.array(["16k"]))
    pq.write_table(bad, tmp_path / "type.parquet")
    with pytest.raises(ManifestError, match="column 'sample_rate'"):
        read_manifest(tmp_path / "type.parquet")
    bad = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(["[1, 2]"]))
    pq.write_table(bad, tmp_path / "meta.parquet")
    with pytest.raises(ManifestError, match="column 'meta'"):
        read_manifest(tmp_path / "meta.parquet")


def test_read_accepts_safely_castable_types_and_reports_missing_file(tmp_path):
    table = _raw_table([rec("a")])
    i = table.schema.get_field_index("sample_rate")
    table = table.set_column(i, "sample_rate", pa.array([16000], pa.int64()))
    pq.write_table(table, tmp_path / "m.parquet")
    assert read_manifest_table(tmp_path / "m.parquet").schema.field("sample_rate").type == pa.int32()
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")


def test_tasks_are_the_config_tasks():
    assert sorted(TASKS) == ["en_tts", "t2m", "v2m", "zh_tts"]  # the paper's four generation tasks
    for t in TASKS:
        r = rec("a", task=t, video_path="/v.mp4" if t == "v2m" else None)
        assert validate_records([r]) == [r]
    with pytest.raises(ManifestError, match=r"column 'task' must be one of "
                                             r"\('zh_tts', 'en_tts', 't2m', 'v2m'\) or null, got 'asr'"):
        validate_records([rec("a", task="asr")])
    with pytest.raises(ManifestError, match="column 'video_path' kept v2m rows need a video path"):
        validate_records([rec("a", task="v2m")])


# ---------------------------------------------------------------- segmentation


def test_segment_drop_policy_accounts_for_the_tail():
    out = segment_records([music("song", 65.0)], clip_seconds=20.0, tail="drop")
    assert [r.id for r in out] == ["song__clip0000", "song__clip0001", "song__clip0002", "song__clip0003"]
    assert [r.offset for r in out] == [0.0, 20.0, 40.0, 60.0]
    assert [r.duration for r in out] == [20.0, 20.0, 20.0, 5.0]
    assert [r.status for r in out] == ["kept"] * 3 + ["filtered"]
    assert out[-1].reason == "short_tail" and "5.000 s" in out[-1].detail
    for r in out:
        assert r.parent_id == "song" and r.source_duration == 65.0
        assert r.audio_path == "/corpus/song.wav" and r.provenance_sha256 == SHA
    validate_records(out)


def test_segment_keep_and_pad_policies_and_min_tail():
    src = [music("s", 47.0)]
    keep = segment_records(src, clip_seconds=20.0, tail="keep", min_tail_seconds=5.0)
    assert [(r.offset, r.duration, r.status) for r in keep] == [
        (0.0, 20.0, "kept"),
        (20.0, 20.0, "kept"),
        (40.0, 7.0, "kept"),
    ]
    pad = segment_records(src, clip_seconds=20.0, tail="pad", min_tail_seconds=5.0)
    assert pad[-1].duration == 7.0 and pad[-1].meta["pad_to_seconds"] == 20.0 and pad[-1].status == "kept"
    assert "pad_to_seconds" not in pad[0].meta
    short = segment_records(src, clip_seconds=20.0, tail="keep", min_tail_seconds=8.0)
    assert short[-1].status == "filtered" and short[-1].reason == "short_tail"
    validate_records(keep)
    validate_records(pad)


def test_segment_short_rows_exact_multiples_and_passthrough():
    rows = [
        music("short", 12.0),
        music("exact", 40.0),
        rec("speech", duration=30.0, source_duration=30.0),  # not a music task: untouched
        ManifestRecord(id="q", task="t2m", status="quarantined", reason="not_audio"),
    ]
    out = segment_records(rows, clip_seconds=20.0)
    ids = [r.id for r in out]
    assert ids == ["short__clip0000", "exact__clip0000", "exact__clip0001", "speech", "q"]
    assert out[0].status == "filtered" and out[0].reason == "too_short_for_clip"
    kept_short = segment_records([music("short", 12.0)], clip_seconds=20.0, tail="keep")
    assert kept_short[0].status == "kept" and kept_short[0].duration == 12.0
    # every input row is accounted for: by id or as the parent of its clips
    assert {r.parent_id or r.id for r in out} == {"short", "exact", "speech", "q"}


def test_segment_respects_an_existing_offset_and_config_errors():
    row = music("span", 30.0, offset=100.0, source_duration=300.0)
    out = segment_records([row], clip_seconds=10.0)
    assert [(r.offset, r.duration) for r in out] == [(100.0, 10.0), (110.0, 10.0), (120.0, 10.0)]
    assert all(r.source_duration == 300.0 for r in out)
    with pytest.raises(ValueError):
        segment_records([row], clip_seconds=0)
    with pytest.raises(ValueError):
        segment_records([row], tail="wrap")


def test_segmented_manifest_round_trips(tmp_path):
    out = segment_records(
        [music("a", 50.0), music("b", 21.0)], clip_seconds=20.0, tail="pad", min_tail_seconds=2.0
    )
    back = read_manifest(write_manifest(tmp_path / "clips.parquet", out))
    assert back == out
    assert [(r.id, r.duration) for r in back] == [
        ("a__clip0000", 20.0), ("a__clip0001", 20.0), ("a__clip0002", 10.0), ("b__clip0000", 20.0), ("b__clip0001", 1.0),
    ]  # fmt: skip
    assert json.loads(back[2].to_row()["meta"]) == {"pad_to_seconds": 20.0}
    assert back[-1].status == "filtered" and back[-1].reason == "short_tail"


# ---------------------------------------------------------------- partial reads for shard tasks


def _mixed_manifest(tmp_path):
    rows = [rec("b", text="bee"), mark(rec("a", text="ay"), "filtered", "low_dnsmos"), rec("é-1", text="accent"),
            rec("Z", text="upper"), music("m", 10.0), rec("aa", text="double a")]
    return write_manifest(tmp_path / "m.parquet", rows), rows


def test_read_manifest_selects_rows_by_id_in_file_order(tmp_path):
    path, rows = _mixed_manifest(tmp_path)
    got = read_manifest(path, ids=["Z", "b", "unknown", "m"])
    assert [r.id for r in got] == ["b", "Z", "m"]  # file order; an unknown id selects nothing
    assert got == [r for r in rows if r.id in ("b", "Z", "m")]
    assert read_manifest(path, ids=[]) == []
    assert read_manifest(path, ids=None) == rows


def test_read_kept_texts_equals_the_tokenizer_corpus_of_the_records(tmp_path):
    path, _ = _mixed_manifest(tmp_path)
    texts = read_kept_texts(path)
    assert texts == corpus_texts(read_manifest(path)) == ["upper", "double a", "bee", "accent"]
