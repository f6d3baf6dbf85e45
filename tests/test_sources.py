"""Corpus adapters (data.sources): one small fixture tree per corpus layout, built here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data.manifest import read_manifest, split_by_status, validate_records, write_manifest
from data.segment import segment_records
from data.sources import ADAPTERS, MissingCorpusError, get_adapter, ingest
from data.sources.aishell3 import strip_pinyin

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64


def tone(
    path: Path, seconds: float = 0.25, sr: int = 16000, channels: int = 1, fmt: str | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, int(seconds * sr))
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x, sr, format=fmt)
    return path


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def scan(name: str, root: Path, **options):
    records = list(get_adapter(name)(root, **options).scan())
    validate_records(records)  # every adapter's output is a valid manifest
    return records


def by_id(records):
    return {r.id: r for r in records}


def reasons(records):
    return {r.id: r.reason for r in records if r.status != "kept"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- registry


def test_registry_names_and_errors(tmp_path):
    assert set(ADAPTERS) == {
        "librispeech",
        "libritts",
        "aishell3",
        "fma",
        "musicnet",
        "musiccaps",
        "v2m",
        "generic",
        "demo",
    }
    assert get_adapter("LibriSpeech") is ADAPTERS["librispeech"]
    assert get_adapter("AISHELL-3") is ADAPTERS["aishell3"]
    with pytest.raises(ValueError, match="unknown corpus adapter 'nope'.*librispeech"):
        get_adapter("nope")
    for cls in ADAPTERS.values():
        with pytest.raises(MissingCorpusError, match="does not exist"):
            cls(tmp_path / "absent")
    with pytest.raises(TypeError):
        get_adapter("generic")(tmp_path, no_such_option=1)


def test_adapter_options_are_the_constructor_chain_keywords():
    """An adapter's options are its own keyword-only parameters plus those it passes on (``**common``) to
    Adapter; ``root`` is positional, not an option. A check names the unknown ones and lists the known."""
    from data.sources import adapter_options, check_adapter_options

    common = {"licence", "split", "source_corpus", "max_duration", "limits"}
    assert set(adapter_options("musiccaps")) == common | {"csv", "audio_dir", "filename", "audio_is_clip",
                                                          "extensions"}
    assert set(adapter_options("demo")) == common | {"metadata", "failures"}
    check_adapter_options("musiccaps", {"csv": "x.csv", "split": "dev"})  # all known: no error
    with pytest.raises(ValueError, match=r"MusicCapsAdapter has no option\(s\) \['bogus'\]; its options: \["):
        check_adapter_options("musiccaps", {"bogus": 1, "csv": "x.csv"})
    with pytest.raises(ValueError, match="unknown corpus adapter"):
        check_adapter_options("nope", {})


# ---------------------------------------------------------------- LibriSpeech / LibriTTS


def test_librispeech_layout(tmp_path):
    root = tmp_path / "LibriSpeech"
    ch = root / "dev-clean" / "84" / "121123"
    a0 = tone(ch / "84-121123-0000.flac")
    tone(ch / "84-121123-0001.flac", seconds=0.5)
    tone(ch / "84-121123-0003.flac")  # no transcript line
    write(ch / "84-121123.trans.txt", "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
          "84-121123-0002 THE STAIRCASE GROANED\n")  # fmt: skip
    tone(root / "train-clean-100" / "19" / "198" / "19-198-0001.flac")
    write(root / "train-clean-100" / "19" / "198" / "19-198.trans.txt", "19-198-0001 NORTHANGER ABBEY\n")

    recs = scan("librispeech", root)
    r = by_id(recs)
    assert len(recs) == 5  # 4 audio files + 1 transcript line without audio
    ok = r["84-121123-0000"]
    assert ok.status == "kept" and ok.text == "GO DO YOU HEAR"
    assert (ok.task, ok.language, ok.speaker, ok.split) == ("en_tts", "en", "84", "dev")
    assert (ok.source_corpus, ok.licence) == ("LibriSpeech", "CC-BY-4.0")
    assert ok.meta["subset"] == "dev-clean" and ok.source_ref == "dev-clean/84/121123/84-121123.trans.txt:1"
    assert ok.provenance_sha256 == sha(a0) and ok.audio_path == str(a0.resolve())
    assert ok.sample_rate == 16000 and ok.channels == 1 and ok.duration == pytest.approx(0.25)
    assert r["84-121123-0001"].duration == pytest.approx(0.5)
    assert r["19-198-0001"].split == "train" and r["19-198-0001"].speaker == "19"
    assert reasons(recs) == {"84-121123-0003": "missing_text", "84-121123-0002": "missing_file"}
    assert "84-121123-0002.flac" in r["84-121123-0002"].detail
    # a subset folder as the root works too
    assert {x.id for x in scan("librispeech", root / "dev-clean") if x.status == "kept"} == {
        "84-121123-0000",
        "84-121123-0001",
    }


def test_libritts_layout_and_text_variant(tmp_path):
    ch = tmp_path / "LibriTTS" / "test-clean" / "1089" / "134686"
    tone(ch / "1089_134686_000001_000001.wav", sr=24000)
    write(ch / "1089_134686_000001_000001.normalized.txt", "He hoped there would be stew for dinner.")
    write(ch / "1089_134686_000001_000001.original.txt", "He hoped there would be stew for dinner,")
    tone(ch / "1089_134686_000002_000000.wav", sr=24000)
    write(ch / "1089_134686.trans.tsv", "1089_134686_000002_000000\tStuff it into you!\tStuff it into you!\n")
    tone(ch / "1089_134686_000003_000000.wav", sr=24000)
    write(ch / "1089_134686_000003_000000.normalized.txt", b"   \n")  # empty transcript

    recs = scan("libritts", tmp_path / "LibriTTS")
    r = by_id(recs)
    assert r["1089_134686_000001_000001"].text == "He hoped there would be stew for dinner."
    assert r["1089_134686_000001_000001"].source_corpus == "LibriTTS"
    assert (
        r["1089_134686_000001_000001"].sample_rate == 24000 and r["1089_134686_000001_000001"].split == "test"
    )
    assert r["1089_134686_000002_000000"].text == "Stuff it into you!"
    assert r["1089_134686_000001_000001"].speaker == "1089"
    assert reasons(recs) == {"1089_134686_000003_000000": "empty_text"}
    orig = by_id(scan("libritts", tmp_path / "LibriTTS", text_variant="original"))
    assert orig["1089_134686_000001_000001"].text.endswith("dinner,")


def test_librispeech_training_and_benchmark_texts_agree(tmp_path):
    """One parser per corpus layout: the training adapter and the librispeech-test-clean benchmark set read the
    same trans.txt into the same texts. They used to differ on a line whose id is not <speaker>-<chapter>-<n> of
    its folder (kept in training, refused in the benchmark) and on a repeated id (training took the first line,
    the benchmark the first *usable* one)."""
    from evaluation.sets import load_benchmark
    from evaluation.sets.librispeech import scan_subset  # noqa: F401  (public name kept)

    root = tmp_path / "LibriSpeech"
    ch = root / "test-clean" / "1089" / "134686"
    for n in ("0000", "0001", "0002"):
        tone(ch / f"1089-134686-{n}.flac", seconds=0.5)
    tone(ch / "9999-1-0001.flac", seconds=0.5)  # a file of another chapter, misplaced here
    write(ch / "1089-134686.trans.txt", "\n".join([
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER",
        "1089-134686-0001   STUFF IT INTO YOU  ",  # extra spaces around the text
        "9999-1-0001 WRONG CHAPTER",
        "1089-134686-0002",  # no transcript: the utterance's line, so it has no text ...
        "1089-134686-0002 A SECOND LINE FOR IT",  # ... and a second line does not replace it
        "",
    ]) + "\n")

    recs = scan("librispeech", root)
    train = {r.id: r.text for r in recs if r.status == "kept"}
    bench = {it.id: it.text for it in load_benchmark("librispeech-test-clean", root, min_duration=None,
                                                      max_duration=None).items}
    assert train == bench == {"1089-134686-0000": "HE HOPED THERE WOULD BE STEW FOR DINNER",
                              "1089-134686-0001": "STUFF IT INTO YOU"}
    refused = sorted((r.id, r.reason) for r in recs if r.status != "kept")
    assert refused == [("1089-134686-0002", "duplicate_id"), ("1089-134686-0002", "empty_text"),
                       ("9999-1-0001", "bad_row"), ("9999-1-0001", "missing_text")]
    rejected = load_benchmark("librispeech-test-clean", root, min_duration=None, max_duration=None).info["rejected"]
    assert sorted((r["id"], r["reason"]) for r in rejected) == refused


# ---------------------------------------------------------------- AISHELL-3


def test_strip_pinyin():
    assert strip_pinyin("广 guang3 州 zhou1 女 nv3 大 da4 学 xue2 生 sheng1".split()) == (
        "广州女大学生",
        "guang3 zhou1 nv3 da4 xue2 sheng1",
    )


def test_strip_pinyin_keeps_latin_words():
    # AISHELL-3's pinyin is tone-numbered (1-5, 5 = neutral); a Latin word such as "OK" or "KTV" stands in
    # a character position without a tone digit and is part of the transcript, not pinyin
    assert strip_pinyin("我 wo3 们 men5 去 qu4 KTV 唱 chang4 歌 ge1 OK".split()) == (
        "我们去KTV唱歌OK",
        "wo3 men5 qu4 chang4 ge1",
    )
    # ü written v, ü or u:
    assert strip_pinyin("律 lv4 女 nü3 绿 lu:4".split()) == ("律女绿", "lv4 nü3 lu:4")


def test_aishell3_training_and_benchmark_texts_agree(tmp_path):
    """One parser per corpus layout: the training adapter and the aishell3-test benchmark set read the same
    content.txt line into the same text (they used to differ on Latin words: dropped in training only)."""
    from evaluation.sets import load_benchmark
    from evaluation.sets.aishell3 import strip_pinyin as bench_strip_pinyin

    assert bench_strip_pinyin is strip_pinyin
    root = tmp_path / "AISHELL-3"
    lines = "SSB00050001.wav\t去 qu4 KTV 唱 chang4 歌 ge1\nSSB00050002.wav\t好 hao3 的 de5 OK\n"
    for split in ("train", "test"):
        for utt in ("SSB00050001", "SSB00050002"):
            tone(root / split / "wav" / "SSB0005" / f"{utt}.wav", seconds=1.0)
        write(root / split / "content.txt", lines)
    train = {r.id: r.text for r in scan("aishell3", root) if r.split == "train"}
    bench = {it.id: it.text for it in load_benchmark("aishell3-test", root).items}
    assert train == bench == {"SSB00050001": "去KTV唱歌", "SSB00050002": "好的OK"}


def test_aishell3_layout(tmp_path):
    root = tmp_path / "AISHELL-3"
    a = tone(root / "train" / "wav" / "SSB0005" / "SSB00050001.wav", sr=44100)
    tone(root / "train" / "wav" / "SSB0005" / "SSB00050002.wav", sr=44100)
    tone(root / "train" / "wav" / "SSB0009" / "SSB00090001.wav", sr=44100)  # not in content.txt
    write(root / "train" / "content.txt",
          "SSB00050001.wav\t广 guang3 州 zhou1 女 nv3 大 da4 学 xue2 生 sheng1\n"
          "SSB00050002.wav\t登 deng1 山 shan1\n"
          "SSB00050003.wav\t失 shi1 踪 zong1\n")  # fmt: skip
    tone(root / "test" / "wav" / "SSB0011" / "SSB00110001.wav", sr=44100)
    write(root / "test" / "content.txt", "SSB00110001.wav\t你 ni3 好 hao3\n")
    write(root / "spk-info.txt", "# speaker info\nSSB0005\tB\tfemale\tnorth\n")

    recs = scan("aishell3", root)
    r = by_id(recs)
    assert len(recs) == 5
    ok = r["SSB00050001"]
    assert ok.status == "kept" and ok.text == "广州女大学生"
    assert (ok.task, ok.language, ok.speaker, ok.split, ok.licence) == (
        "zh_tts",
        "zh",
        "SSB0005",
        "train",
        "Apache-2.0",
    )
    assert ok.meta["pinyin"].startswith("guang3") and ok.meta["gender"] == "female"
    assert ok.provenance_sha256 == sha(a) and ok.sample_rate == 44100
    assert r["SSB00110001"].split == "test" and r["SSB00110001"].text == "你好"
    assert reasons(recs) == {"SSB00050003": "missing_file", "SSB00090001": "missing_text"}


def test_aishell3_without_content_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "wav").mkdir(parents=True)
    with pytest.raises(MissingCorpusError, match="content.txt"):
        list(get_adapter("aishell3")(tmp_path).scan())


# ---------------------------------------------------------------- FMA


def _fma_tracks_csv(rows: list[tuple]) -> str:
    h0 = ",album,artist,set,set,track,track,track,track"
    h1 = ",title,name,split,subset,duration,genre_top,license,title"
    h2 = "track_id,,,,,,,,"
    lines = [h0, h1, h2] + [",".join(str(c) for c in r) for r in rows]
    return "\n".join(lines) + "\n"


def test_fma_layout(tmp_path):
    root = tmp_path / "fma"
    a2 = tone(root / "fma_small" / "000" / "000002.mp3", seconds=0.5, sr=22050, channels=2)
    tone(root / "fma_small" / "000" / "000003.mp3", seconds=0.5, sr=22050)
    tone(root / "fma_small" / "099" / "099999.mp3", seconds=0.5, sr=22050)  # no metadata row
    write(root / "fma_metadata" / "tracks.csv", _fma_tracks_csv([
        (2, "AWOL - A Way Of Life", "AWOL", "training", "small", 168, "Hip-Hop", "Attribution-NonCommercial-ShareAlike 3.0 International", "Food"),
        (3, "AWOL - A Way Of Life", "AWOL", "test", "small", 237, "Hip-Hop", "", "Electric Ave"),
        (5, "AWOL - A Way Of Life", "AWOL", "validation", "small", 206, "Hip-Hop", "CC BY 4.0", "This World"),
        (10, "Constant Hitmaker", "Kurt Vile", "training", "medium", 161, "Pop", "CC BY 4.0", "Freeway"),
        ("abc", "", "", "", "small", "", "", "", ""),
    ]))  # fmt: skip

    recs = scan("fma", root)
    r = by_id(recs)
    assert len(recs) == 5  # tracks 2, 3, 5, the bad row and the stray file; 10 is medium-only
    ok = r["fma-000002"]
    assert ok.status == "kept" and ok.task == "t2m" and ok.text is None
    assert ok.split == "train" and ok.licence.startswith("Attribution-NonCommercial")
    assert ok.meta["genre_top"] == "Hip-Hop" and ok.meta["title"] == "Food" and ok.meta["artist"] == "AWOL"
    assert ok.channels == 2 and ok.sample_rate == 22050 and ok.duration == pytest.approx(0.5, abs=0.06)
    assert ok.provenance_sha256 == sha(a2) and ok.audio_path.endswith("fma_small/000/000002.mp3")
    assert r["fma-000003"].split == "test" and "per-track" in r["fma-000003"].licence
    bad = reasons(recs)
    assert bad.pop("fma-000005") == "missing_file" and bad.pop("fma-099999") == "missing_metadata"
    assert list(bad.values()) == ["bad_row"]
    with pytest.raises(MissingCorpusError, match="fma_medium"):
        get_adapter("fma")(root, subset="medium")


# ---------------------------------------------------------------- MusicNet


def test_musicnet_layout_and_segmentation(tmp_path):
    root = tmp_path / "musicnet"
    tone(root / "train_data" / "1727.wav", seconds=2.5, sr=8000)
    write(root / "train_labels" / "1727.csv",
          "start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"
          "9182,90078,43,53,4.0,1.5,Dotted Quarter\n9182,33758,42,65,4.0,0.5,Eighth\n")  # fmt: skip
    tone(root / "test_data" / "2303.wav", seconds=1.0, sr=8000)
    tone(root / "train_data" / "5555.wav", seconds=1.0, sr=8000)  # no metadata row
    write(root / "musicnet_metadata.csv",
          "id,composer,composition,movement,ensemble,source,transcriber,catalog_name,seconds\n"
          "1727,Schubert,Piano Quintet in A major,2. Andante,Piano Quintet,European Archive,http://tirolmusic.blogspot.com/,D667,2.5\n"
          "2303,Bach,Prelude and Fugue No. 1,1. Prelude,Solo Piano,Museopen,Bach,BWV846,1\n"
          "2304,Bach,Prelude and Fugue No. 2,1. Prelude,Solo Piano,Museopen,Bach,BWV847,60\n"
          "2305,Bach,\"Partita, No. 3\",1. Prelude,Solo Violin,Museopen,Bach,BWV1006,99\n")  # fmt: skip
    tone(root / "test_data" / "2305.wav", seconds=1.0, sr=8000)  # declared 99 s

    recs = scan("musicnet", root)
    r = by_id(recs)
    assert len(recs) == 5
    ok = r["musicnet-1727"]
    assert ok.status == "kept" and ok.split == "train" and ok.task == "t2m" and ok.licence == "CC-BY-4.0"
    assert ok.meta["composer"] == "Schubert" and ok.meta["ensemble"] == "Piano Quintet"
    assert ok.meta["instruments"] == [42, 43] and ok.meta["labels_path"].endswith("train_labels/1727.csv")
    assert r["musicnet-2303"].split == "test" and "labels_path" not in r["musicnet-2303"].meta
    assert r["musicnet-2305"].meta["composition"] == "Partita, No. 3"
    assert reasons(recs) == {
        "musicnet-2304": "missing_file",
        "musicnet-2305": "duration_mismatch",
        "musicnet-5555": "missing_metadata",
    }
    clips = segment_records(recs, clip_seconds=1.0, tail="drop")
    validate_records(clips)
    c = [x for x in clips if x.parent_id == "musicnet-1727"]
    assert [(x.offset, x.duration, x.status) for x in c] == [
        (0.0, 1.0, "kept"),
        (1.0, 1.0, "kept"),
        (2.0, 0.5, "filtered"),
    ]


# ---------------------------------------------------------------- MusicCaps


def _musiccaps_csv(rows) -> str:
    head = "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval"
    return head + "\n" + "\n".join(",".join(r) for r in rows) + "\n"


def test_musiccaps_clips(tmp_path):
    root = tmp_path / "musiccaps"
    a = tone(root / "audio" / "-0Gj8-vB1q4.wav", seconds=1.0)
    tone(root / "audio" / "empty_cap.wav", seconds=1.0)
    tone(root / "audio" / "stray.wav", seconds=1.0)
    write(root / "musiccaps-public.csv", _musiccaps_csv([
        ("-0Gj8-vB1q4", "30", "40", "'/m/0140xf'", "\"['low quality', 'sustained strings']\"",
         "\"The low quality recording features a ballad song, sustained strings.\"", "4", "False", "True"),
        ("missing_id1", "0", "10", "", "", "A calm piano piece.", "1", "True", "False"),
        ("empty_cap", "0", "10", "", "", "\"  \"", "1", "False", "False"),
        ("bad_span", "20", "10", "", "", "Loud drums.", "1", "False", "False"),
    ]))  # fmt: skip
    recs = scan("musiccaps", root)
    r = by_id(recs)
    ok = r["-0Gj8-vB1q4"]
    assert ok.status == "kept" and ok.text.startswith("The low quality recording") and ok.language == "en"
    assert ok.split == "test" and ok.offset == 0.0 and ok.duration == pytest.approx(1.0)
    assert (
        ok.meta["is_audioset_eval"] is True and ok.meta["start_s"] == 30.0 and ok.provenance_sha256 == sha(a)
    )
    assert reasons(recs) == {
        "missing_id1": "missing_file",
        "empty_cap": "empty_text",
        "bad_span": "bad_segment",
        "musiccaps-unlisted-stray": "missing_metadata",
    }


def test_musiccaps_spans_of_full_recordings(tmp_path):
    root = tmp_path / "mc"
    tone(root / "audio" / "full.wav", seconds=3.0, sr=8000)
    tone(root / "audio" / "short.wav", seconds=1.0, sr=8000)
    write(root / "captions.csv", _musiccaps_csv([
        ("full", "1", "2.5", "", "", "Strings.", "1", "False", "False"),
        ("short", "2", "4", "", "", "Drums.", "1", "False", "False"),
    ]))  # fmt: skip
    recs = scan("musiccaps", root, audio_is_clip=False, split="train")
    r = by_id(recs)
    assert (r["full"].offset, r["full"].duration, r["full"].source_duration) == (1.0, 1.5, 3.0)
    assert r["full"].split == "train"
    assert reasons(recs) == {"short": "bad_segment"}


def test_musiccaps_training_and_benchmark_captions_agree(tmp_path):
    """One parser per corpus layout: the training adapter and the musiccaps benchmark set read the same CSV
    row into the same caption and find the same clip. They used to differ on a clip saved as
    <ytid>_<start>.wav (found by the benchmark only), on a caption holding a real U+FFFD character
    (refused by the benchmark as undecodable) and on which reason refuses an empty caption with a bad span."""
    from evaluation.sets import load_benchmark

    root = tmp_path / "musiccaps"
    tone(root / "audio" / "aaa.wav", seconds=1.0)
    tone(root / "audio" / "bbb_10.wav", seconds=1.0)  # clip named with its start second
    tone(root / "audio" / "ccc.flac", seconds=1.0, fmt="FLAC")
    tone(root / "audio" / "ddd.wav", seconds=1.0)
    head = "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval"
    rows = [
        'aaa,30,40,/m/04rlf,"[\'piano\']","  A calm piano piece, slow.  ",4,True,False',
        "bbb,10.0,20.0,/m/0,[],Fast drums.,1,False,True",
        "ccc,0,10,/m/0,[],Lo-fi hiss \ufffd and vinyl crackle.,2,False,False",  # a real U+FFFD character
        "eee,20,10,/m/0,[],,2,False,False",  # empty caption and a backwards span
    ]
    data = (head + "\n" + "\n".join(rows) + "\n").encode("utf-8")
    data += b"ddd,0,10,/m/0,[],Caf\xe9 jazz.,2,False,False\n"  # Latin-1 byte: not UTF-8
    write(root / "musiccaps-public.csv", data)

    recs = scan("musiccaps", root)
    train = {r.id: (r.text, Path(r.audio_path).name) for r in recs if r.status == "kept"}
    bset = load_benchmark("musiccaps", root)
    bench = {it.id: (it.text, Path(it.reference_audio).name) for it in bset.items}
    assert train == bench == {"aaa": ("A calm piano piece, slow.", "aaa.wav"), "bbb": ("Fast drums.", "bbb_10.wav"),
                              "ccc": ("Lo-fi hiss \ufffd and vinyl crackle.", "ccc.flac")}
    refused = {r.id: r.reason for r in recs if r.status != "kept"}
    assert refused == {r["id"]: r["reason"] for r in bset.info["rejected"]} == {
        "eee": "empty_text", "ddd": "non_utf8_text"}
    # the same flags and aspect list in both
    mc = by_id(recs)["aaa"].meta
    assert (mc["is_balanced_subset"], mc["aspect_list"]) == (True, "['piano']") == (
        bset.items[0].meta["is_balanced_subset"], bset.items[0].meta["aspect_list"])


# ---------------------------------------------------------------- V2M pairs


def test_v2m_pairs(tmp_path):
    root = tmp_path / "v2m"
    write(root / "videos" / "a.mp4", MP4)
    tone(root / "audio" / "a.wav")
    write(root / "videos" / "b.mp4", MP4)  # no audio
    tone(root / "audio" / "c.wav")  # no video
    write(root / "videos" / "d.mp4", b"this is not a video at all")
    tone(root / "audio" / "d.wav")
    write(root / "videos" / "e.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 32)
    tone(root / "audio" / "e.flac")
    write(
        root / "captions.jsonl",
        json.dumps({"id": "a", "caption": "Upbeat electronic music for a city timelapse."}) + "\n",
    )

    recs = scan("v2m", root)
    r = by_id(recs)
    assert r["a"].status == "kept" and r["a"].task == "v2m"
    assert r["a"].video_path == str((root / "videos" / "a.mp4").resolve())
    assert r["a"].text.startswith("Upbeat") and r["a"].meta["video_container"] == "mp4/mov"
    assert r["e"].status == "kept" and r["e"].text is None
    assert reasons(recs) == {"b": "missing_file", "c": "missing_video", "d": "not_video"}
    strict = scan("v2m", root, require_caption=True)
    assert by_id(strict)["e"].reason == "missing_text"


# ---------------------------------------------------------------- generic folder + CSV / JSONL


def test_generic_csv(tmp_path):
    tone(tmp_path / "clips" / "one.wav")
    tone(tmp_path / "clips" / "two.flac", seconds=0.5)
    tone(tmp_path / "clips" / "three.wav")
    write(tmp_path / "metadata.csv",
          "path,text,task,language,speaker,mood\n"
          "clips/one.wav,Hello there.,en_tts,en,spk1,\n"
          "clips/two.flac,A sad violin melody.,t2m,,,sad\n"
          "clips/three.wav,,t2m,,,\n")  # fmt: skip
    recs = scan("generic", tmp_path, licence="CC0-1.0", source_corpus="my-folder")
    r = by_id(recs)
    assert r["clips__one"].text == "Hello there." and r["clips__one"].speaker == "spk1"
    assert r["clips__two"].meta == {"mood": "sad"} and r["clips__two"].language is None
    assert {x.licence for x in recs} == {"CC0-1.0"} and {x.source_corpus for x in recs} == {"my-folder"}
    assert r["clips__three"].reason == "empty_text"  # a text column with a blank cell
    lax = by_id(scan("generic", tmp_path, require_text=False))
    assert lax["clips__three"].status == "kept" and lax["clips__three"].text is None


def test_generic_jsonl_with_defaults(tmp_path):
    tone(tmp_path / "a.wav")
    tone(tmp_path / "b.wav")
    lines = [
        {"id": "x1", "audio": "a.wav", "transcript": "你好", "speaker": 7},
        {"id": "x2", "path": "b.wav", "task": "t2m"},  # music with no text at all: fine
    ]
    write(
        tmp_path / "data.jsonl", "\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n{oops\n"
    )
    recs = scan("generic", tmp_path, task="zh_tts", language="zh", split="dev")
    r = by_id(recs)
    assert (r["x1"].task, r["x1"].language, r["x1"].speaker, r["x1"].split, r["x1"].text) == (
        "zh_tts",
        "zh",
        "7",
        "dev",
        "你好",
    )
    assert r["x2"].task == "t2m" and r["x2"].status == "kept" and r["x2"].text is None
    assert [x.reason for x in recs if x.status != "kept"] == ["bad_row"]
    assert recs[-1].source_ref == "data.jsonl:4"


# ---------------------------------------------------------------- the demo corpus


def test_demo_corpus(tmp_path):
    root = tmp_path / "demo"
    tone(root / "audio" / "en_0001.wav", seconds=0.5, sr=16000)
    tone(root / "audio" / "t2m_0001.wav", seconds=1.0, sr=16000)
    tone(root / "audio" / "v2m_0001.wav", seconds=1.0, sr=16000)
    write(root / "video" / "v2m_0001.mp4", MP4)
    write(root / "midi" / "t2m_0001.mid", b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0")
    meta = [
        dict(id="en_0001", task="en_tts", language="en", audio="audio/en_0001.wav", text="The quick brown fox.",
             speaker="kal", video=None, licence="CC0-1.0", source="festival", midi=None, instruments=[],
             tempo_bpm=None, key=None, sample_rate=16000, duration=0.5),
        dict(id="t2m_0001", task="t2m", language="en", audio="audio/t2m_0001.wav",
             text="A bright piano melody in C major at 120 BPM.", speaker=None, video=None, licence="CC0-1.0",
             source="fluidsynth", midi="midi/t2m_0001.mid", instruments=["piano"], tempo_bpm=120.0, key="C major",
             sample_rate=16000, duration=1.0),
        dict(id="v2m_0001", task="v2m", language="en", audio="audio/v2m_0001.wav", text="Calm strings.",
             speaker=None, video="video/v2m_0001.mp4", licence="CC0-1.0", source="fluidsynth", midi=None,
             instruments=["strings"], tempo_bpm=80.0, key="A minor", sample_rate=16000, duration=1.0),
        dict(id="t2m_0002", task="t2m", language="en", audio="audio/t2m_0001.wav", text="Wrong rate.",
             speaker=None, video=None, licence="CC0-1.0", source="fluidsynth", midi=None, instruments=[],
             tempo_bpm=None, key=None, sample_rate=22050, duration=1.0),
    ]  # fmt: skip
    write(root / "metadata.jsonl", "\n".join(json.dumps(m) for m in meta) + "\n")
    write(root / "failures.jsonl",
          json.dumps({"source": "espeak", "reason": "espeak_missing"}) + "\n"
          + json.dumps({"source": "fluidsynth:song3", "reason": "FluidSynth crashed: signal 11"}) + "\n")  # fmt: skip

    recs = scan("demo", root)
    r = by_id(recs)
    assert len(recs) == 6
    t = r["t2m_0001"]
    assert t.status == "kept" and t.meta["tempo_bpm"] == 120.0 and t.meta["key"] == "C major"
    assert t.meta["instruments"] == ["piano"] and t.meta["midi"] == str(
        (root / "midi" / "t2m_0001.mid").resolve()
    )
    assert t.source_corpus == "unimoe-demo" and t.licence == "CC0-1.0"
    assert r["v2m_0001"].video_path.endswith("video/v2m_0001.mp4") and r["en_0001"].speaker == "kal"
    bad = reasons(recs)
    assert bad == {
        "t2m_0002": "sample_rate_mismatch",
        "demo-failure-00001": "espeak_missing",
        "demo-failure-00002": "build_failed",
    }
    assert (
        "signal 11" in r["demo-failure-00002"].detail
        and r["demo-failure-00002"].meta["source"] == "fluidsynth:song3"
    )


def test_demo_training_and_benchmark_texts_agree(tmp_path):
    """One reader of the demo corpus rows: the training adapter and the demo benchmark set give the same test
    rows the same texts. They used to differ on a byte-order mark inside a text (removed in training only), an
    audio path written with surrounding spaces (found in training only) and a numeric id (benchmark: no id)."""
    from evaluation.sets import load_benchmark

    root = tmp_path / "demo"

    def row(rid, task, split, text, speaker=None, audio=None):
        name = f"audio/{rid}.wav"
        tone(root / name, seconds=0.5)
        return {"id": rid, "task": task, "language": "en", "audio": audio or name, "text": text,
                "speaker": speaker, "video": None, "split": split}

    rows = [row("en-a-1", "en_tts", "train", "Train one.", "a"),
            row("en-a-2", "en_tts", "test", "\ufeffTest two.  ", "a"),
            row("en-a-3", "en_tts", "test", "Test three.", "a", audio=" audio/en-a-3.wav "),
            row("t2m-1", "t2m", "test", "  Piano at 120 BPM."),
            row(7, "t2m", "test", "Drums.")]  # audio/7.wav
    write(root / "metadata.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    recs = scan("demo", root)
    train = {r.id: r.text for r in recs if r.status == "kept" and r.split == "test"}
    bench = {it.id: it.text for it in load_benchmark("demo", root, curated=False).items}
    assert train == bench == {"en-a-2": "Test two.", "en-a-3": "Test three.", "t2m-1": "Piano at 120 BPM.",
                              "7": "Drums."}


def test_ingest_writes_a_readable_manifest(tmp_path):
    tone(tmp_path / "c" / "a.wav")
    write(tmp_path / "c" / "metadata.csv", "path,text,task\na.wav,Hi.,en_tts\nmissing.wav,Hi.,en_tts\n")
    out = ingest("generic", tmp_path / "c", tmp_path / "ws" / "m.parquet")
    parts = split_by_status(read_manifest(out))
    assert len(parts["kept"]) == 1 and [x.reason for x in parts["quarantined"]] == ["missing_file"]
    write_manifest(tmp_path / "ws" / "again.parquet", read_manifest(out))
