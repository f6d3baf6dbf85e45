"""Curriculum model construction: specialist configs, the slicing rule, building the
DCMoE model from dense specialists, and which parameters train in stages 2 and 3."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import random_codes, random_video

from unimoe.config import TASKS, ConfigError, overlay, paper_preset
from unimoe.model import UniMoEAudio
from unimoe.sequence import Example, collate
from unimoe.training.stages import (
    apply_trainable,
    build_moe_from_specialists,
    slice_layout,
    specialist_config,
    stage2_trainable,
    stage3_trainable,
    trainable_predicate,
)

KEPT = [[1, 3], [0, 2], [3, 0], [2, 1]]  # non-trivial, order-sensitive choice of slices for the tiny preset


def make_specialists(moe_cfg, dtype=torch.float32, seed=100):
    spec_cfg = specialist_config(moe_cfg)
    out = {}
    for i, task in enumerate(moe_cfg.moe.specialists):
        torch.manual_seed(seed + i)  # different weights per specialist, so averaging is not trivial
        out[task] = UniMoEAudio(spec_cfg).to(dtype)
    return out


def swiglu_hidden(dense, x):
    return F.silu(F.linear(x, dense.gate_proj.weight)) * F.linear(x, dense.up_proj.weight)


def expert_out(experts, e, x):
    w = torch.zeros(x.shape[0], experts.num_experts, dtype=x.dtype)
    w[:, e] = 1
    return experts.forward_all(x, w)


# ---- slicing rule and specialist config --------------------------------------------------------------------


def test_paper_layout_is_the_released_eight_expert_layout():
    cfg = paper_preset()
    spec = specialist_config(cfg)
    assert spec.ffn == "dense" and not spec.is_moe and spec.intermediate_size == 11008
    a, b = spec.to_dict(), cfg.to_dict()
    for d in (a, b):
        d.pop("ffn"), d.pop("name")
    assert a == b  # nothing but the FFN kind changes
    lay = slice_layout(cfg)
    assert (lay.num_slices, lay.slice_width, lay.slices_per_specialist) == (4, 2752, 2)
    assert lay.kept_slices == [[0, 1]] * 4 and lay.kept_slices_default and lay.unused_tail_channels == 0
    assert [(x.specialist, x.slice, x.start, x.end) for x in lay.experts[4:6]] == [
        ("t2m", 0, 0, 2752),
        ("t2m", 1, 2752, 5504),
    ]
    assert [x.specialist for x in lay.experts] == [t for t in TASKS for _ in range(2)]


def test_tiny_layout_and_config_errors(tiny_cfg):
    lay = slice_layout(tiny_cfg)
    assert (lay.num_slices, lay.slice_width, len(lay.experts)) == (4, 32, 8)
    with pytest.raises(ConfigError, match="too narrow"):
        specialist_config(overlay(tiny_cfg, {"moe": {"routed_intermediate": 96}}))
    with pytest.raises(ConfigError, match="out of range"):
        slice_layout(overlay(tiny_cfg, {"moe": {"kept_slices": [[0, 4], [0, 1], [0, 1], [0, 1]]}}))
    with pytest.raises(ConfigError, match="lists 3 slices"):
        slice_layout(overlay(tiny_cfg, {"moe": {"kept_slices": [[0, 1, 2], [0], [0, 1], [0, 1]]}}))
    with pytest.raises(ConfigError, match="num_routed_experts"):
        slice_layout(overlay(tiny_cfg, {"moe": {"num_routed_experts": 6}}))
    with pytest.raises(ConfigError, match="no MoE layer"):
        slice_layout(overlay(tiny_cfg, {"ffn": "dense"}))


# ---- building the MoE model


@pytest.fixture(scope="module")
def built(tiny_cfg):
    cfg = overlay(tiny_cfg, {"moe": {"kept_slices": KEPT}})
    specs = make_specialists(cfg, torch.float64)
    model, prov = build_moe_from_specialists(cfg, specs, seed=7, sources={t: f"ckpt/{t}" for t in specs})
    return cfg, specs, model, prov


def test_each_expert_is_its_specialists_slice(built):
    cfg, specs, model, prov = built
    r = cfg.moe.routed_intermediate
    x = torch.randn(13, cfg.hidden_size, dtype=torch.float64)
    for i, layer in enumerate(model.layers):
        experts = layer.mlp.experts
        for e in range(cfg.moe.num_routed_experts):
            task, j = cfg.moe.specialists[e // 2], KEPT[e // 2][e % 2]
            assert prov["expert_map"][str(e)] == {
                "specialist": task,
                "slice": j,
                "channels": [j * r, (j + 1) * r],
            }
            dense = specs[task].layers[i].mlp
            want = F.linear(
                swiglu_hidden(dense, x)[:, j * r : (j + 1) * r],
                dense.down_proj.weight[:, j * r : (j + 1) * r],
            )
            torch.testing.assert_close(expert_out(experts, e, x), want, rtol=0, atol=1e-12)
        # the k experts of a specialist reproduce its FFN restricted to the kept channels
        for s, task in enumerate(cfg.moe.specialists):
            dense = specs[task].layers[i].mlp
            mask = torch.zeros(cfg.intermediate_size, dtype=torch.float64)
            for j in KEPT[s]:
                mask[j * r : (j + 1) * r] = 1
            want = F.linear(swiglu_hidden(dense, x) * mask, dense.down_proj.weight)
            got = expert_out(experts, 2 * s, x) + expert_out(experts, 2 * s + 1, x)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_all_slices_kept_reproduce_the_dense_ffn(tiny_cfg):
    cfg = overlay(tiny_cfg, {"moe": {"routed_intermediate": 64}})  # 2 slices of 64 = the whole 128-wide FFN
    specs = make_specialists(cfg, torch.float64)
    model, _ = build_moe_from_specialists(cfg, specs)
    x = torch.randn(9, cfg.hidden_size, dtype=torch.float64)
    for i, layer in enumerate(model.layers):
        for s, task in enumerate(cfg.moe.specialists):
            got = expert_out(layer.mlp.experts, 2 * s, x) + expert_out(layer.mlp.experts, 2 * s + 1, x)
            torch.testing.assert_close(got, specs[task].layers[i].mlp(x).out, rtol=0, atol=1e-12)


def test_shared_weights_are_the_mean_and_vision_comes_from_v2m(built):
    cfg, specs, model, prov = built
    order = cfg.moe.specialists
    states = {t: m.state_dict() for t, m in specs.items()}
    checked = set()
    for key, value in model.state_dict().items():
        if key.startswith("vision."):
            assert torch.equal(value, states["v2m"][key]), key
        elif ".mlp." not in key:
            want = (
                torch.stack([states[t][key] for t in order]).mean(0)
                if value.is_floating_point()
                else states[order[0]][key]
            )
            assert torch.equal(value, want), key
            checked.add(key.split(".")[0] if not key.startswith("layers.") else key.split(".", 2)[2])
    assert {
        "embed_tokens",
        "audio_embed",
        "norm",
        "audio_head",
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.q_proj.bias",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
    } <= checked
    # the specialists really differ, so the mean is not one of them
    assert not torch.equal(model.embed_tokens.weight, specs["zh_tts"].embed_tokens.weight)
    assert not torch.equal(
        specs["v2m"].vision.state_dict()["tower.blocks.0.attn.qkv.weight"],
        specs["t2m"].vision.state_dict()["tower.blocks.0.attn.qkv.weight"],
    )
    assert prov["vision"]["source"] == "v2m"
    assert "layers.*.self_attn.q_proj.weight" in prov["averaging"]["parameters"]


def test_router_and_shared_are_new_and_seeded(built):
    cfg, specs, model, _ = built
    again, _ = build_moe_from_specialists(cfg, specs, seed=7)
    other, _ = build_moe_from_specialists(cfg, specs, seed=8)
    for name in ("router.weight", "shared_experts.w_gate", "shared_experts.w_down"):
        a = model.layers[0].mlp.get_parameter(name)
        assert torch.equal(a, again.layers[0].mlp.get_parameter(name))
        assert not torch.equal(a, other.layers[0].mlp.get_parameter(name))
    assert model.layers[0].mlp.router.weight.dtype == torch.float64


def test_provenance_is_json_and_complete(built):
    cfg, _, _, prov = built
    back = json.loads(json.dumps(prov))
    assert back == prov
    assert back["specialists"] == list(cfg.moe.specialists)
    assert back["slicing"]["kept_slices"] == KEPT and not back["slicing"]["kept_slices_default"]
    assert back["specialist_sources"]["v2m"] == "ckpt/v2m"
    assert back["moe_layers"] == [0, 1] and back["new_init"]["seed"] == 7
    assert len(back["expert_map"]) == cfg.moe.num_routed_experts


def test_mixed_dense_and_moe_layers(tiny_cfg):
    cfg = overlay(tiny_cfg, {"ffn": ["dense", "top_p"]})
    specs = make_specialists(cfg)
    model, prov = build_moe_from_specialists(cfg, specs)
    assert prov["moe_layers"] == [1] and prov["dense_layers_averaged"] == [0]
    want = torch.stack([specs[t].layers[0].mlp.up_proj.weight for t in cfg.moe.specialists]).mean(0)
    assert torch.equal(model.layers[0].mlp.up_proj.weight, want)


def test_mismatches_are_clear_errors(tiny_cfg):
    specs = make_specialists(tiny_cfg)
    wrong_width = dict(specs)
    torch.manual_seed(0)
    wrong_width["t2m"] = UniMoEAudio(overlay(specialist_config(tiny_cfg), {"intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"'t2m' layer 0: FFN gate_proj is \[96, 64\], expected \[128, 64\]"):
        build_moe_from_specialists(tiny_cfg, wrong_width)
    wrong_vocab = dict(specs)
    wrong_vocab["en_tts"] = UniMoEAudio(overlay(specialist_config(tiny_cfg), {"vocab_size": 600}))
    with pytest.raises(ValueError, match=r"embed_tokens.weight: specialist 'en_tts' has shape \[600, 64\]"):
        build_moe_from_specialists(tiny_cfg, wrong_vocab)
    with pytest.raises(ValueError, match=r"missing \['v2m'\]"):
        build_moe_from_specialists(tiny_cfg, {t: m for t, m in specs.items() if t != "v2m"})
    moe_spec = dict(specs)
    moe_spec["zh_tts"] = UniMoEAudio(tiny_cfg)
    with pytest.raises(ValueError, match="'zh_tts' is not dense"):
        build_moe_from_specialists(tiny_cfg, moe_spec)
    no_vision = {t: UniMoEAudio(overlay(specialist_config(tiny_cfg), {"vision": None})) for t in specs}
    with pytest.raises(ValueError, match="does not match specialist_config"):
        build_moe_from_specialists(tiny_cfg, no_vision)


# ---- stage predicates


def test_stage2_trains_exactly_router_and_shared(built):
    _, _, model, _ = built
    names = [n for n, _ in model.named_parameters()]
    want = {
        f"layers.{i}.mlp.{p}"
        for i in range(len(model.layers))
        for p in ("router.weight", "shared_experts.w_gate", "shared_experts.w_up", "shared_experts.w_down")
    }
    assert {n for n in names if stage2_trainable(n)} == want
    assert all(stage3_trainable(n) for n in names)
    # wrappers (DDP, torch.compile, FSDP) do not change the answer; the vision tower's mlp never trains
    assert stage2_trainable("module.layers.3.mlp.router.weight")
    assert stage2_trainable("_orig_mod.layers.0._fsdp_wrapped_module.mlp.shared_experts.w_up")
    assert not stage2_trainable("module.layers.0.mlp.experts.w_up")
    assert not stage2_trainable("vision.tower.blocks.0.mlp.gate_proj.weight")
    assert trainable_predicate(2) is stage2_trainable and trainable_predicate("joint")("x")
    with pytest.raises(ValueError, match="unknown stage"):
        trainable_predicate(4)


def test_built_model_trains_only_what_the_stage_allows(built, builder, tokenizer, tiny_cfg):
    cfg, specs, _, _ = built
    model, _ = build_moe_from_specialists(cfg, specs, seed=1)
    model = model.float().train()  # the fixture's specialists are float64
    k = cfg.audio.num_codebooks
    examples = [
        Example("en_tts", text="hello world", codes=random_codes(k, 10, 1)),
        Example("t2m", text="a calm piano melody", codes=random_codes(k, 12, 2)),
        Example("v2m", text="piano", codes=random_codes(k, 8, 3), video=random_video(0)),
    ]
    batch = collate([builder.build(e) for e in examples], tokenizer.pad_id, cfg.audio.pad_id)
    for stage in (2, 3):
        model.zero_grad(set_to_none=True)
        summary = apply_trainable(model, trainable_predicate(stage))
        out = model.loss(batch)
        assert torch.isfinite(out["ce"]) and out["aux"] > 0
        (out["ce"] + 0.01 * out["aux"]).backward()
        for name, p in model.named_parameters():
            if trainable_predicate(stage)(name):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None and not p.requires_grad, name
        if stage == 2:
            assert len(summary["trainable"]) == 8 and summary["frozen_params"] > summary["trainable_params"]
        else:
            assert summary["frozen_params"] == 0
