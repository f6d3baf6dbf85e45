"""Benchmark-set loaders (evaluation.sets): a tiny fixture per set in its real on-disk layout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from evaluation.sets import (
    BenchItem,
    BenchmarkError,
    BenchmarkSet,
    MissingBenchmarkError,
    available_benchmarks,
    load_benchmark,
    read_manifest,
    write_manifest,
)
from evaluation.sets.aishell3 import strip_pinyin
from evaluation.sets.base import pick_prompt, rank_key

SR = 8000  # small files; the loaders only read headers


def tone(path: Path, seconds: float, sr: int = SR, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(max(1, int(seconds * sr))) / sr
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr, format=fmt)
    return path


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def by_id(bset: BenchmarkSet) -> dict[str, BenchItem]:
    return {it.id: it for it in bset.items}


def rejected(bset: BenchmarkSet) -> dict[str | None, str]:
    return {r["id"]: r["reason"] for r in bset.info["rejected"]}


# ---------------------------------------------------------------- types, registry, manifest


def test_registry_names_and_errors(tmp_path):
    assert available_benchmarks() == sorted(
        ["seedtts-en", "seedtts-zh", "librispeech-test-clean", "aishell3-test", "musiccaps", "v2m-bench", "demo"]
    )
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("nope", tmp_path)
    with pytest.raises(TypeError, match="unknown option.*accepted"):
        load_benchmark("musiccaps", tmp_path, bogus=1)
    with pytest.raises(MissingBenchmarkError, match="does not exist"):
        load_benchmark("SeedTTS_EN", tmp_path / "absent")  # names are case/underscore-insensitive


def test_bench_item_validation_and_dict_round_trip():
    it = BenchItem("a", "en_tts", "en", "hi there", prompt_audio=Path("/x/p.wav"), prompt_text="p", meta={"k": 1})
    assert it.prompt_audio == "/x/p.wav"  # paths stored as str
    assert BenchItem.from_dict(it.to_dict()) == it
    with pytest.raises(ValueError, match="task"):
        BenchItem("a", "asr")
    with pytest.raises(ValueError, match="target text"):
        BenchItem("a", "zh_tts", text=" ")
    with pytest.raises(ValueError, match="needs a video"):
        BenchItem("a", "v2m")
    with pytest.raises(ValueError, match="unknown field"):
        BenchItem.from_dict({"id": "a", "task": "t2m", "extra": 1})
    with pytest.raises(ValueError, match="duplicate item id"):
        BenchmarkSet("s", [BenchItem("a", "t2m"), BenchItem("a", "t2m")])


def test_manifest_round_trip_and_bad_lines(tmp_path):
    items = [
        BenchItem("t1", "t2m", "en", "a calm piano", reference_audio="/r/t1.wav", meta={"start_s": 30.0}),
        BenchItem("v1", "v2m", None, None, video="/v/v1.mp4"),
        BenchItem("z1", "zh_tts", "zh", "你好", "/p.wav", "早上好", "/g.wav"),
    ]
    bset = BenchmarkSet("mine", items, {"rejected": [{"line": 3, "reason": "bad_row"}], "protocol": {"x": 1}})
    path = write_manifest(tmp_path / "m" / "mine.jsonl", bset)
    assert [p.name for p in path.parent.iterdir()] == ["mine.jsonl"]  # no temp file left behind
    back = read_manifest(path)
    assert back == bset and back.by_task("zh_tts")[0].text == "你好"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and all(json.loads(ln) for ln in lines)
    # a header-less JSONL of item dicts is a manifest too, named after the file
    write(tmp_path / "plain.jsonl", "\n".join(lines[1:]) + "\n")
    assert read_manifest(tmp_path / "plain.jsonl").name == "plain"
    write(tmp_path / "bad.jsonl", lines[1] + "\n{not json\n")
    with pytest.raises(BenchmarkError, match=r"bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    write(tmp_path / "bad2.jsonl", lines[1] + "\n" + json.dumps({"id": "q", "task": "t9"}) + "\n")
    with pytest.raises(BenchmarkError, match=r"bad2.jsonl:2: .*task"):
        read_manifest(tmp_path / "bad2.jsonl")
    with pytest.raises(MissingBenchmarkError):
        read_manifest(tmp_path / "absent.jsonl")


def test_prompt_pick_is_deterministic_and_never_the_target():
    cands = ["a", "b", "c", "d"]
    pick = pick_prompt("b", cands, seed=0)
    assert pick != "b" and pick == min(["a", "c", "d"], key=lambda c: rank_key(0, "b", c))
    assert pick_prompt("b", list(reversed(cands)), seed=0) == pick  # order of candidates is irrelevant
    assert pick_prompt("b", cands + ["zz"], seed=0) in (pick, "zz")  # a new file only competes, never reshuffles
    assert pick_prompt("a", ["a"], seed=0) is None


# ---------------------------------------------------------------- Seed-TTS


def _seedtts(root: Path) -> Path:
    en = root / "en"
    tone(en / "prompt-wavs" / "p1.wav", 1.0)
    tone(en / "prompt-wavs" / "p2.wav", 1.2)
    tone(en / "wavs" / "u1.wav", 1.5)  # ground truth of the 4-field line u1
    tone(en / "gt" / "u3.wav", 1.5)
    write(en / "prompt-wavs" / "broken.wav", b"RIFF\x00\x00not a wav")
    lines = [
        "u1|Prompt one.|prompt-wavs/p1.wav|Target one.",
        "u2|Prompt two.|prompt-wavs/p2.wav|Target two.",  # no ground truth -> missing, kept
        "",
        "u3|Prompt one.|prompt-wavs/p1.wav|Target three.|gt/u3.wav",
        "u4|only|three",
        "u5|Prompt.|prompt-wavs/absent.wav|Target five.",
        "u1|Prompt one.|prompt-wavs/p1.wav|Again.",
        "u6|Prompt.|prompt-wavs/p1.wav|",
        "u7|Prompt.|prompt-wavs/broken.wav|Target seven.",
    ]
    write(en / "meta.lst", "\n".join(lines) + "\n")
    with open(en / "meta.lst", "ab") as f:
        f.write(b"u8|\xff\xfe|prompt-wavs/p1.wav|x\n")
    return root


def test_seedtts_en(tmp_path):
    root = _seedtts(tmp_path / "seedtts_testset")
    bset = load_benchmark("seedtts-en", root)
    items = by_id(bset)
    assert [it.id for it in bset.items] == ["u1", "u2", "u3"]  # meta.lst order
    u1 = items["u1"]
    assert (u1.task, u1.language, u1.text, u1.prompt_text) == ("en_tts", "en", "Target one.", "Prompt one.")
    assert Path(u1.prompt_audio) == root / "en" / "prompt-wavs" / "p1.wav"
    assert Path(u1.reference_audio) == root / "en" / "wavs" / "u1.wav"
    assert Path(items["u3"].reference_audio) == root / "en" / "gt" / "u3.wav"  # 5th field
    assert items["u2"].reference_audio is None
    assert [(m["id"], m["reason"]) for m in bset.info["missing"]] == [("u2", "missing_file")]
    rej = {(r["line"], r["id"]): r["reason"] for r in bset.info["rejected"]}
    assert rej == {
        (5, "u4"): "bad_row",
        (6, "u5"): "missing_file",
        (7, "u1"): "duplicate_id",
        (8, "u6"): "empty_text",
        (9, "u7"): "not_audio",
        (10, None): "non_utf8_text",
    }
    assert bset.info["protocol"]["line_fields"] == {"4": 6, "5": 1}
    # the language folder itself is accepted as root
    assert [it.id for it in load_benchmark("seedtts-en", root / "en").items] == ["u1", "u2", "u3"]


def test_seedtts_zh_and_missing_list(tmp_path):
    zh = tmp_path / "seedtts_testset" / "zh"
    tone(zh / "prompt-wavs" / "a.wav", 1.0)
    tone(zh / "wavs" / "z1.wav", 1.0)
    write(zh / "meta.lst", "z1|你好。|prompt-wavs/a.wav|今天天气很好。|wavs/z1.wav\n")
    bset = load_benchmark("seedtts-zh", tmp_path / "seedtts_testset")
    (it,) = bset.items
    assert (it.task, it.language, it.text, it.prompt_text) == ("zh_tts", "zh", "今天天气很好。", "你好。")
    with pytest.raises(MissingBenchmarkError, match=r"en/meta.lst"):
        load_benchmark("seedtts-en", tmp_path / "seedtts_testset")


# ---------------------------------------------------------------- LibriSpeech


def _librispeech(root: Path) -> Path:
    sub = root / "test-clean"
    spec = {  # speaker/chapter: [(n, seconds, text)]
        ("1089", "134686"): [(0, 5.0, "HE HOPED"), (1, 6.0, "STUFF IT INTO YOU"), (2, 3.0, "SHORT ONE"),
                             (3, 12.0, "LONG ONE"), (4, 7.0, "ANOTHER")],
        ("121", "121726"): [(0, 5.5, "ONLY ONE IN RANGE"), (1, 2.0, "TOO SHORT")],
        ("237", "126133"): [(0, 4.5, "LONELY")],
    }
    for (spk, ch), utts in spec.items():
        d = sub / spk / ch
        lines = []
        for n, secs, text in utts:
            utt = f"{spk}-{ch}-{n:04d}"
            tone(d / f"{utt}.flac", secs, fmt="FLAC")
            lines.append(f"{utt} {text}")
        if spk == "1089":
            lines += ["1089-134686-0009 NO AUDIO FOR THIS", "9999-1-0001 WRONG CHAPTER", "1089-134686-0010"]
        write(d / f"{spk}-{ch}.trans.txt", "\n".join(lines) + "\n")
    tone(sub / "1089" / "134686" / "1089-134686-0020.flac", 5.0, fmt="FLAC")  # no transcript line
    return root


def test_librispeech_test_clean(tmp_path):
    root = _librispeech(tmp_path / "LibriSpeech")
    bset = load_benchmark("librispeech-test-clean", root)
    items = by_id(bset)
    assert sorted(items) == ["1089-134686-0000", "1089-134686-0001", "1089-134686-0004", "121-121726-0000"]
    for it in bset.items:
        assert it.task == "en_tts" and it.language == "en"
        assert it.meta["prompt_id"] != it.id and it.meta["prompt_id"].split("-")[0] == it.id.split("-")[0]
        assert Path(it.reference_audio).name == f"{it.id}.flac"
        assert Path(it.prompt_audio).name == f"{it.meta['prompt_id']}.flac"
        assert 4.0 <= it.meta["duration"] <= 10.0
    a = items["1089-134686-0000"]
    assert a.text == "HE HOPED" and a.meta["prompt_pool"] == "primary"
    expect = min(["1089-134686-0001", "1089-134686-0004"], key=lambda c: rank_key(0, a.id, c))
    assert a.meta["prompt_id"] == expect
    assert a.prompt_text == {"1089-134686-0001": "STUFF IT INTO YOU", "1089-134686-0004": "ANOTHER"}[expect]
    # speaker 121 has no other 4-10 s utterance: falls back to any duration
    b = items["121-121726-0000"]
    assert (b.meta["prompt_id"], b.meta["prompt_pool"], b.prompt_text) == ("121-121726-0001", "any_duration", "TOO SHORT")
    assert rejected(bset) == {
        "237-126133-0000": "no_prompt",
        "1089-134686-0009": "missing_file",
        "9999-1-0001": "bad_row",
        "1089-134686-0010": "empty_text",
        "1089-134686-0020": "missing_text",
    }
    assert {e["id"] for e in bset.info["excluded"]} == {"1089-134686-0002", "1089-134686-0003", "121-121726-0001"}
    # deterministic: same set again; the test-clean folder itself is accepted as root
    assert load_benchmark("librispeech-test-clean", root / "test-clean").items == bset.items


def test_librispeech_pair_list(tmp_path):
    root = _librispeech(tmp_path / "LibriSpeech")
    pairs = write(tmp_path / "cross.lst", "\n".join([
        "1089-134686-0004\t7.0\tAnother.\t1089-134686-0000\t5.0\tHe hoped.",
        "1089-134686-0004\t7.0\tAnother.\t1089-134686-0077\t5.0\tNot here.",
        "too\tfew",
    ]) + "\n")
    bset = load_benchmark("librispeech-test-clean", root, pairs=pairs)
    (it,) = bset.items
    assert (it.id, it.text, it.prompt_text, it.meta["prompt_id"]) == ("1089-134686-0000", "He hoped.", "Another.", "1089-134686-0004")
    assert [(r["line"], r["reason"]) for r in bset.info["rejected"] if r["ref"].startswith("cross.lst")] == [
        (2, "missing_file"), (3, "bad_row")]


def test_librispeech_missing_layout(tmp_path):
    (tmp_path / "LibriSpeech" / "test-clean").mkdir(parents=True)
    with pytest.raises(MissingBenchmarkError, match=r"trans.txt"):
        load_benchmark("librispeech-test-clean", tmp_path / "LibriSpeech")


# ---------------------------------------------------------------- AISHELL-3


def test_strip_pinyin():
    assert strip_pinyin("广 guang3 州 zhou1 女 nv3 的 de5".split()) == ("广州女的", "guang3 zhou1 nv3 de5")
    # Latin words carry no tone digit: text, kept (the same rule as the training adapter's, one parser)
    assert strip_pinyin("唱 chang4 KTV 好 hao3 OK".split()) == ("唱KTV好OK", "chang4 hao3")


def test_aishell3_test(tmp_path):
    root = tmp_path / "AISHELL-3"
    test = root / "test"
    for name, secs in [("SSB00050001", 2.0), ("SSB00050002", 3.0), ("SSB00050003", 2.5), ("SSB07100001", 2.0)]:
        tone(test / "wav" / name[:7] / f"{name}.wav", secs)
    tone(test / "wav" / "SSB0005" / "SSB00059999.wav", 1.0)  # not in content.txt
    write(test / "content.txt", "\n".join([
        "SSB00050001.wav\t广 guang3 州 zhou1 女 nv3 大 da4 学 xue2 生 sheng1",
        "SSB00050002.wav\t登 deng1 山 shan1",
        "SSB00050003.wav 晚 wan3 安 an1",  # space instead of TAB
        "SSB07100001.wav\t你 ni3 好 hao3",  # lone speaker: no prompt
        "SSB00050404.wav\t没 mei2 有 you3",  # no wav
        "SSB00050002.wav\t重 chong2 复 fu4",
        "SSB00050005.wav",
    ]) + "\n")
    bset = load_benchmark("aishell3-test", root)
    items = by_id(bset)
    assert sorted(items) == ["SSB00050001", "SSB00050002", "SSB00050003"]
    a = items["SSB00050001"]
    assert (a.task, a.language, a.text, a.meta["pinyin"]) == ("zh_tts", "zh", "广州女大学生", "guang3 zhou1 nv3 da4 xue2 sheng1")
    assert a.meta["speaker"] == "SSB0005" and a.meta["prompt_id"] in ("SSB00050002", "SSB00050003")
    assert a.prompt_text == items[a.meta["prompt_id"]].text
    assert Path(a.reference_audio) == (test / "wav" / "SSB0005" / "SSB00050001.wav").resolve()
    assert rejected(bset) == {"SSB07100001": "no_prompt", "SSB00050404": "missing_file", "SSB00050002": "duplicate_id",
                              "SSB00050005": "empty_text", "SSB00059999": "missing_text"}
    assert by_id(load_benchmark("aishell3-test", test)) == items  # root = the test folder
    with pytest.raises(MissingBenchmarkError, match=r"test/content.txt"):
        load_benchmark("aishell3-test", tmp_path)


# ---------------------------------------------------------------- MusicCaps

HEADER = "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval"


def _musiccaps(root: Path) -> Path:
    rows = [
        'aaa,30,40,"/m/04rlf","[\'piano\', \'calm\']","A calm piano piece, slow.",4,True,False',
        "bbb,10,20,/m/0,[],Fast drums.,1,False,True",
        "ccc,0,10,/m/0,[],Missing audio.,2,True,True",
        "ddd,0,10,/m/0,[],Broken audio.,2,False,False",
        "eee,0,10,too,many,fields,here,x,y,z",
        "fff,0,10,/m/0,[],,2,False,False",
        "ggg,20,10,/m/0,[],Backwards span.,2,False,False",
        "aaa,30,40,/m/0,[],Duplicate.,2,False,False",
    ]
    write(root / "musiccaps-public.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    tone(root / "audio" / "aaa.wav", 1.0)
    tone(root / "audio" / "bbb_10.wav", 1.0)  # <ytid>_<start> naming
    write(root / "audio" / "ddd.wav", b"not audio at all")
    return root


def test_musiccaps(tmp_path):
    root = _musiccaps(tmp_path / "mc")
    bset = load_benchmark("musiccaps", root)
    items = by_id(bset)
    assert sorted(items) == ["aaa", "bbb", "ccc", "ddd"]
    a = items["aaa"]
    assert (a.task, a.language, a.text) == ("t2m", "en", "A calm piano piece, slow.")
    assert Path(a.reference_audio).name == "aaa.wav" and a.meta["is_balanced_subset"] is True
    assert (a.meta["start_s"], a.meta["end_s"], a.meta["audio_duration"]) == (30.0, 40.0, 1.0)
    assert Path(items["bbb"].reference_audio).name == "bbb_10.wav"
    assert items["ccc"].reference_audio is None and items["ddd"].reference_audio is None
    missing = {m["id"]: m for m in bset.info["missing"]}
    assert missing["ccc"]["reason"] == "missing_file" and "ccc_0.wav" in missing["ccc"]["detail"]
    assert missing["ddd"]["reason"] == "not_audio"
    assert {(r["line"], r["id"], r["reason"]) for r in bset.info["rejected"]} == {
        (6, "eee", "bad_row"), (7, "fff", "empty_text"), (8, "ggg", "bad_segment"), (9, "aaa", "duplicate_id")}
    strict = load_benchmark("musiccaps", root, require_audio=True)
    assert sorted(by_id(strict)) == ["aaa", "bbb"] and len(strict.info["missing"]) == 2
    balanced = load_benchmark("musiccaps", root, subset="balanced", audio_dir=root / "audio")
    assert sorted(by_id(balanced)) == ["aaa", "ccc"] and balanced.info["counts"]["excluded"] == {"not_in_subset": 2}


def test_musiccaps_missing_csv_and_columns(tmp_path):
    (tmp_path / "mc").mkdir()
    with pytest.raises(MissingBenchmarkError, match="musiccaps-public.csv"):
        load_benchmark("musiccaps", tmp_path / "mc")
    write(tmp_path / "mc" / "musiccaps-public.csv", "ytid,caption\nx,y\n")
    with pytest.raises(BenchmarkError, match=r"start_s"):
        load_benchmark("musiccaps", tmp_path / "mc")


def test_shared_corpus_line_rules():
    """The LibriSpeech and MusicCaps rules the benchmark sets share with the training adapters
    (unimoe.corpora): one transcript/caption rule, the folder rule for ids, clip names, refusal order."""
    from unimoe.corpora import librispeech as LS
    from unimoe.corpora import musiccaps as MC

    assert LS.parse_trans_line("1089-134686-0000  HE HOPED THERE'S STEW ") == LS.TransLine(
        "1089-134686-0000", "HE HOPED THERE'S STEW")
    assert LS.parse_trans_line("  \t ") is None and LS.parse_trans_line("1089-134686-0010").text == ""
    assert LS.folder_problem("1089-134686-0000", "1089", "134686") is None
    assert "1089/134686" in LS.folder_problem("9999-1-0001", "1089", "134686")
    assert LS.folder_problem("1089_134686_000001_000001", "1089", "134686")  # LibriTTS id: not a LibriSpeech line
    assert [LS.split_of(n) for n in ("test-clean", "train-other-500", "LibriSpeech")] == ["test", "train", None]
    assert LS.audio_names("1-2-3") == ["1-2-3.flac", "1-2-3.wav"]
    assert MC.clip_stems("abc", "30.0", 30.0) == ["abc", "abc_30.0", "abc_30"]
    assert MC.clip_stems("abc", "30", 30.0) == ["abc", "abc_30"]
    ok = MC.parse_row({"ytid": " x ", "start_s": "30", "end_s": "40", "caption": "\ufeff Soft \ufffd hiss. ",
                       "is_balanced_subset": "True", "is_audioset_eval": "", "aspect_list": "['hiss']"})
    assert (ok.problem, ok.ytid, ok.caption, ok.start, ok.end) == (None, "x", "Soft \ufffd hiss.", 30.0, 40.0)
    assert ok.meta == {"aspect_list": "['hiss']", "audioset_positive_labels": None, "author_id": None,
                       "is_balanced_subset": True, "is_audioset_eval": None}
    # the first reason refuses the row: id, encoding, caption, span
    def reason(**row):
        return MC.parse_row(row).problem[0]

    assert reason(ytid="", start_s="x", caption="") == "missing_id"
    assert reason(ytid="y", start_s="1", end_s="2", caption="caf\udce9") == "non_utf8_text"  # undecodable byte
    assert reason(ytid="y", start_s="20", end_s="10", caption=" ") == "empty_text"
    assert reason(ytid="y", start_s="20", end_s="10", caption="a") == "bad_segment"


# ---------------------------------------------------------------- V2M-bench

needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="ffmpeg/ffprobe not installed"
)


def make_video(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"color=c=blue:s=16x16:r=2:d={seconds}",
         "-c:v", "mpeg4", "-threads", "1", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return path


@needs_ffmpeg
def test_v2m_bench(tmp_path):
    root = tmp_path / "v2m"
    make_video(root / "videos" / "good.mp4", 10)
    make_video(root / "videos" / "plain.mp4", 10.3)
    make_video(root / "videos" / "short.mp4", 3)
    write(root / "videos" / "junk.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32)
    write(root / "videos" / "notes.txt", "not a clip")
    tone(root / "audio" / "good.wav", 10.0)
    write(root / "metadata.csv", "id,caption,genre\ngood.mp4,Upbeat synth pop.,pop\nghost,No such clip.,x\nplain,,\n")
    bset = load_benchmark("v2m-bench", root)
    items = by_id(bset)
    assert sorted(items) == ["good", "plain", "t2m/good"]  # + a T2M item for the captioned clip
    assert items["t2m/good"].text == "Upbeat synth pop." and items["t2m/good"].video is None
    g = items["good"]
    assert (g.task, g.text, g.language, g.meta["genre"]) == ("v2m", "Upbeat synth pop.", "en", "pop")
    assert Path(g.video).name == "good.mp4" and Path(g.reference_audio).name == "good.wav"
    assert abs(g.meta["video_duration"] - 10.0) < 0.5
    p = items["plain"]
    assert p.text is None and p.language is None and p.reference_audio is None
    assert [(m["id"], m["reason"]) for m in bset.info["missing"]] == [("plain", "missing_file")]
    rej = {r["id"]: r for r in bset.info["rejected"]}
    assert {k: v["reason"] for k, v in rej.items()} == {"ghost": "missing_video", "short": "bad_duration", "junk": "not_video"}
    assert abs(rej["short"]["duration"] - 3.0) < 0.5 and rej["ghost"]["line"] == 3
    loose = load_benchmark("v2m-bench", root, tolerance=8.0)
    assert "short" in by_id(loose)


def test_v2m_bench_t2m_items(tmp_path):
    """The paper's Table 4 has a T2M block on V2M-bench beside V2M: each captioned clip is also a text-to-music
    item (its caption as the prompt, id "t2m/<id>"), scored against the same clip's audio."""
    from evaluation.runner import DEFAULT_SCORERS

    root = tmp_path / "v2m"
    for vid in ("a", "b", "c"):
        write(root / "videos" / f"{vid}.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32)
    tone(root / "audio" / "a.wav", 1.0)
    write(root / "metadata.jsonl", "\n".join(json.dumps(r) for r in [
        {"id": "a", "caption": "  Calm piano over rain.  ", "genre": "ambient"},
        {"id": "b", "caption": "Driving rock drums."},  # no reference audio
        {"id": "c", "caption": ""},  # no caption: a v2m item only
    ]) + "\n")
    bset = load_benchmark("v2m-bench", root, check_duration=False)
    items = by_id(bset)
    assert [it.id for it in bset.items] == ["a", "b", "c", "t2m/a", "t2m/b"]  # v2m first, then t2m, by id
    assert bset.info["counts"]["items"] == {"t2m": 2, "v2m": 3}
    t = items["t2m/a"]
    assert (t.task, t.language, t.text, t.video, t.prompt_audio) == ("t2m", "en", "Calm piano over rain.", None, None)
    assert t.reference_audio == items["a"].reference_audio and Path(t.reference_audio).name == "a.wav"
    assert t.meta["clip_id"] == "a" and t.meta["genre"] == "ambient"
    assert items["t2m/b"].reference_audio is None and items["t2m/b"].text == items["b"].text
    assert bset.info["protocol"]["t2m"]
    # the manifest round trip keeps the "t2m/<id>" ids
    assert read_manifest(write_manifest(tmp_path / "m.jsonl", bset)).items == bset.items
    # v2m only on request
    only = load_benchmark("v2m-bench", root, check_duration=False, t2m=False)
    assert {it.task for it in only.items} == {"v2m"} and only.info["protocol"]["t2m"] is None
    # the runner scores the t2m items with the same music scorers as MusicCaps' T2M
    assert DEFAULT_SCORERS["v2m-bench"]["t2m"] == DEFAULT_SCORERS["musiccaps"]["t2m"]


def test_v2m_bench_missing_videos_folder(tmp_path):
    (tmp_path / "v2m").mkdir()
    with pytest.raises(MissingBenchmarkError, match=r"videos"):
        load_benchmark("v2m-bench", tmp_path / "v2m")


# ---------------------------------------------------------------- demo (synthetic corpus rows, fast)


def _demo_rows(corpus: Path) -> list[dict]:
    def row(rid, task, split, speaker=None, text="x", video=None, audio=True):
        if audio:
            tone(corpus / "audio" / f"{rid}.wav", 1.0)
        return {"id": rid, "task": task, "language": {"zh_tts": "zh"}.get(task, "en"), "audio": f"audio/{rid}.wav",
                "text": text, "speaker": speaker, "video": video, "split": split, "tempo_bpm": 120.0 if "t2m" in rid else None}

    rows = [
        row("en-a-1", "en_tts", "train", "a", "Train one."), row("en-a-2", "en_tts", "train", "a", "Train two."),
        row("en-a-3", "en_tts", "test", "a", "Test three."),
        row("en-b-1", "en_tts", "test", "b", "Bee one."), row("en-b-2", "en_tts", "test", "b", "Bee two."),
        row("en-c-1", "en_tts", "test", "c", "Lonely."),
        row("zh-d-1", "zh_tts", "train", "d", "你好。"), row("zh-d-2", "zh_tts", "test", "d", "再见。"),
        row("t2m-1", "t2m", "test", text="Piano at 120 BPM."), row("t2m-2", "t2m", "test", text="Drums."),
        row("t2m-3", "t2m", "test", text="Strings."), row("t2m-4", "t2m", "train", text="Train music."),
        row("v2m-1", "v2m", "test", text="Video music.", video="video/v2m-1.mp4"),
        row("v2m-2", "v2m", "test", text="No video.", video="video/absent.mp4"),
        row("en-a-9", "en_tts", "test", "a", "Audio gone.", audio=False),
    ]
    write(corpus / "video" / "v2m-1.mp4", b"\x00\x00\x00\x18ftypisom" + b"\x00" * 32)
    return rows


def test_demo_synthetic_layout(tmp_path):
    ws = tmp_path / "ws"
    corpus = ws / "curate" / "corpus" / "demo"
    rows = _demo_rows(corpus)
    text = "\n".join(json.dumps(r) for r in rows) + "\n{broken\n" + json.dumps(rows[0]) + "\n"
    write(corpus / "metadata.jsonl", text)
    bset = load_benchmark("demo", ws)  # root = the workspace
    items = by_id(bset)
    assert sorted(items) == ["en-a-3", "en-b-1", "en-b-2", "t2m-1", "t2m-2", "t2m-3", "v2m-1", "zh-d-2"]
    a3 = items["en-a-3"]
    assert a3.meta["prompt_id"] in ("en-a-1", "en-a-2") and a3.meta["prompt_pool"] == "train"
    assert a3.prompt_text in ("Train one.", "Train two.") and Path(a3.reference_audio).name == "en-a-3.wav"
    assert (items["en-b-1"].meta["prompt_id"], items["en-b-1"].meta["prompt_pool"]) == ("en-b-2", "test")
    assert items["zh-d-2"].prompt_text == "你好。" and items["zh-d-2"].language == "zh"
    assert items["t2m-1"].text == "Piano at 120 BPM." and items["t2m-1"].meta["caption_source"] == "metadata"
    assert items["t2m-1"].meta["tempo_bpm"] == 120.0
    assert Path(items["v2m-1"].video).name == "v2m-1.mp4" and Path(items["v2m-1"].reference_audio).name == "v2m-1.wav"
    assert rejected(bset) == {"en-c-1": "no_prompt", "v2m-2": "missing_video", "en-a-9": "missing_file",
                              None: "bad_row", "en-a-1": "duplicate_id"}
    assert {r["line"] for r in bset.info["rejected"] if r["id"] is None} == {len(rows) + 1}

    small = load_benchmark("demo", corpus, max_items_per_task=2)  # root = the corpus folder
    assert [it.id for it in small.by_task("t2m")] == ["t2m-1", "t2m-2"]
    assert {e["id"] for e in small.info["excluded"] if e["reason"] == "max_items_per_task"} == {"en-b-2", "t2m-3"}

    # the curated manifest's caption wins (here found under <ws>/curate/work/; a clip names its parent)
    (ws / "curate" / "work").mkdir()
    pq.write_table(pa.table({
        "id": ["t2m-1__clip0000", "t2m-2"], "parent_id": ["t2m-1", None], "task": ["t2m", "t2m"],
        "offset": [0.0, 0.0], "text": ["A bright piano, 120 BPM, C major.", "Loud drums."],
        "meta": [json.dumps({"caption": {"backend": "offline"}}), "{}"],
    }), ws / "curate" / "work" / "curated.parquet")
    cur = by_id(load_benchmark("demo", ws))
    assert cur["t2m-1"].text == "A bright piano, 120 BPM, C major." and cur["t2m-1"].meta["captioner"] == "offline"
    assert cur["t2m-2"].meta["caption_source"] == "curated" and cur["t2m-3"].meta["caption_source"] == "metadata"
    assert by_id(load_benchmark("demo", ws, curated=False))["t2m-1"].text == "Piano at 120 BPM."


def test_demo_errors(tmp_path):
    with pytest.raises(MissingBenchmarkError, match=r"metadata.jsonl"):
        load_benchmark("demo", tmp_path)
    corpus = tmp_path / "c"
    tone(corpus / "audio" / "x.wav", 1.0)
    row = {"id": "x", "task": "t2m", "audio": "audio/x.wav", "text": "t"}
    write(corpus / "metadata.jsonl", json.dumps(row) + "\n")
    with pytest.raises(BenchmarkError, match="no 'split' column"):
        load_benchmark("demo", corpus)
    write(corpus / "metadata.jsonl", json.dumps({**row, "split": "train"}) + "\n")
    with pytest.raises(BenchmarkError, match="no rows with split 'test'"):
        load_benchmark("demo", corpus)


# ---------------------------------------------------------------- demo (the real demo corpus)


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    """The small demo corpus, built once (~5 s here) at its workspace location."""
    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus

    ws = tmp_path_factory.mktemp("bench-demo-ws")
    build_demo_corpus(ws / "curate" / "corpus" / "demo", DemoCorpusConfig.small())
    return ws


def test_demo_benchmark_from_built_corpus(demo_ws, tmp_path):
    corpus = demo_ws / "curate" / "corpus" / "demo"
    rows = [json.loads(ln) for ln in (corpus / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    test_rows = {r["id"]: r for r in rows if r["split"] == "test"}
    bset = load_benchmark("demo", demo_ws)
    assert bset.info["rejected"] == []
    assert sorted(it.id for it in bset.items) == sorted(test_rows)  # every held-out row, nothing else
    assert set(bset.tasks) == {r["task"] for r in test_rows.values()}
    train = {r["id"]: r for r in rows if r["split"] == "train"}
    for it in bset.items:
        r = test_rows[it.id]
        assert Path(it.reference_audio) == (corpus / r["audio"]).resolve() and Path(it.reference_audio).is_file()
        if it.task in ("en_tts", "zh_tts"):
            p = train[it.meta["prompt_id"]]  # a train-split utterance of the same speaker
            assert (p["speaker"], p["task"], it.prompt_text, it.text) == (r["speaker"], r["task"], p["text"], r["text"])
            assert Path(it.prompt_audio).is_file()
        else:
            assert it.text == r["text"] and it.meta["caption_source"] == "metadata"
        if it.task == "v2m":
            assert Path(it.video).is_file()
    # the same set from the corpus folder, and through a manifest round trip
    assert load_benchmark("demo", corpus).items == bset.items
    assert read_manifest(write_manifest(tmp_path / "demo.jsonl", bset)) == bset


def test_demo_flow_workspace_layout(tmp_path):
    """The curate flow's own layout: <ws>/corpus/demo and <ws>/curate/curated.parquet."""
    ws = tmp_path / "ws"
    corpus = ws / "corpus" / "demo"
    write(corpus / "metadata.jsonl", "\n".join(json.dumps(r) for r in _demo_rows(corpus)) + "\n")
    (ws / "curate").mkdir()
    pq.write_table(pa.table({"id": ["t2m-3"], "parent_id": [None], "task": ["t2m"], "offset": [0.0],
                             "text": ["Curated strings."], "meta": ["{}"]}), ws / "curate" / "curated.parquet")
    for root in (ws, corpus):
        bset = load_benchmark("demo", root)
        assert bset.info["curated"] == str(ws / "curate" / "curated.parquet")
        assert by_id(bset)["t2m-3"].text == "Curated strings."
    with pytest.raises(MissingBenchmarkError, match="curated manifest"):
        load_benchmark("demo", corpus, curated=tmp_path / "nope.parquet")
