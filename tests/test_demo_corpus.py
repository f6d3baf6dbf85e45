"""The offline demo corpus builder (data/demo_corpus.py) on its ``small`` size.

One build (seconds on 2 cores) is shared by the module; tests that damage a corpus work on a copy.
The build includes bad inputs on purpose (a score name not in the corpus, a corrupt score file, a
voice that does not exist) to check that they are recorded, not fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

TOOLS = ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg", "ffprobe")
_missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"demo corpus tools not installed: {_missing} (scripts/setup.sh)")

from data.demo_corpus import (  # noqa: E402
    ROW_FIELDS,
    DemoCorpusConfig,
    build_demo_corpus,
    assign_splits,
    select_scores,
    select_video_clips,
)

BAD_SCORE = "no_such_composer/no_such_score"
BAD_VOICE = "espeak-ng:zz-no-such-voice"


def _rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _snapshot(out: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file (the lock file excluded)."""
    snap = {}
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "lock":
            snap[str(p.relative_to(out))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return snap


def _hashes(snap: dict[str, tuple[str, int]]) -> dict[str, str]:
    return {k: v[0] for k, v in snap.items()}


def _f0_autocorr(y, sr, fmin=60.0, fmax=400.0, frame=2048, hop=512):
    """Per-frame pitch of the louder frames from the autocorrelation peak (librosa.yin's numba kernels
    have crashed test processes)."""
    lo, hi = int(sr / fmax), int(sr / fmin)
    frames = [y[i:i + frame] for i in range(0, len(y) - frame, hop)]
    rms = np.array([np.sqrt(np.mean(f ** 2)) for f in frames])
    out = []
    for f in (f for f, r in zip(frames, rms) if r > 0.3 * rms.max()):
        f = f - f.mean()
        ac = np.fft.irfft(np.abs(np.fft.rfft(f, 2 * frame)) ** 2)[:frame]
        out.append(sr / (lo + int(np.argmax(ac[lo:hi]))))
    return np.array(out)


def _rms_db(y: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(y.astype(np.float64)))) + 1e-12)


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory) -> DemoCorpusConfig:
    broken = tmp_path_factory.mktemp("bad") / "broken.mxl"
    broken.write_bytes(b"PK\x03\x04 this is not a real MusicXML archive")
    base = DemoCorpusConfig.small()
    return replace(
        base,
        music_scores=tuple(select_scores(base)) + (BAD_SCORE, str(broken)),
        en_voices=base.en_voices[:2] + (BAD_VOICE,),
        voices_per_language=3,
        n_en_sentences=6,
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, small_cfg) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    t = time.monotonic()
    meta = build_demo_corpus(out, small_cfg, progress=False)
    elapsed = time.monotonic() - t
    assert meta == out / "metadata.jsonl"
    return out, elapsed


def test_configs():
    small, default = DemoCorpusConfig.small(), DemoCorpusConfig.default()
    assert default.clip_seconds == 20.0 and default.music_sample_rate == 44100
    assert small.n_music_scores < default.n_music_scores and small.n_en_sentences < default.n_en_sentences
    assert select_scores(default) == select_scores(DemoCorpusConfig.default())  # deterministic
    assert len(set(select_scores(default))) == default.n_music_scores
    assert select_scores(default) != select_scores(replace(default, seed=1))
    ids = [f"music-s{i}-p000-c{k:02d}" for i in range(4) for k in range(3)]
    picked = select_video_clips(ids, 4, 0)
    assert len(picked) == 4 and len({c.rsplit("-c", 1)[0] for c in picked}) == 4  # spread over scores
    with pytest.raises(ValueError):
        replace(small, tail_policy="nope").validate()


