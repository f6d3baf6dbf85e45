"""The scorer base module: loading several scorers at once, the tensors-only checkpoint loader, the
clip preparation every speech scorer shares, the recorded ``info`` and the weights-file model holder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.scorers import ScorerUnavailable, load_scorers
from evaluation.scorers.base import Scorer, WeightsFileModel, load_state_dict_file, prepare_clip


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


class _Probe(WeightsFileModel, Scorer):
    name = "probe"
    metrics = {"probe": "higher"}

    def __init__(self, batch_size: int = 2) -> None:
        self.init_model(torch.nn.Linear(2, 1).train(), weights_path="w/probe.pt", weights_sha256="ab" * 32,
                        batch_size=batch_size, device="cpu")

    @property
    def version(self) -> str:
        return "probe 1"

    def protocol_info(self):
        return {**self.weights_info(), "window_s": 10.0}


def test_info_is_name_version_metrics_and_the_scorers_protocol_fields():
    probe = _Probe()
    assert probe.info() == {"scorer": "probe", "version": "probe 1", "metrics": {"probe": "higher"},
                            "weights": "w/probe.pt", "weights_sha256": "ab" * 32, "window_s": 10.0}
    assert not probe.model.training and probe.device == torch.device("cpu") and probe.batch_size == 2
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        _Probe(batch_size=0)


def test_gpu_device_goes_only_to_the_scorers_that_declare_a_gpu(monkeypatch):
    """``load_scorers(gpu_device=...)``: the curate filter on a GPU worker builds the neural scorers there
    and leaves the CPU ones (DNSMOS's ONNX sessions, signal analyses) alone; an explicit option wins."""
    import evaluation.scorers.base as base

    built: dict[str, dict] = {}

    class GpuScorer(Scorer):
        name = "gpu_probe"
        resources = {"GPU": 1}

    class CpuScorer(Scorer):
        name = "cpu_probe"

    base._import_all()
    for name, cls in (("gpu_probe", GpuScorer), ("gpu_pinned", GpuScorer), ("cpu_probe", CpuScorer)):
        monkeypatch.setitem(base._REGISTRY, name, lambda _n=name, _c=cls, **kw: (built.__setitem__(_n, kw), _c())[1])
        monkeypatch.setitem(base._CLASSES, name, cls)
    scorers, unavailable = load_scorers(["gpu_probe", "gpu_pinned", "cpu_probe"], {"gpu_pinned": {"device": "cuda:1"}},
                                        gpu_device="cuda")
    assert set(scorers) == {"gpu_probe", "gpu_pinned", "cpu_probe"} and unavailable == {}
    assert built == {"gpu_probe": {"device": "cuda"}, "gpu_pinned": {"device": "cuda:1"}, "cpu_probe": {}}
    built.clear()
    load_scorers(["gpu_probe", "cpu_probe"])
    assert built == {"gpu_probe": {}, "cpu_probe": {}}
