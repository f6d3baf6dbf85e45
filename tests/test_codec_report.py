"""`unimoe codec resynth` and `unimoe codec report`: resynthesis of a folder with a tiny random-init DAC
written to a weights file, and the held-out codec report on a small synthetic manifest (real festival /
espeak-ng speech scored by the real PocketSphinx and DNSMOS, tone music through the key/tempo estimator)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from flows.cli_codec import codec_app

runner = CliRunner()
SR = 16000
HOP = 320
# short sentences (PocketSphinx runs at about real time on a loaded 2-core machine) that it recognises
EN_FESTIVAL = ["She had never seen so many people.", "Please open the window now."]
EN_ESPEAK = "She had never seen so many people."


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A small random-init 16 kHz DAC (hop 320, 3 codebooks) written with AudioCodec.save (DAC.save)."""
    from unimoe.codec import RANDOM_INIT_LABEL, AudioCodec, build_random_dac
    from unimoe.config import CodecConfig

    cfg = CodecConfig(random_init=True, encoder_dim=8, decoder_dim=32)
    model = build_random_dac(cfg, num_codebooks=3)
    path = tmp_path_factory.mktemp("codec") / "tiny.pth"
    AudioCodec(model, num_codebooks=3, label=RANDOM_INIT_LABEL, is_random_init=True).save(path)
    return path


def _tone(seconds: float, sr: int, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return y if channels == 1 else np.stack([y] * channels, axis=1)


# ---- resynth --------------------------------------------------------------------------------------------


def test_resynth_writes_wav_and_codes_and_reports_a_bad_file(tmp_path, tiny_weights):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    sf.write(src / "a" / "x.wav", _tone(0.5, SR), SR)                      # 8000 samples -> 25 frames
    sf.write(src / "b" / "x.flac", _tone(0.3, 44100, channels=2), 44100)   # same stem, other folder
    sf.write(src / "song.ogg", _tone(0.41, 22050, 440.0), 22050, format="OGG", subtype="VORBIS")
    (src / "broken.wav").write_bytes(b"RIFF not really audio")
    (src / "notes.txt").write_text("not audio, not an input")
    out = tmp_path / "out"

    res = runner.invoke(codec_app, ["resynth", str(src), str(out), "--codec", str(tiny_weights)])
    assert res.exit_code == 1, res.output  # one file failed, the rest were processed
    assert "broken.wav" in res.output and "3 file(s) written" in res.output

    index = json.loads((out / "resynth.json").read_text())
    assert [f["input"].endswith("broken.wav") for f in index["failed"]] == [True]
    assert index["codec"]["num_codebooks"] == 3 and index["codec"]["weights_path"].endswith("tiny.pth")
    expect = {"a__x": 8000, "b__x": math.ceil(int(0.3 * 44100) * SR / 44100), "song": math.ceil(int(0.41 * 22050) * SR / 22050)}
    for name, n in expect.items():
        codes = np.load(out / f"{name}.codes.npy")
        assert codes.dtype == np.int16 and codes.shape == (3, math.ceil(n / HOP)), (name, codes.shape)
        assert codes.min() >= 0 and codes.max() < 1024
        wav, sr = sf.read(out / f"{name}.wav")
        assert sr == SR and wav.ndim == 1 and len(wav) == n  # codec rate, trimmed to the input length
    assert not (out / "x.wav").exists() and not list(out.glob(".*.tmp"))  # duplicates disambiguated; no temp files

    # an output folder inside the input folder is not read back as input on a re-run
    for _ in range(2):
        res = runner.invoke(codec_app, ["resynth", str(src), str(src / "resynth"), "--codec", str(tiny_weights)])
        assert res.exit_code == 1 and "3 file(s) written" in res.output, res.output

    # --num-codebooks picks fewer of the model's codebooks
    res = runner.invoke(codec_app, ["resynth", str(src / "a"), str(tmp_path / "k2"), "--codec", str(tiny_weights),
                                    "--num-codebooks", "2"])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "k2" / "x.codes.npy").shape == (2, 25)