def test_small_build_is_fast_and_complete(corpus, small_cfg):
    out, elapsed = corpus
    assert elapsed < 45, f"small build took {elapsed:.1f} s"
    rows = _rows(out)
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert tuple(r) == ROW_FIELDS
        assert (out / r["audio"]).is_file()
        info = sf.info(str(out / r["audio"]))
        assert info.samplerate == r["sample_rate"]
        assert abs(info.frames / info.samplerate - r["duration"]) < 1e-3
        assert r["licence"] and r["source"] and r["text"]
    tasks = {r["task"] for r in rows}
    assert tasks == {"en_tts", "zh_tts", "t2m", "v2m"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == len(rows)
    assert all(summary["tasks"][t]["count"] > 0 for t in tasks)


def test_held_out_split_per_task(corpus):
    out, _ = corpus
    rows = _rows(out)
    for task in ("en_tts", "zh_tts", "t2m", "v2m"):
        rs = [r for r in rows if r["task"] == task]
        test = [r for r in rs if r["split"] == "test"]
        assert {r["split"] for r in rs} <= {"train", "test"}
        if len(rs) >= 2:  # at least one held out, never everything
            assert 1 <= len(test) < len(rs), task


def test_assign_splits_is_seeded_and_sized():
    rows = [{"id": f"x{i:03d}", "task": "t2m"} for i in range(50)] + [{"id": "solo", "task": "v2m"}]
    assign_splits(rows, 0.1, seed=0)
    first = {r["id"]: r["split"] for r in rows}
    assert sum(v == "test" for v in first.values()) == 5 and first["solo"] == "train"
    shuffled = [dict(r) for r in reversed(rows)]
    assign_splits(shuffled, 0.1, seed=0)  # depends on (seed, id), not on order
    assert {r["id"]: r["split"] for r in shuffled} == first
    assign_splits(rows, 0.1, seed=1)
    assert {r["id"]: r["split"] for r in rows} != first
    assign_splits(rows, 0.0, seed=0)
    assert all(r["split"] == "train" for r in rows)


def test_music_clips_are_real_audio(corpus, small_cfg):
    out, _ = corpus
    music = [r for r in _rows(out) if r["task"] in ("t2m", "v2m")]
    assert len({r["source"] for r in music}) == 2  # both real scores rendered
    lo, hi = small_cfg.tempo_range
    for r in music:
        assert r["language"] is None and r["speaker"] is None
        assert r["source"].startswith("music21:")
        assert r["sample_rate"] == 44100
        assert r["duration"] == pytest.approx(small_cfg.clip_seconds)  # pad policy: fixed-length clips
        y, sr = sf.read(str(out / r["audio"]))
        assert len(y) == round(small_cfg.clip_seconds * sr)
        assert _rms_db(y) > -40, r["id"]
        assert np.max(np.abs(y)) <= 1.0
        midi = (out / r["midi"]).read_bytes()
        assert midi[:4] == b"MThd" and b"MTrk" in midi
        assert r["instruments"] and all(isinstance(i, str) for i in r["instruments"])
        assert lo <= r["tempo_bpm"] <= hi
        assert re.fullmatch(r"[A-G][#b]? (major|minor)", r["key"])
        assert f"{r['tempo_bpm']:g} bpm" in r["text"] and r["key"] in r["text"]
        assert re.fullmatch(r"music-[A-Za-z0-9._-]+-p\d{3}-c\d{2}", r["id"])
    # Different clips are different music.
    digests = {hashlib.sha256((out / r["audio"]).read_bytes()).hexdigest() for r in music}
    assert len(digests) == len(music)


def test_speech_is_real_and_voices_differ(corpus):
    out, _ = corpus
    rows = _rows(out)

    for lang in ("en", "zh"):
        rs = [r for r in rows if r["task"] == f"{lang}_tts"]
        assert rs and all(r["language"] == lang for r in rs)
        speakers = sorted({r["speaker"] for r in rs})
        assert len(speakers) >= 2, speakers
        f0_by_voice = {}
        for r in rs:
            y, sr = sf.read(str(out / r["audio"]))
            assert y.ndim == 1 and r["duration"] > 0.8
            assert _rms_db(y) > -35, r["id"]
            f0 = _f0_autocorr(y, sr)
            f0_by_voice.setdefault(r["speaker"], []).append(float(np.median(f0)))
        med = {v: float(np.median(f)) for v, f in f0_by_voice.items()}
        lo, hi = min(med.values()), max(med.values())
        assert hi > 1.15 * lo, f"{lang} voices have too similar pitch: {med}"
        if lang == "zh":
            assert all(re.search(r"[\u4e00-\u9fff]", r["text"]) for r in rs)
            assert all(r["source"].startswith("espeak-ng:cmn") for r in rs)
        else:
            assert any(r["source"] == "festival:kal_diphone" for r in rs)
            assert all(r["text"].isascii() for r in rs)
    # The same sentence by two voices is different audio.
    from data import speech_synth as ss

    a, sra = ss.synthesize("The quick brown fox jumps over the lazy dog.", ss.BUILTIN_VOICES["kal"])
    b, srb = ss.synthesize("The quick brown fox jumps over the lazy dog.", ss.BUILTIN_VOICES["us-f2"])
    assert (sra, len(a)) != (srb, len(b)) or not np.allclose(a, b)


def test_videos_match_their_clips(corpus, small_cfg):
    out, _ = corpus
    from data.video_render import ffprobe_video

    v2m = [r for r in _rows(out) if r["task"] == "v2m"]
    assert len(v2m) == small_cfg.n_video
    for r in _rows(out):
        assert (r["video"] is not None) == (r["task"] == "v2m")
    for r in v2m:
        path = out / r["video"]
        info = ffprobe_video(path)
        assert info["duration"] == pytest.approx(r["duration"], abs=0.05)
        assert info["frames"] == round(r["duration"] * small_cfg.video_fps)
        assert (info["width"], info["height"]) == (small_cfg.video_size, small_cfg.video_size)
        # The picture moves with the music: decode two frames and compare them.
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                             capture_output=True, check=True).stdout
        n = small_cfg.video_size ** 2
        frames = np.frombuffer(raw, np.uint8).reshape(-1, n)
        assert len(frames) == info["frames"]
        assert np.abs(frames[0].astype(int) - frames[len(frames) // 2].astype(int)).mean() > 1.0
        assert (frames[len(frames) // 2] > 80).mean() > 0.01  # notes are drawn


def test_failures_are_recorded_not_fatal(corpus, small_cfg):
    out, _ = corpus
    failures = _jsonl(out / "failures.jsonl")
    assert all(f["source"] and f["reason"] for f in failures)
    by_source = {}
    for f in failures:
        by_source.setdefault(f["source"], []).append(f)
    assert by_source[f"music21:{BAD_SCORE}"][0]["stage"] == "convert"
    broken = [f for f in failures if f["source"].endswith("broken.mxl")]
    assert broken and broken[0]["stage"] == "convert"
    bad_voice = [f for f in failures if f["stage"] == "voice" and "zz-no-such-voice" in f["source"]]
    assert len(bad_voice) == small_cfg.n_en_sentences // 3  # every third English sentence
    assert all(f["task"] == "en_tts" and f["id"].startswith("en-") for f in bad_voice)
    # Failures are not rows, and the good voices still spoke theirs.
    ids = {r["id"] for r in _rows(out)}
    assert not ids & {f["id"] for f in failures}
    assert sum(1 for i in ids if i.startswith("en-")) == small_cfg.n_en_sentences - len(bad_voice)
    # Deliberate omissions (tails, truncation) are in skipped.jsonl, not failures.jsonl.
    for s in _jsonl(out / "skipped.jsonl"):
        assert s["kind"] in ("short_tail", "truncated", "silent") and s["reason"]


def test_resume_does_nothing_and_rebuilds_damage_identically(corpus, small_cfg, tmp_path):
    src, _ = corpus
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = _snapshot(out)

    t = time.monotonic()
    build_demo_corpus(out, small_cfg, progress=False)
    assert time.monotonic() - t < 15
    assert _snapshot(out) == before  # same bytes, nothing rewritten

    rows = _rows(out)
    clip = next(r for r in rows if r["task"] == "t2m")
    v2m = next(r for r in rows if r["task"] == "v2m")
    utt = next(r for r in rows if r["task"] == "zh_tts")
    (out / clip["audio"]).unlink()
    (out / v2m["video"]).unlink()
    with open(out / utt["audio"], "r+b") as f:  # a damaged (truncated) file
        f.truncate(100)
    (out / "metadata.jsonl").unlink()
    (out / "music" / "audio" / ".leftover.wav.x1y2.tmp").write_bytes(b"junk from a killed build")

    build_demo_corpus(out, small_cfg, progress=False)
    assert _hashes(_snapshot(out)) == _hashes(before)


def test_killed_build_finishes_with_the_same_outputs(tmp_path):
    cfg = DemoCorpusConfig.small()
    ref, out = tmp_path / "ref", tmp_path / "killed"
    build_demo_corpus(ref, cfg, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "data.demo_corpus", str(out), "--small", "--quiet"],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not list(out.glob("music/audio/*.wav")):
            time.sleep(0.02)
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    assert list(out.glob("music/audio/*.wav")) and not (out / "metadata.jsonl").exists(), "not killed mid-build"
    build_demo_corpus(out, cfg, progress=False)
    assert _hashes(_snapshot(out)) == _hashes(_snapshot(ref))


def test_tail_policies_and_determinism(tmp_path):
    # bach/bwv66.6 lasts 27 s at the tempo seed 0 gives it; 10 s clips leave a 7 s tail.
    cfg = DemoCorpusConfig.small(music_scores=("bach/bwv66.6",), n_video=0, n_en_sentences=0, n_zh_sentences=0,
                                 clip_seconds=10.0, max_score_seconds=None, tail_policy="keep")
    build_demo_corpus(tmp_path / "keep", cfg, progress=False)
    durs = [r["duration"] for r in _rows(tmp_path / "keep")]
    assert durs[:2] == [10.0, 10.0] and len(durs) == 3 and 5.0 <= durs[2] < 10.0

    build_demo_corpus(tmp_path / "drop", replace(cfg, tail_policy="drop"), progress=False)
    assert [r["duration"] for r in _rows(tmp_path / "drop")] == [10.0, 10.0]
    tails = [s for s in _jsonl(tmp_path / "drop" / "skipped.jsonl") if s["kind"] == "short_tail"]
    assert len(tails) == 1 and tails[0]["seconds"] == pytest.approx(durs[2], abs=0.01)

    # Same config in another folder: the same bytes.
    build_demo_corpus(tmp_path / "keep2", cfg, progress=False)
    a = {k: v for k, v in _hashes(_snapshot(tmp_path / "keep")).items() if not k.startswith(".state")}
    b = {k: v for k, v in _hashes(_snapshot(tmp_path / "keep2")).items() if not k.startswith(".state")}
    assert a == b

    # Rebuilding a folder with another config leaves only that config's files.
    build_demo_corpus(tmp_path / "keep2", replace(cfg, tail_policy="drop"), progress=False)
    wavs = sorted(str(p.relative_to(tmp_path / "keep2")) for p in (tmp_path / "keep2").rglob("*.wav"))
    assert wavs == sorted(r["audio"] for r in _rows(tmp_path / "keep2")) and len(wavs) == 2


def test_demo_adapter_reads_the_corpus(corpus):
    """The ingestion adapter (data/sources/demo.py) keeps every row and quarantines every failure."""
    demo = pytest.importorskip("data.sources.demo")
    out, _ = corpus
    recs = list(demo.DemoAdapter(out).scan())
    kept = [r for r in recs if r.status == "kept"]
    assert len(kept) == len(_rows(out)), [(r.id, getattr(r, "reason", None)) for r in recs if r.status != "kept"][:5]
    assert len(recs) - len(kept) == len(_jsonl(out / "failures.jsonl"))
