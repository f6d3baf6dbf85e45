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

from evaluation.metrics import frechet_distance, frechet_distance_from_frames, gaussian_stats
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


class TinyNet(torch.nn.Module):
    """[B, 1, 48000] -> [B, 3]: 6-d L||R frames, so set-level tests fit Gaussians to few frames cheaply."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv1d(1, 3, 4800, stride=2400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).mean(-1)


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


@pytest.fixture(scope="module")
def tiny(weights):
    return O.OpenL3FAD(TinyNet(), weights_path=weights[0], weights_sha256="0" * 64)


# ---- the real architecture -----------------------------------------------------------------------------


def test_registry_load_and_version(real, weights):
    assert "openl3_fad" in available_scorers()
    assert real.metrics == {"fad": "lower"} and real.needs_reference
    assert real.version == f"torchopenl3-1.0.1+mel256-music-512+sha256:{weights[1][:12]}+pool:frames"
    info = real.info()
    assert info["eval_sample_rate"] == 44_100 and info["hop_size"] == 0.5 and info["channels"] == 2
    assert info["pooling"] == "frames" and "all frames" in info["protocol"]
    old = load_scorer("openl3_fad", weights_path=str(weights[0]), sha256=weights[1], pooling="item-mean")
    assert old.version.endswith("+pool:item-mean") and old.version != real.version
    with pytest.raises(ValueError, match="pooling"):
        load_scorer("openl3_fad", weights_path=str(weights[0]), pooling="median")


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


def test_failures_are_empty_entries_with_reasons(small):
    items = [
        AudioItem("ok", tone(0.8, 16_000, 200.0), 16_000),
        AudioItem("empty", np.zeros(0, np.float32), 16_000),
        AudioItem("silent", np.zeros(8000, np.float32), 16_000),
        AudioItem("nan", np.full(8000, np.nan, np.float32), 16_000),
        AudioItem("3ch", np.stack([tone(0.5, 16_000, 100.0)] * 3), 16_000),
    ]
    frames = small.embed(items)
    assert len(frames) == 5 and frames[0].shape == (n_frames(0.8), 1024) and np.isfinite(frames[0]).all()
    assert all(f.shape == (0, 1024) for f in frames[1:])
    assert set(small.last_failures) == {"empty", "silent", "nan", "3ch"}
    assert "silent" in small.last_failures["silent"] and "channels" in small.last_failures["3ch"]
    np.testing.assert_allclose(frames[0], small.item_frames(items[0]), rtol=1e-6)


# ---- set metrics ---------------------------------------------------------------------------------------


def test_embed_gives_frames_and_compare_pools_all_of_them(small):
    """Issue 12 item 1: FAD over every 0.5 s frame of every clip (stable-audio-metrics), not over one mean
    embedding per clip; the earlier number remains available as ``pooling="item-mean"``."""
    gen_items = [AudioItem(f"g{i}", tone(s, 16_000, f, seed=i), 16_000)
                 for i, (s, f) in enumerate([(1.0, 220.0), (2.2, 330.0), (1.6, 990.0)])]
    ref_items = [AudioItem(f"r{i}", tone(s, 16_000, f, seed=10 + i), 16_000)
                 for i, (s, f) in enumerate([(1.4, 250.0), (2.0, 700.0), (1.0, 1500.0)])]
    gen, ref = small.embed(gen_items), small.embed(ref_items)
    assert [f.shape[0] for f in gen] == [n_frames(1.0), n_frames(2.2), n_frames(1.6)]
    cut = lambda fs: [f[:, :12] for f in fs]  # noqa: E731  (12 dims: a 1024-d sqrtm costs seconds here)
    fad = small.compare(cut(gen), cut(ref))["fad"]
    assert fad == pytest.approx(frechet_distance_from_frames(cut(gen), cut(ref)), rel=1e-9)
    means = lambda fs: np.stack([f.astype(np.float64).mean(axis=0) for f in fs])  # noqa: E731
    item_mean = O.OpenL3FAD(SmallNet(), weights_path=small.weights_path, weights_sha256="0" * 64, pooling="item-mean")
    old = item_mean.compare(cut(gen), cut(ref))["fad"]
    assert old == pytest.approx(frechet_distance(means(cut(gen)), means(cut(ref))), rel=1e-9)
    assert abs(old - fad) > 0.05 * fad


def test_compare_and_cached_reference_stats(small):
    rng = np.random.default_rng(0)
    gen = [rng.standard_normal((int(k), 6)) for k in rng.integers(2, 9, 10)]
    ref = [rng.standard_normal((int(k), 6)) + 0.5 for k in rng.integers(2, 9, 12)]
    fad = small.compare(gen, ref)["fad"]
    assert fad == pytest.approx(frechet_distance(np.vstack(gen), np.vstack(ref)), rel=1e-9) and fad > 0.5
    assert small.compare(ref, ref)["fad"] == pytest.approx(0.0, abs=1e-6)
    # the reference Gaussian is cached for the same reference arrays (every seed compares with them)
    assert small._ref_cache is not None and small._ref_cache[0][0] is ref[0]
    assert small.compare(gen, ref)["fad"] == pytest.approx(fad, rel=1e-12)
    # failed items (None, no frames, non-finite frames) are left out
    gen_bad = gen + [None, np.zeros((0, 6)), np.full((3, 6), np.nan)]
    assert small.compare(gen_bad, ref)["fad"] == pytest.approx(fad, rel=1e-9)
    mu, sigma = small.reference_stats(ref)
    exp_mu, exp_sigma = gaussian_stats(np.vstack(ref))
    np.testing.assert_allclose(mu, exp_mu)
    np.testing.assert_allclose(sigma, exp_sigma)
    assert small.compare_to_stats(gen, mu, sigma)["fad"] == pytest.approx(fad, rel=1e-9)
    assert math.isnan(small.compare(gen, None)["fad"])
    assert math.isnan(small.compare([gen[0][:1]], ref)["fad"])  # one frame: no covariance
    # item rows ([N, D]) are one frame per item
    rows_g, rows_r = rng.standard_normal((40, 6)), rng.standard_normal((50, 6)) + 0.5
    assert small.compare(rows_g, rows_r)["fad"] == pytest.approx(frechet_distance(rows_g, rows_r), rel=1e-9)


def test_similar_sets_are_closer_than_different_ones(small):
    def clips(f0s, seed):
        return [AudioItem(f"{seed}-{i}", tone(1.0, 16_000, f, seed=seed + i), 16_000) for i, f in enumerate(f0s)]

    def frames(f0s, seed):  # 12 of the 1024 dims: a 1024-d sqrtm costs seconds on one thread
        return [f[:, :12] for f in small.embed(clips(f0s, seed))]

    low = [110.0, 130.0, 150.0, 170.0, 190.0]
    ref = frames(low, 10)
    a = small.compare(frames(low, 0), ref)["fad"]
    b = small.compare(frames([2000.0, 2500.0, 3000.0, 3500.0, 4000.0], 20), ref)["fad"]
    assert 0 <= a < b


# ---- through the runner: stereo references, frame-level FAD ------------------------------------------


def _write(path, wav, sr):
    import soundfile as sf

    sf.write(str(path), np.asarray(wav).T, sr)
    return str(path)


def _loaded(path):
    from unimoe.common.audio import load_audio

    wav, sr = load_audio(path)
    return AudioItem("x", wav, sr)


def test_runner_gives_set_scorers_stereo_so_references_take_the_left_right_path(tiny, tmp_path):
    """Issue 12 item 8: a stereo reference is embedded as L||R (the runner used to downmix it first)."""
    from evaluation.bench import score as bench_score

    sr = 22_050
    stereo = _write(tmp_path / "ref.wav", np.stack([tone(1.5, sr, 220.0, seed=1), tone(1.5, sr, 1760.0, seed=2)]), sr)
    item = {"id": "a", "task": "t2m", "reference_audio": stereo}
    got = bench_score._embed_cached(tiny, tiny.version, [("a", stereo, item, "sha-a")], tmp_path / "cache", False, "x")["a"]
    expect = tiny.item_frames(_loaded(stereo))
    np.testing.assert_allclose(got, expect, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got[:, :3], got[:, 3:])  # L and R differ: not a downmix duplicated
    # cached per item (frames array), read back as it was written
    again = bench_score._embed_cached(tiny, tiny.version, [("a", stereo, item, "sha-a")], tmp_path / "cache", False, "x")
    np.testing.assert_array_equal(again["a"], got)


def test_runner_set_level_fad_pools_frames_with_an_interval_around_it(tiny, tmp_path):
    from evaluation.bench import score as bench_score

    sr = 16_000
    rows, gen_paths, ref_paths = [], [], []
    for k in range(6):
        g = _write(tmp_path / f"g{k}.wav", tone(1.2 + 0.2 * k, sr, 200.0 + 90 * k, seed=k), sr)
        r = _write(tmp_path / f"r{k}.wav", np.stack([tone(1.4, sr, 260.0 + 80 * k, seed=20 + k),
                                                      tone(1.4, sr, 300.0 + 70 * k, seed=40 + k)]), sr)
        gen_paths.append(g)
        ref_paths.append(r)
        rows.append({"item": {"id": f"i{k}", "task": "t2m", "reference_audio": r}, "seed": 0, "system": "model",
                     "audio": g, "audio_sha256": bench_score.file_hash(g)})
    agg, failed = bench_score._score_set(tiny, tiny.version, rows, "t2m", "model", {"fad": False}, tmp_path / "cache",
                                    20, False)
    assert failed == [] and [r["metric"] for r in agg] == ["fad"]
    expect = frechet_distance_from_frames([tiny.item_frames(_loaded(p)) for p in gen_paths],
                                          [tiny.item_frames(_loaded(p)) for p in ref_paths])
    row = agg[0]
    assert row["value"] == pytest.approx(expect, rel=1e-6) and row["n"] == 6 and row["scorer_version"] == tiny.version
    assert row["ci_low"] <= row["value"] <= row["ci_high"]


# ---- weights -------------------------------------------------------------------------------------------


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
