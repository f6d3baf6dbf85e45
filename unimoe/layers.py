"""Qwen2.5-style decoder pieces: RMSNorm, rotary embedding, grouped-query attention with a KV cache."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in fp32 like Qwen, then cast back.
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_inv_freq(head_dim: int, theta: float) -> Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def rotary_cos_sin(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables for ``positions`` [B, L] -> [B, L, head_dim] (the half-split layout Qwen uses)."""
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, L, Dh]; cos/sin [B, L, Dh]."""
    cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


@dataclass
class KVCache:
    """Per-layer key/value tensors preallocated to ``capacity`` positions, so a decoding step costs
    O(current length) attention and no re-allocation."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    length: int = 0

    @classmethod
    def allocate(cls, num_layers: int, batch: int, num_kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> "KVCache":
        shape = (batch, num_kv_heads, capacity, head_dim)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)],
        )

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys/values at [length, length + n) and return everything cached so far."""
        start, n = self.length, k.shape[2]
        if start + n > self.capacity:
            raise ValueError(f"KV cache overflow: {start + n} positions > capacity {self.capacity}")
        self.keys[layer][:, :, start:start + n] = k
        self.values[layer][:, :, start:start + n] = v
        return self.keys[layer][:, :, :start + n], self.values[layer][:, :, :start + n]

    def select(self, index: Tensor) -> None:
        """Keep only the batch rows in ``index`` (finished rows dropped during generation)."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]


class Attention(nn.Module):
    """Grouped-query attention; q/k/v have biases (as in Qwen2.5), the output projection has none."""

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, layer_index: int):
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden // num_heads
        self.layer_index = layer_index
        self.q_proj = nn.Linear(hidden, num_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, num_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, cache: KVCache | None) -> Tensor:
        """x [B, L, D]; mask: additive or boolean [B, 1, L, S] (True = may attend)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))
