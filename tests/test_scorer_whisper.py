"""Whisper WER: an architecture-faithful (v3 vocab, 128 mels) tiny checkpoint with random weights,
written in the official format and run through the real tokenizer and decoding path."""

from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper")

from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers.whisper_wer import LARGE_V3_SHA256, METRIC, WhisperWER
from unimoe.io import ChecksumError, sha256_file

# large-v3's vocabulary, mel bands and context sizes; tiny widths and depths.
TINY_V3 = dict(
    n_mels=128, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
    n_vocab=51866, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    model = Whisper(ModelDimensions(**TINY_V3))
    path = tmp_path_factory.mktemp("w") / "tiny-v3.pt"
    torch.save({"dims": asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(weights):
    path, sha = weights
    return load_scorer("whisper_wer", weights_path=str(path), sha256=sha, device="cpu", batch_size=4)


def _tone(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.2 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def test_registered_version_and_official_digest(scorer, weights):
    from importlib.metadata import version

    assert "whisper_wer" in available_scorers()
    assert isinstance(scorer, WhisperWER)
    assert scorer.metrics == {METRIC: "lower"}
    assert scorer.version == f"openai-whisper {version('openai-whisper')} (sha256:{weights[1][:12]})"
    info = scorer.info()
    assert info["official_large_v3"] is False and info["dims"]["n_mels"] == 128
    # the default digest is the one openai-whisper's own downloader verifies for large-v3
    assert f"/{LARGE_V3_SHA256}/large-v3.pt" in whisper._MODELS["large-v3"]
    assert scorer.model.is_multilingual and scorer.model.num_languages == 100  # the v3 vocabulary


def test_decoding_options_are_the_protocol(scorer):
    o = scorer.options
    assert (o.language, o.task, o.temperature, o.beam_size, o.without_timestamps) == ("en", "transcribe", 0.0, None, True)


def test_scores_end_to_end_deterministic(scorer):
    items = [
        AudioItem("a", _tone(16000), 16000, text="Hello world.", language="en"),
        AudioItem("b", _tone(24000, 1), 24000, text="A second clip"),
    ]
    out = scorer.score(items)
    for r in out:
        assert set(r) == {METRIC, f"{METRIC}_errors", f"{METRIC}_ref_len"}
        assert math.isfinite(r[METRIC]) and r[METRIC] >= 0
    assert out[0][f"{METRIC}_ref_len"] == 2 and out[1][f"{METRIC}_ref_len"] == 3
    assert scorer.score(items) == out
    # batched == one at a time
    assert [scorer.score([it])[0] for it in items] == out
    # the transcript the score came from: its WER recomputed from the text
    hyp = scorer.transcribe([_tone(16000)])[0]
    assert WhisperWER.score_transcript("Hello world.", hyp) == out[0]


def test_wer_math_with_fixed_hypothesis():
    assert WhisperWER.score_transcript("The cat sat on the mat.", "the cat sat on a mat") == {
        METRIC: 1 / 6, f"{METRIC}_errors": 1.0, f"{METRIC}_ref_len": 6.0
    }
    assert WhisperWER.score_transcript("It's OK", "") == {METRIC: 1.0, f"{METRIC}_errors": 2.0, f"{METRIC}_ref_len": 2.0}


def test_bad_items_are_nan(scorer):
    out = scorer.score(
        [
            AudioItem("notext", _tone(8000), 16000),
            AudioItem("zh", _tone(8000), 16000, text="你好", language="zh"),
            AudioItem("punct", _tone(8000), 16000, text="..."),
            AudioItem("empty", np.zeros(0, np.float32), 16000, text="hi"),
            AudioItem("nan", np.full(800, np.nan, np.float32), 16000, text="hi"),
            AudioItem("ok", _tone(8000), 16000, text="hi there"),
        ]
    )
    for r in out[:5]:
        assert all(math.isnan(v) for v in r.values())
    assert math.isfinite(out[5][METRIC])
    assert scorer.score([]) == []


def test_checksum_error_and_default_official_digest(weights, tmp_path, monkeypatch):
    path, sha = weights
    with pytest.raises(ChecksumError) as ei:
        load_scorer("whisper_wer", weights_path=str(path), sha256="0" * 64)
    assert str(path) in str(ei.value) and sha in str(ei.value)
    # at the default location, a non-official file fails the default (official) checksum
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "large-v3.pt").write_bytes(path.read_bytes())
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    with pytest.raises(ChecksumError, match=LARGE_V3_SHA256):
        load_scorer("whisper_wer")
    s = load_scorer("whisper_wer", sha256=None, device="cpu")
    assert s.sha256 == sha


def test_rejects_non_whisper_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"weight": torch.zeros(2)}, p)
    with pytest.raises(ValueError, match="not an openai-whisper checkpoint"):
        load_scorer("whisper_wer", weights_path=str(p), sha256=None)


def test_long_clip_is_transcribed_long_form(scorer, monkeypatch):
    """A clip over 30 s goes whole (not cut to one window) through ``whisper.transcribe`` at temperature 0,
    and its score is the WER of that transcript."""
    x = np.concatenate([_tone(16000 * 31), _tone(16000, 2)])  # 32 s: more than one 30 s window
    calls = []
    real = scorer._w.transcribe

    def spy(model, audio, **kw):
        out = real(model, audio, **kw)
        calls.append((np.asarray(audio).copy(), kw, out["text"]))
        return out

    monkeypatch.setattr(scorer._w, "transcribe", spy)
    out = scorer.score([AudioItem("long", x, 16000, text="a long clip")])[0]
    assert len(calls) == 1
    audio, kw, text = calls[0]
    assert audio.shape == (32 * 16000,) and np.array_equal(audio, x)
    assert (kw["language"], kw["task"], kw["temperature"], kw["condition_on_previous_text"]) == \
        ("en", "transcribe", 0.0, False)
    assert out == WhisperWER.score_transcript("a long clip", text)
