"""PocketSphinx demo WER: the package's bundled en-us model on real (festival) speech."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")

from data.speech_synth import BUILTIN_VOICES, check_voice, synthesize
from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers.pocketsphinx_wer import METRIC, PocketSphinxWER

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def speech():
    voice = BUILTIN_VOICES["kal"]
    reason = check_voice(voice)
    if reason:
        pytest.skip(reason)
    return synthesize(SENTENCE, voice)


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("pocketsphinx_wer")


def test_registered_metrics_and_version(scorer):
    from importlib.metadata import version

    assert "pocketsphinx_wer" in available_scorers()
    assert isinstance(scorer, PocketSphinxWER)
    assert scorer.metrics == {METRIC: "lower"}
    assert "wer" not in scorer.metrics  # never impersonates the paper's Whisper WER
    assert scorer.version.startswith(f"pocketsphinx {version('pocketsphinx')} (en-us model sha256:")
    assert scorer.version.endswith(", clip-reset)")
    assert scorer.info()["model_sha256"].startswith(scorer.version.split("sha256:")[1][:12])


def test_clear_festival_sentence_is_recognised(scorer, speech):
    wav, sr = speech
    out = scorer.score([AudioItem("s", wav, sr, text=SENTENCE, language="en")])[0]
    assert out[f"{METRIC}_ref_len"] == 13
    assert out[METRIC] < 0.35  # typically 1 error ("jumped") of 13 words
    assert out[METRIC] == pytest.approx(out[f"{METRIC}_errors"] / 13)
    # deterministic, and independent of the input rate / channel layout
    stereo = np.stack([wav, wav])
    again = scorer.score([AudioItem("s2", stereo, sr, text=SENTENCE)])[0]
    assert again[METRIC] == out[METRIC]


def test_transcript_does_not_depend_on_what_was_decoded_before():
    """The decoder's front end (noise estimate, cepstral mean) is reset per clip: a clip decoded by a
    fresh scorer, again right after, and after loud noise gives one transcript. Without the reset this
    espeak-ng clip's second decode differed from its first ("recently off the ball ..." then "the salty
    off the ball ...")."""
    voice = BUILTIN_VOICES["gb-m3"]
    reason = check_voice(voice)
    if reason:
        pytest.skip(reason)
    wav, sr = synthesize("We shall be off to the ball on Saturday, said the single mother.", voice)
    first = PocketSphinxWER().transcribe(wav, sr)
    scorer = PocketSphinxWER()
    assert [scorer.transcribe(wav, sr) for _ in range(3)] == [first] * 3
    noise = np.random.default_rng(0).standard_normal(6 * sr).astype(np.float32) * 0.5
    scorer.transcribe(noise, sr)
    assert scorer.transcribe(wav, sr) == first and first.strip()


def test_wrong_transcript_scores_worse(scorer, speech):
    wav, sr = speech
    right, wrong = scorer.score(
        [
            AudioItem("a", wav, sr, text=SENTENCE),
            AudioItem("b", wav, sr, text="Colourless green ideas sleep furiously in winter."),
        ]
    )
    assert wrong[METRIC] > 0.8 > right[METRIC]


def test_score_transcript_math():
    s = PocketSphinxWER.score_transcript("The cat, the hat!", "the bat the hat and")
    assert s == {METRIC: 2 / 4, f"{METRIC}_errors": 2.0, f"{METRIC}_ref_len": 4.0}


def test_bad_items_are_nan_others_still_scored(scorer, speech):
    wav, sr = speech
    out = scorer.score(
        [
            AudioItem("notext", wav, sr),
            AudioItem("zh", wav, sr, text="你好", language="zh"),
            AudioItem("empty", np.zeros(0, np.float32), sr, text=SENTENCE),
            AudioItem("nan", np.full(1000, np.nan, np.float32), sr, text=SENTENCE),
            AudioItem("punct", wav, sr, text="?!"),
            AudioItem("ok", wav, sr, text=SENTENCE),
        ]
    )
    for r in out[:5]:
        assert all(math.isnan(v) for v in r.values())
    assert math.isfinite(out[5][METRIC])
    assert scorer.score([]) == []
