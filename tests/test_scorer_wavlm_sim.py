"""WavLM-ECAPA speaker similarity: tiny instance of the same architecture with random weights, saved in
the UniSpeech checkpoint layout and loaded through the real key mapping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers.wavlm_sim import (
    METRIC,
    WAVLM_LARGE,
    WavLMECAPA,
    WavLMSim,
    WavLMSVConfig,
    load_wavlm_ecapa,
)
from unimoe.io import ChecksumError, sha256_file

TINY = WavLMSVConfig(
    wavlm={
        **WAVLM_LARGE,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "conv_dim": (16,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
    },
    channels=16,
    pool_channels=24,
    emb_dim=8,
    attention_channels=8,
    se_bottleneck_dim=8,
    scale=8,
)

# transformers name fragment -> UniSpeech/s3prl name fragment (written independently of the module's table)
_INVERSE = [
    (".conv.weight", ".0.weight", "feature_extractor.conv_layers."),
    (".conv.bias", ".0.bias", "feature_extractor.conv_layers."),
    (".layer_norm.weight", ".2.1.weight", "feature_extractor.conv_layers."),
    (".layer_norm.bias", ".2.1.bias", "feature_extractor.conv_layers."),
]


def _to_unispeech(key: str) -> str | None:
    """Our (transformers) parameter name -> the name in wavlm_large_finetune.pth."""
    if not key.startswith("feature_extract."):
        return key
    k = key[len("feature_extract.") :]
    if k == "masked_spec_embed":
        k = "mask_emb"
    elif k.startswith("feature_extractor.conv_layers."):
        for a, b, _ in _INVERSE:
            if k.endswith(a):
                k = k[: -len(a)] + b
                break
    elif k.startswith("feature_projection.layer_norm."):
        k = k.replace("feature_projection.layer_norm.", "layer_norm.")
    elif k.startswith("feature_projection.projection."):
        k = k.replace("feature_projection.projection.", "post_extract_proj.")
    elif k.startswith("encoder.pos_conv_embed.conv."):
        k = {
            "bias": "encoder.pos_conv.0.bias",
            "parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
            "parametrizations.weight.original1": "encoder.pos_conv.0.weight_v",
        }[k.split("encoder.pos_conv_embed.conv.")[1]]
    elif k.startswith("encoder.layers."):
        for a, b in [
            (".attention.gru_rel_pos_linear.", ".self_attn.grep_linear."),
            (".attention.gru_rel_pos_const", ".self_attn.grep_a"),
            (".attention.rel_attn_embed.", ".self_attn.relative_attention_bias."),
            (".attention.", ".self_attn."),
            (".feed_forward.intermediate_dense.", ".fc1."),
            (".feed_forward.output_dense.", ".fc2."),
            (".layer_norm.", ".self_attn_layer_norm."),
        ]:
            if a in k:
                k = k.replace(a, b)
                break
    return "feature_extract.model." + k


@pytest.fixture(scope="module")
def model_and_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = WavLMECAPA(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("feature_weight"):
                p.normal_(0, 1.0)
            elif name.endswith(("norm.weight", "bn.weight", "bns.0.weight")):
                p.uniform_(0.5, 1.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    sd = {_to_unispeech(k): v.clone() for k, v in model.state_dict().items()}
    sd["feature_extract.model.label_embs_concat"] = torch.zeros(3, 4)  # pre-training leftovers are ignored
    path = tmp_path_factory.mktemp("w") / "wavlm_tiny_sv.pth"
    torch.save({"model": sd}, path)
    return model, path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(model_and_ckpt):
    _, path, sha = model_and_ckpt
    return load_scorer("wavlm_sim", weights_path=str(path), sha256=sha, config=TINY, device="cpu")


def _voice(f0: float, n: int = 16000, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return (0.1 * x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def test_registered_and_version(scorer, model_and_ckpt):
    from importlib.metadata import version

    assert "wavlm_sim" in available_scorers()
    assert isinstance(scorer, WavLMSim) and scorer.metrics == {METRIC: "higher"}
    assert scorer.version == f"transformers {version('transformers')} WavLM+ECAPA (sha256:{model_and_ckpt[2][:12]})"


def test_checkpoint_keys_land_on_the_right_parameters(scorer, model_and_ckpt):
    original, path, _ = model_and_ckpt
    loaded = scorer.model.state_dict()
    ref = original.state_dict()
    assert set(loaded) == set(ref)
    for k in ref:
        torch.testing.assert_close(loaded[k], ref[k], rtol=0, atol=0, msg=k)
    # a few pairs spelled out: UniSpeech name -> tensor in our model
    raw = torch.load(path, weights_only=True)["model"]
    pairs = {
        "feature_extract.model.feature_extractor.conv_layers.0.2.1.weight": "feature_extract.feature_extractor.conv_layers.0.layer_norm.weight",
        "feature_extract.model.encoder.pos_conv.0.weight_g": "feature_extract.encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "feature_extract.model.encoder.layers.0.self_attn.grep_a": "feature_extract.encoder.layers.0.attention.gru_rel_pos_const",
        "feature_extract.model.encoder.layers.0.self_attn.relative_attention_bias.weight": "feature_extract.encoder.layers.0.attention.rel_attn_embed.weight",
        "feature_extract.model.encoder.layers.2.fc1.weight": "feature_extract.encoder.layers.2.feed_forward.intermediate_dense.weight",
        "feature_extract.model.post_extract_proj.weight": "feature_extract.feature_projection.projection.weight",
        "layer2.Res2Conv1dReluBn.convs.6.weight": "layer2.Res2Conv1dReluBn.convs.6.weight",
    }
    for a, b in pairs.items():
        torch.testing.assert_close(raw[a], loaded[b], rtol=0, atol=0)


def test_full_size_layout():
    with torch.device("meta"):
        sd = WavLMECAPA().state_dict()
    assert sd["feature_weight"].shape == (25,)  # 24 layers + the encoder input
    assert sd["layer1.conv.weight"].shape == (512, 1024, 5)
    assert sd["layer2.Res2Conv1dReluBn.convs.0.weight"].shape == (64, 64, 3)
    assert sd["conv.weight"].shape == (1536, 1536, 1)
    assert sd["pooling.linear1.weight"].shape == (128, 1536, 1)
    assert sd["bn.running_mean"].shape == (3072,)
    assert sd["linear.weight"].shape == (256, 3072)
    assert sd["feature_extract.encoder.layers.23.attention.gru_rel_pos_const"].shape == (1, 16, 1, 1)
    assert "feature_extract.encoder.layers.1.attention.rel_attn_embed.weight" not in sd


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5)


def _crb(x, sd, p, pad=0, dil=1):
    return _bn(F.relu(F.conv1d(x, sd[p + "conv.weight"], sd[p + "conv.bias"], padding=pad, dilation=dil)), sd, p + "bn.")


def _block(x, sd, p, pad, dil, scale):
    y = _crb(x, sd, p + "Conv1dReluBn1.")
    parts = torch.chunk(y, scale, dim=1)
    outs, sp = [], None
    for i in range(scale - 1):
        sp = parts[i] if i == 0 else sp + parts[i]
        q = f"{p}Res2Conv1dReluBn."
        sp = F.conv1d(sp, sd[f"{q}convs.{i}.weight"], sd[f"{q}convs.{i}.bias"], padding=pad, dilation=dil)
        sp = F.batch_norm(F.relu(sp), sd[f"{q}bns.{i}.running_mean"], sd[f"{q}bns.{i}.running_var"],
                          sd[f"{q}bns.{i}.weight"], sd[f"{q}bns.{i}.bias"], False, 0.0, 1e-5)
        outs.append(sp)
    y = torch.cat(outs + [parts[-1]], dim=1)
    y = _crb(y, sd, p + "Conv1dReluBn2.")
    s = y.mean(2)
    s = torch.sigmoid(F.linear(F.relu(F.linear(s, sd[p + "SE_Connect.linear1.weight"], sd[p + "SE_Connect.linear1.bias"])),
                               sd[p + "SE_Connect.linear2.weight"], sd[p + "SE_Connect.linear2.bias"]))
    return y * s[:, :, None] + x


def test_embedding_matches_functional_restatement(scorer):
    """Weighted layer sum + instance norm + ECAPA head, re-stated with torch.nn.functional from the
    checkpoint tensors, equals the module's embedding (the backbone's hidden states are shared)."""
    model = scorer.model
    sd = model.state_dict()
    wav = _voice(150.0, 12000)
    with torch.inference_mode():
        w = torch.from_numpy(wav)[None]
        hs = model.hidden_states(w)  # [L+1, 1, T, D]
        assert hs.shape[0] == TINY.wavlm["num_hidden_layers"] + 1
        # the wave is layer-normalised first (WavLM-large's cfg.normalize)
        wn = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-5)
        raw = model.feature_extract(wn, output_hidden_states=True).hidden_states
        torch.testing.assert_close(hs[-1], raw[-1])
        a = torch.softmax(sd["feature_weight"], 0)
        x = sum(a[i] * hs[i] for i in range(hs.shape[0])).transpose(1, 2) + 1e-6
        x = (x - x.mean(2, keepdim=True)) / torch.sqrt(x.var(2, unbiased=False, keepdim=True) + 1e-5)
        o1 = _crb(x, sd, "layer1.", pad=2)
        o2 = _block(o1, sd, "layer2.", 2, 2, TINY.scale)
        o3 = _block(o2, sd, "layer3.", 3, 3, TINY.scale)
        o4 = _block(o3, sd, "layer4.", 4, 4, TINY.scale)
        h = F.relu(F.conv1d(torch.cat([o2, o3, o4], 1), sd["conv.weight"], sd["conv.bias"]))
        al = torch.softmax(F.conv1d(torch.tanh(F.conv1d(h, sd["pooling.linear1.weight"], sd["pooling.linear1.bias"])),
                                    sd["pooling.linear2.weight"], sd["pooling.linear2.bias"]), dim=2)
        mean = (al * h).sum(2)
        std = torch.sqrt(((al * h * h).sum(2) - mean**2).clamp(min=1e-9))
        emb = F.linear(_bn(torch.cat([mean, std], 1), sd, "bn."), sd["linear.weight"], sd["linear.bias"])[0]
    np.testing.assert_allclose(scorer.embed(wav, 16000), emb.numpy(), atol=1e-4, rtol=1e-4)


def test_cosine_math_and_channel_handling(scorer):
    a, b = _voice(120.0, 16000), _voice(210.0, 14000, seed=1)
    ea, eb = scorer.embed(a, 16000), scorer.embed(b, 16000)
    expect = float(ea @ eb / np.sqrt((ea @ ea) * (eb @ eb)))
    out = scorer.score(
        [
            AudioItem("ab", a, 16000, reference=b, reference_sample_rate=16000),
            AudioItem("aa", a, 16000, reference=a, reference_sample_rate=16000),
            # first channel only: a second channel of noise does not change the score
            AudioItem("stereo", np.stack([a, np.random.default_rng(3).standard_normal(16000).astype(np.float32)]),
                      16000, reference=b, reference_sample_rate=16000),
        ]
    )
    assert out[0][METRIC] == pytest.approx(expect, abs=1e-6)
    assert out[1][METRIC] == pytest.approx(1.0, abs=1e-6)
    assert out[2][METRIC] == pytest.approx(out[0][METRIC], abs=1e-6)
    # resampled input: close to the 16 kHz score
    from unimoe.common.audio import resample

    r = scorer.score([AudioItem("r", resample(a, 16000, 24000), 24000, reference=b, reference_sample_rate=16000)])
    assert r[0][METRIC] == pytest.approx(out[0][METRIC], abs=0.05)


def test_bad_items_are_nan(scorer):
    a = _voice(120.0)
    out = scorer.score(
        [
            AudioItem("noref", a, 16000),
            AudioItem("short", a[:100], 16000, reference=a, reference_sample_rate=16000),
            AudioItem("nan", np.full(8000, np.nan, np.float32), 16000, reference=a, reference_sample_rate=16000),
            AudioItem("ok", a, 16000, reference=a, reference_sample_rate=16000),
        ]
    )
    assert all(math.isnan(r[METRIC]) for r in out[:3])
    assert math.isfinite(out[3][METRIC])
    assert scorer.score([]) == []


def test_checksum_and_architecture_errors(model_and_ckpt, tmp_path):
    _, path, sha = model_and_ckpt
    with pytest.raises(ChecksumError):
        load_scorer("wavlm_sim", weights_path=str(path), sha256="f" * 64, config=TINY)
    other = WavLMSVConfig(**{**TINY.to_dict(), "wavlm": {**TINY.wavlm, "num_hidden_layers": 2}})
    with pytest.raises(RuntimeError, match="size mismatch|does not match the architecture"):
        load_wavlm_ecapa(path, other)
    sd = torch.load(path, weights_only=True)["model"]
    sd["feature_extract.model.encoder.something_new"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(ValueError, match="unmapped WavLM checkpoint key"):
        load_wavlm_ecapa(bad, TINY)


def test_missing_head_tensor_is_an_error(model_and_ckpt, tmp_path):
    _, path, _ = model_and_ckpt
    sd = torch.load(path, weights_only=True)["model"]
    del sd["linear.weight"]
    bad = tmp_path / "nohead.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(RuntimeError, match="does not match the architecture.*linear.weight"):
        load_wavlm_ecapa(bad, TINY)
