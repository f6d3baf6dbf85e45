"""UTMOS22 "strong" learner (the paper's UTMOS metric), fairseq-free, weights from the local store.

Architecture: the inference-time UTMOS22 strong learner of Saeki et al. (2022) as re-implemented
without fairseq in the SpeechMOS project (``tarepan/SpeechMOS``, ``speechmos/utmos22/strong/model.py``
and ``speechmos/utmos22/fairseq_alt.py``), whose released checkpoint is
``utmos22_strong_step7459_v1.pt``. Module and parameter names follow that implementation exactly, so
its state dict loads here with ``strict=True``. (The PyPI ``speechmos`` package is Microsoft's
DNSMOS wrapper and the PyPI ``utmos`` package needs fairseq: neither is this.)

Shapes (full config; B clips, T samples at 16 kHz, F = frames at 50 Hz)::

    wave (B, T)
    wav2vec2.feature_extractor   7 conv blocks, no bias: (512,k10,s5) GroupNorm(512,512)+GELU,
                                 4x (512,k3,s2)+GELU, 2x (512,k2,s2)+GELU  -> (B, 512, F), 320x hop
    wav2vec2.layer_norm          LayerNorm(512) over features               -> (B, F, 512)
    wav2vec2.post_extract_proj   Linear(512, 768)                           -> (B, F, 768)
    wav2vec2.encoder             x + GELU(SamePad(WNConv1d(768,768,k128,pad64,groups16))(x)),
                                 LayerNorm(768), 12 post-LN transformer layers
                                 (12 heads, FFN 3072, GELU), no final norm   -> (B, F, 768)
    domain_emb (1,128), judge_emb (1,128)  broadcast over B, F; concat       -> (B, F, 1024)
    blstm                        LSTM(1024, 512, bidirectional)             -> (B, F, 1024)
    projection                   Linear(1024,2048), ReLU, Linear(2048,1)    -> (B, F, 1) frame scores
    score                        2 * mean_F(frame scores) + 3               -> (B,)

Batching with padding (our addition; the reference scores one unpadded clip at a time, and a
padded batch there would change scores): each clip's valid frame count follows the conv
arithmetic; the first conv block's per-channel GroupNorm takes its statistics over the clip's valid
frames only; padded frames are zeroed before the positional convolution (so it sees the same zero
padding as a lone clip); attention uses a key-padding mask; the BLSTM runs on packed sequences; and
the frame mean is masked. A clip's score therefore does not depend on what it is batched with (up to
float rounding). The reference's pad-to-even-length before the transformer is dropped: its padded
keys are masked, so it changes nothing.

Loading: ``resolve_weights(weights_path, sha256=...)`` (clear error naming the file and
https://github.com/tarepan/SpeechMOS/releases when it is missing), then
``torch.load(..., weights_only=True)`` -> state dict -> ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ConfigDict, field_validator, model_validator
from torch import Tensor, nn

from evaluation.scorers.base import SPEECH, AudioItem, Scorer, register
from unimoe.common.audio import resample, to_mono
from unimoe.config import ConfigError, ConfigModel
from unimoe.io import resolve_weights, sha256_file

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DEFAULT_WEIGHTS = "utmos/utmos22_strong_step7459_v1.pt"
WHAT = "UTMOS22 strong"
ORIGIN = "https://github.com/tarepan/SpeechMOS/releases (utmos22_strong_step7459_v1.pt)"


class UTMOS22StrongConfig(ConfigModel):
    """Architecture hyper-parameters. Defaults are the released UTMOS22 strong learner; tests build
    tiny instances of the same architecture with smaller numbers."""

    model_config = ConfigDict(frozen=True)
    section = "utmos22_strong"

    # (channels, kernel, stride) of each feature-extractor conv block; the first has GroupNorm.
    conv_layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2
    ssl_dim: int = 768
    ffn_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    pos_conv_kernel: int = 128  # must be even (SamePad drops the last frame)
    pos_conv_groups: int = 16
    domain_emb_dim: int = 128
    judge_emb_dim: int = 128
    lstm_hidden: int = 512
    proj_hidden: int = 2048
    norm_eps: float = 1e-5

    @field_validator("conv_layers", mode="before")
    @classmethod
    def _blocks_as_tuples(cls, value: Any) -> Any:
        # a JSON/YAML config writes the blocks as lists
        return tuple(tuple(c) if isinstance(c, list) else c for c in value) if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_shapes(self) -> UTMOS22StrongConfig:
        if self.pos_conv_kernel % 2:
            raise ConfigError("pos_conv_kernel must be even")
        if self.ssl_dim % self.num_heads or self.ssl_dim % self.pos_conv_groups:
            raise ConfigError("ssl_dim must be divisible by num_heads and pos_conv_groups")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame (400 for the full model)."""
        rf = 1
        for _, k, s in reversed(self.conv_layers):
            rf = (rf - 1) * s + k
        return rf

    def num_frames(self, n_samples: int | Tensor) -> int | Tensor:
        """Frames the feature extractor produces for ``n_samples`` (0 when too short)."""
        n = n_samples
        for _, k, s in self.conv_layers:
            if isinstance(n, Tensor):
                n = torch.clamp(torch.div(n - k, s, rounding_mode="floor") + 1, min=0)
            else:
                n = max((n - k) // s + 1, 0)
        return n


# ------------------------------------------------------------------------------------------------------
# Modules (parameter names = SpeechMOS's, so its checkpoint loads with strict=True)
# ------------------------------------------------------------------------------------------------------


def _masked_channel_norm(x: Tensor, mask: Tensor, gn: nn.GroupNorm) -> Tensor:
    """GroupNorm(C, C) (per-channel statistics over time) computed over valid frames only.

    x: (B, C, T); mask: (B, T) bool, True on valid frames. Equals ``gn(x)`` when nothing is padded.
    """
    m = mask[:, None, :].to(x.dtype)
    n = m.sum(dim=2, keepdim=True).clamp(min=1.0)
    mean = (x * m).sum(dim=2, keepdim=True) / n
    var = (((x - mean) * m) ** 2).sum(dim=2, keepdim=True) / n  # biased, as GroupNorm
    y = (x - mean) / torch.sqrt(var + gn.eps)
    return y * gn.weight[None, :, None] + gn.bias[None, :, None]


class ConvFeatureExtractionModel(nn.Module):
    """wav2vec2 feature encoder, "default" mode: GroupNorm on the first block only, no conv bias."""

    def __init__(self, conv_layers: tuple[tuple[int, int, int], ...]) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_d = 1
        for i, (dim, k, stride) in enumerate(conv_layers):
            mods: list[nn.Module] = [nn.Conv1d(in_d, dim, k, stride=stride, bias=False), nn.Dropout(p=0.0)]
            if i == 0:
                mods.append(nn.GroupNorm(dim, dim, affine=True))
            mods.append(nn.GELU())
            # keys: conv_layers.{i}.0.weight, and conv_layers.0.2.{weight,bias} for the GroupNorm
            self.conv_layers.append(nn.Sequential(*mods))

            in_d = dim

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, C, Frame). ``lengths`` (B,) valid samples per clip, None = all valid."""
        x = wave.unsqueeze(1)
        for block in self.conv_layers:
            conv = block[0]
            x = conv(x)
            if len(block) == 4:  # conv, dropout, GroupNorm, GELU
                gn = block[2]
                if lengths is None:
                    x = gn(x)
                else:
                    n = lengths
                    k, s = conv.kernel_size[0], conv.stride[0]
                    n = torch.clamp(torch.div(n - k, s, rounding_mode="floor") + 1, min=0)
                    mask = torch.arange(x.shape[-1], device=x.device)[None, :] < n[:, None]
                    x = _masked_channel_norm(x, mask, gn)
            x = F.gelu(x)
        return x


class WeightNormConv1d(nn.Module):
    """Conv1d with fairseq/torch ``weight_norm(name="weight", dim=2)``: keys ``weight_g``, ``weight_v``,
    ``bias``; weight = v * g / ||v|| with the norm over all axes but the kernel axis."""

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.normal_(self.weight_v, std=math.sqrt(4.0 / (kernel * channels)))

    def weight(self) -> Tensor:
        v = self.weight_v
        return v * (self.weight_g / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)


class SamePad(nn.Module):
    """Drop the last frame (even-kernel 'same' padding)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, :, :-1]


