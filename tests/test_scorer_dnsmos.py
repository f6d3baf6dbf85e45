"""DNSMOS demo scorer: real ONNX weights shipped inside the ``speechmos`` package, real (espeak-ng) speech."""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("speechmos")
pytest.importorskip("onnxruntime")

from evaluation.scorers import AudioItem, available_scorers, load_scorer
from unimoe.common.audio import load_audio, resample, to_mono

SENTENCE = (
    "The quick brown fox jumps over the lazy dog. Please call Stella and ask her to bring these things."
)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """(wav, sample_rate) of a synthetic English sentence (espeak-ng writes 22.05 kHz mono)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run([exe, "-w", str(out), SENTENCE], check=True, capture_output=True, timeout=60)
    wav, sr = load_audio(out)
    return to_mono(wav), sr


@pytest.fixture(scope="module")
def scorer():
    return load_scorer("dnsmos", num_threads=1)


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _at_snr(clean: np.ndarray, snr_db: float) -> np.ndarray:
    noise = _noise(len(clean))
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    mix = clean + noise
    return (mix / max(1.0, float(np.abs(mix).max()) / 0.99)).astype(np.float32)


def test_registered_metrics_and_version(scorer):
    from importlib.metadata import version

    assert "dnsmos" in available_scorers()
    assert scorer.name == "dnsmos"
    assert scorer.metrics == {m: "higher" for m in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")}
    assert not any(m.startswith("utmos") for m in scorer.metrics)  # never impersonates the paper metric
    v = scorer.version
    assert v.startswith(f"speechmos {version('speechmos')}")
    assert "sig_bak_ovr.onnx sha256:" in v and "model_v8.onnx sha256:" in v
    assert scorer.info()["version"] == v


def test_clean_speech_beats_noisy_speech_and_noise(scorer, speech):
    wav, sr = speech
    assert sr != 16000  # exercises resampling
    noisy = _at_snr(wav, 0.0)
    noise = 0.1 * _noise(len(wav), seed=1)
    clean_s, noisy_s, noise_s = scorer.score(
        [AudioItem("clean", wav, sr), AudioItem("noisy", noisy, sr), AudioItem("noise", noise, sr)]
    )
    for r in (clean_s, noisy_s, noise_s):
        assert set(r) == set(scorer.metrics)
        assert all(math.isfinite(v) and 0.5 < v < 5.5 for v in r.values()), r
    assert clean_s["dnsmos_ovrl"] > noisy_s["dnsmos_ovrl"] + 0.5
    assert clean_s["dnsmos_ovrl"] > noise_s["dnsmos_ovrl"] + 0.5
    assert clean_s["dnsmos_bak"] > noisy_s["dnsmos_bak"] + 0.5  # the background axis sees the noise
    assert clean_s["dnsmos_p808"] > noisy_s["dnsmos_p808"]


def test_batch_equals_single_and_matches_package(scorer, speech):
    """Windows of several items batched through ONNX == one item at a time == speechmos's own ``run``."""
    from speechmos import dnsmos as sm

    wav, sr = speech
    wav16 = resample(wav, sr, 16000)
    long_ = np.concatenate([wav16, 0.5 * wav16])[: int(11.5 * 16000)]  # > 9.01 s: several (3) windows
    assert len(long_) >= 11 * 16000
    items = [
        AudioItem("a", wav16, 16000),
        AudioItem("long", long_, 16000),
        AudioItem("short", wav16[: 16000 // 2], 16000),  # tiled up to 9.01 s, as the package does
    ]
    batch = scorer.score(items)
    single = [scorer.score([it])[0] for it in items]
    for b, s in zip(batch, single):
        for m in scorer.metrics:
            assert b[m] == pytest.approx(s[m], abs=1e-4)
    ref = sm.run(np.clip(long_, -1, 1), 16000)
    assert batch[1]["dnsmos_ovrl"] == pytest.approx(float(ref["ovrl_mos"]), abs=1e-4)
    assert batch[1]["dnsmos_sig"] == pytest.approx(float(ref["sig_mos"]), abs=1e-4)
    assert batch[1]["dnsmos_bak"] == pytest.approx(float(ref["bak_mos"]), abs=1e-4)
    assert batch[1]["dnsmos_p808"] == pytest.approx(float(ref["p808_mos"]), abs=1e-4)


def test_bad_items_are_nan_others_still_scored(scorer, speech):
    wav, sr = speech
    out = scorer.score(
        [
            AudioItem("empty", np.zeros(0, np.float32), 16000),
            AudioItem("nan", np.full(16000, np.nan, np.float32), 16000),
            AudioItem("stereo", np.stack([wav, wav]), sr),
        ]
    )
    assert all(math.isnan(v) for v in out[0].values())
    assert all(math.isnan(v) for v in out[1].values())
    assert all(math.isfinite(v) for v in out[2].values())
    assert scorer.score([]) == []
