"""unimoe.beat against librosa's own beat_track (run in a subprocess: librosa's numba kernels are what
the port avoids in-process)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from unimoe.beat import beat_track, onset_detect

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
