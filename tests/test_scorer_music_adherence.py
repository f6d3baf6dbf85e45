"""Tempo/key adherence on real rendered music: a I-IV-V-I progression written with music21 in a known
key, rendered by fluidsynth (the demo corpus's renderer, General MIDI piano) at a known tempo; the
scorer must find high adherence for the caption that matches and low adherence for one that does not.
Parsing and the scoring rules are checked on their own."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers import music_adherence as M
from unimoe.common.audio import load_audio
from unimoe.common.music import KK_MAJOR, KK_MINOR

SR = 22_050


def render(tmp_path, key: str, bpm: float, bars: int = 6) -> np.ndarray:
    """Block chords on every beat (accented downbeats), a bass line and a scale melody."""
    music21 = pytest.importorskip("music21")
    from data import music_render as mr

    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth is not installed")
    tonic, mode = key.split()
    k = music21.key.Key(tonic, mode)
    prog = ["I", "IV", "V", "I"] if mode == "major" else ["i", "iv", "V", "i"]
    spb = 60.0 / bpm
    chords, bass, melody = [], [], []
    scale = [p.midi for p in k.getScale().getPitches(f"{tonic}4", f"{tonic}5")]
    for bar in range(bars):
        rn = music21.roman.RomanNumeral(prog[bar % 4], k)
        root = rn.root().pitchClass
        for beat in range(4):
            t = (bar * 4 + beat) * spb
            vel = 100 if beat == 0 else 72
            for p in rn.pitches:
                chords.append((t, t + 0.8 * spb, 60 + (p.pitchClass - 60) % 12, vel))
            bass.append((t, t + 0.9 * spb, 36 + root, vel))
            melody.append((t, t + 0.9 * spb, scale[(bar * 4 + beat) % len(scale)] + 12, 80))
    parts = [mr.Part("chords", 0, 0, chords), mr.Part("bass", 32, 1, bass), mr.Part("melody", 0, 2, melody)]
    midi = tmp_path / f"{tonic}{mode}{bpm:g}.mid"
    midi.write_bytes(mr.midi_bytes(parts, bpm, title=key))
    wav = tmp_path / f"{tonic}{mode}{bpm:g}.wav"
    mr.render_midi(midi, wav, sample_rate=SR, soundfont=mr.find_soundfont(None))
    y, sr = load_audio(wav)
    assert sr == SR
    return y


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("music_adherence")


# ---- parsing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,tempo,key",
    [
        ("Bach: Chorale (excerpt 0-10 s). Instruments: Piano. Tempo: 120 bpm. Key: G major.", 120.0, "G major"),
        ("A bright piece for piano in E-flat minor at about 96 BPM, with a busy texture.", 96.0, "Eb minor"),
        ("Slow ballad in F# major, 72 beats per minute", 72.0, "F# major"),
        ("Tempo: 84. Key: Bb minor", 84.0, "Bb minor"),
        ("in the key of C sharp minor", None, "C# minor"),
        ("Instruments: none. Tempo: 100 bpm. Key: None.", 100.0, None),
        ("a minor change in the arrangement", None, None),
        ("excerpt 0-10 s, 5 instruments", None, None),
    ],
)
def test_parse(text, tempo, key):
    assert M.parse_tempo(text) == tempo
    assert M.key_name(M.parse_key(text)) == key


def test_tempo_rule():
    assert M.tempo_score(120.0, 120.0) == 1.0
    assert M.tempo_score(124.7, 120.0) == 1.0 and M.tempo_score(115.4, 120.0) == 1.0  # within 4 %
    assert M.tempo_score(60.0, 120.0) == 1.0 and M.tempo_score(241.0, 120.0) == 1.0  # octave errors
    assert 0.3 < M.tempo_score(137.0, 120.0) < 0.5
    assert M.tempo_score(170.0, 120.0) < 0.05
    assert M.tempo_score(130.0, 120.0) > M.tempo_score(140.0, 120.0) > M.tempo_score(160.0, 120.0)
    assert math.isnan(M.tempo_score(0.0, 120.0))


@pytest.mark.parametrize(
    "est,req,score",
    [
        ("G major", "G major", 1.0),
        ("D major", "G major", 0.5),  # fifth above
        ("C major", "G major", 0.5),  # fifth below
        ("E minor", "G major", 0.3),  # relative
        ("G major", "E minor", 0.3),
        ("G minor", "G major", 0.2),  # parallel
        ("C# major", "G major", 0.0),
        ("D minor", "G major", 0.0),
    ],
)
def test_key_rule(est, req, score):
    assert M.key_score(M.parse_key(est), M.parse_key(req)) == score


def test_key_profile_estimate():
    # the major profile itself, rotated to A, is A major
    assert M.estimate_key(np.roll(KK_MAJOR, 9))[0] == (9, "major")
    assert M.estimate_key(np.roll(KK_MINOR, 2))[0] == (2, "minor")
    assert M.estimate_key(np.ones(12))[0] is None


# ---- rendered music ------------------------------------------------------------------------------------


def test_rendered_music_adheres_to_the_right_caption(scorer, tmp_path):
    assert "music_adherence" in available_scorers()
    g_major = render(tmp_path, "G major", 120)
    d_minor = render(tmp_path, "D minor", 90)  # power chroma once heard this as D major
    items = [
        AudioItem("g-right", g_major, SR, text="Test: I-IV-V-I. Instruments: piano. Tempo: 120 bpm. Key: G major."),
        AudioItem("g-wrong", g_major, SR, text="Tempo: 85 bpm. Key: C# major."),
        AudioItem("d-right", d_minor, SR, text="A piece in D minor at about 90 BPM."),
        AudioItem("d-wrong", d_minor, SR, text="A piece in Ab major at about 126 BPM."),
    ]
    rows = scorer.score(items)
    est = scorer.last_estimates
    assert rows[0] == {"tempo_adherence": 1.0, "key_adherence": 1.0}, est["g-right"]
    assert rows[2] == {"tempo_adherence": 1.0, "key_adherence": 1.0}, est["d-right"]
    assert rows[1]["tempo_adherence"] < 0.2 and rows[1]["key_adherence"] == 0.0
    assert rows[3]["tempo_adherence"] < 0.2 and rows[3]["key_adherence"] == 0.0
    assert est["g-right"]["key"] == "G major" and est["g-right"]["requested_tempo_bpm"] == 120.0


def test_missing_requests_and_bad_audio_are_nan_with_reasons(scorer):
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SR * 2)).astype(np.float32)
    items = [
        AudioItem("no-text", noise, SR, text=None),
        AudioItem("tempo-only", noise, SR, text="Tempo: 100 bpm. Key: None."),
        AudioItem("silent", np.zeros(SR * 2, np.float32), SR, text="Tempo: 100 bpm. Key: C major."),
        AudioItem("empty", np.zeros(0, np.float32), SR, text="Tempo: 100 bpm. Key: C major."),
        AudioItem("nan", np.full(SR, np.nan, np.float32), SR, text="Key: C major."),
    ]
    rows = scorer.score(items)
    assert math.isnan(rows[0]["tempo_adherence"]) and math.isnan(rows[0]["key_adherence"])
    assert math.isnan(rows[1]["key_adherence"]) and 0.0 <= rows[1]["tempo_adherence"] <= 1.0
    assert all(math.isnan(v) for r in rows[2:] for v in r.values())
    f = scorer.last_failures
    assert f["no-text"] == {"tempo_adherence": "caption names no tempo", "key_adherence": "caption names no key"}
    assert set(f["tempo-only"]) == {"key_adherence"}
    assert "silent" in f["silent"]["tempo_adherence"] and "empty" in f["empty"]["key_adherence"]
    assert "NaN" in f["nan"]["key_adherence"] and f["nan"]["tempo_adherence"] == "caption names no tempo"


def test_version_and_info(scorer):
    assert scorer.metrics == {"tempo_adherence": "higher", "key_adherence": "higher"}
    assert scorer.version.startswith("music-adherence-v1+librosa-")
    assert scorer.info()["key_weights"] == {"same": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2, "other": 0.0}
