import json

import pytest
import yaml

from unimoe.config import ConfigError, UniMoEConfig, get_preset, overlay, paper_preset, tiny_preset


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_presets_round_trip_yaml_and_json(name, tmp_path):
    cfg = get_preset(name)
    assert UniMoEConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert UniMoEConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for suffix in (".yaml", ".json"):
        cfg.save(tmp_path / f"c{suffix}")
        assert UniMoEConfig.load(tmp_path / f"c{suffix}") == cfg


def test_paper_preset_shapes():
    cfg = paper_preset()
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (36, 2048, 16, 2, 128)
    assert (cfg.moe.num_routed_experts, cfg.moe.routed_intermediate) == (8, 2752)
    assert (cfg.moe.num_null_experts, cfg.moe.num_shared_experts, cfg.moe.shared_intermediate) == (1, 2, 1376)
    assert cfg.audio.num_codebooks == 12 and cfg.audio.vocab_size == 1027
    assert cfg.audio.delay_pattern == [0, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]


def test_unknown_key_rejected_with_its_path():
    data = tiny_preset().to_dict()
    data["moe"]["top_pp"] = 0.5
    with pytest.raises(ConfigError, match=r"moe: unknown key\(s\) \['top_pp'\]"):
        UniMoEConfig.from_dict(data)


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": "64"}, "hidden_size: expected an integer"),
    ({"moe": {"top_p": 1.5}}, "top_p must be in"),
    ({"moe": {"weighting": "softmax"}}, "moe.weighting"),
    ({"ffn": ["dense"]}, "ffn lists 1 layers"),
    ({"ffn": "moe"}, "unknown kind"),
    ({"audio": {"delays": [0, 1]}}, "audio.delays needs 4"),
    ({"num_kv_heads": 3}, "num_heads must divide"),
    ({"codec": {"frame_rate": 75.0}}, "frame_rate"),
])
def test_invalid_values_rejected(change, message):
    with pytest.raises(ConfigError, match=message):
        overlay(tiny_preset(), change)


def test_overlay_deep_merges_and_per_layer_ffn():
    cfg = overlay(tiny_preset(), {"ffn": ["dense", "top_k"], "moe": {"top_k": 2}})
    assert cfg.ffn_kinds == ["dense", "top_k"] and cfg.moe.top_p == tiny_preset().moe.top_p
    assert cfg.config_hash() != tiny_preset().config_hash()
    assert tiny_preset().config_hash() == tiny_preset().config_hash()


def test_balance_weight_decays_linearly_in_optimizer_steps():
    moe = paper_preset().moe
    assert moe.balance_weight(0) == pytest.approx(0.025)
    assert moe.balance_weight(5_000) == pytest.approx(0.013)
    assert moe.balance_weight(10_000) == pytest.approx(0.001)
    assert moe.balance_weight(50_000) == pytest.approx(0.001)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("huge")
