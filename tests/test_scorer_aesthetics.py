"""audiobox-aesthetics scorer: a random-weights checkpoint in the released format, loaded offline
through the registry; the 10 s windowing and length weighting checked against the package and an
independent computation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from evaluation.scorers.aesthetics import AXES, SAMPLE_RATE, make_windows
from unimoe.io import ChecksumError, sha256_file

aes = pytest.importorskip("audiobox_aesthetics")

SR = SAMPLE_RATE
# Arbitrary per-axis target statistics, so the de-normalisation is visible in the scores.
TARGET_TRANSFORM = {
    "CE": {"mean": 5.5, "std": 1.5},
    "CU": {"mean": 6.0, "std": 1.2},
    "PC": {"mean": 4.0, "std": 2.0},
    "PQ": {"mean": 7.0, "std": 0.8},
}
MODEL_CFG = {
    "proj_num_layer": 1,
    "proj_ln": False,
    "proj_act_fn": "gelu",
    "proj_dropout": 0.1,
    "nth_layer": 13,
    "use_weighted_layer_sum": True,
    "precision": "32",
    "normalize_embed": True,
    "output_dim": 1,
}


class NotAWeight:  # a pickled class instance: weights_only=True must refuse it
    pass


def clip(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    return (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, str]:
    """``checkpoint.pt`` in the released layout: prefixed state dict, model_cfg, target_transform."""
    from audiobox_aesthetics.model.aes import AesMultiOutput

    torch.manual_seed(0)
    model = AesMultiOutput(**MODEL_CFG, target_transform=TARGET_TRANSFORM)
    # Random projection heads with a visible spread (the default init gives outputs near 0).
    with torch.no_grad():
        for head in model.proj_layer.values():
            head[-1].weight.normal_(0.0, 2.0)
    path = tmp_path_factory.mktemp("weights") / "audiobox-aesthetics" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model_cfg": MODEL_CFG, "target_transform": TARGET_TRANSFORM}, path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(checkpoint):
    path, digest = checkpoint
    return load_scorer("audiobox_aesthetics", weights_path=str(path), sha256=digest)


# ---- windowing (no model) ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [23 * SR, 10 * SR, 20 * SR + 1, SR // 2, 1])
def test_windows_match_the_package(n):
    from audiobox_aesthetics.infer import make_inference_batch

    wav = clip(n / SR, seed=n)
    windows, masks, weights = make_windows(wav)
    ref_w, ref_m, ref_wt, ref_b = make_inference_batch([torch.from_numpy(wav)[None]], 10, 10, sample_rate=SR)
    assert len(windows) == len(ref_w) == math.ceil(n / (10 * SR))
    assert ref_b == [0] * len(ref_w)
    np.testing.assert_array_equal(windows, torch.cat(ref_w).numpy())
    np.testing.assert_array_equal(masks, torch.cat(ref_m).numpy())
    np.testing.assert_allclose(weights, ref_wt)


def test_windows_of_a_23s_clip():
    windows, masks, weights = make_windows(np.ones(23 * SR, np.float32))
    assert windows.shape == masks.shape == (3, 10 * SR)
    assert masks.sum(axis=1).tolist() == [10 * SR, 10 * SR, 3 * SR]
    np.testing.assert_allclose(weights, [1.0, 1.0, 0.3])
    assert (windows[2, 3 * SR :] == 0).all() and (windows[2, : 3 * SR] == 1).all()
    assert make_windows(np.zeros(0, np.float32))[0].shape == (0, 10 * SR)


def test_length_weighted_aggregation(scorer, monkeypatch):
    """Per-window predictor replaced by a known function of the window: the clip score must be the
    10:10:3 weighted mean for a 23 s clip, and clips must not mix across prediction batches."""
    seen = []

    def fake(windows, masks):
        seen.append((windows.shape[0], masks.sum(dim=1).tolist()))
        # the mean of the real samples (padding excluded), a different affine map per axis
        mean = (windows * masks).sum(dim=1).double().numpy() / masks.sum(dim=1).double().numpy()
        return {a: (k + 1) * mean + k for k, a in enumerate(AXES)}

    monkeypatch.setattr(scorer, "predict_windows", fake)
    monkeypatch.setattr(scorer, "batch_size", 2)
    levels = np.concatenate([np.full(10 * SR, 1.0), np.full(10 * SR, 2.0), np.full(3 * SR, 4.0)]).astype(
        np.float32
    )
    items = [
        AudioItem("a", levels, SR),
        AudioItem("empty", np.zeros(0, np.float32), SR),
        AudioItem("b", np.full(5 * SR, 0.5, np.float32), SR),
    ]
    rows = scorer.score(items)
    # 4 windows in batches of 2: [a1, a2], [a3, b1]
    assert seen == [(2, [10 * SR, 10 * SR]), (2, [3 * SR, 5 * SR])]
    expected_a = (1.0 * 10 + 2.0 * 10 + 4.0 * 3) / 23
    for k, a in enumerate(AXES):
        assert rows[0][a] == pytest.approx((k + 1) * expected_a + k, rel=1e-9)
        assert rows[2][a] == pytest.approx((k + 1) * 0.5 + k, rel=1e-9)
        assert math.isnan(rows[1][a])


# ---- the real (random-weights) model -------------------------------------------------------------------


def test_scores_match_the_reference_predictor_and_are_deterministic(scorer, checkpoint):
    items = [
        AudioItem("short", clip(1.0, seed=1), SR),
        AudioItem("stereo-22k", np.stack([clip(1.5, 2, 22_050), clip(1.5, 3, 22_050)]), 22_050),
    ]
    rows = scorer.score(items)
    assert [sorted(r) for r in rows] == [sorted(AXES)] * 2
    assert all(np.isfinite(v) for r in rows for v in r.values())
    assert len({round(rows[0][a], 6) for a in AXES}) == 4  # the per-axis heads and transforms differ

    # The package's own predictor (its stacking, masking, weighting, resampling, down-mixing). Every
    # window costs a full 10 s WavLM pass, so the clips are short: multi-window aggregation is
    # checked above with a stand-in predictor.
    from audiobox_aesthetics.infer import initialize_predictor

    ref = initialize_predictor(str(checkpoint[0]))
    ref_rows = ref.forward(
        [{"path": torch.from_numpy(np.atleast_2d(it.wav)), "sample_rate": it.sample_rate} for it in items]
    )
    for r, rr in zip(rows, ref_rows):
        for a in AXES:
            assert r[a] == pytest.approx(rr[a], abs=2e-4)

    again = scorer.score(items[:1])  # a second call, in a different batch
    assert again[0] == pytest.approx(rows[0], abs=1e-5)


def test_version_and_registration(scorer, checkpoint):
    assert "audiobox_aesthetics" in available_scorers()
    assert scorer.name == "audiobox_aesthetics"
    assert scorer.metrics == {"CE": "higher", "CU": "higher", "PC": "higher", "PQ": "higher"}
    from importlib.metadata import version

    assert (
        scorer.version == f"audiobox_aesthetics=={version('audiobox_aesthetics')}+sha256:{checkpoint[1][:12]}"
    )
    info = scorer.info()
    assert info["weights_sha256"] == checkpoint[1] and info["version"] == scorer.version


# ---- failures ------------------------------------------------------------------------------------------


def test_wrong_checksum_is_refused(checkpoint):
    with pytest.raises(ChecksumError):
        load_scorer("audiobox_aesthetics", weights_path=str(checkpoint[0]), sha256="0" * 64)


def test_arbitrary_pickles_are_not_loaded(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {}, "model_cfg": NotAWeight(), "target_transform": {}}, path)
    with pytest.raises(ScorerUnavailable, match="weights_only"):
        load_scorer("audiobox_aesthetics", weights_path=str(path))
