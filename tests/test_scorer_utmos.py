"""UTMOS22 strong: architecture-faithful tiny model with random weights, through the real loading path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evaluation.scorers import AudioItem, available_scorers, load_scorer
from evaluation.scorers.utmos import (
    DEFAULT_WEIGHTS,
    UTMOS22Strong,
    UTMOS22StrongConfig,
    UTMOSScorer,
    load_utmos22_strong,
)
from unimoe.io import ChecksumError, sha256_file

TINY = UTMOS22StrongConfig(
    conv_layers=((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2,  # same strides: 320x hop, 400 rf
    ssl_dim=32,
    ffn_dim=64,
    num_heads=4,
    num_layers=2,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    domain_emb_dim=8,
    judge_emb_dim=8,
    lstm_hidden=16,
    proj_hidden=32,
)


def _clip(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 0.05 * rng.standard_normal(n)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(1234)
    model = UTMOS22Strong(TINY)
    # Spread the LayerNorm/GroupNorm affine params so every part of the net matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "conv_layers.0.2.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("weight_g"):
                p.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("weights") / "utmos22_tiny.pt"
    torch.save(model.state_dict(), path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(weights):
    path, sha = weights
    return load_scorer("utmos22_strong", weights_path=str(path), sha256=sha, config=TINY)


# ---- independent, functional re-statement of the SpeechMOS reference forward (unpadded clips) -----------
def _reference_score(sd: dict, cfg: UTMOS22StrongConfig, wave: torch.Tensor) -> torch.Tensor:
    eps = cfg.norm_eps
    p = "wav2vec2."
    x = wave[:, None, :]
    for i, (c, _, s) in enumerate(cfg.conv_layers):
        x = F.conv1d(x, sd[f"{p}feature_extractor.conv_layers.{i}.0.weight"], stride=s)
        if i == 0:
            g = f"{p}feature_extractor.conv_layers.0.2."
            x = F.group_norm(x, c, sd[g + "weight"], sd[g + "bias"], eps)
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, (x.shape[-1],), sd[p + "layer_norm.weight"], sd[p + "layer_norm.bias"], eps)
    x = F.linear(x, sd[p + "post_extract_proj.weight"], sd[p + "post_extract_proj.bias"])
    e = p + "encoder."
    w = torch._weight_norm(sd[e + "pos_conv.0.weight_v"], sd[e + "pos_conv.0.weight_g"], 2)
    xc = F.conv1d(
        x.transpose(1, 2),
        w,
        sd[e + "pos_conv.0.bias"],
        padding=cfg.pos_conv_kernel // 2,
        groups=cfg.pos_conv_groups,
    )[:, :, :-1]
    x = x + F.gelu(xc).transpose(1, 2)
    d = cfg.ssl_dim
    x = F.layer_norm(x, (d,), sd[e + "layer_norm.weight"], sd[e + "layer_norm.bias"], eps)
    # the reference pads the frame axis to an even length and masks the padded keys
    pad = x.shape[1] % 2
    mask = None
    if pad:
        x = F.pad(x, (0, 0, 0, 1))
        mask = torch.zeros(x.shape[:2], dtype=torch.bool)
        mask[:, -1] = True
    x = x.transpose(0, 1)
    for li in range(cfg.num_layers):
        q = f"{e}layers.{li}."
        a = q + "self_attn."
        attn = F.multi_head_attention_forward(
            x,
            x,
            x,
            d,
            cfg.num_heads,
            torch.empty([0]),
            torch.cat([sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"]]),
            None,
            None,
            False,
            0.0,
            sd[a + "out_proj.weight"],
            sd[a + "out_proj.bias"],
            training=False,
            key_padding_mask=mask,
            need_weights=False,
            use_separate_proj_weight=True,
            q_proj_weight=sd[a + "q_proj.weight"],
            k_proj_weight=sd[a + "k_proj.weight"],
            v_proj_weight=sd[a + "v_proj.weight"],
        )[0]
        x = F.layer_norm(
            x + attn, (d,), sd[q + "self_attn_layer_norm.weight"], sd[q + "self_attn_layer_norm.bias"], eps
        )
        ff = F.linear(
            F.gelu(F.linear(x, sd[q + "fc1.weight"], sd[q + "fc1.bias"])),
            sd[q + "fc2.weight"],
            sd[q + "fc2.bias"],
        )
        x = F.layer_norm(
            x + ff, (d,), sd[q + "final_layer_norm.weight"], sd[q + "final_layer_norm.bias"], eps
        )
    x = x.transpose(0, 1)
    if pad:
        x = x[:, :-1]
    b, f, _ = x.shape
    cat = torch.cat(
        [x, sd["domain_emb"][:, None].expand(b, f, -1), sd["judge_emb"][:, None].expand(b, f, -1)], 2
    )
    lstm = torch.nn.LSTM(cat.shape[-1], cfg.lstm_hidden, batch_first=True, bidirectional=True)
    lstm.load_state_dict({k[len("blstm.") :]: v for k, v in sd.items() if k.startswith("blstm.")})
    h = lstm(cat)[0]
    h = F.relu(F.linear(h, sd["projection.0.weight"], sd["projection.0.bias"]))
    frame = F.linear(h, sd["projection.2.weight"], sd["projection.2.bias"])  # (B, F, 1)
    return frame.mean(dim=1).squeeze(1) * 2 + 3


def test_registered_and_info(scorer, weights):
    assert "utmos22_strong" in available_scorers()
    assert isinstance(scorer, UTMOSScorer)
    assert scorer.metrics == {"utmos": "higher"}
    assert scorer.version == f"sha256:{weights[1][:12]}"
    info = scorer.info()
    assert info["scorer"] == "utmos22_strong" and info["sha256"] == weights[1]
    assert DEFAULT_WEIGHTS.endswith("utmos22_strong_step7459_v1.pt")


def test_full_architecture_state_dict_layout():
    """The default config has the released checkpoint's keys and shapes (built on the meta device)."""
    with torch.device("meta"):
        sd = UTMOS22Strong().state_dict()
    expect = {
        "domain_emb": (1, 128),
        "judge_emb": (1, 128),
        "wav2vec2.mask_emb": (768,),
        "wav2vec2.feature_extractor.conv_layers.0.0.weight": (512, 1, 10),
        "wav2vec2.feature_extractor.conv_layers.0.2.weight": (512,),
        "wav2vec2.feature_extractor.conv_layers.4.0.weight": (512, 512, 3),
        "wav2vec2.feature_extractor.conv_layers.6.0.weight": (512, 512, 2),
        "wav2vec2.post_extract_proj.weight": (768, 512),
        "wav2vec2.encoder.pos_conv.0.weight_g": (1, 1, 128),
        "wav2vec2.encoder.pos_conv.0.weight_v": (768, 48, 128),
        "wav2vec2.encoder.layers.11.self_attn.q_proj.weight": (768, 768),
        "wav2vec2.encoder.layers.11.fc1.weight": (3072, 768),
        "wav2vec2.encoder.layers.11.final_layer_norm.bias": (768,),
        "blstm.weight_ih_l0": (2048, 1024),
        "blstm.weight_hh_l0_reverse": (2048, 512),
        "projection.0.weight": (2048, 1024),
        "projection.2.weight": (1, 2048),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "wav2vec2.encoder.layers.12.fc1.weight" not in sd
    # 12 layers x 16 + 7 convs + 2 GN + 2 LN + 2 proj + 3 pos_conv + 2 LN + mask_emb + 2 emb + 8 lstm + 4 head
    assert len(sd) == 225
    assert UTMOS22StrongConfig().receptive_field == 400
    assert UTMOS22StrongConfig().num_frames(16000) == 49


def test_matches_reference_forward(weights):
    """Our module == an independent functional restatement of the reference (torch's own weight-norm,
    multi_head_attention_forward with the even-length padding, GroupNorm, LSTM), odd and even frame counts."""
    path, _ = weights
    model = load_utmos22_strong(path, TINY)
    sd = torch.load(path, weights_only=True)
    for n in (8000, 8320, 11111):
        wave = torch.from_numpy(_clip(n % 7, n))[None]
        with torch.inference_mode():
            ours = model(wave)
            ref = _reference_score(sd, TINY, wave)
        torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_scores_finite_deterministic_batch_equals_single(weights):
    path, sha = weights
    s1 = load_scorer("utmos22_strong", weights_path=str(path), sha256=sha, config=TINY)
    s2 = load_scorer("utmos22_strong", weights_path=str(path), config=TINY.to_dict(), batch_size=2)
    items = [AudioItem(f"c{i}", _clip(i, n), 16000) for i, n in enumerate((16000, 9000, 12345, 16000, 4000))]
    batch = [r["utmos"] for r in s1.score(items)]
    assert all(math.isfinite(v) for v in batch)
    assert batch == [r["utmos"] for r in s1.score(items)]  # deterministic
    single = [s1.score([it])[0]["utmos"] for it in items]
    np.testing.assert_allclose(batch, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose([r["utmos"] for r in s2.score(items)], single, atol=1e-5, rtol=0)
    assert s2.version == s1.version  # the checksum is computed when not given


def test_padding_does_not_change_a_clip_score(weights):
    """Padding masks: a short clip scored next to a much longer one (lots of zero padding) keeps its score,
    although the model itself would give a different number for the zero-padded wave."""
    path, _ = weights
    model = load_utmos22_strong(path, TINY)
    short, long_ = _clip(3, 7001), _clip(4, 24000)
    with torch.inference_mode():
        alone = model(torch.from_numpy(short)[None])
        padded = torch.zeros(2, len(long_))
        padded[0, : len(short)] = torch.from_numpy(short)
        padded[1] = torch.from_numpy(long_)
        masked = model(padded, torch.tensor([len(short), len(long_)]))
        unmasked = model(padded)
        long_alone = model(torch.from_numpy(long_)[None])
    torch.testing.assert_close(masked[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked[1], long_alone[0], atol=1e-5, rtol=0)
    assert abs(float(unmasked[0] - alone[0])) > 1e-4  # the mask is what makes the difference


def test_score_formula_against_head(scorer):
    """utmos = 2 * mean over frames of the projection head's output + 3, recomputed by hand."""
    model = scorer.model
    wav = _clip(5, 13000)
    got = scorer.score([AudioItem("x", wav, 16000)])[0]["utmos"]
    with torch.inference_mode():
        w = torch.from_numpy(wav)[None]
        units = model.wav2vec2(w)  # (1, F, 32)
        f = units.shape[1]
        assert f == TINY.num_frames(len(wav))
        cat = torch.cat(
            [units, model.domain_emb.expand(f, -1)[None], model.judge_emb.expand(f, -1)[None]], dim=2
        )
        h = model.blstm(cat)[0][0].numpy().astype(np.float64)  # (F, 2 * lstm_hidden)
    w0, b0 = (
        model.projection[0].weight.detach().double().numpy(),
        model.projection[0].bias.detach().double().numpy(),
    )
    w2, b2 = (
        model.projection[2].weight.detach().double().numpy(),
        model.projection[2].bias.detach().double().numpy(),
    )
    frame = np.maximum(h @ w0.T + b0, 0.0) @ w2.T + b2  # (F, 1)
    assert abs(got - (2.0 * frame.mean() + 3.0)) < 1e-5


def test_resampling_mono_and_bad_items(scorer):
    wav16 = _clip(6, 16000)
    from unimoe.common.audio import resample

    wav24 = resample(wav16, 16000, 24000)
    stereo = np.stack([wav16, wav16])
    out = scorer.score(
        [
            AudioItem("a", wav16, 16000),
            AudioItem("b", wav24, 24000),
            AudioItem("stereo", stereo, 16000),
            AudioItem("short", wav16[:200], 16000),  # under the 400-sample receptive field
            AudioItem("nan", np.full(8000, np.nan, np.float32), 16000),
            AudioItem("empty", np.zeros(0, np.float32), 16000),
        ]
    )
    a, b, st = (out[i]["utmos"] for i in range(3))
    assert math.isfinite(b) and abs(a - b) < 0.05  # resampled round trip: close, not bit-identical
    assert st == pytest.approx(a, abs=1e-6)
    assert all(math.isnan(r["utmos"]) for r in out[3:])
    assert scorer.score([]) == []


def test_relative_path_from_weights_store(weights, tmp_path, monkeypatch):
    path, sha = weights
    (tmp_path / "utmos").mkdir()
    (tmp_path / "utmos" / "tiny.pt").write_bytes(path.read_bytes())
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    s = load_scorer("utmos22_strong", weights_path="utmos/tiny.pt", sha256=sha.upper(), config=TINY)
    assert s.version == f"sha256:{sha[:12]}"


def test_wrong_checksum_is_a_clear_error(weights):
    path, sha = weights
    bad = "0" * 64
    with pytest.raises(ChecksumError) as ei:
        load_scorer("utmos22_strong", weights_path=str(path), sha256=bad, config=TINY)
    msg = str(ei.value)
    assert "UTMOS22 strong" in msg and str(path) in msg and sha in msg and bad in msg


def test_strict_loading_rejects_other_architecture(weights):
    path, sha = weights
    other = UTMOS22StrongConfig(**{**TINY.to_dict(), "num_layers": 3})
    with pytest.raises(RuntimeError, match="Missing key"):
        load_scorer("utmos22_strong", weights_path=str(path), sha256=sha, config=other)


def test_accepts_parametrized_weight_norm_names(weights, tmp_path):
    """A state dict saved with torch's newer weight-norm parametrisation key names loads too."""
    path, _ = weights
    sd = torch.load(path, weights_only=True)
    e = "wav2vec2.encoder.pos_conv.0."
    sd[e + "parametrizations.weight.original0"] = sd.pop(e + "weight_g")
    sd[e + "parametrizations.weight.original1"] = sd.pop(e + "weight_v")
    p2 = tmp_path / "renamed.pt"
    torch.save(sd, p2)
    wave = torch.from_numpy(_clip(1, 9000))[None]
    with torch.inference_mode():
        torch.testing.assert_close(load_utmos22_strong(p2, TINY)(wave), load_utmos22_strong(path, TINY)(wave))


def test_weight_norm_conv_matches_torch():
    from evaluation.scorers.utmos import WeightNormConv1d

    torch.manual_seed(0)
    ours = WeightNormConv1d(32, 16, 4)
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2.0)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(32, 32, 16, padding=8, groups=4), dim=2)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ours.weight_g)
        ref.parametrizations.weight.original1.copy_(ours.weight_v)
        ref.bias.copy_(ours.bias)
    x = torch.randn(2, 32, 40)
    torch.testing.assert_close(ours(x), ref(x))