def test_resynth_reads_trained_safetensors(tmp_path):
    import torch

    from unimoe.codec_train import CodecTrainConfig, build_generator, export_dac

    cfg = CodecTrainConfig(encoder_dim=4, decoder_dim=16, n_codebooks=2)
    torch.manual_seed(0)
    weights = export_dac(build_generator(cfg).eval(), cfg, tmp_path / "trained.safetensors")
    assert len(weights) == 64
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "one.wav", _tone(0.2, SR), SR)
    res = runner.invoke(codec_app, ["resynth", str(tmp_path / "in"), str(tmp_path / "out"), "--codec",
                                    str(tmp_path / "trained.safetensors")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "out" / "one.codes.npy").shape == (2, 10)


def test_missing_demo_codec_error_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("unimoe.io.builtin_asset", lambda rel: tmp_path / "assets" / rel)
    (tmp_path / "in").mkdir()
    for cmd in (["resynth", str(tmp_path / "in"), str(tmp_path / "out")], ["report", "--workspace", str(tmp_path)]):
        res = runner.invoke(codec_app, cmd)  # --codec demo is the default
        assert res.exit_code == 2
        msg = " ".join(res.output.split())
        assert str(tmp_path / "assets" / "codecs" / "demo-dac.safetensors") in msg and "make demo-codec" in msg
    from unimoe.codec import open_codec
    from unimoe.io import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="demo-dac.safetensors"):
        open_codec("demo")
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        open_codec(tmp_path / "nope.pth")


def test_output_names_disambiguate_or_refuse(tmp_path):
    from unimoe.codec import _output_names

    f = [tmp_path / "x.wav", tmp_path / "x.flac", tmp_path / "d" / "x.wav", tmp_path / "y.wav"]
    assert _output_names(f, tmp_path) == {f[0]: "x__wav", f[1]: "x__flac", f[2]: "d__x", f[3]: "y"}
    with pytest.raises(ValueError, match="d__x"):
        _output_names([tmp_path / "d" / "x.wav", tmp_path / "x.wav", tmp_path / "d__x.wav"], tmp_path)


# ---- targets and aggregates (constructed numbers) ---------------------------------------------------------


def _report(ppl=(200.0, 150.0), festival_delta=0.1, key=0.8, tempo=0.9):
    fest = {"n": 4, "wer_delta": festival_delta} if festival_delta is not None else None
    return {"codebooks": {"overall": [{"codebook": i, "perplexity": p} for i, p in enumerate(ppl)]},
            "speech": {"wer_en": {"per_engine": {"festival": fest} if fest else {"espeak-ng": {"n": 3, "wer_delta": 0.0}}}},
            "music": {"overall": {"key_kept_fraction": key, "tempo_kept_fraction": tempo}}}


def test_targets_flip_with_the_numbers():
    from evaluation.codec_report import evaluate_targets

    def status(**kw):
        return {t["name"]: t["passed"] for t in evaluate_targets(_report(**kw))}

    assert status() == {"codebook_perplexity": True, "festival_wer_delta": True, "music_key_kept": True,
                        "music_tempo_kept": True}
    assert status(ppl=(200.0, 128.0))["codebook_perplexity"] is True
    assert status(ppl=(500.0, 127.9))["codebook_perplexity"] is False     # every codebook must pass
    assert status(ppl=(500.0, math.nan))["codebook_perplexity"] is False
    assert status(ppl=())["codebook_perplexity"] is None
    assert status(festival_delta=0.15)["festival_wer_delta"] is True
    assert status(festival_delta=0.16)["festival_wer_delta"] is False
    assert status(festival_delta=-0.2)["festival_wer_delta"] is True      # resynthesis better than ground truth
    assert status(festival_delta=None)["festival_wer_delta"] is None      # no festival rows: n/a, not a pass
    assert status(key=0.70)["music_key_kept"] is True and status(key=0.69)["music_key_kept"] is False
    assert status(tempo=0.80)["music_tempo_kept"] is True and status(tempo=0.79)["music_tempo_kept"] is False
    assert status(tempo=None)["music_tempo_kept"] is None
    values = {t["name"]: t["value"] for t in evaluate_targets(_report(ppl=(300.0, 140.0)))}
    assert values["codebook_perplexity"] == 140.0


