"""Balancing: determinism, balance, redistribution, warm-up, report, subset files."""

import json
import random

import pytest

from data.balance import (
    BalanceConfig,
    allocate,
    balance,
    read_subset,
    select_records,
    task_order,
    write_subset,
)
from data.manifest import ManifestRecord
from unimoe.config import TASKS

HASH = "0" * 64


def rec(rid, task, *, duration=2.0, speaker=None, parent_id=None, status="kept", split="train"):
    return ManifestRecord(
        id=rid, task=task, language="en" if task == "en_tts" else ("zh" if task == "zh_tts" else None),
        audio_path=f"/a/{rid}.wav", duration=duration, sample_rate=16000, channels=1, text="t",
        speaker=speaker, source_corpus="test", licence="CC0", split=split,
        video_path="/v.mp4" if task == "v2m" else None, provenance_sha256=HASH, offset=0.0,
        source_duration=duration, parent_id=parent_id, status=status,
        reason=None if status == "kept" else "quality:x<1",
    )  # fmt: skip


def pool(counts, *, speakers=4, seed=1):
    """``counts[task]`` kept rows per task; durations vary deterministically (1-10 s)."""
    rng = random.Random(seed)
    out = []
    for task, n in counts.items():
        for i in range(n):
            spk = f"{task}-spk{i % speakers}" if task.endswith("tts") else None
            parent = f"{task}-track{i // 5}" if not task.endswith("tts") else None
            d = rng.uniform(1, 10)
            out.append(rec(f"{task}-{i:04d}", task, duration=d, speaker=spk, parent_id=parent))
    return out


def per_task(ids, records):
    by = {r.id: r.task for r in records}
    c = {t: 0 for t in TASKS}
    for i in ids:
        c[by[i]] += 1
    return c


FULL = {"zh_tts": 50, "en_tts": 60, "t2m": 70, "v2m": 40}


def test_deterministic_for_a_seed_and_independent_of_input_order():
    recs = pool(FULL)
    a = balance(recs, BalanceConfig(total=40, seed=3))
    shuffled = recs[:]
    random.Random(0).shuffle(shuffled)
    b = balance(shuffled, BalanceConfig(total=40, seed=3))
    assert sorted(a.subset_ids) == sorted(b.subset_ids) and sorted(a.warmup_ids) == sorted(b.warmup_ids)
    assert a.report == b.report
    assert balance(recs, BalanceConfig(total=40, seed=3)).subset_ids == a.subset_ids
    c = balance(recs, BalanceConfig(total=40, seed=4))
    assert set(c.subset_ids) != set(a.subset_ids)
    # ids come back in manifest order
    pos = {r.id: i for i, r in enumerate(recs)}
    assert a.subset_ids == sorted(a.subset_ids, key=pos.get)


def test_balanced_when_every_task_has_enough():
    recs = pool(FULL)
    res = balance(recs, BalanceConfig(total=40, warmup_total=8))
    assert per_task(res.subset_ids, recs) == {t: 10 for t in TASKS}
    assert per_task(res.warmup_ids, recs) == {t: 2 for t in TASKS}
    assert len(set(res.subset_ids)) == 40
    # rounding: 42 rows -> largest remainder, ties to the earlier task
    assert per_task(balance(recs, BalanceConfig(total=42)).subset_ids, recs) == {
        "zh_tts": 11, "en_tts": 11, "t2m": 10, "v2m": 10}


