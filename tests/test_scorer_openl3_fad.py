"""OpenL3-FAD scorer, offline: a random-weights ``PytorchOpenl3`` (mel256 / 512, the exact architecture
of the released weights) saved as a state dict in a temporary weights store and loaded through the
registry; its frames are checked against torchopenl3's own ``get_audio_embedding``. The pipeline logic
(peak normalisation, soxr, L‖R, failures, set metrics) runs with a small conv net in place of OpenL3,
because the real network costs ~1 s per 1 s window on one CPU thread."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.metrics import frechet_distance, gaussian_stats
from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from unimoe.io import ChecksumError, sha256_file

pytest.importorskip("torchopenl3")
from evaluation.scorers import openl3_fad as O


def tone(seconds: float, sr: int, f0: float, seed: int = 0, amp: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


class SmallNet(torch.nn.Module):
    """[B, 1, 48000] -> [B, 512]: a cheap deterministic stand-in for the OpenL3 network."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 8, 480, stride=240)
        self.pool = torch.nn.AdaptiveAvgPool1d(64)
        self.fc = torch.nn.Linear(512, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = O.build_openl3()
    path = tmp_path_factory.mktemp("w") / "openl3" / O.WEIGHTS_FILE
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def real(weights):
    path, digest = weights
    return load_scorer("openl3_fad", weights_path=str(path), sha256=digest)


@pytest.fixture(scope="module")
def small(weights):
    return O.OpenL3FAD(SmallNet(), weights_path=weights[0], weights_sha256="0" * 64)


# ---- the real architecture -----------------------------------------------------------------------------


def test_registry_load_and_version(real, weights):
    assert "openl3_fad" in available_scorers()
    assert real.metrics == {"fad": "lower"} and real.needs_reference
    assert real.version.startswith("torchopenl3-1.0.1+mel256-music-512+sha256:")
    assert real.version.endswith(weights[1][:12])
    info = real.info()
    assert info["eval_sample_rate"] == 44_100 and info["hop_size"] == 0.5 and info["channels"] == 2
    assert "item-mean" in info["pooling"]


def test_frames_match_torchopenl3(real):
    """Our per-channel path is torchopenl3's ``get_audio_embedding`` (resampy sampler, centred)."""
    import torchopenl3

    x = tone(0.9, 44_100, 330.0)
    ours = real._frames(x)
    ref, _ = torchopenl3.get_audio_embedding(
        x.astype(np.float64), 44_100, model=real.model, hop_size=0.5, center=True, sampler="resampy",
        verbose=False,
    )
    ref = ref.reshape(-1, 512).cpu().numpy()
    # 0.9 s at 48 kHz + 0.5 s centre padding = 1.4 s -> windows at 0 and 0.5 s (end zero-padded)
    assert ours.shape == ref.shape == (2, 512)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


# ---- protocol steps (small network) --------------------------------------------------------------------


def n_frames(seconds: float) -> int:
    n = round(seconds * 48_000) + 24_000  # centre padding
    return 1 if n <= 48_000 else 1 + math.ceil((n - 48_000) / 24_000)


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.2])
def test_frame_count_and_mono_duplication(small, seconds):
    f = small.item_frames(AudioItem("m", tone(seconds, 16_000, 220.0), 16_000))
    assert f.shape == (n_frames(seconds), 1024)
    np.testing.assert_array_equal(f[:, :512], f[:, 512:])  # mono -> L == R


