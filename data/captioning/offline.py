"""Offline captions from audio analysis (no network): tempo, key, loudness, brightness, texture.

:func:`analyse` measures a mono span (resampled to 22.05 kHz; one STFT shared by every feature):

- tempo: librosa's beat tracker (``unimoe.common.music.beat_track``) on the onset-strength envelope (BPM,
  beat count); no tempo is named when the onsets on the beats are not clearly stronger than elsewhere
  (noise, drones);
- key: the mean chroma correlated with the 24 rotated Krumhansl–Kessler profiles
  (``unimoe.common.music.estimate_key``);
  the best correlation is reported as ``key_confidence`` and a weak one names no key;
- loudness: integrated LUFS (ITU-R BS.1770 via ``pyloudnorm`` when importable) and RMS dBFS;
- brightness: the energy-weighted mean spectral centroid (Hz);
- texture: detected onsets per second.

:func:`describe` turns the numbers into a sentence such as "A bright, moderately loud piece for
piano and violin in D minor at about 96 BPM, with a busy texture." Instruments come only from the
request's hints (MIDI metadata); without them the caption says nothing about instrumentation
rather than guessing. A known tempo or key from the hints is preferred over the estimate (both are
kept in the features). Everything is deterministic.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from data.captioning.base import Captioner, CaptionRequest
from unimoe.common.audio import resample, to_mono
from unimoe.common.music import beat_track, estimate_key, key_name, onset_detect, onset_strength

ANALYSIS_SR = 22050
N_FFT = 2048
HOP = 256  # 11.6 ms: halves the tempo quantisation step of a 512 hop (117.5/123 BPM around 120)
SILENCE_DBFS = -60.0  # RMS below this: the span is treated as silence
KEY_MIN_CONFIDENCE = 0.5  # correlation with the best key profile needed to name a key
MIN_BEATS = 4
MIN_PULSE = 1.8  # onset strength on the beats / mean onset strength; noise scores ~1.3, music > 2

# (upper bound, word): the first bound the value is below wins.
BRIGHTNESS_WORDS = ((1200.0, "dark"), (2200.0, "warm"), (math.inf, "bright"))  # centroid, Hz
LOUDNESS_WORDS = ((-34.0, "very quiet"), (-24.0, "quiet"), (-14.0, "moderately loud"), (math.inf, "loud"))
TEXTURE_WORDS = ((1.5, "sparse"), (4.5, "moderately dense"), (math.inf, "busy"))  # onsets per second

ANALYSIS_VERSION = "offline-analysis-v1"


def _word(value: float, table: tuple[tuple[float, str], ...]) -> str:
    for bound, word in table:
        if value < bound:
            return word
    return table[-1][1]


def _lufs(y: np.ndarray, sr: int) -> float | None:
    """Integrated loudness (LUFS) with pyloudnorm, or None (not installed, too short, silent)."""
    if y.shape[-1] < int(0.4 * sr) + 1:
        return None
    try:
        import pyloudnorm
    except ImportError:  # pragma: no cover - optional
        return None
    try:
        v = float(pyloudnorm.Meter(sr).integrated_loudness(y.astype(np.float64)))
    except (ValueError, ZeroDivisionError):  # pragma: no cover
        return None
    return v if math.isfinite(v) else None


def analyse(wav: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """Numeric features of a span (1-D mono or ``[channels, samples]``); see the module docstring."""
    import librosa  # lazy: heavy import

    y = to_mono(wav)
    if sample_rate != ANALYSIS_SR:
        y = resample(y, sample_rate, ANALYSIS_SR)
    sr = ANALYSIS_SR
    dur = y.shape[-1] / sr
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if y.size else 0.0
    rms_dbfs = 20 * math.log10(max(rms, 1e-10))
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    feats: dict[str, Any] = {
        "duration_s": round(dur, 3),
        "analysis_sample_rate": sr,
        "rms_dbfs": round(rms_dbfs, 2),
        "peak_dbfs": round(20 * math.log10(max(peak, 1e-10)), 2),
        "silent": rms_dbfs < SILENCE_DBFS,
    }
    lufs = None if feats["silent"] else _lufs(y, sr)
    feats["loudness_lufs"] = None if lufs is None else round(lufs, 2)
    feats["loudness_measure"] = "lufs" if lufs is not None else "rms_dbfs"
    feats["loudness"] = feats["loudness_lufs"] if lufs is not None else feats["rms_dbfs"]
    if feats["silent"] or y.shape[-1] < N_FFT:
        feats.update(tempo_bpm=None, beat_count=0, key=None, key_confidence=0.0, spectral_centroid_hz=None,
                     onset_rate_per_s=0.0)
        return feats

    mag = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, center=True))
    power = mag**2
    oenv = onset_strength(power, sr, HOP)
    tempo, beats = beat_track(oenv, sr, HOP)  # librosa's tracker, without its crash-prone numba kernels
    tempo = float(np.atleast_1d(tempo)[0])
    pulse = float(oenv[beats].mean() / max(float(oenv.mean()), 1e-9)) if len(beats) else 0.0
    onsets = onset_detect(oenv, sr, HOP)

    # Key and brightness are averages over the span: every other frame is plenty (and half the work).
    mag, power = mag[:, ::2], power[:, ::2]
    chroma = librosa.feature.chroma_stft(S=power, sr=sr, n_fft=N_FFT, tuning=0.0)
    frame_energy = power.sum(axis=0)
    w = frame_energy / frame_energy.sum() if frame_energy.sum() > 0 else None
    key, key_r = estimate_key(np.average(chroma, axis=1, weights=w))
    key = key_name(key)

    cent = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=N_FFT)[0]
    centroid = float(np.average(cent, weights=w)) if w is not None else float(np.mean(cent))

    feats.update(
        tempo_bpm=round(tempo, 2) if len(beats) >= MIN_BEATS and tempo > 0 and pulse >= MIN_PULSE else None,
        tempo_estimate_bpm=round(tempo, 2),
        beat_count=int(len(beats)),
        pulse_strength=round(pulse, 3),
        key=key if key_r >= KEY_MIN_CONFIDENCE else None,
        key_estimate=key,
        key_confidence=round(key_r, 3),
        spectral_centroid_hz=round(centroid, 1),
        onset_rate_per_s=round(len(onsets) / dur, 3) if dur > 0 else 0.0,
    )
    return feats


# --------------------------------------------------------------------------------------------
# words


def _instrument_name(name: str) -> str:
    """GM names as words: ``"Electric Piano 1"`` -> ``"electric piano"``, ``"Violin"`` -> ``"violin"``."""
    n = re.sub(r"\s+", " ", name.strip())
    n = re.sub(r"\s+\d+(?=$|\s*\()", "", n)  # GM numbering: "Electric Piano 1", "Lead 1 (square)"
    return n.lower() if n[:1].isupper() and not n.isupper() else n


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def natural_key(key: str) -> str:
    """``"Eb major"`` -> ``"E-flat major"``, ``"F# minor"`` -> ``"F-sharp minor"`` (other forms unchanged)."""
    m = re.fullmatch(r"\s*([A-Ga-g])\s*(#|♯|b|♭|-?sharp|-?flat)?\s*(major|minor|maj|min)?\s*", key)
    if not m:
        return key.strip()
    letter, acc, mode = m.group(1).upper(), m.group(2) or "", m.group(3)
    if acc in ("#", "♯") or "sharp" in acc:
        acc_word = "-sharp"
    elif acc in ("b", "♭") or "flat" in acc:
        acc_word = "-flat"
    else:
        acc_word = ""
    mode_word = {"maj": "major", "min": "minor"}.get(mode or "", mode or "")
    return f"{letter}{acc_word}" + (f" {mode_word}" if mode_word else "")


def describe(features: dict[str, Any], hints: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The caption for ``features`` (from :func:`analyse`) and ``hints``; also what it used and from where."""
    hints = hints or {}
    used: dict[str, Any] = {}
    instruments: list[str] = []
    for x in hints.get("instruments") or []:
        if isinstance(x, str) and x.strip():
            n = _instrument_name(x)
            if n and n not in instruments:
                instruments.append(n)
    if instruments:
        used["instruments"] = instruments
    inst_phrase = f" for {_join(instruments)}" if instruments else ""
    if features.get("silent"):
        used.update(tempo_bpm=None, key=None, source={"instruments": "hints"} if instruments else {})
        return f"A near-silent recording{inst_phrase}, with no clear musical content.", used

    source: dict[str, str] = {}
    tempo = hints.get("tempo_bpm")
    if isinstance(tempo, (int, float)) and not isinstance(tempo, bool) and math.isfinite(tempo) and tempo > 0:
        source["tempo"] = "hints"
    else:
        tempo = features.get("tempo_bpm")
        source["tempo"] = "analysis" if tempo else "none"
    key = hints.get("key") if isinstance(hints.get("key"), str) and hints.get("key").strip() else None
    if key:
        source["key"] = "hints"
    else:
        key = features.get("key")
        source["key"] = "analysis" if key else "none"
    if instruments:
        source["instruments"] = "hints"

    adjectives = []
    if features.get("spectral_centroid_hz") is not None:
        adjectives.append(_word(float(features["spectral_centroid_hz"]), BRIGHTNESS_WORDS))
    if features.get("loudness") is not None:
        adjectives.append(_word(float(features["loudness"]), LOUDNESS_WORDS))
    head = (", ".join(adjectives) + " piece") if adjectives else "piece"
    article = "An" if head[:1].lower() in "aeiou" else "A"
    parts = [f"{article} {head}{inst_phrase}"]
    if key:
        parts.append(f" in {natural_key(key)}")
    if tempo:
        parts.append(f" at about {int(round(float(tempo)))} BPM")
    sentence = "".join(parts)
    rate = features.get("onset_rate_per_s")
    if rate is not None:
        sentence += f", with a {_word(float(rate), TEXTURE_WORDS)} texture"
    used.update(tempo_bpm=float(tempo) if tempo else None, key=key, source=source)
    return sentence + ".", used


class OfflineCaptioner(Captioner):
    """Captions from :func:`analyse` + :func:`describe`; ``cache``: an optional ``CaptionCache``."""

    name = "offline"
    model = ANALYSIS_VERSION

    def cache_prompt(self, request: CaptionRequest) -> str:
        # The caption depends on the audio and on the hints.
        return json.dumps({"hints": request.hints or {}}, sort_keys=True, ensure_ascii=False, default=str)

    def _generate(self, request: CaptionRequest, wav: np.ndarray, sr: int) -> tuple[str, dict[str, Any]]:
        feats = analyse(wav, sr)
        caption, used = describe(feats, request.hints)
        return caption, {**feats, "caption_used": used}