def test_aggregates_from_constructed_items():
    from evaluation.codec_report import codebook_stats, music_summary, tempo_kept, wer_summary

    items = [{"wer_errors_ground_truth": 1.0, "wer_errors_resynthesis": 3.0, "wer_ref_words": 10.0},
             {"wer_errors_ground_truth": 0.0, "wer_errors_resynthesis": 1.0, "wer_ref_words": 5.0},
             {"wer_errors_ground_truth": 2.0, "wer_errors_resynthesis": None, "wer_ref_words": 5.0}]  # unpaired: out
    w = wer_summary(items)
    assert w["n"] == 2 and w["words"] == 15
    assert w["wer_ground_truth"] == pytest.approx(1 / 15) and w["wer_delta"] == pytest.approx(3 / 15)

    assert tempo_kept(100.0, 104.0) and tempo_kept(100.0, 96.2) and not tempo_kept(100.0, 105.0)
    assert not tempo_kept(100.0, 200.0) and not tempo_kept(100.0, None) and not tempo_kept(None, 100.0)
    m = music_summary([{"key_ground_truth": "C major", "key_kept": True, "tempo_ground_truth": 120.0, "tempo_kept": True},
                       {"key_ground_truth": "A minor", "key_kept": False, "tempo_ground_truth": 90.0, "tempo_kept": True},
                       {"key_ground_truth": None, "key_kept": False, "tempo_ground_truth": None, "tempo_kept": False}])
    assert m["n"] == 3 and m["n_key"] == 2 and m["key_kept_fraction"] == 0.5 and m["n_key_unestimable"] == 1
    assert m["n_tempo"] == 2 and m["tempo_kept_fraction"] == 1.0

    codes = [np.array([[0, 1, 2, 3], [5, 5, 5, 5]]), np.array([[0, 1, 2, 3], [5, 5, 5, 5]])]
    stats = codebook_stats(codes, 1024)
    assert [s["used"] for s in stats] == [4, 1]
    assert stats[0]["perplexity"] == pytest.approx(4.0) and stats[1]["perplexity"] == pytest.approx(1.0)


def test_mel_distance_is_zero_for_identical_audio_and_grows_with_damage():
    from evaluation.codec_report import mel_distance, mel_distance_loss

    loss = mel_distance_loss()
    noise = np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    x = _tone(1.0, SR) + 1e-3 * noise
    assert mel_distance(loss, x, x, SR) == pytest.approx(0.0, abs=1e-6)
    d = [mel_distance(loss, x + a * np.roll(noise, 7), x, SR) for a in (3e-3, 3e-2, 3e-1)]
    assert 0 < d[0] < d[1] < d[2]
    assert mel_distance(loss, x[:8000], x, SR) == pytest.approx(mel_distance(loss, x[:8000], x[:8000], SR))


def test_frame_rate_buzz_sees_added_ringing_at_the_frame_rate_only():
    from evaluation.codec_report import frame_rate_buzz_db, frame_rate_harmonic_db

    sr, rate = 16000, 50.0
    rng = np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    truth = (0.1 * rng.standard_normal(t.size)).astype(np.float32)
    assert abs(frame_rate_buzz_db(truth, truth, sr, rate)) < 1e-9
    assert abs(frame_rate_harmonic_db(truth, sr, rate)) < 1.0          # white noise: flat
    ringing = sum(0.05 * np.sin(2 * np.pi * k * rate * t) for k in range(2, 20))
    buzzed = frame_rate_buzz_db(truth + ringing, truth, sr, rate)
    off_rate = frame_rate_buzz_db(truth + sum(0.05 * np.sin(2 * np.pi * (k * rate + 25) * t) for k in range(2, 20)),
                                  truth, sr, rate)
    assert buzzed > 10 and off_rate < 0      # tones between the harmonics count against, not for, a buzz
    assert math.isnan(frame_rate_harmonic_db(truth[:100], sr, rate))


# ---- the report on a synthetic manifest ---------------------------------------------------------------------