class MultiheadAttention(nn.Module):
    """fairseq-style self-attention with separate q/k/v/out projections (scaling = head_dim^-0.5)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) True on PADDED frames (fairseq convention)."""
        b, t, d = x.shape
        h = self.num_heads

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        attn_mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerSentenceEncoderLayer(nn.Module):
    """Post-LN layer: LN(x + Attn(x)), then LN(x + FC2(GELU(FC1(x))))."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim, num_heads)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        x = self.self_attn_layer_norm(x + self.self_attn(x, key_padding_mask))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: UTMOS22StrongConfig) -> None:
        super().__init__()
        d = cfg.ssl_dim
        # keys: pos_conv.0.{weight_g, weight_v, bias}
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(d, cfg.pos_conv_kernel, cfg.pos_conv_groups), SamePad(), nn.GELU()
        )
        self.layer_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(d, cfg.ffn_dim, cfg.num_heads, cfg.norm_eps)
            for _ in range(cfg.num_layers)
        )

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """(B, F, D) -> (B, F, D); ``padding_mask`` (B, F) True on padded frames."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[:, :, None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, padding_mask)
        return x


class Wav2Vec2Model(nn.Module):
    def __init__(self, cfg: UTMOS22StrongConfig) -> None:
        super().__init__()
        c = cfg.conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(cfg.conv_layers)
        self.layer_norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self.post_extract_proj = nn.Linear(c, cfg.ssl_dim)
        self.encoder = TransformerEncoder(cfg)
        # Unused at inference; kept so the released state dict loads with strict=True.
        self.mask_emb = nn.Parameter(torch.zeros(cfg.ssl_dim).uniform_())

    def forward(
        self, wave: Tensor, lengths: Tensor | None = None, padding_mask: Tensor | None = None
    ) -> Tensor:
        """(B, T) -> (B, F, ssl_dim)."""
        x = self.feature_extractor(wave, lengths).transpose(1, 2)
        x = self.post_extract_proj(self.layer_norm(x))
        return self.encoder(x, padding_mask)