def test_stereo_is_left_right_concatenation_with_joint_peak(small):
    sr = 32_000
    left, right = tone(1.5, sr, 220.0, seed=1, amp=0.8), tone(1.5, sr, 660.0, seed=2, amp=0.2)
    f = small.item_frames(AudioItem("s", np.stack([left, right]), sr))
    gain = 10 ** (-1 / 20) / max(np.abs(left).max(), np.abs(right).max())  # one gain for both channels
    exp_l = small._frames(O.soxr_resample((left * gain)[None], sr, 44_100)[0])
    exp_r = small._frames(O.soxr_resample((right * gain)[None], sr, 44_100)[0])
    np.testing.assert_allclose(f, np.concatenate([exp_l, exp_r], axis=1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(f[:, :512], f[:, 512:])


def test_peak_normalisation_makes_level_irrelevant(small):
    x = tone(1.0, 22_050, 440.0, seed=3)
    a = small.item_frames(AudioItem("a", x, 22_050))
    b = small.item_frames(AudioItem("b", 0.05 * x, 22_050))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    y = O.peak_normalise(np.stack([x, 0.5 * x]))
    assert np.abs(y).max() == pytest.approx(10 ** (-1 / 20), rel=1e-6)


def test_failures_are_nan_rows_with_reasons(small):
    items = [
        AudioItem("ok", tone(0.8, 16_000, 200.0), 16_000),
        AudioItem("empty", np.zeros(0, np.float32), 16_000),
        AudioItem("silent", np.zeros(8000, np.float32), 16_000),
        AudioItem("nan", np.full(8000, np.nan, np.float32), 16_000),
        AudioItem("3ch", np.stack([tone(0.5, 16_000, 100.0)] * 3), 16_000),
    ]
    rows = small.embed(items)
    assert rows.shape == (5, 1024) and np.isfinite(rows[0]).all()
    assert np.isnan(rows[1:]).all()
    assert set(small.last_failures) == {"empty", "silent", "nan", "3ch"}
    assert "silent" in small.last_failures["silent"] and "channels" in small.last_failures["3ch"]
    np.testing.assert_allclose(rows[0], small.item_frames(items[0]).mean(axis=0), rtol=1e-6)


# ---- set metrics ---------------------------------------------------------------------------------------


def test_compare_and_cached_reference_stats(small):
    rng = np.random.default_rng(0)
    gen = rng.standard_normal((40, 6))
    ref = rng.standard_normal((50, 6)) + 0.5
    fad = small.compare(gen, ref)["fad"]
    assert fad == pytest.approx(frechet_distance(gen, ref), rel=1e-9) and fad > 0.5
    assert small.compare(ref, ref)["fad"] == pytest.approx(0.0, abs=1e-6)
    # failed items (NaN rows) are left out
    gen_nan = np.vstack([gen, np.full((3, 6), np.nan)])
    assert small.compare(gen_nan, ref)["fad"] == pytest.approx(fad, rel=1e-9)
    mu, sigma = small.reference_stats(ref)
    assert small.compare_to_stats(gen, mu, sigma)["fad"] == pytest.approx(fad, rel=1e-9)
    assert math.isnan(small.compare(gen, None)["fad"])
    assert math.isnan(small.compare(gen[:1], ref)["fad"])


def test_frame_level_fad_pools_all_frames(small):
    rng = np.random.default_rng(1)
    gen = [rng.standard_normal((4, 5)), None, rng.standard_normal((7, 5))]
    ref = [rng.standard_normal((6, 5)) + 1.0, rng.standard_normal((3, 5))]
    got = small.fad_frames(gen, ref)["fad"]
    assert got == pytest.approx(frechet_distance(np.vstack([gen[0], gen[2]]), np.vstack(ref)), rel=1e-9)
    mu, sigma = small.reference_stats(ref)
    exp_mu, exp_sigma = gaussian_stats(np.vstack(ref))
    np.testing.assert_allclose(mu, exp_mu)
    np.testing.assert_allclose(sigma, exp_sigma)


def test_similar_sets_are_closer_than_different_ones(small):
    def clips(f0s, seed):
        return [AudioItem(f"{seed}-{i}", tone(1.0, 16_000, f, seed=seed + i), 16_000) for i, f in enumerate(f0s)]

    def frames(f0s, seed):  # 12 of the 1024 dims: a 1024-d sqrtm costs seconds on one thread
        return [f[:, :12] for f in small.frame_embeddings(clips(f0s, seed))]

    low = [110.0, 130.0, 150.0, 170.0, 190.0]
    ref = frames(low, 10)
    a = small.fad_frames(frames(low, 0), ref)["fad"]
    b = small.fad_frames(frames([2000.0, 2500.0, 3000.0, 3500.0, 4000.0], 20), ref)["fad"]
    assert 0 <= a < b


# ---- weights -------------------------------------------------------------------------------------------


def test_missing_weights_name_file_and_origin(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer("openl3_fad")
    msg = str(e.value)
    assert str(tmp_path / "openl3" / O.WEIGHTS_FILE) in msg
    assert "https://github.com/torchopenl3/torchopenl3-models/raw/master/torchopenl3_mel256_music_512.pth.tar" in msg


def test_checksum_and_architecture_are_checked(weights, tmp_path):
    with pytest.raises(ChecksumError):
        load_scorer("openl3_fad", weights_path=str(weights[0]), sha256="0" * 64)
    bad = tmp_path / "other.pth.tar"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ScorerUnavailable, match="does not fit"):
        load_scorer("openl3_fad", weights_path=str(bad))


def test_weights_file_without_spectrogram_buffers_loads(weights, tmp_path):
    sd = torch.load(weights[0], weights_only=True)
    for k in O._SPEC_BUFFERS:
        sd.pop(k)
    path = tmp_path / "nobuf.pth.tar"
    torch.save(sd, path)
    s = load_scorer("openl3_fad", weights_path=str(path))
    for k, v in s.model.state_dict().items():
        if k not in O._SPEC_BUFFERS:
            torch.testing.assert_close(v, sd[k])
