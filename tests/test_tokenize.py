"""Tokenisation into shards (data.tokenize, writing the format of unimoe.training.shards): round trip
through the reader, random access, index, failures, idempotence, a killed run that resumes to the same
bytes as an uninterrupted one, and bytes equal to those of the recorded implementation."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from data.manifest import ManifestRecord, split_by_status, validate_records, write_manifest
from data.tokenize import (
    FORMAT,
    REASONS,
    ShardPlan,
    TokenizeError,
    apply_failures,
    codec_fingerprint,
    plan_shards,
    tokenize_manifest,
    tokenize_shard,
    write_index,
)
from unimoe import special_tokens as st
from unimoe.codec import AudioCodec
from unimoe.common.audio import to_mono
from unimoe.config import overlay
from unimoe.tokenizer import TextTokenizer, tokenizer_fingerprint
from unimoe.training.shards import TokenShardReader

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_SHARD = 3
BAD = {"bad_corrupt": "corrupt_audio", "bad_missing": "missing_file", "bad_span": "truncated"}


def signal_(seconds: float, sr: int, seed: int, channels: int = 1) -> np.ndarray:
    """[samples, channels] noise + chirp (spreads a random-init codec's codes)."""
    n = int(round(seconds * sr))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    chirp = np.sin(2 * np.pi * (200 + 300 * seed + 400 * t) * t)[:, None]
    x = 0.2 * rng.standard_normal((n, channels)) + 0.3 * chirp
    return x.astype(np.float32)


def _write(path: Path, seconds: float, sr: int, seed: int, channels: int = 1) -> Path:
    sf.write(str(path), signal_(seconds, sr, seed, channels), sr)
    return path


def _rec(rid: str, task: str, path: Path, *, text=None, offset=0.0, duration=None, sr=16000, channels=1,
         language=None, video=None, meta=None, source_duration=None) -> ManifestRecord:
    if path.is_file():
        info = sf.info(str(path))
        sr, channels, sd = info.samplerate, info.channels, info.frames / info.samplerate
        prov = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        sd, prov = source_duration or 1.0, hashlib.sha256(rid.encode()).hexdigest()
    return ManifestRecord(
        id=rid, task=task, language=language, audio_path=str(path), duration=duration or (sd - offset),
        sample_rate=sr, channels=channels, text=text, speaker="spk1" if "tts" in task else None,
        source_corpus="unit", licence="CC0", split="train", video_path=video, provenance_sha256=prov,
        offset=offset, source_duration=sd if source_duration is None else source_duration, meta=meta or {},
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok_corpus")
    a = root / "audio"
    a.mkdir()
    recs = [
        _rec("en_a", "en_tts", _write(a / "en_a.wav", 0.40, 16000, 1), text="hello world, this is a test",
             language="en"),
        _rec("en_b", "en_tts", _write(a / "en_b.wav", 0.50, 44100, 2, channels=2),
             text="the quick brown fox <|speech_start|> jumps", language="en"),
        _rec("en_c", "en_tts", _write(a / "en_c.flac", 0.30, 24000, 3), text="a calm voice", language="en"),
        _rec("zh_a", "zh_tts", _write(a / "zh_a.wav", 0.35, 22050, 4),
             text="你好世界，今天天气很好", language="zh"),
        _rec("music_long__clip0000", "t2m", _write(a / "long.wav", 3.0, 44100, 5, channels=2), offset=0.5,
             duration=1.0, text="an energetic string quartet in d minor"),
        _rec("music_long__clip0001", "t2m", a / "long.wav", offset=1.7, duration=1.2,
             text="an energetic string quartet in d minor"),
        _rec("t2m_pad", "t2m", _write(a / "pad.wav", 0.5, 16000, 6), text="a calm piano melody",
             meta={"pad_to_seconds": 0.8, "genre": "classical"}),
        _rec("v2m_a", "v2m", _write(a / "v2m_a.wav", 0.6, 16000, 7), video=str(root / "v2m_a.mp4"),
             text="music for a piano roll"),
        _rec("bad_corrupt", "en_tts", a / "bad_corrupt.wav", text="broken file", language="en"),
        _rec("bad_missing", "en_tts", a / "nope.wav", text="missing file", language="en"),
        _rec("bad_span", "t2m", _write(a / "short.wav", 0.5, 16000, 8), offset=0.2, duration=1.0,
             source_duration=0.5),
        _rec("filtered_x", "en_tts", a / "en_a.wav", text="low quality").replace(status="filtered",
                                                                                  reason="low_utmos"),
    ]
    (a / "bad_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    validate_records(recs)
    manifest = write_manifest(root / "manifest.parquet", recs)
    return root, recs, manifest


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    return overlay(tiny_cfg, {"tokenizer": {"trained_vocab_size": 320}})


@pytest.fixture(scope="module")
def codec(tiny):
    return AudioCodec.from_model_config(tiny)


@pytest.fixture(scope="module")
def tokenized(corpus, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_out") / "tokens"
    _, recs, _ = corpus
    result = tokenize_manifest(recs, out, tiny, rows_per_shard=ROWS_PER_SHARD)
    return out, result


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _mtimes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in sorted(d.rglob("*")) if p.is_file()}


def _span_codes(codec: AudioCodec, r: ManifestRecord) -> torch.Tensor:
    """Codes of a row's span computed independently (whole-file read, slice, mono, pad, encode)."""
    data, sr = sf.read(r.audio_path, dtype="float32", always_2d=True)
    start = int(round(r.offset * sr))
    mono = to_mono(data[start:start + int(round(r.duration * sr))].T)
    pad = r.meta.get("pad_to_seconds")
    if pad:
        mono = np.pad(mono, (0, int(round(pad * sr)) - len(mono)))
    return codec.encode([mono], sr)[0]


# ---- round trip ---------------------------------------------------------------------------------------


def test_round_trip_codes_and_text(corpus, tokenized, codec):
    _, recs, _ = corpus
    out, result = tokenized
    reader = TokenShardReader(out)
    tok = reader.load_tokenizer()
    good = sorted((r for r in recs if r.status == "kept" and r.id not in BAD), key=lambda r: r.id)
    assert reader.ids() == [r.id for r in good]
    assert result["rows_tokenized"] == len(good) == len(reader)
    for r, item in zip(good, reader):
        assert item.id == r.id and item.task == r.task and item.language == r.language
        assert item.speaker == r.speaker and item.video_path == r.video_path and item.meta == r.meta
        assert item.codes.dtype == torch.long and item.codes.shape[0] == 4
        expect = _span_codes(codec, r)
        assert torch.equal(item.codes, expect), r.id
        seconds = r.meta.get("pad_to_seconds") or r.duration
        assert item.num_frames == codec.num_frames(round(seconds * 16000))
        assert item.text_ids.dtype == torch.long
        assert item.text_ids.tolist() == tok.encode(r.text, allow_special=False)
        assert item.text == r.text
    # a marker written in a transcript is plain text, never the special id
    item = reader[reader.by_ids(["en_b"])[0]]
    assert tok.token_id(st.SPEECH_START) not in item.text_ids.tolist()


def test_random_access_across_shards(tokenized):
    out, _ = tokenized
    reader = TokenShardReader(out, max_open_shards=1)  # every shard change evicts
    assert reader.index["num_shards"] == 4
    seq = [(it.id, it.codes.clone(), it.text_ids.clone()) for it in TokenShardReader(out)]
    order = list(range(len(reader))) * 2
    random.Random(0).shuffle(order)
    for i in order:
        it = reader[i]
        assert it.id == seq[i][0] and torch.equal(it.codes, seq[i][1]) and torch.equal(it.text_ids, seq[i][2])
    assert reader[-1].id == seq[-1][0]
    with pytest.raises(IndexError):
        reader[len(reader)]
    assert reader.by_ids(["zh_a", "en_a"]) == [reader.ids().index("zh_a"), reader.ids().index("en_a")]
    with pytest.raises(KeyError, match="bad_corrupt"):
        reader.by_ids(["bad_corrupt"])
    clone = pickle.loads(pickle.dumps(reader))  # what a DataLoader worker gets (no open handles)
    assert torch.equal(clone[2].codes, seq[2][1])


def test_by_task(tokenized):
    reader = TokenShardReader(tokenized[0])
    tasks = {t: [reader[i].id for i in reader.by_task(t)] for t in ("zh_tts", "en_tts", "t2m", "v2m")}
    assert tasks == {"zh_tts": ["zh_a"], "en_tts": ["en_a", "en_b", "en_c"],
                     "t2m": ["music_long__clip0000", "music_long__clip0001", "t2m_pad"], "v2m": ["v2m_a"]}


def test_index_contents(tokenized, codec):
    out, result = tokenized
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == FORMAT
    assert index["is_random_init"] is False and index["codec"]["is_random_init"] is False
    assert "demo-dac.safetensors" in index["codec_label"] and index["codec"] == codec.info()
    assert (index["num_codebooks"], index["codebook_size"], index["codes_dtype"]) == (4, 1024, "int16")
    tok_sha = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    assert index["tokenizer"]["sha256"] == tok_sha == index["tokenizer"]["file_sha256"]
    assert result["tokenizer_sha256"] == tok_sha
    assert index["tokenizer"]["kind"] == "trained"
    assert index["num_rows"] == 8 and index["num_shards"] == 4
    assert [s["rows"] for s in index["shards"]] == [0, 3, 3, 2]  # every row of shard 0 is bad
    assert [s["failed"] for s in index["shards"]] == [3, 0, 0, 0]
    assert {k: v["rows"] for k, v in index["tasks"].items()} == {"zh_tts": 1, "en_tts": 3, "t2m": 3, "v2m": 1}
    # 1.0 s + 1.2 s + 0.5 s padded to 0.8 s, at 50 frames/s
    assert index["tasks"]["t2m"]["frames"] == 50 + 60 + 40
    assert index["tasks"]["t2m"]["seconds"] == 2.7  # audio read (the padding is not counted)
    assert index["num_frames"] == sum(v["frames"] for v in index["tasks"].values())
    for s in index["shards"]:
        assert hashlib.sha256((out / s["file"]).read_bytes()).hexdigest() == s["sha256"]
    assert {f[0]: f[1] for f in index["failed"]} == BAD


def test_failures_are_quarantined_with_reasons(corpus, tokenized):
    _, recs, _ = corpus
    _, result = tokenized
    q = {x["id"]: x for x in result["quarantined"]}
    assert {k: v["reason"] for k, v in q.items()} == BAD
    assert all(v["reason"] in REASONS and v["detail"] for v in q.values())
    assert "nope.wav" in q["bad_missing"]["detail"]
    assert result["reasons"] == {"corrupt_audio": 1, "missing_file": 1, "truncated": 1}
    # accounting: every input row in exactly one status; the updated manifest still validates
    updated = result["records"]
    assert [r.id for r in updated] == [r.id for r in recs]
    by = split_by_status(validate_records(updated))
    assert sorted(r.id for r in by["quarantined"]) == sorted(BAD)
    assert [r.id for r in by["filtered"]] == ["filtered_x"] and by["filtered"][0].reason == "low_utmos"
    assert len(by["kept"]) == result["rows_tokenized"] == 8


# ---- idempotence, caching, resume ------------------------------------------------------------------------


def test_rerun_writes_nothing(corpus, tokenized, tiny):
    _, recs, _ = corpus
    out, first = tokenized
    before, tree = _mtimes(out), _tree(out)
    time.sleep(0.01)
    again = tokenize_manifest(recs, out, tiny, rows_per_shard=ROWS_PER_SHARD)
    assert again["shards_skipped"] == again["num_shards"] == 4 and again["shards_written"] == 0
    assert _mtimes(out) == before and _tree(out) == tree
    assert again["quarantined"] == first["quarantined"]


def test_changed_row_rewrites_only_its_shard(corpus, tokenized, tiny, codec, tmp_path):
    _, recs, _ = corpus
    out = tmp_path / "tokens"
    shutil.copytree(tokenized[0], out)
    before = _mtimes(out)
    changed = [r.replace(text="a new caption") if r.id == "t2m_pad" else r for r in recs]
    tok = TextTokenizer.load(out / "tokenizer.json")  # same tokenizer: only the shard key changes
    res = tokenize_manifest(changed, out, tiny, rows_per_shard=ROWS_PER_SHARD, codec=codec, tokenizer=tok)
    assert res["shards_written"] == 1 and res["shards_skipped"] == 3
    after = _mtimes(out)
    changed_files = sorted(k for k in after if after[k] != before.get(k))
    assert changed_files == ["index.json", "shard-00002.json", "shard-00002.safetensors"]
    r = TokenShardReader(out)
    assert tokenizer_fingerprint(r.load_tokenizer()) == tokenizer_fingerprint(tok)
    assert r[r.by_ids(["t2m_pad"])[0]].text_ids.tolist() == tok.encode("a new caption", allow_special=False)


_RUNNER = textwrap.dedent(
    """
    import json, os, signal, sys, tempfile, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    import torch
    torch.set_num_threads(1)
    import data.tokenize as T
    import unimoe.training.shards as shards
    from data.manifest import read_manifest
    from unimoe.config import overlay, tiny_preset

    mode, out = sys.argv[1], Path(sys.argv[2])
    marker = out.parent / "first_shard_done"

    def progress(done, total, res):
        if mode == "sleep_after_first" and done == 1:
            marker.write_text("1")
            time.sleep(120)  # the test SIGKILLs us here

    if mode == "die_writing_json":
        real = shards.atomic_write_bytes
        def dying(path, data):
            path = Path(path)
            if path.name == "shard-00002.json":
                fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
                os.write(fd, data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)  # mid-write, after the safetensors file is in place
            real(path, data)
        shards.atomic_write_bytes = dying

    cfg = overlay(tiny_preset(), {{"tokenizer": {{"trained_vocab_size": 320}}}})
    res = T.tokenize_manifest(read_manifest(sys.argv[3]), out, cfg, rows_per_shard={rps}, progress=progress)
    print(json.dumps({{k: res[k] for k in ("shards_written", "shards_skipped", "rows_tokenized")}}))
    """
)


def test_killed_run_resumes_to_identical_outputs(corpus, tokenized, tmp_path):
    _, _, manifest = corpus
    script = tmp_path / "runner.py"
    script.write_text(_RUNNER.format(repo=str(REPO), rps=ROWS_PER_SHARD))
    out = tmp_path / "tokens"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(mode: str):
        return subprocess.Popen([sys.executable, str(script), mode, str(out), str(manifest)], cwd=str(REPO),
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # 1) killed from outside (SIGKILL) after the first shard is complete
    p = run("sleep_after_first")
    deadline = time.monotonic() + 60
    while not (tmp_path / "first_shard_done").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "runner never finished its first shard"
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert p.returncode == -signal.SIGKILL
    assert (out / "shard-00000.json").is_file() and not (out / "index.json").exists()

    # 2) dies in the middle of writing shard 2's JSON (its safetensors already renamed into place)
    p = run("die_writing_json")
    _, err = p.communicate(timeout=120)
    assert p.returncode == -signal.SIGKILL, err
    assert (out / "shard-00002.safetensors").is_file() and not (out / "shard-00002.json").exists()
    assert any(f.name.startswith(".shard-00002.json.") for f in out.iterdir())
    assert not (out / "index.json").exists()

    # 3) started again: finishes, reusing the complete shards
    p = run("plain")
    stdout, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary == {"shards_written": 2, "shards_skipped": 2, "rows_tokenized": 8}

    # the same bytes as the uninterrupted run, and no leftovers
    ref = _tree(tokenized[0])
    got = _tree(out)
    assert sorted(got) == sorted(ref)
    assert all(got[k] == ref[k] for k in ref), [k for k in ref if got[k] != ref[k]]


# ---- validation ----------------------------------------------------------------------------------------


def test_reader_rejects_missing_or_corrupt_shards(tokenized, tmp_path):
    src = tokenized[0]
    with pytest.raises(TokenizeError, match="no index.json"):
        TokenShardReader(tmp_path)

    missing = tmp_path / "missing"
    shutil.copytree(src, missing)
    (missing / "shard-00001.safetensors").unlink()
    with pytest.raises(TokenizeError, match=r"shard-00001\.safetensors.*missing"):
        TokenShardReader(missing)

    flipped = tmp_path / "flipped"
    shutil.copytree(src, flipped)
    p = flipped / "shard-00002.safetensors"
    b = bytearray(p.read_bytes())
    b[-1] ^= 0xFF
    p.write_bytes(bytes(b))
    with pytest.raises(TokenizeError, match="SHA-256"):
        TokenShardReader(flipped)
    assert len(TokenShardReader(flipped, verify="size")) == 8  # sizes alone cannot see it

    short = tmp_path / "short"
    shutil.copytree(src, short)
    p = short / "shard-00000.safetensors"
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(TokenizeError, match="bytes"):
        TokenShardReader(short, verify="size")


def test_plan_shards_is_deterministic_and_keyed(corpus, codec, tiny):
    _, recs, _ = corpus
    tok = TextTokenizer.train(["hello world"] * 3, 300)
    plans = plan_shards(recs, 4, codec=codec, tokenizer=tok)
    shuffled = list(recs)
    random.Random(1).shuffle(shuffled)
    assert plan_shards(shuffled, 4, codec=codec, tokenizer=tok) == plans
    kept_ids = sorted(r.id for r in recs if r.status == "kept")
    assert [i for p in plans for i in p.ids] == kept_ids and [len(p) for p in plans] == [4, 4, 3]
    assert [p.name for p in plans] == ["shard-00000", "shard-00001", "shard-00002"]
    assert all(isinstance(p, ShardPlan) and len(p.key) == 64 for p in plans)
    # the key follows text, offsets, the tokenizer and the codec's weights
    edited = [r.replace(offset=0.6) if r.id == "music_long__clip0000" else r for r in recs]
    keys = [p.key for p in plan_shards(edited, 4, codec=codec, tokenizer=tok)]
    assert keys[0] == plans[0].key and keys[1] != plans[1].key and keys[2] == plans[2].key
    other_tok = TextTokenizer.train(["other words"] * 3, 300)
    assert all(a.key != b.key for a, b in zip(plans, plan_shards(recs, 4, codec=codec, tokenizer=other_tok)))
    other_codec = AudioCodec.from_model_config(overlay(tiny, {"codec": {"random_init": True, "encoder_dim": 8,
                                                                        "decoder_dim": 32}}))
    assert codec_fingerprint(other_codec) != codec_fingerprint(codec)
    assert plan_shards(recs, 4, codec=other_codec, tokenizer=tok)[0].key != plans[0].key
    with pytest.raises(ValueError, match="rows_per_shard"):
        plan_shards(recs, 0, codec=codec, tokenizer=tok)


def test_shard_api_with_video_frames(corpus, codec, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    from data.video_render import encode_frames

    _, recs, _ = corpus
    video = tmp_path / "clip.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    encode_frames(list(frames), video, fps=4, size=32)
    v2m = next(r for r in recs if r.id == "v2m_a")
    gone = tmp_path / "gone.mp4"
    rows = [v2m.replace(video_path=str(video)), v2m.replace(id="v2m_gone", video_path=str(gone))]
    tok = TextTokenizer.train(["music for a piano roll"] * 3, 300)
    out = tmp_path / "tokens"
    res = tokenize_shard(rows, out, 0, codec, tok, video_frames=True, video_size=32, video_fps=4.0)
    assert res.num_rows == 1
    assert res.failed == [("v2m_gone", "missing_video", f"video file not found: {gone}")]
    write_index(out, [res], codec.info(), tok)
    item = TokenShardReader(out)[0]
    # uint8 RGB frames of the clip: its uniform noise in [0, 255) averages ~127, a black or blank fill does not
    assert (item.video.dtype == np.uint8 and item.video.shape[1:] == (32, 32, 3)
            and abs(item.video.mean() - 127) < 16)
    assert 1 <= item.video.shape[0] <= 16
    assert torch.equal(item.codes, _span_codes(codec, v2m))
    # failures become quarantined rows
    marked = apply_failures(rows, [res])
    assert [(r.status, r.reason) for r in marked] == [("kept", None), ("quarantined", "missing_video")]
    # a second call finds the shard complete
    again = tokenize_shard(rows, out, 0, codec, tok, video_frames=True, video_size=32, video_fps=4.0)
    assert again.skipped and again.sha256 == res.sha256 and again.failed == res.failed


# ---- byte stability of the on-disk format ---------------------------------------------------------------


class _IntegerCodec:
    """A codec stand-in whose codes are integer functions of the samples (no floating-point kernels), so
    the shard bytes it leads to are the same on every machine. Frames of 20 ms; code ``[k, t]`` is
    ``|sample[t * hop + k]| * 1e4 mod 1024``."""

    num_codebooks, codebook_size, frame_rate = 4, 1024, 50.0
    is_random_init, label, weights_sha256 = False, "integer-test-codec", "integer-test-codec-v1"

    def info(self) -> dict:
        return {"label": self.label, "is_random_init": False, "num_codebooks": 4, "codebook_size": 1024,
                "frame_rate": 50.0, "sample_rate": 16000}

    def encode(self, wavs, srs, batch_size=8):
        out = []
        for x, sr in zip(wavs, srs):
            hop = sr // 50
            t = len(x) // hop
            frames = np.abs(np.asarray(x, np.float64)[: t * hop].reshape(t, hop)[:, :4].T)
            out.append(torch.from_numpy((frames * 1e4).astype(np.int64) % 1024))
        return out


# SHA-256 of every file tokenize_manifest wrote for _golden_rows() with _IntegerCodec, recorded with the
# implementation that predates the split into data/tokenize/ and unimoe/training/shards.py. A change
# here means shards made earlier no longer match what the code writes (their keys or bytes differ),
# so every curated corpus would be re-tokenised: change these only with a new FORMAT.
GOLDEN = {
    "index.json": "b987448315efd259b45118d46bd904dd4a14fa2376866bcbe39073617cfd1757",
    "shard-00000.json": "655c9fe1e7d28801100b9edb1123fd9483cd4af07820dd983e1639ab991d92cb",
    "shard-00000.safetensors": "f84838ab568aa696773f7dc7fbf539667c5221f4b1f939c30411b0a6aa49fc89",
    "shard-00001.json": "63f619b12294193a07066a3e2d13dec3e6e9b21ff9d072f6a4fb976cbd344ea9",
    "shard-00001.safetensors": "5df6ecaaf6c802043caa5070d1a0c0bc209e1f7f95cfbfc03ae6fc31889a17b7",
    "tokenizer.json": "f5ee7037e4e6a48755a093fb68f4def775b2c37ecfdd48ecf5e1b01131eef76a",
    "tokenizer.json.meta.json": "f8e094605ae287b8d319c18d0c1b332d93c82ff4dadb5e8399e47d860e45bb2c",
}


def _golden_rows(root: Path) -> list[ManifestRecord]:
    a = root / "audio"
    a.mkdir()
    return [
        _rec("a_en", "en_tts", _write(a / "a.wav", 0.30, 16000, 1), text="hello there <|speech_start|>",
             language="en"),
        _rec("b_zh", "zh_tts", _write(a / "b.wav", 0.25, 16000, 2), text="你好世界", language="zh"),
        # a relative path, so the failure detail recorded in the shard JSON and index is machine-independent
        _rec("c_gone", "en_tts", Path("no-such-dir/gone.wav"), text="missing", language="en"),
        _rec("d_t2m", "t2m", _write(a / "d.wav", 1.0, 16000, 3), offset=0.2, duration=0.5,
             text="a slow piano", meta={"pad_to_seconds": 0.7}),
        _rec("e_t2m", "t2m", _write(a / "e.wav", 0.4, 16000, 4), text="drums"),
        _rec("f_filtered", "en_tts", a / "a.wav", text="noisy").replace(status="filtered",
                                                                         reason="low_utmos"),
    ]


def test_shard_bytes_match_the_recorded_format(tiny, tmp_path):
    """tokenize_manifest's outputs (shards, shard JSONs, index, tokenizer) are byte for byte those the
    recorded implementation wrote for the same rows, and the reader gives back the codes the codec
    made and the ids the tokenizer made."""
    rows = _golden_rows(tmp_path)
    out = tmp_path / "tokens"
    codec = _IntegerCodec()
    res = tokenize_manifest(rows, out, tiny, rows_per_shard=3, codec=codec)
    got = {name: hashlib.sha256(data).hexdigest() for name, data in _tree(out).items()}
    assert got == GOLDEN
    assert res["quarantined"] == [{"id": "c_gone", "reason": "missing_file",
                                   "detail": "audio file not found: no-such-dir/gone.wav"}]
    reader = TokenShardReader(out)
    tok = reader.load_tokenizer()
    kept = [r for r in rows if r.status == "kept" and r.id != "c_gone"]
    assert reader.ids() == [r.id for r in kept]
    for r, item in zip(kept, reader):
        mono = to_mono(sf.read(r.audio_path, dtype="float32", always_2d=True)[0].T)
        start = int(round(r.offset * 16000))
        span = mono[start:start + int(round(r.duration * 16000))]
        pad = r.meta.get("pad_to_seconds")
        if pad:
            span = np.pad(span, (0, int(round(pad * 16000)) - len(span)))
        assert torch.equal(item.codes, codec.encode([span], [16000])[0]), r.id
        assert item.text_ids.tolist() == tok.encode(r.text, allow_special=False), r.id