class UTMOS22Strong(nn.Module):
    """UTMOS22 strong learner at inference (no phoneme encoder; domain and judge embeddings fixed)."""

    def __init__(self, cfg: UTMOS22StrongConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or UTMOS22StrongConfig()
        feat_cat = cfg.ssl_dim + cfg.domain_emb_dim + cfg.judge_emb_dim
        self.wav2vec2 = Wav2Vec2Model(cfg)
        self.domain_emb = nn.Parameter(torch.randn(1, cfg.domain_emb_dim), requires_grad=False)
        self.judge_emb = nn.Parameter(torch.randn(1, cfg.judge_emb_dim), requires_grad=False)
        self.blstm = nn.LSTM(
            input_size=feat_cat, hidden_size=cfg.lstm_hidden, batch_first=True, bidirectional=True
        )
        self.projection = nn.Sequential(
            nn.Linear(cfg.lstm_hidden * 2, cfg.proj_hidden), nn.ReLU(), nn.Linear(cfg.proj_hidden, 1)
        )

    def frame_scores(self, wave: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-frame scores (B, F) and the valid-frame mask (B, F) for zero-padded ``wave`` (B, T)."""
        b, t = wave.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=wave.device)
        n_frames = self.cfg.num_frames(lengths)
        if int(n_frames.min()) < 1:
            raise ValueError(f"clip shorter than the receptive field ({self.cfg.receptive_field} samples)")
        all_full = bool((lengths == t).all())
        # The unpadded path is exactly the reference computation.
        units_lengths = None if all_full else lengths
        n_max = int(self.cfg.num_frames(t))
        frame_mask = torch.arange(n_max, device=wave.device)[None, :] < n_frames[:, None]
        padding_mask = None if all_full else ~frame_mask
        units = self.wav2vec2(wave, units_lengths, padding_mask)  # (B, F, ssl)
        f = units.shape[1]
        cat = torch.cat(
            [
                units,
                self.domain_emb.unsqueeze(1).expand(b, f, -1),
                self.judge_emb.unsqueeze(1).expand(b, f, -1),
            ],
            dim=2,
        )
        if all_full:
            feats = self.blstm(cat)[0]
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                cat, n_frames.cpu(), batch_first=True, enforce_sorted=False
            )
            feats = nn.utils.rnn.pad_packed_sequence(self.blstm(packed)[0], batch_first=True, total_length=f)[
                0
            ]
        return self.projection(feats).squeeze(-1), frame_mask

    def forward(self, wave: Tensor, lengths: Tensor | None = None) -> Tensor:
        """wave (B, T) at 16 kHz -> utterance scores (B,) = 2 * mean(frame scores) + 3."""
        scores, mask = self.frame_scores(wave, lengths)
        m = mask.to(scores.dtype)
        return (scores * m).sum(dim=1) / m.sum(dim=1) * 2 + 3


def _normalise_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Accept a state dict saved with torch's newer weight-norm parametrisation names as well."""
    out = {}
    for k, v in sd.items():
        k = k.replace("pos_conv.0.parametrizations.weight.original0", "pos_conv.0.weight_g")
        k = k.replace("pos_conv.0.parametrizations.weight.original1", "pos_conv.0.weight_v")
        out[k] = v
    return out


def load_utmos22_strong(path: str | Path, cfg: UTMOS22StrongConfig | None = None) -> UTMOS22Strong:
    """Build the model and load a (verified) state dict file with ``strict=True``."""
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise TypeError(f"{WHAT}: {path} does not hold a state dict (got {type(sd).__name__})")
    model = UTMOS22Strong(cfg)
    model.load_state_dict(_normalise_state_dict(sd), strict=True)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------------
# Scorer
# ------------------------------------------------------------------------------------------------------


class UTMOSScorer(Scorer):
    """UTMOS22 strong (paper metric ``utmos``; higher is better, ~1..5)."""

    name = "utmos22_strong"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    tasks = SPEECH
    metrics: ClassVar[dict[str, str]] = {"utmos": "higher"}

    def __init__(
        self,
        model: UTMOS22Strong,
        sha256: str,
        weights_path: Path,
        *,
        batch_size: int = 8,
        max_batch_seconds: float = 120.0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sha256 = sha256
        self.weights_path = weights_path
        self.batch_size = max(1, int(batch_size))
        self.max_batch_samples = max(1, int(max_batch_seconds * SAMPLE_RATE))

    @property
    def version(self) -> str:
        return f"sha256:{self.sha256[:12]}"

    def protocol_info(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "weights": str(self.weights_path),
            "sample_rate": SAMPLE_RATE,
            "formula": "2*mean(frame)+3",
            "config": self.model.cfg.to_dict(),
        }

    def _prepare(self, item: AudioItem) -> np.ndarray:
        wav = to_mono(item.wav)
        if not np.all(np.isfinite(wav)):
            raise ValueError("non-finite samples")
        wav = resample(wav, int(item.sample_rate), SAMPLE_RATE)
        if wav.shape[-1] < self.model.cfg.receptive_field:
            raise ValueError("clip shorter than the model's receptive field")
        return wav

    @torch.inference_mode()
    def _score_batch(self, wavs: list[np.ndarray]) -> list[float]:
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.from_numpy(w)
        return [float(v) for v in self.model(batch.to(self.device), lengths.to(self.device)).cpu()]

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        results = [{"utmos": math.nan} for _ in items]
        ready: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(items):
            try:
                ready.append((i, self._prepare(item)))
            except Exception as e:  # noqa: BLE001 - this item is NaN, the others still count
                log.warning("utmos22_strong: item %r not scored (NaN): %s", item.id, e)
                continue
        ready.sort(key=lambda p: len(p[1]))  # similar lengths together: less padding
        start = 0
        while start < len(ready):
            end = start + 1
            while (
                end < len(ready)
                and end - start < self.batch_size
                and len(ready[end][1]) * (end + 1 - start) <= self.max_batch_samples
            ):
                end += 1
            chunk = ready[start:end]
            try:
                vals = self._score_batch([w for _, w in chunk])
            except Exception:  # noqa: BLE001
                vals = []
                for i, w in chunk:  # fall back to one at a time so one bad clip does not sink the batch
                    try:
                        vals.append(self._score_batch([w])[0])
                    except Exception as e:  # noqa: BLE001
                        log.warning("utmos22_strong: item %r not scored (NaN): %s", items[i].id, e)
                        vals.append(math.nan)
            for (i, _), v in zip(chunk, vals):
                results[i] = {"utmos": v if math.isfinite(v) else math.nan}
            start = end
        return results


@register("utmos22_strong", UTMOSScorer)
def make_utmos22_strong(
    *,
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    config: UTMOS22StrongConfig | dict[str, Any] | None = None,
    batch_size: int = 8,
    max_batch_seconds: float = 120.0,
    device: str = "cpu",
) -> UTMOSScorer:
    """Load UTMOS22 strong from the weights store.

    ``weights_path`` is relative to the store ($UNIMOE_WEIGHTS) or absolute; ``sha256`` (optional) is
    verified before loading; ``config`` defaults to the released architecture. A missing file raises
    MissingWeightsError (``load_scorer`` turns it into ScorerUnavailable), a wrong checksum ChecksumError.
    """
    if isinstance(config, dict):
        config = UTMOS22StrongConfig.from_dict(config)
    path = resolve_weights(weights_path, sha256=sha256, what=WHAT, origin=ORIGIN)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    model = load_utmos22_strong(path, config)
    return UTMOSScorer(model, digest, path, batch_size=batch_size, max_batch_seconds=max_batch_seconds, device=device)
