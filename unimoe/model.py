"""The UniMoE-Audio decoder: a Qwen2.5-style transformer whose FFNs are dense, Top-K or Top-P DCMoE
layers (per layer, by config), reading text, codec frames and vision embeddings from one sequence
and predicting all codebooks of the next audio frame in parallel."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimoe.audio_tokens import IGNORE_INDEX, AudioEmbedding, AudioHead, audio_labels
from unimoe.config import UniMoEConfig
from unimoe.layers import Attention, KVCache, RMSNorm, rotary_cos_sin, rotary_inv_freq
from unimoe.moe import DCMoE, Router, RoutingStats, build_ffn


@dataclass
class Batch:
    """One packed batch of sequences (see unimoe.sequence for how it is built).

    input_ids [B, L]: text ids; audio/video positions hold the AUDIO_PAD/VIDEO_PAD placeholder ids.
    audio_codes [B, L, K]: codec frames (delayed layout) at audio positions, PAD elsewhere.
    audio_mask [B, L]: positions whose embedding is the summed codec-frame embedding.
    target_mask [B, L]: audio positions whose frame is a generation target (loss is taken on the
        prediction of these frames from the position before them).
    attention_mask [B, L]: real tokens (False = padding).
    video_mask [B, L] + pixel_values/grid_thw: vision embeddings placed at those positions, in order.
    task_ids [B]: index into unimoe.config.TASKS, for per-task routing statistics and losses.
    """

    input_ids: Tensor
    audio_codes: Tensor
    audio_mask: Tensor
    target_mask: Tensor
    attention_mask: Tensor
    task_ids: Tensor | None = None
    video_mask: Tensor | None = None
    pixel_values: Tensor | None = None
    grid_thw: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})


@dataclass
class ModelOutput:
    hidden: Tensor                      # [B, L, D] final-norm hidden states
    aux_loss: Tensor                    # balance loss averaged over MoE layers (unweighted)
    routing: list[RoutingStats | None]  # one entry per layer (None for dense layers)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: UniMoEConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, index)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = build_ffn(cfg, cfg.ffn_kinds[index])

    def forward(self, x, cos, sin, mask, cache, token_mask, task_ids):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        ffn = self.mlp(self.post_attention_layernorm(x), token_mask=token_mask, task_ids=task_ids)
        return x + ffn.out, ffn


class UniMoEAudio(nn.Module):
    def __init__(self, cfg: UniMoEConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.audio_embed = AudioEmbedding(cfg.audio, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.audio_head = AudioHead(cfg.audio, cfg.hidden_size)
        self.register_buffer("rope_inv_freq", rotary_inv_freq(cfg.head_dim, cfg.rope_theta), persistent=False)
        self.vision = None
        if cfg.vision is not None:
            from unimoe.vision import VisionEncoder

            self.vision = VisionEncoder(cfg.vision, cfg.hidden_size)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        for name, module in self.named_modules():
            if name.startswith("vision"):
                continue  # the vision tower keeps its own (transformers) initialisation
            if isinstance(module, (nn.Linear, nn.Embedding, Router)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.audio_embed.weight, std=std)

    # ---- embedding ---------------------------------------------------------------------------------
    def embed(self, batch: Batch) -> Tensor:
        x = self.embed_tokens(batch.input_ids)
        if batch.audio_mask.any():
            # Embed every position (cheap) and select, so the graph has no data-dependent shapes.
            x = torch.where(batch.audio_mask[..., None], self.audio_embed(batch.audio_codes).to(x.dtype), x)
        if batch.video_mask is not None and batch.video_mask.any():
            if self.vision is None or batch.pixel_values is None:
                raise ValueError("batch has video positions but the model has no vision tower / no pixels")
            vis = self.vision(batch.pixel_values, batch.grid_thw).to(x.dtype)
            n = int(batch.video_mask.sum())
            if vis.shape[0] != n:
                raise ValueError(f"{n} video placeholder positions but the vision tower produced {vis.shape[0]} embeddings")
            x = x.masked_scatter(batch.video_mask[..., None], vis)
        return x

    # ---- forward -------------------------------------------------------------------------------------
    def forward(self, batch: Batch, cache: KVCache | None = None, embeds: Tensor | None = None) -> ModelOutput:
        """Run the decoder. With ``cache``, ``batch`` holds only the new positions and
        ``batch.attention_mask`` covers all positions so far ([B, cache.length + L])."""
        x = self.embed(batch) if embeds is None else embeds
        b, n, _ = x.shape
        start = cache.length if cache is not None else 0
        key_valid = batch.attention_mask.bool()
        if key_valid.shape[1] != start + n:
            raise ValueError(f"attention_mask covers {key_valid.shape[1]} positions, expected {start + n}")
        # Positions count real tokens only, so left-padded rows see the same rotary phases.
        positions_all = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
        positions = positions_all[:, start:]
        q_pos = torch.arange(start, start + n, device=x.device)
        k_pos = torch.arange(start + n, device=x.device)
        # Causal, padding-aware; every query may see itself so a padding row never has an empty row.
        mask = ((k_pos[None, :] <= q_pos[:, None])[None] & key_valid[:, None, :]) | (k_pos[None, :] == q_pos[:, None])[None]
        mask = mask[:, None]  # [B, 1, n, S]
        cos, sin = rotary_cos_sin(positions, self.rope_inv_freq, x.dtype)
        token_mask = key_valid[:, start:]
        task_ids = None
        if batch.task_ids is not None:
            task_ids = batch.task_ids[:, None].expand(b, n)
        aux, routing, n_moe = x.new_zeros((), dtype=torch.float32), [], 0
        for layer in self.layers:
            x, ffn = layer(x, cos, sin, mask, cache, token_mask, task_ids)
            routing.append(ffn.stats)
            if ffn.stats is not None:
                aux, n_moe = aux + ffn.aux_loss.float(), n_moe + 1
        if cache is not None:
            cache.length += n
        return ModelOutput(hidden=self.norm(x), aux_loss=aux / max(n_moe, 1), routing=routing)

    def audio_logits(self, hidden: Tensor) -> Tensor:
        """hidden [..., D] -> [..., K, V]"""
        return self.audio_head(hidden)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Per-codebook shifted cross-entropy over target audio frames (PAD/BOS ignored) plus the
        (unweighted) balance loss. Logits are computed only where a target follows."""
        out = self.forward(batch)
        predict_from = batch.target_mask[:, 1:]            # position i predicts frame i + 1
        hidden = out.hidden[:, :-1][predict_from]           # [N, D]
        labels = audio_labels(batch.audio_codes[:, 1:][predict_from], self.cfg.audio)
        _, ce_sums, counts = codebook_ce_sums(self.audio_logits(hidden), labels)
        ce = codebook_ce(ce_sums, counts, "mean")
        with torch.no_grad():
            per_codebook = torch.where(counts > 0, ce_sums / counts.clamp(min=1),
                                       torch.full_like(ce_sums, float("nan")))
        rows = torch.arange(batch.input_ids.shape[0], device=hidden.device)[:, None].expand_as(predict_from)[predict_from]
        return {"ce": ce, "aux": out.aux_loss, "per_codebook": per_codebook, "counts": counts,
                "rows": rows, "routing": out.routing}

    @contextmanager
    def routing_stats_disabled(self):
        """Skip the balance loss and routing statistics (generation needs neither)."""
        layers = [m for m in self.modules() if isinstance(m, DCMoE)]
        for m in layers:
            m.collect_stats = False
        try:
            yield
        finally:
            for m in layers:
                m.collect_stats = True

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = self.embed_tokens.weight
        return KVCache.allocate(self.cfg.num_layers, batch, self.cfg.num_kv_heads, capacity,
                                self.cfg.head_dim, p.dtype, p.device)


