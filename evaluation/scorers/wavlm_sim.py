"""Speaker similarity (the paper's SIM): WavLM-large + ECAPA-TDNN-small, UniSpeech speaker-verification recipe.

Reference: ``microsoft/UniSpeech`` ``downstreams/speaker_verification`` (``models/ecapa_tdnn.py``,
``verification.py``) as used by Seed-TTS-eval: ``ECAPA_TDNN_SMALL(feat_dim=1024, emb_dim=256,
feat_type="wavlm_large")`` with the fine-tuned checkpoint ``wavlm_large_finetune.pth`` (the "WavLM
large, fix pre-train: No" row of that README), cosine similarity of the two 256-d embeddings.

Forward (one clip, 16 kHz, first channel):

1. s3prl's WavLM upstream: the wave is layer-normalised over time (``cfg.normalize`` is True for
   WavLM-large), then WavLM runs and its 25 ``hidden_states`` are taken: the encoder input (CNN
   features -> LayerNorm -> projection, plus the convolutional position embedding), the input of each
   of layers 2..24, and the final LayerNorm of layer 24's output. transformers'
   ``WavLMModel(output_hidden_states=True)`` (stable-layer-norm variant) returns exactly these 25
   tensors in this order.
2. ``softmax(feature_weight)``-weighted sum of the 25 layers, ``+ 1e-6``, ``InstanceNorm1d(1024)``
   (no affine) over time.
3. ECAPA-TDNN-small: Conv1dReluBn(1024->512, k5), three SE-Res2Blocks (k3, dilation 2/3/4, scale 8,
   SE bottleneck 128), concat -> Conv1d(1536->1536) + ReLU, attentive statistics pooling (128),
   BatchNorm1d(3072), Linear(3072->256). Module and parameter names here are the reference's, so the
   head part of the checkpoint loads by name.

Backbone key mapping (UniSpeech/s3prl WavLM -> transformers ``WavLMModel``; the same table as
transformers' own ``convert_wavlm_original_pytorch_checkpoint_to_pytorch.py``), after stripping the
checkpoint's ``feature_extract.model.`` prefix:

=============================================== ==============================================================
UniSpeech / s3prl ``WavLM``                     transformers ``WavLMModel``
=============================================== ==============================================================
``feature_extractor.conv_layers.{i}.0.*``       ``feature_extractor.conv_layers.{i}.conv.*``
``feature_extractor.conv_layers.{i}.2.1.*``     ``feature_extractor.conv_layers.{i}.layer_norm.*`` (LN mode)
``layer_norm.*``                                ``feature_projection.layer_norm.*``
``post_extract_proj.*``                         ``feature_projection.projection.*``
``mask_emb``                                    ``masked_spec_embed`` (unused at inference)
``encoder.pos_conv.0.weight_g`` / ``weight_v``  ``encoder.pos_conv_embed.conv.parametrizations.weight.original0/1``
``encoder.pos_conv.0.bias``                     ``encoder.pos_conv_embed.conv.bias``
``encoder.layer_norm.*``                        ``encoder.layer_norm.*``
``encoder.layers.{i}.self_attn.{q,k,v,out}_proj`` ``encoder.layers.{i}.attention.{q,k,v,out}_proj``
``encoder.layers.{i}.self_attn.grep_linear``    ``encoder.layers.{i}.attention.gru_rel_pos_linear``
``encoder.layers.{i}.self_attn.grep_a``         ``encoder.layers.{i}.attention.gru_rel_pos_const``
``encoder.layers.0.self_attn.relative_attention_bias`` ``encoder.layers.0.attention.rel_attn_embed``
``encoder.layers.{i}.self_attn_layer_norm``     ``encoder.layers.{i}.layer_norm``
``encoder.layers.{i}.fc1`` / ``fc2``            ``encoder.layers.{i}.feed_forward.intermediate_dense`` / ``output_dense``
``encoder.layers.{i}.final_layer_norm``         ``encoder.layers.{i}.final_layer_norm``
=============================================== ==============================================================

Loading is strict in both directions (every model tensor must come from the checkpoint; checkpoint
keys other than pre-training-only ones — ``label_embs_concat``, ``final_proj``, ``project_q``,
``quantizer`` — must be used). The reference loads with ``strict=False`` on top of s3prl's
pretrained WavLM-large; the fine-tuned checkpoint carries the whole backbone, so strict loading is the
same model and catches a wrong file. ``torch.load(weights_only=True)``: a checkpoint holding
non-tensor objects is refused with a clear message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import Tensor, nn

from evaluation.scorers.base import load_state_dict_file, prepare_clip, register
from evaluation.scorers.speaker import SpeakerSimilarityScorer
from unimoe.config import ConfigModel
from unimoe.io import resolve_weights, sha256_file


SAMPLE_RATE = 16000
METRIC = "sim"
DEFAULT_WEIGHTS = "wavlm_sim/wavlm_large_finetune.pth"
WHAT = "WavLM-large + ECAPA-TDNN speaker verification (UniSpeech)"
ORIGIN = (
    "https://drive.google.com/file/d/18rekjal9NPo0VquVtali-80yy63252RX/view (wavlm_large_finetune.pth, the "
    "'WavLM large' / fix pre-train 'No' row of https://github.com/microsoft/UniSpeech/tree/main/downstreams/"
    "speaker_verification)"
)

# microsoft/wavlm-large's architecture (what s3prl's ``wavlm_large`` builds).
WAVLM_LARGE: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "conv_dim": (512,) * 7,
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "conv_bias": True,
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "num_conv_pos_embeddings": 128,
    "num_conv_pos_embedding_groups": 16,
    "num_buckets": 320,
    "max_bucket_distance": 800,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "feat_extract_activation": "gelu",
}


class WavLMSVConfig(ConfigModel):
    """Defaults: WavLM-large + ECAPA_TDNN_SMALL(emb_dim=256). Tests use tiny numbers, same architecture."""

    model_config = ConfigDict(frozen=True)
    section = "wavlm_sv"

    wavlm: dict[str, Any] = Field(default_factory=lambda: dict(WAVLM_LARGE))  # the WavLM checkpoint's own config
    channels: int = 512
    pool_channels: int = 1536  # hard-coded in the reference
    emb_dim: int = 256
    attention_channels: int = 128
    se_bottleneck_dim: int = 128
    scale: int = 8
    normalize_wave: bool = True  # WavLM-large's cfg.normalize


# ------------------------------------------------------------------------------------------------------
# ECAPA-TDNN (names = UniSpeech's models/ecapa_tdnn.py)
# ------------------------------------------------------------------------------------------------------


class Conv1dReluBn(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 1, padding: int = 0, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, 1, padding, dilation)
        self.bn = nn.BatchNorm1d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(F.relu(self.conv(x)))


class Res2Conv1dReluBn(nn.Module):
    def __init__(self, channels: int, kernel_size: int, padding: int, dilation: int, scale: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels {channels} not divisible by scale {scale}")
        self.width = channels // scale
        self.nums = scale if scale == 1 else scale - 1
        self.convs = nn.ModuleList(
            nn.Conv1d(self.width, self.width, kernel_size, 1, padding, dilation) for _ in range(self.nums)
        )
        self.bns = nn.ModuleList(nn.BatchNorm1d(self.width) for _ in range(self.nums))

    def forward(self, x: Tensor) -> Tensor:
        spx = torch.split(x, self.width, 1)
        out = []
        sp = spx[0]
        for i in range(self.nums):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = self.bns[i](F.relu(self.convs[i](sp)))  # conv -> relu -> bn, as the reference
            out.append(sp)
        if self.nums != len(spx):
            out.append(spx[self.nums])
        return torch.cat(out, dim=1)


class SE_Connect(nn.Module):  # noqa: N801 - reference name (checkpoint keys)
    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(channels, bottleneck)
        self.linear2 = nn.Linear(bottleneck, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(self.linear2(F.relu(self.linear1(x.mean(dim=2)))))
        return x * s.unsqueeze(2)


class SE_Res2Block(nn.Module):  # noqa: N801
    def __init__(self, cin: int, cout: int, kernel: int, padding: int, dilation: int, scale: int, se_dim: int) -> None:
        super().__init__()
        self.Conv1dReluBn1 = Conv1dReluBn(cin, cout)
        self.Res2Conv1dReluBn = Res2Conv1dReluBn(cout, kernel, padding, dilation, scale)
        self.Conv1dReluBn2 = Conv1dReluBn(cout, cout)
        self.SE_Connect = SE_Connect(cout, se_dim)
        self.shortcut = nn.Conv1d(cin, cout, kernel_size=1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        residual = self.shortcut(x) if self.shortcut is not None else x
        x = self.SE_Connect(self.Conv1dReluBn2(self.Res2Conv1dReluBn(self.Conv1dReluBn1(x))))
        return x + residual


class AttentiveStatsPool(nn.Module):
    def __init__(self, in_dim: int, attention_channels: int) -> None:
        super().__init__()
        self.linear1 = nn.Conv1d(in_dim, attention_channels, kernel_size=1)
        self.linear2 = nn.Conv1d(attention_channels, in_dim, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        alpha = torch.softmax(self.linear2(torch.tanh(self.linear1(x))), dim=2)
        mean = torch.sum(alpha * x, dim=2)
        residuals = torch.sum(alpha * (x**2), dim=2) - mean**2
        std = torch.sqrt(residuals.clamp(min=1e-9))
        return torch.cat([mean, std], dim=1)


class WavLMECAPA(nn.Module):
    """``ECAPA_TDNN_SMALL(feat_type="wavlm_large")`` with transformers' WavLM as ``feature_extract``."""

    def __init__(self, cfg: WavLMSVConfig | None = None) -> None:
        super().__init__()
        from transformers import WavLMConfig, WavLMModel

        self.cfg = cfg = cfg or WavLMSVConfig()
        wcfg = WavLMConfig(**cfg.wavlm)
        self.feature_extract = WavLMModel(wcfg)
        feat_dim = wcfg.hidden_size
        self.feature_weight = nn.Parameter(torch.zeros(wcfg.num_hidden_layers + 1))
        self.instance_norm = nn.InstanceNorm1d(feat_dim)
        c = cfg.channels
        self.layer1 = Conv1dReluBn(feat_dim, c, kernel_size=5, padding=2)
        self.layer2 = SE_Res2Block(c, c, 3, 2, 2, cfg.scale, cfg.se_bottleneck_dim)
        self.layer3 = SE_Res2Block(c, c, 3, 3, 3, cfg.scale, cfg.se_bottleneck_dim)
        self.layer4 = SE_Res2Block(c, c, 3, 4, 4, cfg.scale, cfg.se_bottleneck_dim)
        self.conv = nn.Conv1d(c * 3, cfg.pool_channels, kernel_size=1)
        self.pooling = AttentiveStatsPool(cfg.pool_channels, cfg.attention_channels)
        self.bn = nn.BatchNorm1d(cfg.pool_channels * 2)
        self.linear = nn.Linear(cfg.pool_channels * 2, cfg.emb_dim)

    def hidden_states(self, wave: Tensor) -> Tensor:
        """``[L+1, B, T, D]`` WavLM hidden states of ``wave [B, samples]`` (s3prl's ``hidden_states``)."""
        if self.cfg.normalize_wave:
            wave = F.layer_norm(wave, wave.shape[-1:])
        out = self.feature_extract(wave, output_hidden_states=True)
        return torch.stack(out.hidden_states, dim=0)

    def features(self, wave: Tensor) -> Tensor:
        """Softmax-weighted layer sum, instance-normalised: ``[B, D, T]``."""
        hs = self.hidden_states(wave)
        w = F.softmax(self.feature_weight, dim=-1)[:, None, None, None]
        x = (w * hs).sum(dim=0).transpose(1, 2) + 1e-6
        return self.instance_norm(x)

    def head(self, x: Tensor) -> Tensor:
        out1 = self.layer1(x)
        out2 = self.layer2(out1)
        out3 = self.layer3(out2)
        out4 = self.layer4(out3)
        out = F.relu(self.conv(torch.cat([out2, out3, out4], dim=1)))
        return self.linear(self.bn(self.pooling(out)))

    def forward(self, wave: Tensor) -> Tensor:
        return self.head(self.features(wave))


