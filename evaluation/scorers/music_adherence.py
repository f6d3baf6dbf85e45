"""Tempo and key adherence (demo scorer): does the music play at the tempo and in the key its caption asks?

A *demo* metric: no learned weights, only signal processing (librosa), so it runs
offline; it never stands in for a paper metric. Per item:

**Request** (parsed from ``AudioItem.text``): a tempo such as "Tempo: 120 bpm", "at about 96 BPM",
"120 beats per minute"; a key such as "Key: G major", "in E-flat minor", "in F# major". A caption
naming no tempo (or no key, or "Key: None") gives NaN for that metric, with the reason logged and
kept in ``last_failures``.

**Estimates** (mono, resampled to 22.05 kHz, one 2048-point STFT with a 256 hop):

- tempo: librosa's beat tracker (``unimoe.common.music.beat_track``) on the onset strength of a 128-band
  log-mel spectrogram;
- key: mean magnitude ``chroma_stft`` over non-silent frames (tuning fixed at A440) correlated with the 24 rotated
  Krumhansl–Kessler probe-tone profiles (Krumhansl–Schmuckler, ``unimoe.common.music.estimate_key``); the
  best correlation wins.

(``data.captioning.offline`` measures the same two quantities for captions with the same estimators.)

**Scores** (both in [0, 1], higher is better):

- ``tempo_adherence``: with ``r = estimated / requested`` and ``d = min over f in {1/2, 1, 2} of
  |ln(r / f)|``: 1 if ``d <= ln(1.04)`` (within ±4 %, the MIREX tempo tolerance), else
  ``exp(-(d - ln 1.04) / 0.1)`` (about 0.4 at 14 % off, 0.1 at 30 % off). Half and double tempo count
  as a match (MIREX "Acc2"-style, without the triple factors): beat trackers cannot tell the
  metrical level reliably, so an octave error is not held against the music.
- ``key_adherence``: MIREX key weighting (``mir_eval.key.weighted_score``): same key 1, a perfect
  fifth apart with the same mode 0.5 (either direction: the larger of both argument orders),
  relative major/minor 0.3, parallel major/minor 0.2, anything else 0.

Silent, empty, too-short or non-finite audio gives NaN for both, with the reason.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import re
from typing import Any, ClassVar

import numpy as np

from evaluation.scorers.base import MUSIC, AudioItem, Scorer, register
from unimoe.common.audio import resample, to_mono
from unimoe.common.music import beat_track, estimate_key, key_name, onset_strength

log = logging.getLogger(__name__)

ANALYSIS_SR = 22_050
N_FFT = 2048
HOP = 256
SILENCE_DBFS = -60.0
TEMPO_TOLERANCE = 0.04
TEMPO_DECAY = 0.1  # natural-log units of tempo ratio per e-fold beyond the tolerance
TEMPO_FACTORS = (0.5, 1.0, 2.0)
# mir_eval.key.weighted_score's table (key_score calls it; reported by info())
KEY_WEIGHTS = {"same": 1.0, "fifth": 0.5, "relative": 0.3, "parallel": 0.2, "other": 0.0}
VERSION = "music-adherence-v1"

_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}

_NUM = r"(\d{2,3}(?:\.\d+)?)"
_TEMPO_RES = (
    re.compile(rf"\btempo\b\s*(?:[:=]|of|is)?\s*(?:about|around|approximately|approx\.?|roughly|~)?\s*{_NUM}\s*"
               r"(?:bpm\b|beats per minute\b)?", re.I),
    re.compile(rf"{_NUM}\s*(?:bpm\b|beats per minute\b)", re.I),
)
_ACC = r"(#|♯|b|♭|-?\s?sharp|-?\s?flat)?"
_MODE = r"(major|minor|maj|min)\b"
_LETTER = r"((?-i:[A-G]))"  # capital only: "a minor change" is not A minor
_KEY_RES = (
    re.compile(rf"\bkey\b\s*(?:[:=]|of|is)?\s*{_LETTER}{_ACC}\s*{_MODE}", re.I),
    re.compile(rf"\bin\s+(?:the\s+key\s+of\s+)?{_LETTER}{_ACC}\s*{_MODE}", re.I),
    re.compile(rf"\b{_LETTER}{_ACC}\s*{_MODE}", re.I),
)


# ---- parsing -------------------------------------------------------------------------------------------


def parse_tempo(text: str | None) -> float | None:
    """The requested tempo in BPM, or None."""
    for rx in _TEMPO_RES:
        for m in rx.finditer(text or ""):
            bpm = float(m.group(1))
            if 20.0 <= bpm <= 400.0:
                return bpm
    return None


def parse_key(text: str | None) -> tuple[int, str] | None:
    """The requested key as ``(tonic pitch class, "major" | "minor")``, or None."""
    for rx in _KEY_RES:
        m = rx.search(text or "")
        if m:
            letter, acc, mode = m.group(1), (m.group(2) or "").lower().replace(" ", ""), m.group(3).lower()
            pc = _LETTER_PC[letter]
            if acc in ("#", "♯", "sharp", "-sharp"):
                pc += 1
            elif acc in ("b", "♭", "flat", "-flat"):
                pc -= 1
            return pc % 12, "major" if mode.startswith("maj") else "minor"
    return None


# ---- scoring rules -------------------------------------------------------------------------------------


def tempo_score(estimated: float, requested: float) -> float:
    if not (estimated > 0 and requested > 0 and math.isfinite(estimated) and math.isfinite(requested)):
        return math.nan
    d = min(abs(math.log(estimated / (requested * f))) for f in TEMPO_FACTORS)
    tol = math.log1p(TEMPO_TOLERANCE)
    return 1.0 if d <= tol + 1e-12 else math.exp(-(d - tol) / TEMPO_DECAY)


def key_score(estimated: tuple[int, str], requested: tuple[int, str]) -> float:
    """MIREX key weight (``mir_eval.key.weighted_score``), a fifth counted in either direction."""
    import mir_eval.key  # ~1 s import (mir_eval loads all its submodules), so only when scoring

    est, req = key_name(estimated), key_name(requested)
    # weighted_score gives 0.5 only for an estimate a fifth *above*; its other weights are symmetric.
    return max(mir_eval.key.weighted_score(req, est), mir_eval.key.weighted_score(est, req))


# ---- estimation ----------------------------------------------------------------------------------------


def analyse(wav: np.ndarray, sample_rate: int) -> dict[str, Any]:
    """``{"tempo_bpm", "beats", "key", "key_confidence"}`` of a clip; raises ValueError on unusable audio."""
    import librosa

    y = to_mono(wav)
    if y.size == 0:
        raise ValueError("empty audio")
    if not np.isfinite(y).all():
        raise ValueError("NaN or infinite samples")
    if sample_rate != ANALYSIS_SR:
        y = resample(y, int(sample_rate), ANALYSIS_SR)
    if y.shape[-1] < 2 * N_FFT:
        raise ValueError(f"clip too short ({y.shape[-1] / ANALYSIS_SR:.3f} s)")
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    if 20 * math.log10(max(rms, 1e-10)) < SILENCE_DBFS:
        raise ValueError(f"silent clip (RMS below {SILENCE_DBFS:g} dBFS)")
    power = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP, center=True)) ** 2
    oenv = onset_strength(power, ANALYSIS_SR, HOP)
    tempo, beats = beat_track(oenv, ANALYSIS_SR, HOP)  # librosa's tracker, without its numba kernels
    # Chroma of the *magnitude* spectrum, plain mean over non-silent frames: with power chroma or
    # energy-weighted frames a loud tonic's 5th partial (its major third) turned minor keys major on
    # rendered piano (D minor -> D major).
    chroma = librosa.feature.chroma_stft(S=np.sqrt(power), sr=ANALYSIS_SR, n_fft=N_FFT, tuning=0.0)
    energy = power.sum(axis=0)
    active = energy > energy.max() * 1e-6
    key, conf = estimate_key(chroma[:, active].mean(axis=1) if active.any() else chroma.mean(axis=1))
    return {
        "tempo_bpm": float(np.atleast_1d(tempo)[0]),
        "beats": int(len(beats)),
        "key": key,
        "key_confidence": conf,
    }


class MusicAdherence(Scorer):
    """Tempo and key adherence of music to its caption (demo metrics)."""

    name = "music_adherence"
    tasks = MUSIC
    needs_text = True
    metrics: ClassVar[dict[str, str]] = {"tempo_adherence": "higher", "key_adherence": "higher"}

    def __init__(self) -> None:
        self.last_failures: dict[str, dict[str, str]] = {}
        self.last_estimates: dict[str, dict[str, Any]] = {}

    @property
    def version(self) -> str:
        return f"{VERSION}+librosa-{importlib.metadata.version('librosa')}"

    def protocol_info(self) -> dict[str, Any]:
        return dict(
            analysis_sample_rate=ANALYSIS_SR,
            tempo_tolerance=TEMPO_TOLERANCE,
            tempo_factors=list(TEMPO_FACTORS),
            tempo_decay=TEMPO_DECAY,
            key_weights=dict(KEY_WEIGHTS),
            protocol="caption tempo/key vs librosa beat_track tempo and Krumhansl-Schmuckler key; "
            "tempo 1 within +-4% (x1/2, x1, x2), exp decay beyond; key MIREX weights",
        )

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        self.last_failures, self.last_estimates = {}, {}
        return [self._score_one(it) for it in items]

    def _score_one(self, item: AudioItem) -> dict[str, float]:
        row = {"tempo_adherence": math.nan, "key_adherence": math.nan}
        why: dict[str, str] = {}
        req_tempo, req_key = parse_tempo(item.text), parse_key(item.text)
        if req_tempo is None:
            why["tempo_adherence"] = "caption names no tempo"
        if req_key is None:
            why["key_adherence"] = "caption names no key"
        if req_tempo is not None or req_key is not None:
            try:
                est = analyse(item.wav, int(item.sample_rate))
            except Exception as e:  # one bad clip never stops the batch
                reason = f"{type(e).__name__}: {e}"
                why.update({m: reason for m in row if m not in why})
            else:
                self.last_estimates[str(item.id)] = {**est, "key": key_name(est["key"]),
                                                     "requested_tempo_bpm": req_tempo,
                                                     "requested_key": key_name(req_key)}
                if req_tempo is not None:
                    if est["beats"] < 2:
                        why["tempo_adherence"] = "no beats detected"
                    else:
                        row["tempo_adherence"] = tempo_score(est["tempo_bpm"], req_tempo)
                if req_key is not None:
                    if est["key"] is None:
                        why["key_adherence"] = "no pitch content for a key estimate"
                    else:
                        row["key_adherence"] = key_score(est["key"], req_key)
        if why:
            self.last_failures[str(item.id)] = why
            log.info("%s: item %r: NaN for %s", self.name, item.id, why)
            if all(math.isnan(v) for v in row.values()):
                self.note_failure(item.id, "; ".join(f"{m}: {r}" for m, r in sorted(why.items())))
        return row


@register("music_adherence", MusicAdherence)
def create() -> MusicAdherence:
    """The tempo/key adherence scorer (no weights)."""
    return MusicAdherence()