def test_leftover_quota_of_a_short_task_is_redistributed():
    recs = pool({"zh_tts": 50, "en_tts": 60, "t2m": 70, "v2m": 4})
    res = balance(recs, BalanceConfig(total=40, warmup_fraction=0.5))
    assert per_task(res.subset_ids, recs) == {"zh_tts": 12, "en_tts": 12, "t2m": 12, "v2m": 4}
    assert res.report["short_tasks"] == ["v2m"]
    assert res.report["targets"] == {t: 10 for t in TASKS}
    assert res.report["quotas"] == {"zh_tts": 12, "en_tts": 12, "t2m": 12, "v2m": 4}
    # warm-up: half of 40 = 20 -> 5 each, v2m has only 4 in the subset -> 16 left for 3 tasks
    assert per_task(res.warmup_ids, recs) == {"zh_tts": 6, "en_tts": 5, "t2m": 5, "v2m": 4}
    # two short tasks cascade
    recs2 = pool({"zh_tts": 3, "en_tts": 60, "t2m": 11, "v2m": 100})
    assert per_task(balance(recs2, BalanceConfig(total=40)).subset_ids, recs2) == {
        "zh_tts": 3, "en_tts": 13, "t2m": 11, "v2m": 13}
    # asking for more than exists takes everything
    everything = balance(recs2, BalanceConfig(total=10_000))
    assert len(everything.subset_ids) == len(recs2)
    # a task with no rows at all
    recs3 = pool({"zh_tts": 30, "en_tts": 30, "t2m": 30})
    assert per_task(balance(recs3, BalanceConfig(total=30)).subset_ids, recs3) == {
        "zh_tts": 10, "en_tts": 10, "t2m": 10, "v2m": 0}


def test_warmup_is_a_balanced_subset_of_the_subset_and_larger_totals_are_supersets():
    recs = pool(FULL)
    small = balance(recs, BalanceConfig(total=20, seed=7))
    big = balance(recs, BalanceConfig(total=80, seed=7))
    assert set(small.subset_ids) <= set(big.subset_ids)
    for res in (small, big):
        assert set(res.warmup_ids) <= set(res.subset_ids)
        assert len(res.warmup_ids) == round(0.1 * len(res.subset_ids))
        c = per_task(res.warmup_ids, recs)
        assert max(c.values()) - min(c.values()) <= 1


def test_speaker_and_track_diversity():
    recs = pool({"zh_tts": 40, "en_tts": 40, "t2m": 40, "v2m": 40}, speakers=8)
    res = balance(recs, BalanceConfig(total=32))
    chosen = [r for r in recs if r.id in set(res.subset_ids)]
    for task in ("zh_tts", "en_tts"):
        assert len({r.speaker for r in chosen if r.task == task}) == 8  # 8 rows, 8 speakers
    assert len({r.parent_id for r in chosen if r.task == "t2m"}) == 8  # 8 clips from 8 tracks
    assert res.report["subset"]["zh_tts"]["groups"] == 8
    # round-robin: the first k rows of a task's order come from k different speakers
    order = task_order([r for r in recs if r.task == "en_tts"], seed=0)
    assert len({r.speaker for r in order[:8]}) == 8
    plain = task_order([r for r in recs if r.task == "en_tts"], seed=0, diversity=False)
    assert sorted(r.id for r in plain) == sorted(r.id for r in order)


def test_only_kept_training_rows_and_report_numbers():
    recs = pool(FULL)
    recs += [rec("filt", "t2m", status="filtered"), rec("quar", "t2m", status="quarantined"),
             rec("test1", "en_tts", split="test"), rec("dev1", "zh_tts", split="dev")]  # fmt: skip
    res = balance(recs, BalanceConfig(total=40, warmup_total=8))
    assert not {"filt", "quar", "test1", "dev1"} & set(res.subset_ids)
    rep = res.report
    assert rep["excluded"] == {"not_kept": 2, "split": 2, "task": 0}
    by_id = {r.id: r for r in recs}
    for name, ids in (("subset", res.subset_ids), ("warmup", res.warmup_ids)):
        for t in TASKS:
            rows = [by_id[i] for i in ids if by_id[i].task == t]
            assert rep[name][t]["rows"] == len(rows)
            assert rep[name][t]["hours"] == pytest.approx(sum(r.duration for r in rows) / 3600)
        assert rep["totals"][name]["rows"] == len(ids)
    for t in TASKS:
        rows = [r for r in recs if r.task == t and r.status == "kept" and r.split == "train"]
        hours = pytest.approx(sum(r.duration for r in rows) / 3600)
        groups = len({r.speaker or r.parent_id for r in rows})
        assert rep["pool"][t] == {"rows": FULL[t], "hours": hours, "groups": groups}
    assert rep["totals"]["pool"]["rows"] == sum(FULL.values())
    assert rep["requested"] == {"subset": 40, "warmup": 8, "unit": "rows"}
    json.dumps(rep)  # serialisable as-is
    # all splits when asked
    res_all = balance(recs, BalanceConfig(total=10_000, splits=None))
    assert {"test1", "dev1"} <= set(res_all.subset_ids)