# ------------------------------------------------------------------------------------------------------
# Checkpoint mapping
# ------------------------------------------------------------------------------------------------------

BACKBONE_PREFIX = "feature_extract.model."
_IGNORED = ("label_embs_concat", "final_proj.", "project_q.", "quantizer.")
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)$"), r"feature_extractor.conv_layers.\1.conv.\2"),
    (re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)$"), r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (re.compile(r"^layer_norm\.(weight|bias)$"), r"feature_projection.layer_norm.\1"),
    (re.compile(r"^post_extract_proj\.(weight|bias)$"), r"feature_projection.projection.\1"),
    (re.compile(r"^mask_emb$"), "masked_spec_embed"),
    (re.compile(r"^encoder\.pos_conv\.0\.weight_g$"), "encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (re.compile(r"^encoder\.pos_conv\.0\.weight_v$"), "encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (re.compile(r"^encoder\.pos_conv\.0\.bias$"), "encoder.pos_conv_embed.conv.bias"),
    (re.compile(r"^encoder\.layer_norm\.(weight|bias)$"), r"encoder.layer_norm.\1"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$"),
     r"encoder.layers.\1.attention.\2.\3"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)$"), r"encoder.layers.\1.attention.gru_rel_pos_linear.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.grep_a$"), r"encoder.layers.\1.attention.gru_rel_pos_const"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight$"), r"encoder.layers.\1.attention.rel_attn_embed.weight"),
    (re.compile(r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)$"), r"encoder.layers.\1.layer_norm.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc1\.(weight|bias)$"), r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.fc2\.(weight|bias)$"), r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (re.compile(r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$"), r"encoder.layers.\1.final_layer_norm.\2"),
]


def map_backbone_key(key: str) -> str | None:
    """transformers name of a UniSpeech/s3prl WavLM parameter (None for pre-training-only keys)."""
    if key.startswith(_IGNORED):
        return None
    for pat, repl in _RULES:
        if pat.match(key):
            return pat.sub(repl, key)
    raise KeyError(f"unmapped WavLM checkpoint key {key!r}")


def convert_unispeech_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The UniSpeech SV checkpoint's ``model`` state dict with backbone keys renamed for WavLMECAPA."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith(BACKBONE_PREFIX):
            new = map_backbone_key(k[len(BACKBONE_PREFIX) :])
            if new is None:
                continue
            out["feature_extract." + new] = v
        else:
            out[k] = v
    return out


def load_wavlm_ecapa(path: str | Path, cfg: WavLMSVConfig | None = None) -> WavLMECAPA:
    sd = load_state_dict_file(path, WHAT, "model", resave_as="{'model': state_dict}")
    model = WavLMECAPA(cfg)
    try:
        mapped = convert_unispeech_state_dict(sd)
    except KeyError as e:
        raise ValueError(f"{WHAT}: {path}: {e.args[0]}") from None
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if k != "feature_extract.masked_spec_embed"]
    if missing or unexpected:
        raise RuntimeError(
            f"{WHAT}: {path} does not match the architecture: missing {missing[:8]} "
            f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})"
        )
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------
# Scorer
# ------------------------------------------------------------------------------------------------------


