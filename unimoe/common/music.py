"""Tempo, beats, onsets and key of music, in numpy: what the offline captioner (data) and the
music-adherence scorer (evaluation) both measure.

Beat tracking is Ellis' dynamic program, librosa 0.11's ``beat_track`` without its numba kernels:
librosa compiles these kernels as cached numba gufuncs, and with numba 0.68 processes running them
side by side have crashed with SIGSEGV (a NULL kernel pointer; see numba issue 10128 on its gufunc
cache). The tempo is librosa's own estimate (``librosa.feature.tempo``, as ``beat_track`` computes
it); the beat path is a line-by-line port of ``librosa.beat.__beat_tracker`` (local score, DP, last
beat, backtrack, trim), checked against librosa in tests/test_beat.py.

The key is Krumhansl–Schmuckler: a 12-bin pitch-class profile (chroma, or note durations) correlated
with the 24 rotated Krumhansl–Kessler (1982) probe-tone profiles; the best correlation wins.
"""

from __future__ import annotations

import numpy as np


def _local_score(onset: np.ndarray, fpb: float) -> np.ndarray:
    # a Gaussian window of +-fpb frames (width fpb/32), correlated with the onsets; k runs over the
    # same range as librosa's kernel (which leaves out the window's last overlap term at each i)
    n = len(onset)
    window = np.exp(-0.5 * (np.arange(-fpb, fpb + 1) * 32.0 / fpb) ** 2)
    k_len = len(window)
    half = k_len // 2
    out = np.zeros(n, dtype=onset.dtype)
    for i in range(n):
        ks = np.arange(max(0, i + half - n + 1), min(i + half, k_len))
        if len(ks):
            out[i] = np.dot(window[ks], onset[i + half - ks])
    return out


def _dp(localscore: np.ndarray, fpb: float, tightness: float) -> tuple[np.ndarray, np.ndarray]:
    n = len(localscore)
    backlink = np.full(n, -1, dtype=np.int64)
    cumscore = np.zeros(n, dtype=localscore.dtype)
    score_thresh = 0.01 * localscore.max()
    first_beat = True
    cumscore[0] = localscore[0]
    log_fpb = np.log(fpb)
    for i in range(n):
        start, stop = int(i - np.round(fpb / 2)), int(i - 2 * fpb - 1)
        locs = np.arange(start, max(stop, -1), -1)  # descending, stops before a negative index
        if len(locs):
            scores = cumscore[locs] - tightness * (np.log(i - locs) - log_fpb) ** 2
            j = int(np.argmax(scores))  # first maximum in descending order, as the strict > of the loop
            best, loc = scores[j], int(locs[j])
        else:
            best, loc = -np.inf, -1
        cumscore[i] = localscore[i] + best if loc >= 0 else localscore[i]
        if first_beat and localscore[i] < score_thresh:
            backlink[i] = -1
        else:
            backlink[i] = loc
            first_beat = False
    return backlink, cumscore


def _last_beat(cumscore: np.ndarray) -> int:
    import librosa

    mask = ~librosa.util.localmax(cumscore)
    threshold = 0.5 * float(np.ma.getdata(np.ma.median(np.ma.masked_array(cumscore, mask=mask))))
    for n in range(len(cumscore) - 1, -1, -1):
        if not mask[n] and cumscore[n] >= threshold:
            return n
    return len(cumscore) - 1