# ---- codebook cross-entropy as reducible sums -------------------------------------------------------------


def codebook_ce_sums(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of every target, ``logits [N, K, V]`` against ``labels [N, K]`` (``IGNORE_INDEX``
    where nothing is predicted), in fp32. Returns ``(ce [N, K]`` (0 where ignored), ``ce_sums [K]``
    (differentiable), ``counts [K]`` targets per codebook): sums and counts add up over ranks."""
    n, k, v = logits.shape
    ce = F.cross_entropy(logits.reshape(n * k, v).float(), labels.reshape(n * k),
                         ignore_index=IGNORE_INDEX, reduction="none").view(n, k)
    return ce, ce.sum(0), (labels != IGNORE_INDEX).sum(0)


def codebook_ce(ce_sums: Tensor, counts: Tensor, reduction: str = "mean") -> Tensor:
    """The codebook loss: per codebook the mean ``ce_sums / counts``, then the sum (the official
    UniMoE-Audio objective adds its codebook losses: UniMoE_Audio_model.py, ``codec_loss +=
    channel_loss``) or the mean over the codebooks with targets.

    With ``counts`` summed over the ranks of a data-parallel group and each rank's own ``ce_sums``, the
    ranks' values add up to the loss of the global batch. 0 (still in the graph) without targets."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"unknown codebook reduction {reduction!r}")
    has = counts > 0
    total = (ce_sums / counts.clamp(min=1).to(ce_sums.dtype) * has).sum()
    return total / has.sum().clamp(min=1) if reduction == "mean" else total


# ---- parameter accounting (no weights allocated) ---------------------------------------------------------


def parameter_report(cfg: UniMoEConfig) -> dict:
    """Total and active parameter counts, computed on the meta device.

    Active counts per token: attention, norms, embeddings used, shared experts and the router always;
    of the routed experts, ``min`` when only the null expert is selected (or k - null for Top-K),
    ``max`` when every routed expert is, and ``avg_at_k[k]`` the expected routed share when k dynamic
    experts are selected uniformly (k * N / (N + M)).
    """
    with torch.device("meta"):
        model = UniMoEAudio(cfg)
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.vision.parameters()) if model.vision is not None else 0
    text_embed = model.embed_tokens.weight.numel()
    moe = cfg.moe
    per_expert = 3 * cfg.hidden_size * moe.routed_intermediate
    routed_total, minimum, maximum, avg = 0, 0, 0, {k: 0.0 for k in range(1, moe.num_dynamic + 1)}
    for kind in cfg.ffn_kinds:
        if kind == "dense":
            continue
        routed_total += moe.num_routed_experts * per_expert
        if kind == "top_p":
            minimum += 0 if moe.num_null_experts else per_expert
            maximum += moe.num_routed_experts * per_expert
            for k in avg:
                avg[k] += k * moe.num_routed_experts / moe.num_dynamic * per_expert
        else:
            minimum += max(moe.top_k - moe.num_null_experts, 0) * per_expert
            maximum += min(moe.top_k, moe.num_routed_experts) * per_expert
            for k in avg:
                avg[k] += moe.top_k * moe.num_routed_experts / moe.num_dynamic * per_expert
    # Per token, only one text-embedding row (or the audio rows) is read; the convention used by
    # MoE papers counts embeddings as active anyway, which we follow.
    always = total - routed_total
    return {
        "preset": cfg.name,
        "total": total,
        "vision_tower": vision,
        "text_embedding": text_embed,
        "routed_experts": routed_total,
        "active_min": always + minimum,
        "active_max": always + maximum,
        "active_avg_at_k": {k: int(always + v) for k, v in avg.items()},
    }
