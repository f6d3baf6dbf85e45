import json

import pytest
import torch
import yaml

from unimoe.config import ConfigError, UniMoEConfig, get_preset, overlay, paper_preset, tiny_preset
from unimoe.training.config import TrainConfig


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


def test_codec_for_tokens_follows_the_codec_the_tokens_were_made_with():
    from unimoe.config import (DEMO_CODEC_SHA256, ConfigError, codec_for_tokens, tiny_preset,
                               tiny_random_preset)

    tiny = tiny_preset()
    demo_info = {"is_random_init": False, "weights_path": "/x/demo-dac.safetensors", "weights_sha256": DEMO_CODEC_SHA256,
                 "sample_rate": 16000, "frame_rate": 50.0}
    assert codec_for_tokens(tiny, demo_info) is tiny  # already that codec
    trained = dict(demo_info, weights_path="/ws/codec/codec.safetensors", weights_sha256="ab" * 32)
    out = codec_for_tokens(tiny, trained)
    assert (out.codec.variant, out.codec.weights_path, out.codec.weights_sha256) == \
        ("trained", "/ws/codec/codec.safetensors", "ab" * 32)
    assert tiny.codec.variant == "demo" and out.config_hash() != tiny.config_hash()  # a copy, and a new config
    rand = tiny_random_preset()
    assert codec_for_tokens(rand, {"is_random_init": True}) is rand
    with pytest.raises(ConfigError, match="random-init"):
        codec_for_tokens(tiny, {"is_random_init": True})
    with pytest.raises(ConfigError, match="lacks weights"):
        codec_for_tokens(tiny, {"is_random_init": False, "weights_sha256": None})


def test_curate_config_tokenises_with_a_trained_codec_file():
    from data.curate import STEP_FIELDS, CurateConfig

    cfg = CurateConfig.from_dict({"codec_weights": "/ws/codec/codec.safetensors", "codec_sha256": "cd" * 32})
    codec = cfg.model_preset_config().codec
    assert (codec.variant, codec.weights_path, codec.weights_sha256) == ("trained", "/ws/codec/codec.safetensors", "cd" * 32)
    assert CurateConfig().model_preset_config().codec.variant == "demo"
    assert {"codec_weights", "codec_sha256"} <= set(STEP_FIELDS["tokenize"])  # a new codec re-tokenises
    with pytest.raises(ValueError, match="codec_weights"):
        CurateConfig.from_dict({"codec_sha256": "cd" * 32})


def _curate(d):
    from data.curate import CurateConfig

    return CurateConfig.from_dict(d)


def _bench(**kw):
    from evaluation.bench.config import BenchConfig

    return BenchConfig(**kw)


@pytest.mark.parametrize("build, message", [
    (lambda: TrainConfig.from_dict({"lr": "fast"}), "train.lr: expected a number, got 'fast'"),
    (lambda: overlay(tiny_preset(), {"moe": {"top_k": True}}), "moe.top_k: expected an integer, got True"),
    (lambda: overlay(tiny_preset(), {"ffn": 5}), "ffn: expected a string or a list, got 5"),
    (lambda: overlay(tiny_preset(), {"moe": {"kept_slices": [[0, "1"]]}}),
     r"moe.kept_slices\[0\]\[1\]: expected an integer, got '1'"),
    (lambda: _curate({"quality": {"utmos_min": "high"}}), "curate.quality.utmos_min: expected a number, got 'high'"),
    (lambda: _curate({"balance": {"totl": 5}}), r"curate.balance: unknown key\(s\) \['totl'\]"),
    (lambda: _curate({"quality": {"min_dbfs": 0.0}}), "curate.quality: min_dbfs 0.0 > max_dbfs -2.0"),
    (lambda: _bench(seeds=["1"]), r"bench.seeds\[0\]: expected an integer, got '1'"),
    (lambda: _bench(toplines=1), "bench.toplines: expected true/false, got 1"),
])
def test_every_config_names_the_key_path_of_a_wrong_value(build, message):
    """One error type for every config, its message the full key path and what was expected."""
    with pytest.raises(ConfigError, match=message):
        build()


def test_an_integer_is_a_number_and_is_stored_as_one():
    cfg = TrainConfig.from_dict({"lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and "lr: 1.0" in cfg.to_yaml()


def test_curate_config_nests_typed_parts_but_records_only_the_fields_given():
    """The cache keys of the curate steps hash ``to_dict()``: a nested part holds what the YAML said, not
    the defaults of its class, and reads back to the same typed config."""
    from data.balance import BalanceConfig
    from data.curate import CurateConfig, step_config

    demo = CurateConfig.demo("small")
    d = demo.to_dict()
    assert d["quality"] == {"dnsmos_ovrl_min": 2.2}
    assert d["balance"] == {"by": "count", "total": 12, "splits": ["train"], "warmup_fraction": 0.25}
    assert isinstance(demo.balance_config(), BalanceConfig) and demo.balance_config().splits == ("train",)
    assert demo.quality_config().dnsmos_ovrl_min == 2.2 and demo.quality_config().utmos_min == 3.0
    assert CurateConfig.from_dict(d) == demo and CurateConfig.from_dict(d).to_dict() == d
    assert step_config(CurateConfig().to_dict(), "filter") == {"quality": {}}
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain YAML types only


def test_settings_are_read_from_the_environment_at_call_time(monkeypatch, tmp_path):
    from unimoe.io import weights_root
    from unimoe.settings import settings

    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("UNIMOE_WORKERS", "3")
    monkeypatch.delenv("UNIMOE_DASK_ADDRESS", raising=False)
    assert weights_root() == tmp_path and settings().workers == 3 and settings().dask_address == ""
    monkeypatch.delenv("UNIMOE_WORKERS")
    assert settings().workers is None
    monkeypatch.setenv("UNIMOE_WORKERS", "many")
    with pytest.raises(ConfigError, match="UNIMOE_WORKERS: expected an integer, got 'many'"):
        settings()


def test_compute_device_follows_the_environment_then_the_hardware(monkeypatch):
    from unimoe.settings import compute_device

    monkeypatch.delenv("UNIMOE_DEVICE", raising=False)
    assert compute_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute_device() == "cuda"      # a worker that sees a GPU uses it
    for value in ("cpu", "cuda:1"):
        monkeypatch.setenv("UNIMOE_DEVICE", value)
        assert compute_device() == value
    monkeypatch.setenv("UNIMOE_DEVICE", "gpu")
    with pytest.raises(ConfigError, match="UNIMOE_DEVICE"):
        compute_device()