def _trim(localscore: np.ndarray, beats: np.ndarray, trim: bool) -> np.ndarray:
    out = beats.copy()
    w = np.hanning(5)
    smooth = np.convolve(localscore[beats], w)[len(w) // 2:len(localscore) + len(w) // 2]
    threshold = 0.5 * float(np.sqrt((smooth ** 2).mean())) if trim else 0.0
    n = 0
    while n < len(localscore) and localscore[n] <= threshold:
        out[n] = False
        n += 1
    n = len(localscore) - 1
    while n >= 0 and localscore[n] <= threshold:
        out[n] = False
        n -= 1
    return out


def beat_track(onset_envelope: np.ndarray, sr: int, hop_length: int, *, start_bpm: float = 120.0,
               tightness: float = 100.0, trim: bool = True) -> tuple[float, np.ndarray]:
    """``(tempo in BPM, beat frame indices)`` of a 1-D onset-strength envelope, as
    ``librosa.beat.beat_track(onset_envelope=..., sr=..., hop_length=...)`` (units "frames")."""
    import librosa

    onset = np.asarray(onset_envelope)
    if onset.ndim != 1:
        raise ValueError(f"beat_track takes a 1-D onset envelope, got shape {onset.shape}")
    if not onset.any():
        return 0.0, np.zeros(0, dtype=int)
    tempo = float(np.atleast_1d(librosa.feature.tempo(onset_envelope=onset, sr=sr, hop_length=hop_length,
                                                      start_bpm=start_bpm))[0])
    if tempo <= 0:
        return tempo, np.zeros(0, dtype=int)
    fpb = float(np.round(sr / hop_length * 60.0 / tempo))
    norm = onset / (onset.std(ddof=1) + np.finfo(onset.dtype).tiny)
    localscore = _local_score(norm, fpb)
    backlink, cumscore = _dp(localscore, fpb, tightness)
    beats = np.zeros(len(onset), dtype=bool)
    n = _last_beat(cumscore)
    while n >= 0:
        beats[n] = True
        n = int(backlink[n])
    return tempo, np.flatnonzero(_trim(localscore, beats, trim))


def onset_detect(onset_envelope: np.ndarray, sr: int, hop_length: int, *, delta: float = 0.07) -> np.ndarray:
    """Onset frames, as ``librosa.onset.onset_detect(onset_envelope=..., backtrack=False)`` with its
    default peak-picking windows (30 ms pre-max, 100 ms averages, 30 ms wait): a port of librosa's
    ``util.peak_pick`` kernel, another cached numba gufunc."""
    x = np.asarray(onset_envelope, dtype=np.float64 if np.asarray(onset_envelope).dtype == np.float64 else np.float32)
    x = x - x.min()
    x = x / (x.max() + np.finfo(x.dtype).tiny)
    if not x.any() or not np.all(np.isfinite(x)):
        return np.zeros(0, dtype=int)
    pre_max, post_max = int(np.ceil(0.03 * sr // hop_length)), int(np.ceil(0.00 * sr // hop_length + 1))
    pre_avg, post_avg = int(np.ceil(0.10 * sr // hop_length)), int(np.ceil(0.10 * sr // hop_length + 1))
    wait = int(np.ceil(0.03 * sr // hop_length))
    n_x = len(x)
    peaks = np.zeros(n_x, dtype=bool)
    peaks[0] = x[0] >= np.max(x[:min(post_max, n_x)]) and x[0] >= np.mean(x[:min(post_avg, n_x)]) + delta
    n = wait + 1 if peaks[0] else 1
    while n < n_x:
        if x[n] != np.max(x[max(0, n - pre_max):min(n + post_max, n_x)]) or \
                x[n] < np.mean(x[max(0, n - pre_avg):min(n + post_avg, n_x)]) + delta:
            n += 1
            continue
        peaks[n] = True
        n += wait + 1
    return np.flatnonzero(peaks)


def onset_strength(power: np.ndarray, sr: int, hop_length: int) -> np.ndarray:
    """Onset strength of a power spectrogram ``[freq, frames]``: spectral flux of its 128-band log-mel
    spectrogram (``librosa.onset.onset_strength``), the input of :func:`beat_track` / :func:`onset_detect`."""
    import librosa

    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=128)
    return librosa.onset.onset_strength(S=librosa.power_to_db(mel, ref=np.max), sr=sr, hop_length=hop_length)


# Krumhansl & Kessler (1982) probe-tone profiles, tonic first.
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
KK_PROFILES = {"major": KK_MAJOR, "minor": KK_MINOR}
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Every key, in the order ties are broken: the 12 major keys from C, then the 12 minor ones.
ALL_KEYS = tuple((tonic, mode) for mode in KK_PROFILES for tonic in range(12))


def estimate_key(pitch_classes: np.ndarray, candidates: tuple[tuple[int, str], ...] = ALL_KEYS,
                 ) -> tuple[tuple[int, str] | None, float]:
    """Krumhansl–Schmuckler: the best ``(tonic pitch class, "major" | "minor")`` of ``candidates`` for a
    12-bin pitch-class profile, and its correlation; ``(None, 0.0)`` for a flat or non-finite profile.
    The first of equal correlations wins."""
    c = np.asarray(pitch_classes, dtype=np.float64)
    if c.shape != (12,) or not np.isfinite(c).all() or c.std() < 1e-9:
        return None, 0.0
    best, best_r = None, -2.0
    for tonic, mode in candidates:
        r = float(np.corrcoef(c, np.roll(KK_PROFILES[mode], tonic))[0, 1])
        if r > best_r + 1e-12:
            best, best_r = (tonic, mode), r
    return best, best_r


def key_name(key: tuple[int, str] | None) -> str | None:
    """``(3, "major")`` -> ``"Eb major"`` (None stays None)."""
    return None if key is None else f"{PITCH_NAMES[key[0]]} {key[1]}"
