"""scripts/gpu_check.py, the CUDA check a session runs the moment a GPU is lent, runs its four checks
(codec training, the demo codec continued through the CLI, one training stage, the MoE benchmark) end to end on the CPU with tiny settings. It
runs rarely and far from the code it calls, so drift (a renamed config key, say) must fail here first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from data.manifest import ManifestRecord
from data.tokenize import tokenize_manifest
from unimoe.config import overlay

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["hello world, this is a test", "the quick brown fox jumps", "a calm voice speaks", "one more line"]


def _voice(seconds: float, seed: int, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 110 + 40 * seed
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
            + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _data_dir(root: Path, tiny_cfg) -> Path:
    audio = root / "audio"
    audio.mkdir(parents=True)
    rows = []
    for i, text in enumerate(TEXTS):
        path = audio / f"en-{i}.wav"
        sf.write(str(path), _voice(1.0, i), 16000)
        rows.append(ManifestRecord(
            id=f"en-{i}", task="en_tts", language="en", audio_path=str(path), duration=1.0, sample_rate=16000,
            channels=1, text=text, speaker="spk1", source_corpus="unit", licence="CC0", split="train",
            provenance_sha256=f"{i:064x}", offset=0.0, source_duration=1.0))
    cfg = overlay(tiny_cfg, {"tokenizer": {"trained_vocab_size": 320}})
    tokenize_manifest(rows, root / "tokens", cfg, rows_per_shard=4)
    return root


def test_gpu_check_runs_every_check_on_cpu(tmp_path, tiny_cfg):
    data = _data_dir(tmp_path / "data", tiny_cfg)
    out = tmp_path / "out" / "gpu_check.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--data", str(data),
         "--work", str(tmp_path / "work"), "--out", str(out), "--stage-steps", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    report = json.loads(out.read_text())
    failed = {k: v.get("error") for k, v in report.items() if isinstance(v, dict) and v.get("ok") is False}
    assert proc.returncode == 0 and not failed, (failed, proc.stderr[-3000:])
    assert report["device"] == "cpu" and report["env"]["cuda_available"] in (True, False)
    codec = report["codec"]
    assert codec["steps"] == 4 and len(codec["kmeans_perplexity"]) == 4
    assert len(codec["export_sha256"]) == 64 and len(codec["corpus_hash"]) == 64
    assert all(np.isfinite(v) for k, v in codec["last_log"].items() if k.endswith("_loss"))
    cont = report["codec_continue"]  # the shipped demo codec continued through the CLI, exported beside the report
    assert cont["command"].startswith("unimoe codec train") and "--init-from demo" in cont["command"]
    assert cont["steps"] >= cont["parent_steps"] > 0
    assert (out.parent / "codec" / "codec.safetensors").is_file() and (out.parent / "codec" / "codec.json").is_file()
    stage = report["stage"]
    assert stage["steps"] == 2 and stage["losses_finite"] and stage["checkpoint"].endswith("step-000002")
    moe = report["moe"]
    assert moe["device"] == "cpu" and set(moe["shapes"]) == {"tiny"}
    assert moe["shapes"]["tiny"]["median_s"]["dcmoe_grouped"] > 0