class WavLMSim(SpeakerSimilarityScorer):
    """Cosine between WavLM-ECAPA embeddings of the generated clip and the prompt (higher is better)."""

    name = "wavlm_sim"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metric = METRIC
    metrics: ClassVar[dict[str, str]] = {METRIC: "higher"}

    def __init__(self, model: WavLMECAPA, *, sha256: str, weights_path: Path, device: str | torch.device = "cpu",
                 min_seconds: float = 0.1) -> None:
        from importlib.metadata import version as pkg_version

        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sha256 = sha256
        self.weights_path = Path(weights_path)
        self.min_samples = int(min_seconds * SAMPLE_RATE)
        self.tf_version = pkg_version("transformers")

    @property
    def version(self) -> str:
        return f"transformers {self.tf_version} WavLM+ECAPA (sha256:{self.sha256[:12]})"

    def protocol_info(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights_path),
            "sha256": self.sha256,
            "sample_rate": SAMPLE_RATE,
            "channel": "first",
            "protocol": "cosine(generated, prompt) of 256-d WavLM-large/ECAPA-TDNN embeddings",
            "config": self.model.cfg.to_dict(),
        }

    @torch.inference_mode()
    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """256-d embedding of one clip (first channel, resampled to 16 kHz)."""
        x = prepare_clip(wav, sample_rate, SAMPLE_RATE, first_channel=True)
        if len(x) < self.min_samples:
            raise ValueError(f"clip shorter than {self.min_samples} samples at 16 kHz")
        e = self.model(torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))[0]
        e = e.float().cpu().numpy()
        if not np.all(np.isfinite(e)):
            raise ValueError("embedding is not finite")
        return e

@register("wavlm_sim", WavLMSim)
def make_wavlm_sim(
    *,
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    config: WavLMSVConfig | dict[str, Any] | None = None,
    device: str | None = None,
) -> WavLMSim:
    """Load the UniSpeech WavLM-large speaker-verification checkpoint from the weights store."""
    if isinstance(config, dict):
        config = WavLMSVConfig.from_dict(config)
    path = resolve_weights(weights_path, sha256=sha256, what=WHAT, origin=ORIGIN)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    model = load_wavlm_ecapa(path, config)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return WavLMSim(model, sha256=digest, weights_path=path, device=dev)
