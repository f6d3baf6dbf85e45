"""Ablation variants as named config overlays."""

from __future__ import annotations

import json

import pytest

from unimoe.config import ConfigError, overlay, paper_preset, tiny_preset
from unimoe.model import parameter_report
from unimoe.training.stages import slice_layout, specialist_config
from unimoe.training.variants import (
    VARIANTS,
    apply_variant,
    finer_experts,
    list_variants,
    matched_dense_intermediate,
)

NAMES = [
    "unimoe-top-p0.7",
    "unify-dense",
    "unify-moe-top2",
    "wo-init",
    "p0.5",
    "p0.9",
    "experts-8",
    "experts-16",
]
PRESETS = {"tiny": tiny_preset, "paper": paper_preset}


def test_registry_lists_every_ablation():
    assert [n for n, _ in list_variants()] == NAMES == list(VARIANTS)
    assert all(isinstance(d, str) and d and "\n" not in d for _, d in list_variants())


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("name", NAMES)
def test_every_variant_is_a_valid_config_and_leaves_the_base_alone(name, preset):
    base = PRESETS[preset]()
    before = base.to_dict()
    cfg, curriculum, train = apply_variant(name, base)
    assert base.to_dict() == before
    assert cfg.validate() is cfg and cfg.to_dict() != {}
    json.dumps({"curriculum": curriculum, "train": train, "model": VARIANTS[name].as_dict(base)})
    assert curriculum["variant"] == name and curriculum["init"] in ("specialists", "random")
    if 1 in curriculum["stages"]:
        # stage 1 specialists must be sliceable into this variant's experts
        assert not specialist_config(cfg).is_moe
        slice_layout(cfg)
    # applying twice gives the same thing (no shared mutable state in the registry)
    again = apply_variant(name, base)
    assert again[0].to_dict() == cfg.to_dict() and again[1] == curriculum and again[2] == train
    curriculum["stages"].append("x")
    assert apply_variant(name, base)[1] != curriculum


def test_variant_contents():
    base = paper_preset()
    cfg, cur, _ = apply_variant("unimoe-top-p0.7", base)
    assert (cfg.ffn, cfg.moe.top_p, cur["stages"], cur["init"]) == ("top_p", 0.7, [1, 2, 3], "specialists")
    cfg, cur, _ = apply_variant("unify-moe-top2", base)
    assert (cfg.ffn, cfg.moe.top_k, cur["stages"]) == ("top_k", 2, [1, 2, 3])
    cfg, cur, _ = apply_variant("wo-init", base)
    assert (cfg.ffn, cur["stages"], cur["init"]) == ("top_p", [3], "random")
    cfg, cur, _ = apply_variant("unify-dense", base)
    assert (cfg.ffn, cur["stages"], cur["init"], cfg.is_moe) == ("dense", ["joint"], "random", False)
    assert apply_variant("p0.5", base)[0].moe.top_p == 0.5 and apply_variant("p0.9", base)[0].moe.top_p == 0.9
    # per-layer kinds of a mixed base are kept: only the MoE layers change kind
    mixed = overlay(tiny_preset(), {"ffn": ["dense", "top_p"]})
    assert apply_variant("unify-moe-top2", mixed)[0].ffn == ["dense", "top_k"]


def test_unknown_variant_lists_the_names():
    with pytest.raises(ConfigError, match=r"unknown variant 'p0.8'.*unify-dense.*experts-16"):
        apply_variant("p0.8", tiny_preset())


@pytest.mark.parametrize(
    "base",
    [paper_preset(), tiny_preset(), overlay(tiny_preset(), {"ffn": ["dense", "top_p"]})],
    ids=["paper", "tiny", "tiny-mixed"],
)
def test_unify_dense_matches_total_parameters(base):
    moe_total = parameter_report(base)["total"]
    cfg, _, _ = apply_variant("unify-dense", base)
    dense_total = parameter_report(cfg)["total"]
    assert abs(dense_total - moe_total) <= 0.01 * moe_total
    # the rounding (to a multiple of 8 channels) is the only mismatch
    assert abs(dense_total - moe_total) <= 4 * 3 * base.hidden_size * base.num_layers
    if base.name == "paper":
        assert cfg.intermediate_size == matched_dense_intermediate(base) == 24768


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_sixteen_experts_cut_the_same_channels_finer(preset):
    base = PRESETS[preset]()
    e8, _, _ = apply_variant("experts-8", base)
    e16, _, _ = apply_variant("experts-16", base)
    default, _, _ = apply_variant("unimoe-top-p0.7", base)
    assert e8.moe.num_routed_experts == 8 and e16.moe.num_routed_experts == 16

    def width(c):
        return c.moe.num_routed_experts * c.moe.routed_intermediate

    assert width(e16) == width(e8) == width(default)
    assert e16.moe.routed_intermediate * 2 == default.moe.routed_intermediate
    if preset == "paper":
        assert (e8.moe.routed_intermediate, e16.moe.routed_intermediate) == (2752, 1376)

    def channels(cfg):
        return {
            task: sorted(
                c for x in slice_layout(cfg).experts if x.specialist == task for c in range(x.start, x.end)
            )
            for task in cfg.moe.specialists
        }

    assert channels(e16) == channels(e8) == channels(default)


def test_finer_experts_translates_explicit_kept_slices():
    base = overlay(tiny_preset(), {"moe": {"kept_slices": [[0, 2], [3, 1], [1, 2], [0, 3]]}})
    ov = finer_experts(base, 16)
    assert ov["moe"]["kept_slices"] == [[0, 1, 4, 5], [2, 3, 6, 7], [2, 3, 4, 5], [0, 1, 6, 7]]
    cfg, _, _ = apply_variant("experts-16", base)

    def channels(c, task):
        return {i for x in slice_layout(c).experts if x.specialist == task for i in range(x.start, x.end)}

    for task in base.moe.specialists:
        assert channels(cfg, task) == channels(base, task)
    with pytest.raises(ConfigError, match="cannot be split evenly"):
        finer_experts(base, 10)