def test_weights_and_hours_mode():
    recs = pool(FULL)
    res = balance(recs, BalanceConfig(total=50, weights={"zh_tts": 1, "en_tts": 1, "t2m": 2, "v2m": 1}))
    assert per_task(res.subset_ids, recs) == {"zh_tts": 10, "en_tts": 10, "t2m": 20, "v2m": 10}
    res0 = balance(recs, BalanceConfig(total=30, weights={"zh_tts": 1, "en_tts": 1, "t2m": 1, "v2m": 0}))
    assert per_task(res0.subset_ids, recs)["v2m"] == 0 and res0.report["excluded"]["task"] == 40

    hrs = balance(recs, BalanceConfig(by="hours", total_hours=0.2, warmup_total_hours=0.04))
    per_h = {t: hrs.report["subset"][t]["hours"] for t in TASKS}
    max_row_h = 10 / 3600
    for t in TASKS:
        assert abs(per_h[t] - 0.05) <= max_row_h / 2 + 1e-9
        assert abs(hrs.report["warmup"][t]["hours"] - 0.01) <= max_row_h / 2 + 1e-9
    assert set(hrs.warmup_ids) <= set(hrs.subset_ids)
    assert hrs.report["requested"]["unit"] == "hours"
    assert hrs.report["requested"]["subset"] == pytest.approx(0.2)


def test_allocate_and_config_validation():
    w = {t: 1.0 for t in TASKS}
    assert allocate(10, {"zh_tts": 100, "en_tts": 1, "t2m": 2, "v2m": 100}, w) == {
        "zh_tts": 4, "en_tts": 1, "t2m": 2, "v2m": 3}
    assert allocate(0, {t: 5 for t in TASKS}, w) == {t: 0 for t in TASKS}
    alloc = allocate(100.0, {"zh_tts": 10.0, "en_tts": 50.0, "t2m": 50.0, "v2m": 50.0}, w, integer=False)
    assert alloc["zh_tts"] == 10.0 and alloc["en_tts"] == pytest.approx(30.0)
    with pytest.raises(ValueError):
        BalanceConfig(by="minutes")
    with pytest.raises(ValueError):
        BalanceConfig(by="hours")
    with pytest.raises(ValueError):
        BalanceConfig(weights={"tts": 1})
    with pytest.raises(ValueError):
        BalanceConfig(weights={t: 0 for t in TASKS})


def test_subset_files_round_trip(tmp_path):
    recs = pool(FULL)
    res = balance(recs, BalanceConfig(total=12))
    p = write_subset(tmp_path / "sub" / "subset.json", res.subset_ids, meta=res.report)
    assert read_subset(p) == res.subset_ids
    doc = json.loads(p.read_text())
    assert doc["format"] == "unimoe.subset" and doc["count"] == 12 and doc["meta"]["by"] == "count"
    assert [f.name for f in p.parent.iterdir()] == ["subset.json"]  # no temporary files left
    (tmp_path / "bare.json").write_text(json.dumps(["a", "b"]))
    assert read_subset(tmp_path / "bare.json") == ["a", "b"]
    with pytest.raises(ValueError, match="duplicate"):
        write_subset(tmp_path / "d.json", ["a", "a"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a JSON subset"):
        read_subset(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError):
        read_subset(tmp_path / "nope.json")
    chosen = select_records(recs, res.subset_ids)
    assert [r.id for r in chosen] == res.subset_ids
    with pytest.raises(KeyError):
        select_records(recs, ["nope"])
