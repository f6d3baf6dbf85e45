"""unimoe.common.music: beat tracking against librosa's own beat_track (run in a subprocess: librosa's
numba kernels are what the port avoids in-process), and the one key estimator every caller shares."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from unimoe.common.music import KK_MAJOR, KK_MINOR, beat_track, estimate_key, key_name, onset_detect

SR, HOP = 22050, 512


def _onsets():
    import librosa

    rng = np.random.default_rng(0)
    out = {}
    for bpm in (72, 96, 128, 150):  # click tracks with a little noise
        y = 0.01 * rng.standard_normal(SR * 8)
        step = int(SR * 60 / bpm)
        for s in range(0, len(y) - 400, step):
            y[s:s + 400] += np.hanning(400) * (1.0 if (s // step) % 4 == 0 else 0.6)
        out[f"click{bpm}"] = librosa.onset.onset_strength(y=y.astype(np.float32), sr=SR, hop_length=HOP)
    out["noise"] = librosa.onset.onset_strength(y=rng.standard_normal(SR * 5).astype(np.float32), sr=SR,
                                                hop_length=HOP)
    return out


def test_beat_track_equals_librosa():
    envs = _onsets()
    with tempfile.TemporaryDirectory() as d:
        np.savez(Path(d) / "env.npz", **envs)
        code = ("import json, sys, numpy as np, librosa\n"
                "e = np.load(sys.argv[1])\n"
                "print(json.dumps({k: [float(np.atleast_1d(t)[0]), [int(b) for b in bt],\n"
                "      [int(o) for o in librosa.onset.onset_detect(onset_envelope=e[k], sr=22050, hop_length=512)]]\n"
                "      for k in e.files\n"
                "      for t, bt in [librosa.beat.beat_track(onset_envelope=e[k], sr=22050, hop_length=512)]}))\n")
        out = subprocess.run([sys.executable, "-c", code, str(Path(d) / "env.npz")], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "NUMBA_CACHE_DIR": str(Path(d) / "numba")})
    assert out.returncode == 0, out.stderr[-2000:]
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    for k, env in envs.items():
        tempo, beats = beat_track(env, SR, HOP)
        assert tempo == pytest.approx(ref[k][0], rel=1e-6), k
        assert beats.tolist() == ref[k][1], k
        assert onset_detect(env, SR, HOP).tolist() == ref[k][2], k
    assert abs(beat_track(envs["click128"], SR, HOP)[0] - 128) < 3


def test_beat_track_degenerate_inputs():
    assert beat_track(np.zeros(100, dtype=np.float32), SR, HOP)[1].size == 0
    with pytest.raises(ValueError, match="1-D"):
        beat_track(np.zeros((2, 100)), SR, HOP)


def test_key_estimator_finds_each_of_the_24_keys():
    """A rotated probe-tone profile is its own key with correlation 1; a flat or non-finite profile has
    no key; restricted candidates are the only possible answers."""
    for mode, profile in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        for tonic in range(12):
            key, r = estimate_key(np.roll(profile, tonic))
            assert key == (tonic, mode) and r == pytest.approx(1.0), (tonic, mode, key)
    assert estimate_key(np.ones(12)) == (None, 0.0)
    assert estimate_key(np.full(12, np.nan)) == (None, 0.0)
    e_major = np.roll(KK_MAJOR, 4)  # correlates with A minor (r = 0.21) better than with C major (r = -0.19)
    assert estimate_key(e_major, ((0, "major"), (9, "minor")))[0] == (9, "minor")
    assert [key_name(k) for k in ((3, "major"), (8, "minor"), None)] == ["Eb major", "Ab minor", None]


def test_captioner_scorer_and_renderer_share_one_key_estimator():
    """One implementation: the offline captioner, the music-adherence scorer and the demo renderer's key
    labels all call unimoe.common.music.estimate_key (no copy of the profiles elsewhere)."""
    from data import music_render
    from data.captioning import offline
    from evaluation.scorers import music_adherence
    from unimoe.common import music

    assert offline.estimate_key is music.estimate_key and music_adherence.estimate_key is music.estimate_key
    assert music_render.profile_key is music.estimate_key
    # A, C, E, A: an A minor triad
    notes = [(0.0, 1.0, 57, 80), (1.0, 2.0, 60, 80), (2.0, 3.0, 64, 80), (3.0, 3.5, 69, 80)]
    parts = [music_render.Part("piano", 0, 0, notes)]
    assert music_render.estimate_key(parts) == "A minor"
    # with a key signature only its major key and relative minor are candidates: 3 sharps = A major / F# minor
    assert music_render.estimate_key(parts, sharps=3) == "A major"


def test_every_test_process_has_its_own_numba_cache():
    """tests/numba_cache/sitecustomize.py: a subprocess of the suite gets a fresh NUMBA_CACHE_DIR, not its
    parent's (processes sharing numba's gufunc cache have crashed, numba issue 10128)."""
    code = "import os; d = os.environ['NUMBA_CACHE_DIR']; print(d, os.path.isdir(d))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child_dir, exists = out.stdout.split()
    assert exists == "True" and child_dir != os.environ["NUMBA_CACHE_DIR"]
    assert Path(child_dir).name.startswith("unimoe-numba-")
    assert not Path(child_dir).exists()  # removed when the child exited