def _arpeggio(pitches, bpm: float, seconds: float, sr: int = 22050) -> np.ndarray:
    """Tones (fundamental + 2 harmonics, decaying), one per beat, cycling through ``pitches`` (MIDI)."""
    beat = 60.0 / bpm
    y = np.zeros(int(seconds * sr), np.float32)
    n = int(beat * sr)
    t = np.arange(n) / sr
    env = np.exp(-3.0 * t / beat)
    for i, start in enumerate(range(0, len(y) - n, n)):
        f = 440.0 * 2 ** ((pitches[i % len(pitches)] - 69) / 12)
        note = sum(a * np.sin(2 * np.pi * f * k * t) for k, a in ((1, 0.5), (2, 0.2), (3, 0.1)))
        y[start:start + n] += (env * note).astype(np.float32)
    return 0.5 * y


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from data.manifest import ManifestRecord, write_manifest
    from data.speech_synth import BUILTIN_VOICES, check_voice, synthesize

    root = tmp_path_factory.mktemp("corpus")
    recs = []

    def add(rid, task, y, sr, *, text=None, speaker=None, source=None, offset=0.0, duration=None, split="test",
            status="kept", reason=None, meta=None):
        path = root / f"{rid}.wav"
        sf.write(path, y, sr)
        total = len(y) / sr
        recs.append(ManifestRecord(
            id=rid, task=task, language={"en_tts": "en", "zh_tts": "zh"}.get(task), audio_path=str(path),
            duration=duration or total - offset, sample_rate=sr, channels=1, text=text, speaker=speaker,
            source_corpus="synthetic", licence="test", split=split, provenance_sha256="0" * 64, offset=offset,
            source_duration=total, status=status, reason=reason,
            meta={**({"source": source} if source else {}), **(meta or {})}))

    for name in ("kal", "us-f2", "cmn-f2"):
        if check_voice(BUILTIN_VOICES[name]):
            pytest.skip(check_voice(BUILTIN_VOICES[name]))
    kal, us, cmn = BUILTIN_VOICES["kal"], BUILTIN_VOICES["us-f2"], BUILTIN_VOICES["cmn-f2"]
    y0, sr0 = synthesize(EN_FESTIVAL[0], kal)
    add("en-kal-0", "en_tts", y0, sr0, text=EN_FESTIVAL[0], speaker="kal", source=kal.source)
    y1, sr1 = synthesize(EN_FESTIVAL[1], kal)
    pad = np.zeros(int(0.7 * sr1), np.float32)  # a span: the row starts 0.7 s into its file
    add("en-kal-1", "en_tts", np.concatenate([pad, y1, pad]), sr1, text=EN_FESTIVAL[1], speaker="kal",
        source=kal.source, offset=0.7, duration=len(y1) / sr1)
    y2, sr2 = synthesize(EN_ESPEAK, us)
    add("en-us-f2-0", "en_tts", y2, sr2, text=EN_ESPEAK, speaker="us-f2", source=us.source)
    y3, sr3 = synthesize("今天天气很好。", cmn)
    add("zh-cmn-f2-0", "zh_tts", y3, sr3, text="今天天气很好。", speaker="cmn-f2", source=cmn.source)
    add("music-c", "t2m", _arpeggio([60, 64, 67, 72, 67, 64], 120.0, 4.0), 22050, text="Tempo: 120 bpm. Key: C major.",
        meta={"tempo_bpm": 120.0, "key": "C major"})
    add("music-a", "t2m", _arpeggio([57, 60, 64, 69, 64, 60], 90.0, 4.0), 22050, text="Tempo: 90 bpm. Key: A minor.",
        meta={"tempo_bpm": 90.0, "key": "A minor"})
    # not in the report: a train row, a quarantined test row; in it but failing: a test row whose file vanished
    add("en-kal-train", "en_tts", y0, sr0, text=EN_FESTIVAL[0], speaker="kal", source=kal.source, split="train")
    add("en-bad", "en_tts", y0, sr0, text="x", speaker="kal", source=kal.source, status="quarantined", reason="corrupt_audio")
    add("music-gone", "t2m", _arpeggio([60], 120.0, 2.0), 22050, text="gone")
    (root / "music-gone.wav").unlink()
    return write_manifest(root / "curated.parquet", recs)


