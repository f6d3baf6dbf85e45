"""Audio tokens: the codebook delay pattern, summed per-codebook embeddings, one
parallel output head, and the per-codebook loss.

Delay layout, for codes [K, T] and delays d_c (d_0 = 0 in the default pattern):
    delayed[c, t] = codes[c, t - d_c]   for 0 <= t - d_c < T
                  = BOS                 for t < d_c
                  = EOS                 for t == T + d_c
                  = PAD                 for t > T + d_c
so ``delayed`` has T + max(d) + 1 frames and every codebook ends with exactly one EOS. In a
sequence the delayed frames follow one all-BOS frame; the frame at position i predicts frame i + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimoe.config import AudioConfig

IGNORE_INDEX = -100


def build_delayed(codes: Tensor, audio: AudioConfig) -> Tensor:
    """codes [K, T] (values < codebook_size) -> delayed [K, T + max_delay + 1]."""
    k, t = codes.shape
    delays = audio.delay_pattern
    if k != len(delays):
        raise ValueError(f"codes have {k} codebooks, config has {len(delays)}")
    if t and (codes.min() < 0 or codes.max() >= audio.codebook_size):
        raise ValueError("codes must lie in [0, codebook_size)")
    length = t + max(delays) + 1
    out = torch.full((k, length), audio.pad_id, dtype=torch.long, device=codes.device)
    for c, d in enumerate(delays):
        out[c, :d] = audio.bos_id
        out[c, d:d + t] = codes[c]
        out[c, d + t] = audio.eos_id
    return out


def undo_delay(delayed: Tensor, audio: AudioConfig) -> Tensor:
    """Inverse of ``build_delayed``: the number of frames T is where codebook 0's EOS sits
    (minus its delay)."""
    delays = audio.delay_pattern
    eos = (delayed[0] == audio.eos_id).nonzero()
    if len(eos) == 0:
        raise ValueError("codebook 0 has no EOS: the sequence is unfinished")
    t = int(eos[0]) - delays[0]
    if delayed.shape[1] < t + max(delays) + 1:
        raise ValueError("delayed sequence is shorter than its countdown requires")
    return torch.stack([delayed[c, d:d + t] for c, d in enumerate(delays)])


def bos_frame(audio: AudioConfig, device: torch.device | str = "cpu") -> Tensor:
    return torch.full((audio.num_codebooks,), audio.bos_id, dtype=torch.long, device=device)


class AudioEmbedding(nn.Module):
    """One embedding table per codebook (stored as one [K * V, D] matrix), summed over codebooks."""

    def __init__(self, audio: AudioConfig, hidden: int):
        super().__init__()
        self.num_codebooks, self.vocab = audio.num_codebooks, audio.vocab_size
        self.weight = nn.Parameter(torch.empty(self.num_codebooks * self.vocab, hidden))
        self.register_buffer("offsets", torch.arange(self.num_codebooks) * self.vocab, persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        """codes [..., K] -> [..., D]"""
        return F.embedding(codes + self.offsets, self.weight).sum(-2)


class AudioHead(nn.Module):
    """All codebooks' logits in parallel from one linear layer (no depth transformer)."""

    def __init__(self, audio: AudioConfig, hidden: int):
        super().__init__()
        self.num_codebooks, self.vocab = audio.num_codebooks, audio.vocab_size
        self.proj = nn.Linear(hidden, self.num_codebooks * self.vocab, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        """h [..., D] -> logits [..., K, V]"""
        return self.proj(h).unflatten(-1, (self.num_codebooks, self.vocab))


def audio_labels(next_frames: Tensor, audio: AudioConfig) -> Tensor:
    """Targets from the frames that follow each position: PAD and BOS are ignored."""
    labels = next_frames.clone()
    labels[(labels == audio.pad_id) | (labels == audio.bos_id)] = IGNORE_INDEX
    return labels
