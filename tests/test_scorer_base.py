"""The scorer base module: loading several scorers at once, the tensors-only checkpoint loader, and the
clip preparation every speech scorer shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.scorers import ScorerUnavailable, load_scorers
from evaluation.scorers.base import load_state_dict_file, prepare_clip


class NotAWeight:  # a pickled class instance: weights_only=True must refuse it
    pass


def test_load_scorers_returns_the_loadable_and_says_why_not_for_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path / "empty-store"))
    scorers, unavailable = load_scorers(["pocketsphinx_wer", "whisper_wer"])
    assert list(scorers) == ["pocketsphinx_wer"]  # ships its model inside the package
    assert list(unavailable) == ["whisper_wer"] and "whisper" in unavailable["whisper_wer"].lower()
    with pytest.raises(KeyError, match="unknown scorer"):
        load_scorers(["no_such_scorer"])


def test_state_dict_loader_unwraps_refuses_pickles_and_empty_files(tmp_path):
    sd = {"w": torch.ones(2)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save(sd, tmp_path / "bare.pt")
    torch.save({"model": sd}, tmp_path / "model.pt")
    assert list(load_state_dict_file(tmp_path / "ckpt.pt", "x")) == ["w"]
    assert list(load_state_dict_file(tmp_path / "bare.pt", "x")) == ["w"]
    assert list(load_state_dict_file(tmp_path / "model.pt", "x", key="model")) == ["w"]
    assert set(load_state_dict_file(tmp_path / "ckpt.pt", "x", key=None)) == {"state_dict", "epoch"}
    torch.save({"obj": NotAWeight()}, tmp_path / "pickle.pt")
    with pytest.raises(ScorerUnavailable, match=r"weights_only=True.*Re-save it as a plain dict of tensors"):
        load_state_dict_file(tmp_path / "pickle.pt", "my scorer")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ScorerUnavailable, match="my scorer: .*empty.pt holds no state dict"):
        load_state_dict_file(tmp_path / "empty.pt", "my scorer")


def test_prepare_clip_mixes_or_takes_the_first_channel_resamples_and_refuses_bad_audio():
    stereo = np.stack([np.full(800, 0.5, np.float32), np.full(800, -0.1, np.float32)])
    mixed = prepare_clip(stereo, 8000, 16000)
    assert mixed.shape == (1600,) and np.allclose(mixed[100:-100], 0.2, atol=1e-3)
    first = prepare_clip(stereo, 16000, 16000, first_channel=True)
    assert np.allclose(first, 0.5)
    with pytest.raises(ValueError, match="empty audio"):
        prepare_clip(np.zeros(0, np.float32), 16000, 16000)
    with pytest.raises(ValueError, match="non-finite"):
        prepare_clip(np.array([0.0, np.nan], np.float32), 16000, 16000)
