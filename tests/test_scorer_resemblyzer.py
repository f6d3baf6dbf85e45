"""Resemblyzer demo speaker similarity: the package's bundled pretrained.pt on real synthetic voices."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

pytest.importorskip("webrtcvad")
pytest.importorskip("librosa")

from data.speech_synth import BUILTIN_VOICES, check_voice, synthesize
from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers.resemblyzer_sim import METRIC, PROTOCOL, ResemblyzerSim
from unimoe.common.audio import resample

A = "The quick brown fox jumps over the lazy dog near the river bank."
B = "Please call Stella and ask her to bring these things with her from the store."


def _say(text: str, voice: str):
    v = BUILTIN_VOICES[voice]
    reason = check_voice(v)
    if reason:
        pytest.skip(reason)
    return synthesize(text, v)


@pytest.fixture(scope="module")
def clips():
    return {
        "kal_a": _say(A, "kal"),
        "kal_b": _say(B, "kal"),
        "f2_b": _say(B, "us-f2"),
    }


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("resemblyzer_sim")


def test_registered_metrics_and_version(scorer):
    from importlib.metadata import version

    assert "resemblyzer_sim" in available_scorers()
    assert isinstance(scorer, ResemblyzerSim)
    assert scorer.metrics == {METRIC: "higher"}
    assert "sim" not in scorer.metrics
    assert scorer.version == (f"resemblyzer {version('Resemblyzer')} (pretrained.pt sha256:{scorer.sha256[:12]}; "
                              f"protocol {PROTOCOL})")


def test_same_speaker_scores_higher_than_other_voice(scorer, clips):
    (wa, sa), (wb, sb), (wf, sf) = clips["kal_a"], clips["kal_b"], clips["f2_b"]
    same, other = scorer.score(
        [
            AudioItem("same", wa, sa, reference=wb, reference_sample_rate=sb),
            AudioItem("other", wa, sa, reference=wf, reference_sample_rate=sf),
        ]
    )
    assert same[METRIC] > other[METRIC] + 0.05
    assert 0.0 < same[METRIC] <= 1.0 + 1e-6
    self_sim = scorer.score([AudioItem("self", wa, sa, reference=wa, reference_sample_rate=sa)])[0][METRIC]
    assert self_sim == pytest.approx(1.0, abs=1e-5)


def test_matches_package_encoder_and_cosine(scorer, clips):
    """Our weights_only loader gives the package's own VoiceEncoder embeddings; the score is their cosine."""
    from resemblyzer import VoiceEncoder, preprocess_wav

    (wa, sa), (wf, sf) = clips["kal_a"], clips["f2_b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pkg = VoiceEncoder(device="cpu", verbose=False)
    ea = pkg.embed_utterance(preprocess_wav(resample(wa, sa, 16000).astype(np.float64)).astype(np.float32))
    ef = pkg.embed_utterance(preprocess_wav(resample(wf, sf, 16000).astype(np.float64)).astype(np.float32))
    np.testing.assert_allclose(scorer.embed(wa, sa), ea, atol=1e-6)
    expect = float(ea @ ef / (np.linalg.norm(ea) * np.linalg.norm(ef)))
    got = scorer.score([AudioItem("x", wa, sa, reference=wf, reference_sample_rate=sf)])[0][METRIC]
    assert got == pytest.approx(expect, abs=1e-6)


def test_bad_items_are_nan(scorer, clips):
    wa, sa = clips["kal_a"]
    out = scorer.score(
        [
            AudioItem("noref", wa, sa),
            AudioItem("silent", np.zeros(16000, np.float32), 16000, reference=wa, reference_sample_rate=sa),
            AudioItem("nan", np.full(8000, np.nan, np.float32), 16000, reference=wa, reference_sample_rate=sa),
            AudioItem("empty", np.zeros(0, np.float32), 16000, reference=wa, reference_sample_rate=sa),
            AudioItem("ok", wa, sa, reference=wa, reference_sample_rate=sa),
        ]
    )
    assert all(math.isnan(r[METRIC]) for r in out[:4])
    assert math.isfinite(out[4][METRIC])
    assert scorer.score([]) == []


def test_demo_codec_audio_without_vad_voice_is_scored_not_nan(scorer, clips):
    """The old demo benchmark's case: its generations and codec resyntheses were decoded by a
    random-init DAC (today the tiny-random preset's), noise-like audio in which the package's VAD finds no voice, so ``preprocess_wav``
    drops every sample. Protocol 1 raised there (SIM NaN on every demo item); now such a clip is
    embedded whole and scored against the prompt, and it scores below a real same-speaker clip."""
    from resemblyzer import preprocess_wav

    from unimoe.codec import AudioCodec
    from unimoe.config import CodecConfig

    (wa, sa), (wb, sb) = clips["kal_a"], clips["kal_b"]
    # the tiny-random preset's random-init DAC (what the offline demo's benchmark once decoded with)
    codec = AudioCodec.from_config(CodecConfig(random_init=True, encoder_dim=8, decoder_dim=32, codebook_dim=8), 4)
    assert codec.is_random_init
    resynth = codec.decode([codec.encode([wa], sa)[0]])[0]
    x = resample(resynth, codec.sample_rate, 16000).astype(np.float64)
    assert np.sqrt(np.mean(x ** 2)) > 1e-3  # audible, not silence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert preprocess_wav(x).size == 0  # the VAD keeps nothing of it: the old protocol's failure
    e = scorer.embed(resynth, codec.sample_rate)
    assert e.shape == (256,) and np.all(np.isfinite(e)) and abs(np.linalg.norm(e) - 1.0) < 1e-4
    scorer.clear_failures()
    noise, real = scorer.score([
        AudioItem("resynth", resynth, codec.sample_rate, reference=wb, reference_sample_rate=sb),
        AudioItem("real", wa, sa, reference=wb, reference_sample_rate=sb),
    ])
    assert math.isfinite(noise[METRIC]) and 0.0 <= noise[METRIC] <= 1.0 + 1e-6
    assert noise[METRIC] < real[METRIC]
    assert scorer.item_errors == {}


def test_failures_carry_their_reason(scorer, clips):
    wa, sa = clips["kal_a"]
    scorer.clear_failures()
    scorer.score([AudioItem("noref", wa, sa),
                  AudioItem("silent", np.zeros(16000, np.float32), 16000, reference=wa, reference_sample_rate=sa)])
    assert set(scorer.item_errors) == {"noref", "silent"}
    assert "no prompt audio" in scorer.item_errors["noref"] and "silent audio" in scorer.item_errors["silent"]