@pytest.fixture(scope="module")
def report_run(manifest, tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    res = runner.invoke(codec_app, ["report", "--codec", str(tiny_weights), "--manifest", str(manifest),
                                    "--workspace", str(out / "ws"), "--out", str(out / "r")])
    return res, out / "r"


def test_report_writes_every_field(report_run):
    res, out = report_run
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    for key in ("codec", "manifest", "split", "protocol", "scorers", "unavailable", "counts", "failures", "codebooks",
                "mel_distance", "speech", "music", "items", "targets", "all_targets_passed"):
        assert key in rep, key
    assert rep["unavailable"] == {} and rep["scorers"]["pocketsphinx_wer"] and rep["scorers"]["dnsmos"]
    assert rep["counts"] == {"rows": 7, "scored": 6, "failed": 1,
                             "per_task": {"en_tts": 3, "t2m": 3, "zh_tts": 1}}
    assert [f["id"] for f in rep["failures"]] == ["music-gone"] and "missing_file" in rep["failures"][0]["error"]
    assert "music-gone" in res.output  # reported while running

    books = rep["codebooks"]["overall"]
    assert [b["codebook"] for b in books] == [0, 1, 2]
    assert all(1 <= b["used"] <= 1024 and b["size"] == 1024 and 1.0 <= b["perplexity"] <= b["used"] for b in books)
    assert set(rep["codebooks"]["per_task"]) == {"en_tts", "zh_tts", "t2m"}
    frames = sum(it["frames"] for it in rep["items"])
    assert frames > 0 and all(it["frames"] == math.ceil(it["seconds"] * SR / HOP - 1e-9) for it in rep["items"])
    assert rep["mel_distance"]["overall"]["n"] == 6 and rep["mel_distance"]["overall"]["mean"] > 0
    buzz = rep["frame_rate_buzz_db"]
    assert buzz["overall"]["n"] == 6 and set(buzz["per_task"]) == {"en_tts", "zh_tts", "t2m"}
    assert buzz["overall"]["median"] == pytest.approx(np.median([it["frame_rate_buzz_db"] for it in rep["items"]]))
    assert "Frame-rate buzz" in (out / "report.md").read_text()

    wer = rep["speech"]["wer_en"]
    assert set(wer["per_engine"]) == {"festival", "espeak-ng"}
    assert wer["per_engine"]["festival"]["n"] == 2 and wer["overall"]["n"] == 3
    for w in [wer["overall"], *wer["per_engine"].values()]:
        assert w["wer_ground_truth"] is not None and w["wer_resynthesis"] is not None
        assert w["wer_delta"] == pytest.approx(w["wer_resynthesis"] - w["wer_ground_truth"])
    voices = rep["speech"]["per_voice"]
    assert set(voices) == {"kal", "us-f2", "cmn-f2"}
    assert voices["kal"]["engine"] == "festival" and voices["us-f2"]["engine"] == "espeak-ng"
    assert voices["kal"]["n_wer"] == 2 and "wer_ground_truth" not in voices["cmn-f2"]
    for task in ("en_tts", "zh_tts"):
        d = rep["speech"]["dnsmos_ovrl"]["per_task"][task]
        assert 1.0 <= d["dnsmos_ovrl_ground_truth"] <= 5.0 and 1.0 <= d["dnsmos_ovrl_resynthesis"] <= 5.0

    music = rep["music"]["overall"]
    assert music["n"] == 2 and music["n_key"] == 2 and music["n_tempo"] == 2
    assert 0.0 <= music["key_kept_fraction"] <= 1.0 and 0.0 <= music["tempo_kept_fraction"] <= 1.0
    by_id = {it["id"]: it for it in rep["items"]}
    assert by_id["music-c"]["key_ground_truth"] == "C major" and by_id["music-a"]["key_ground_truth"] == "A minor"
    assert by_id["music-c"]["tempo_ground_truth"] == pytest.approx(120.0, rel=0.04)
    assert by_id["music-c"]["key_label"] == "C major"

    assert [t["name"] for t in rep["targets"]] == ["codebook_perplexity", "festival_wer_delta", "music_key_kept",
                                                  "music_tempo_kept"]
    # a random-init 3-codebook DAC on six clips cannot reach perplexity 128 everywhere
    assert rep["targets"][0]["passed"] is False and rep["all_targets_passed"] is False
    for t in rep["targets"]:
        assert f"{t['name']}:" in res.output
    md = (out / "report.md").read_text()
    for text in ("## Targets", "FAIL", "WER ground truth", "WER resynthesis", "engine festival", "| kal | en_tts | festival",
                 "DNSMOS OVRL ground truth", "key kept", "music-gone"):
        assert text in md, text
    assert not list(out.glob(".*.tmp"))


def test_report_wer_of_ground_truth_is_real_pocketsphinx(report_run, manifest):
    from data.manifest import read_manifest
    from evaluation.scorers.pocketsphinx_wer import PocketSphinxWER
    from evaluation.text import normalize
    from unimoe.common.audio import load_span

    rep = json.loads((report_run[1] / "report.json").read_text())
    by_id = {it["id"]: it for it in rep["items"]}
    asr = PocketSphinxWER()
    errors = words = 0
    for r in read_manifest(manifest):
        if r.id not in ("en-kal-0", "en-kal-1"):
            continue
        wav, sr = load_span(r.audio_path, r.offset, r.duration)
        hyp = asr.transcribe(wav, sr)
        item = by_id[r.id]
        assert item["transcript_ground_truth"] == hyp and hyp.strip()
        m = asr.score_transcript(r.text, hyp)
        assert item["wer_ground_truth"] == m["wer_pocketsphinx"]
        assert item["wer_ref_words"] == len(normalize(r.text, "en").split())
        errors += m["wer_pocketsphinx_errors"]
        words += m["wer_pocketsphinx_ref_len"]
    fest = rep["speech"]["wer_en"]["per_engine"]["festival"]
    assert fest["wer_ground_truth"] == pytest.approx(errors / words)
    assert fest["wer_ground_truth"] < 0.5  # festival speech is recognised; noise from a random codec is not
    assert fest["wer_resynthesis"] > fest["wer_ground_truth"]


def test_max_items_keeps_the_first_rows_of_each_task(manifest):
    from evaluation.codec_report import load_heldout_rows

    rows = load_heldout_rows(manifest)
    assert [r["id"] for r in rows] == ["en-kal-0", "en-kal-1", "en-us-f2-0", "music-a", "music-c", "music-gone",
                                       "zh-cmn-f2-0"]  # kept test rows only, by (task, id)
    assert rows[1]["offset"] == pytest.approx(0.7) and rows[1]["meta"]["source"] == "festival:kal_diphone"
    assert [r["id"] for r in load_heldout_rows(manifest, max_items=1)] == ["en-kal-0", "music-a", "zh-cmn-f2-0"]
    assert [r["id"] for r in load_heldout_rows(manifest, split="train")] == ["en-kal-train"]
    with pytest.raises(ValueError, match="no kept rows in split 'dev'"):
        load_heldout_rows(manifest, split="dev")


def test_report_check_and_default_out(manifest, tiny_weights, tmp_path):
    from data.manifest import read_manifest, write_manifest

    small = write_manifest(tmp_path / "music.parquet", [r for r in read_manifest(manifest) if r.id == "music-c"])
    res = runner.invoke(codec_app, ["report", "--codec", str(tiny_weights), "--manifest", str(small),
                                    "--workspace", str(tmp_path), "--check"])
    rep = json.loads((tmp_path / "codec" / "report" / "report.json").read_text())  # the default --out
    assert rep["counts"]["per_task"] == {"t2m": 1}
    status = {t["name"]: t["passed"] for t in rep["targets"]}
    assert status["festival_wer_delta"] is None and "n/a   festival_wer_delta" in res.output  # no speech: n/a
    assert status["codebook_perplexity"] is False  # one 4 s clip cannot use 128 codes evenly
    assert res.exit_code == 1, res.output  # --check: not every target passed
    res = runner.invoke(codec_app, ["report", "--codec", str(tiny_weights), "--manifest", str(tmp_path / "none.parquet"),
                                    "--workspace", str(tmp_path)])
    assert res.exit_code == 2 and "none.parquet" in res.output and "unimoe curate" in res.output
