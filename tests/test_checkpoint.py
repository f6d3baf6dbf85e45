import ast
from pathlib import Path

import pytest
import torch

from unimoe.checkpoint import CheckpointError, load_checkpoint, read_state, save_checkpoint
from unimoe.config import overlay

ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_preserves_weights_config_and_state(tiny_model, tiny_cfg, tokenizer, tmp_path):
    path = save_checkpoint(tmp_path / "ck", tiny_model, tiny_cfg, {"stage": 2, "step": 17}, tokenizer=tokenizer,
                           extra_tensors={"adam.m": torch.ones(3)})
    model, cfg, state = load_checkpoint(path)
    assert cfg == tiny_cfg and state["stage"] == 2 and state["step"] == 17
    assert state["config_hash"] == tiny_cfg.config_hash()
    for (n1, p1), (n2, p2) in zip(tiny_model.state_dict().items(), model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "extra.safetensors", "model.safetensors",
                                                       "state.json", "tokenizer.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_overwrite_is_atomic_and_complete(tiny_model, tiny_cfg, tmp_path):
    save_checkpoint(tmp_path / "ck", tiny_model, tiny_cfg, {"step": 1})
    save_checkpoint(tmp_path / "ck", tiny_model, tiny_cfg, {"step": 2})
    assert read_state(tmp_path / "ck")["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_corrupt_weights_are_detected(tiny_model, tiny_cfg, tmp_path):
    path = save_checkpoint(tmp_path / "ck", tiny_model, tiny_cfg)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)


def test_config_weight_mismatch_is_a_clear_error(tiny_model, tiny_cfg, tmp_path):
    path = save_checkpoint(tmp_path / "ck", tiny_model, tiny_cfg)
    other = overlay(tiny_cfg, {"ffn": "dense"})
    (path / "config.json").write_text(other.to_json())
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_nothing_is_unpickled_without_weights_only():
    """Project rule: torch.load only ever with weights_only=True (checked on the syntax tree)."""
    offenders = []
    for package in ("unimoe", "data", "evaluation", "flows", "benchmarks"):
        for py in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(py.read_text(), str(py))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    if not safe:
                        offenders.append(f"{py.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
