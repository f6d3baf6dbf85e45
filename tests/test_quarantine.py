"""Nothing is lost: a corpus salted with every kind of bad input ends with one status per row.

The salted corpus goes through the generic adapter and the audio probe; each bad row must be
quarantined with its expected reason code, good rows kept, and the scan must not crash.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.audio_probe import (
    ProbeLimits,
    ProbeResult,
    QuarantineReason,
    check_text,
    probe_audio,
    probe_video,
)
from data.manifest import STATUSES, read_manifest, split_by_status, write_manifest
from data.sources import base, get_adapter
from unimoe.common.reasons import Reason

SR = 16000


def tone(
    path: Path, seconds: float = 0.25, sr: int = SR, channels: int = 1, subtype: str | None = None, fmt=None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, int(seconds * sr))
    x = (0.3 * np.sin(np.arange(n) / 7.0)).astype(np.float32)
    if channels > 1:
        x = np.repeat(x[:, None], channels, axis=1)
    sf.write(str(path), x, sr, subtype=subtype, format=fmt)
    return path


def wav_header_only_rate(path: Path, rate: int, frames: int = 400) -> Path:
    """A well-formed 16-bit mono WAV with an arbitrary (possibly absurd) sample rate."""
    data = np.zeros(frames, "<i2").tobytes()
    hdr = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    hdr += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    path.write_bytes(hdr + b"data" + struct.pack("<I", len(data)) + data)
    return path


# ---------------------------------------------------------------- the salted corpus


@pytest.fixture(scope="module")
def salted(tmp_path_factory):
    """(root, rows, expected) where expected maps each CSV line number to (status, reason)."""
    base = tmp_path_factory.mktemp("salted")
    root = base / "corpus"
    a = root / "audio"
    a.mkdir(parents=True)

    tone(a / "good_speech.wav")
    tone(a / "good_music.flac", seconds=0.5, channels=2)
    tone(a / "good_stereo48k.wav", sr=48000, channels=2)
    b = tone(a / "trunc_src.wav", seconds=0.5).read_bytes()
    (a / "truncated.wav").write_bytes(b[: len(b) // 2])
    (a / "trunc_src.wav").unlink()
    b = tone(a / "trunc_src.flac", seconds=1.0).read_bytes()
    (a / "truncated.flac").write_bytes(b[: len(b) // 2])
    (a / "trunc_src.flac").unlink()
    (a / "zero.wav").write_bytes(b"")
    sf.write(str(a / "header_only.wav"), np.zeros(0, np.float32), SR)
    x = np.zeros(4000, np.float32)
    x[1234] = np.nan
    sf.write(str(a / "nan.wav"), x, SR, subtype="FLOAT")
    x[1234] = np.inf
    sf.write(str(a / "inf.wav"), x, SR, subtype="FLOAT")
    wav_header_only_rate(a / "absurd_rate.wav", 3)
    wav_header_only_rate(a / "huge_rate.wav", 10_000_000)
    tone(a / "low_rate.wav", sr=4000)  # a rate below the allowed range
    tone(a / "rate_22k.wav", sr=22050)  # the CSV declares 16000
    tone(a / "eight_channels.wav", channels=8)
    # two hours of 8 kHz silence: FLAC squeezes it to ~180 kB and writes it in well under a second
    sf.write(str(a / "two_hours.flac"), np.zeros(8000 * 7200, np.int16), 8000, subtype="PCM_16")
    (a / "not_audio.wav").write_bytes(b"<html><body>404 Not Found</body></html>\n" * 20)
    (a / "corrupt_header.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt " + os.urandom(8))
    (a / "a_directory.wav").mkdir()
    os.rename(tone(a / "latin1.wav"), os.fsencode(a) + b"/latin1_\xe9.wav")  # a real file, name not UTF-8
    outside = tone(base / "outside.wav")
    (a / "escape_link.wav").symlink_to(outside)
    (a / "dangling_link.wav").symlink_to(a / "gone.wav")  # inside the root, target missing

    good = ("kept", None)

    def hello(path: str, sample_rate: str = "") -> list[str]:
        """A speech row that says "Hello." under no id: only its file (or declared rate) is wrong."""
        return [path, "Hello.", "en_tts", "en", "s1", "", sample_rate]

    def quarantined(code: str) -> tuple[str, str]:
        return ("quarantined", code)

    rows: list[tuple[list[str] | bytes, tuple[str, str | None]]] = [
        (["audio/good_speech.wav", "Hello world.", "en_tts", "en", "s1", "utt-good", ""], good),
        (["audio/good_music.flac", "Warm strings over soft piano.", "t2m", "", "", "", ""], good),
        (["audio/good_stereo48k.wav", "Drums.", "t2m", "", "", "", "48000"], good),
        (hello("audio/truncated.wav"), quarantined("truncated")),
        (hello("audio/truncated.flac"), quarantined("truncated")),
        (hello("audio/zero.wav"), quarantined("zero_length")),
        (hello("audio/header_only.wav"), quarantined("zero_length")),
        (hello("audio/nan.wav"), quarantined("non_finite")),
        (hello("audio/inf.wav"), quarantined("non_finite")),
        (hello("audio/absurd_rate.wav"), quarantined("bad_sample_rate")),
        (hello("audio/huge_rate.wav"), quarantined("bad_sample_rate")),
        (hello("audio/low_rate.wav"), quarantined("bad_sample_rate")),
        (hello("audio/rate_22k.wav", "16000"), quarantined("sample_rate_mismatch")),
        (["audio/eight_channels.wav", "Choir.", "t2m", "", "", "", ""], quarantined("too_many_channels")),
        (["audio/two_hours.flac", "A long drone.", "t2m", "", "", "", ""], quarantined("too_long")),
        (hello("audio/not_audio.wav"), quarantined("not_audio")),
        (hello("audio/corrupt_header.wav"), quarantined("corrupt_audio")),
        (hello("audio/does_not_exist.wav"), quarantined("missing_file")),
        (hello("audio/dangling_link.wav"), quarantined("missing_file")),
        (hello("audio/a_directory.wav"), quarantined("not_a_file")),
        (b"audio/latin1_\xe9.wav,Hello.,en_tts,en,s1,utt-latin1-path,\n", quarantined("non_utf8_path")),
        (hello("../outside.wav"), quarantined("path_escape")),
        (hello("audio/escape_link.wav"), quarantined("path_escape")),
        (hello("/etc/hostname"), quarantined("path_escape")),
        (["audio/good_music.flac", "Same id again.", "en_tts", "en", "s1", "utt-good", ""],
         quarantined("duplicate_id")),
        (b"audio/good_speech.wav,caf\xe9 cr\xe8me,en_tts,en,s1,utt-latin1,\n", quarantined("non_utf8_text")),
        (["audio/good_speech.wav", "", "en_tts", "en", "s1", "utt-empty", ""], quarantined("empty_text")),
        (["audio/good_music.flac", "   ", "t2m", "", "", "music-empty", ""], quarantined("empty_text")),
        (["audio/good_speech.wav", "Hello.", "speech", "en", "s1", "utt-task", ""],
         quarantined("invalid_task")),
        (b"audio/good_speech.wav,Hello, with an unquoted comma,en_tts,en,s1,utt-comma,\n",
         quarantined("bad_row")),
        (["", "Hello.", "en_tts", "en", "s1", "utt-nopath", ""], quarantined("bad_row")),
    ]
    header = ["path", "text", "task", "language", "speaker", "id", "sample_rate"]
    buf = io.BytesIO()
    s = io.StringIO()
    csv.writer(s, lineterminator="\n").writerow(header)
    buf.write(s.getvalue().encode())
    expected: dict[int, tuple[str, str | None]] = {}
    for line, (row, want) in enumerate(rows, start=2):
        if isinstance(row, bytes):
            buf.write(row)
        else:
            s = io.StringIO()
            csv.writer(s, lineterminator="\n").writerow(row)
            buf.write(s.getvalue().encode())
        expected[line] = want
    (root / "metadata.csv").write_bytes(buf.getvalue())
    return root, expected


def test_every_row_ends_in_exactly_one_status(salted, tmp_path):
    root, expected = salted
    records = list(get_adapter("generic")(root).scan())  # no crash

    # one record per input row, each naming its row, with exactly one status
    refs = [r.source_ref for r in records]
    assert len(records) == len(expected)
    assert sorted(refs) == sorted(f"metadata.csv:{line}" for line in expected)
    assert all(r.status in STATUSES for r in records)
    got = {int(r.source_ref.split(":")[1]): (r.status, r.reason) for r in records}
    mismatches = {line: (got[line], want) for line, want in expected.items() if got[line] != want}
    assert not mismatches, mismatches

    # clear reasons: a known code and a message naming the row
    for r in records:
        if r.status == "quarantined":
            assert r.reason in set(Reason), r.reason
            assert r.detail and r.detail.startswith(r.source_ref), r.detail
    bad_kinds = {reason for _, reason in expected.values() if reason}
    assert len(bad_kinds) >= 12, sorted(bad_kinds)

    # the accounting survives a round trip through the manifest (undecodable text repaired)
    path = write_manifest(tmp_path / "salted.parquet", records)
    back = read_manifest(path)
    parts = split_by_status(back)
    assert len(parts["kept"]) == 3 and len(parts["quarantined"]) == len(expected) - 3
    latin = next(r for r in back if r.reason == "non_utf8_text")
    assert latin.text == "caf\ufffd cr\ufffdme"
    # what the Parquet holds is the plain code: the column reads back as str, equal to what was written
    assert [type(r.reason) for r in back if r.reason] == [str] * (len(expected) - 3)
    assert [r.reason for r in back] == [r.reason for r in records]


def test_specific_reason_messages(salted):
    root, _ = salted
    by_ref = {r.source_ref: r for r in get_adapter("generic")(root).scan()}
    detail = {r.reason: r.detail for r in by_ref.values() if r.reason}
    assert "7200.0 s is longer than the allowed 1800 s" in detail["too_long"]
    assert "8 channels" in detail["too_many_channels"]
    assert "outside the corpus root" in detail["path_escape"]
    assert "declares 16000 Hz, the file is 22050 Hz" in detail["sample_rate_mismatch"]
    assert "NaN/inf" in detail["non_finite"]


def test_length_limit_is_configurable(salted):
    root, _ = salted
    lax = [
        r
        for r in get_adapter("generic")(root, max_duration=None).scan()
        if (r.audio_path or "").endswith("two_hours.flac")
    ]
    assert [(r.status, r.sample_rate) for r in lax] == [("kept", 8000)] and lax[0].duration == pytest.approx(
        7200.0
    )
    short = {r.source_ref: r for r in get_adapter("generic")(root, max_duration=0.1).scan()}
    assert short["metadata.csv:2"].reason == "too_long"  # a 0.25 s file under a 0.1 s limit


def test_jsonl_corpus_with_bad_lines(tmp_path):
    tone(tmp_path / "a.wav")
    tone(tmp_path / "sub" / "b.wav")
    lines = [
        b'{"path": "a.wav", "text": "ok", "task": "en_tts", "id": "a"}',
        b'{"path": "a.wav", "text": "caf\xe9", "task": "en_tts", "id": "b"}',
        b'{"path": "a.wav", "text": "\\ud800 lone surrogate", "task": "en_tts", "id": "c"}',
        b'["not", "an", "object"]',
        b'{"path": "a.wav", "text": "truncated json',
        b'{"path": 5, "text": "x", "task": "en_tts", "id": "d"}',
        b'{"path": "a.wav", "text": "x", "task": "en_tts", "id": "e", "sample_rate": "fast"}',
        b'{"path": "a.wav", "text": "x", "task": "en_tts", "id": "a"}',
        b'{"path": "a.wav", "text": "x", "task": "en_tts", "id": "f", "duration": 9.0}',
        b'{"path": "sub/b.wav", "text": "x", "task": "en_tts"}',
    ]
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    records = list(get_adapter("generic")(tmp_path).scan())
    assert len(records) == len(lines)
    assert [r.reason for r in records] == [
        None, "non_utf8_text", "non_utf8_text", "bad_row", "bad_row", "bad_row", "bad_row", "duplicate_id",
        "duration_mismatch", None,
    ]  # fmt: skip
    # the id defaults to the path; a quarantined row's id does not block a later good row
    assert records[-1].id == "sub__b" and records[-1].status == "kept"
    assert all(r.source_ref == f"metadata.jsonl:{i}" for i, r in enumerate(records, 1))
    assert len(read_manifest(write_manifest(tmp_path / "m.parquet", records))) == len(lines)


def test_odd_json_types_and_internal_errors_never_end_the_scan(tmp_path, monkeypatch):
    tone(tmp_path / "audio" / "a.wav")
    rows = [
        {"id": ["a", "list"], "task": "t2m", "audio": "audio/a.wav", "sample_rate": SR, "duration": 0.25},
        {"id": "t", "task": {"a": 1}, "audio": "audio/a.wav"},
        {"id": "n", "task": "t2m", "audio": "audio/a.wav", "text": 42, "sample_rate": "x"},
        {"id": "ok", "task": "t2m", "audio": "audio/a.wav", "text": 42, "tempo_bpm": float("nan")},
        {"id": "boom", "task": "t2m", "audio": "audio/a.wav"},
        {"id": "after", "task": "en_tts", "audio": "audio/a.wav", "text": "still scanned"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    real = base.probe_audio

    def flaky(path, root, limits):
        flaky.calls += 1
        if flaky.calls == 2:  # the second probe (the "boom" row) hits a bug
            raise RuntimeError("simulated probe bug")
        return real(path, root, limits)

    flaky.calls = 0
    monkeypatch.setattr(base, "probe_audio", flaky)
    records = list(get_adapter("demo")(tmp_path).scan())
    assert [r.reason for r in records] == [
        "missing_id",
        "invalid_task",
        "bad_row",
        None,
        "internal_error",
        None,
    ]
    assert (
        records[3].text == "42" and records[3].meta["tempo_bpm"] is None
    )  # NaN is not JSON: dropped to null
    assert "simulated probe bug" in records[4].detail and records[5].language == "en"
    write_manifest(tmp_path / "m.parquet", records)


@pytest.mark.parametrize("ext, cut", [("wav", 0.9), ("flac", 0.9), ("ogg", 0.9), ("ogg", 0.5), ("mp3", 0.5)])
def test_truncation_is_caught_in_every_container(tmp_path, ext, cut):
    full = tone(tmp_path / f"full.{ext}", seconds=3.0)
    assert isinstance(probe_audio(full.name, tmp_path), ProbeResult)
    data = full.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: int(len(data) * cut)])
    r = probe_audio(f"cut.{ext}", tmp_path)
    assert isinstance(r, QuarantineReason) and r.code in ("truncated", "corrupt_audio"), r


# ---------------------------------------------------------------- the probe on its own


def test_probe_reports_what_it_found(tmp_path):
    p = tone(tmp_path / "x.wav", seconds=0.5, sr=22050, channels=2)
    res = probe_audio("x.wav", tmp_path)
    assert isinstance(res, ProbeResult)
    assert (res.sample_rate, res.channels, res.frames, res.format, res.subtype) == (
        22050,
        2,
        11025,
        "WAV",
        "PCM_16",
    )
    assert res.duration == pytest.approx(0.5) and res.path == p.resolve() and len(res.sha256) == 64
    assert probe_audio(p, tmp_path).sha256 == res.sha256  # absolute paths inside the root are fine


def test_probe_limits_are_configurable(tmp_path):
    tone(tmp_path / "c8.wav", channels=8)
    tone(tmp_path / "lo.wav", sr=4000)
    assert probe_audio("c8.wav", tmp_path).code == "too_many_channels"
    assert isinstance(probe_audio("c8.wav", tmp_path, ProbeLimits(max_channels=8)), ProbeResult)
    assert probe_audio("lo.wav", tmp_path).code == "bad_sample_rate"
    assert isinstance(probe_audio("lo.wav", tmp_path, ProbeLimits(min_sample_rate=4000)), ProbeResult)
    assert (
        probe_audio("lo.wav", tmp_path, ProbeLimits(min_sample_rate=4000, min_duration=1.0)).code
        == "too_short"
    )


def test_probe_streams_big_files_in_blocks(tmp_path):
    x = np.zeros(50_000, np.float32)
    x[-3] = np.nan  # in the last block only
    sf.write(str(tmp_path / "late_nan.wav"), x, SR, subtype="FLOAT")
    r = probe_audio("late_nan.wav", tmp_path, ProbeLimits(block_frames=4096))
    assert isinstance(r, QuarantineReason) and r.code == "non_finite"
    assert isinstance(probe_audio("late_nan.wav", tmp_path, ProbeLimits(scan_samples=False)), ProbeResult)


def test_probe_video_and_text_checks(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 16)
    (tmp_path / "junk.mp4").write_bytes(b"hello")
    assert probe_video("v.mp4", tmp_path).container == "mp4/mov"
    assert probe_video("junk.mp4", tmp_path).code == "not_video"
    assert probe_video("gone.mp4", tmp_path).code == "missing_video"
    (tmp_path / "sub").mkdir()
    assert probe_video("../v.mp4", tmp_path / "sub").code == "path_escape"
    assert check_text(" hi ") == "hi"
    assert check_text(b"caf\xe9").code == "non_utf8_text"
    assert check_text("caf\udce9").code == "non_utf8_text"
    assert check_text("\ufeff  ").code == "empty_text"
    assert check_text(None).code == "missing_text"
    assert check_text(None, required=False) is None and check_text("", required=False) is None
    assert str(QuarantineReason("empty_text", "text is empty")) == "empty_text: text is empty"


# Every code a manifest, a shard index or a report has ever carried (ingestion, segmentation, captioning,
# quality filtering, tokenisation): files written before Reason existed must read the same.
WRITTEN_CODES = {
    "path_escape", "missing_file", "not_a_file", "zero_length", "not_audio", "corrupt_audio", "truncated",
    "non_finite", "bad_sample_rate", "too_many_channels", "too_long", "too_short", "non_utf8_text",
    "non_utf8_path", "empty_text", "missing_text", "missing_id", "duplicate_id", "invalid_task",
    "missing_video", "not_video", "missing_metadata", "sample_rate_mismatch", "duration_mismatch",
    "bad_segment", "bad_row", "build_failed", "internal_error", "short_tail", "too_short_for_clip",
    "caption_failed", "unknown_task", "unreadable_audio", "score_failed", "quality:no_text",
    "encode_failed", "bad_text", "corrupt_video",
}


def test_one_reason_vocabulary():
    """Reason is the one list of codes: it holds every code ever written, each with a meaning; the span
    reader's and the tokenizer's codes are Reasons; a member is its code wherever a string is used."""
    from data.captioning import CAPTION_FAILED
    from data.tokenize import REASONS as TOKENIZE_REASONS
    from unimoe.common.audio import SPAN_REASONS

    assert {r.value for r in Reason} == WRITTEN_CODES
    assert all(r.meaning for r in Reason)
    assert set(SPAN_REASONS) | set(TOKENIZE_REASONS) | {CAPTION_FAILED} <= set(Reason)
    assert Reason("quality:no_text") is Reason.QUALITY_NO_TEXT
    assert Reason.TRUNCATED == "truncated" and f"{Reason.TRUNCATED}" == "truncated"
    # the same hash as its code: a Counter of reasons adds up members and the strings read back from Parquet
    assert {Reason.TRUNCATED: 1}.get("truncated") == 1
    assert QuarantineReason("bad_row", "x").code is Reason.BAD_ROW
    with pytest.raises(ValueError, match="not_a_reason"):
        QuarantineReason("not_a_reason", "a typo is caught where the code is made")
