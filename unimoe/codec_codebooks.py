"""Keeping a small DAC's codebooks alive: the two additions to DAC's recipe that production codecs use
against codebook collapse (see :mod:`unimoe.codec_train`), and the statistics they act on.

- **k-means initialisation** (SoundStream, EnCodec): each codebook is set to the centroids of a
  spherical k-means (cosine, as DAC's lookup) over that quantizer's projected latents, computed
  residual by residual on real audio; weight normalisation's data-dependent init first brings the
  latents to unit scale;
- **dead-code restarts** (Jukebox, EnCodec): an exponential moving average of each code's usage is kept;
  codes whose expected use fell below a threshold are re-seeded with projected latents of the current batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def spherical_kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """Centroids (unnormalised cluster means) of a k-means on the unit sphere: points are assigned
    by cosine similarity, as DAC's codebook lookup does. ``x``: ``[N, D]``; empty clusters are
    re-seeded with random points."""
    xn = F.normalize(x, dim=-1)
    idx = torch.randperm(x.shape[0], generator=generator)[:k]
    if idx.numel() < k:  # fewer points than codes: repeat with a little noise
        idx = torch.randint(x.shape[0], (k,), generator=generator)
    centroids = x[idx].clone()
    for _ in range(iters):
        assign = (xn @ F.normalize(centroids, dim=-1).T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            refill = torch.randint(x.shape[0], (int(empty.sum()),), generator=generator)
            centroids[empty] = x[refill]
    return centroids


def _weight_norm_convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and hasattr(m, "weight_g")]


@torch.no_grad()
def data_dependent_init(stack: nn.Module, run: Callable[[], torch.Tensor]) -> int:
    """Weight normalisation's data-dependent initialisation (Salimans & Kingma, 2016): layer by layer,
    in forward order, scale each weight-normed convolution's gain ``g`` and set its bias so that its
    output has zero mean and unit variance per channel on real data. ``run()`` does one forward pass
    that goes through ``stack``. Returns the number of layers initialised.

    Why: DAC's own init (truncated normal, std 0.02) leaves a small encoder's latents at ~1e-2, the
    same order as a few Adam steps of its biases. The straight-through gradient of a (momentarily)
    collapsed code then pushes every bias the same way, the latents drift as one common offset that
    grows exponentially through the layers, and every codebook collapses to one code within ~10 steps
    (measured on the demo corpus). With unit-scale activations a bias step is a small perturbation.
    """
    convs = _weight_norm_convs(stack)
    for m in convs:
        seen: list[torch.Tensor] = []
        h = m.register_forward_hook(lambda mod, args, out: seen.append(out))
        try:
            run()
        finally:
            h.remove()
        y = torch.cat([o.transpose(0, 1).reshape(o.shape[1], -1) for o in seen], dim=1)  # [C, N]
        mean, std = y.mean(dim=1), y.std(dim=1).clamp_min(1e-6)
        # weight_g is [out, 1, 1] for Conv1d (dim 0) and [1, out, 1] for ConvTranspose1d (dim 1)
        m.weight_g.div_(std.reshape(m.weight_g.shape))
        if m.bias is not None:
            m.bias.copy_((m.bias - mean) / std)
    return len(convs)


@torch.no_grad()
def kmeans_init_codebooks(model: nn.Module, batches: Sequence[torch.Tensor], iters: int, seed: int) -> list[float]:
    """Initialise every codebook of ``model.quantizer`` by spherical k-means on its projected
    latents, residual by residual (codebook i sees what codebooks < i left over). Returns each
    codebook's perplexity on the same latents after initialisation."""
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    residuals = [model.encoder(b) for b in batches]
    perplexities = []
    for vq in model.quantizer.quantizers:
        # unit-scale projected latents (see data_dependent_init), then k-means on them
        data_dependent_init(vq.in_proj, lambda: [vq.in_proj(r) for r in residuals])
        z_e = torch.cat([vq.in_proj(r).permute(0, 2, 1).reshape(-1, vq.codebook_dim) for r in residuals])
        vq.codebook.weight.copy_(spherical_kmeans(z_e, vq.codebook_size, iters, gen))
        new_res, codes = [], []
        for r in residuals:
            z_q, _, _, idx, _ = vq(r)
            new_res.append(r - z_q)
            codes.append(idx.reshape(-1))
        residuals = new_res
        perplexities.append(code_perplexity(torch.cat(codes), vq.codebook_size))
    model.train(was_training)
    return perplexities


def code_perplexity(codes: torch.Tensor | np.ndarray, codebook_size: int) -> float:
    """exp(entropy) of the code histogram: 1 = one code used, ``codebook_size`` = uniform use."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()  # codes may live on the GPU during training
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=codebook_size).astype(np.float64)
    if counts.sum() == 0:
        return float("nan")
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


class CodeUsage:
    """EMA of per-code selection counts per step, for dead-code detection and logging. ``uniform``
    is the count every code would get per step if all were used equally; the EMA starts there, so a
    fresh (k-means) codebook is not dead before it has had a chance."""

    def __init__(self, n_codebooks: int, codebook_size: int, decay: float, uniform: float = 1.0):
        self.decay = decay
        self.uniform = float(uniform)
        self.ema = torch.full((n_codebooks, codebook_size), self.uniform)

    def update(self, codes: torch.Tensor) -> None:
        """``codes``: ``[B, n_codebooks, T]`` selected this step."""
        k, size = self.ema.shape
        counts = torch.stack([torch.bincount(codes[:, i].reshape(-1), minlength=size) for i in range(k)]).float()
        self.ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)

    def state_dict(self) -> dict:
        return {"ema": self.ema.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"].clone()


@torch.no_grad()
def restart_dead_codes(model: nn.Module, usage: CodeUsage, latents: torch.Tensor, threshold: float,
                       generator: torch.Generator, optimizer: torch.optim.Optimizer | None = None) -> list[int]:
    """Re-seed codes whose EMA usage is below ``threshold`` x uniform use with projected latents
    from this batch (which also keeps the codebooks at the scale of the encoder's current output).

    ``latents``: ``[B, n_codebooks * codebook_dim, T]`` as ``DAC.forward`` returns them (each
    quantizer's ``in_proj`` output). The restarted rows' Adam moments are zeroed so stale statistics
    do not immediately push them away. Returns the number of codes restarted per codebook.
    """
    restarted = []
    offset = 0
    for i, vq in enumerate(model.quantizer.quantizers):
        d = vq.codebook_dim
        pool = latents[:, offset:offset + d].permute(0, 2, 1).reshape(-1, d)
        offset += d
        dead = torch.nonzero(usage.ema[i] < threshold * usage.uniform).reshape(-1)
        restarted.append(int(dead.numel()))
        if dead.numel() == 0:
            continue
        pick = torch.randint(pool.shape[0], (dead.numel(),), generator=generator)
        weight = vq.codebook.weight
        rows = dead.to(weight.device)  # usage, pool and RNG stay on the CPU (exact resume); the model may not
        weight[rows] = pool[pick].to(device=weight.device, dtype=weight.dtype)
        usage.ema[i, dead] = usage.uniform  # a fresh chance
        if optimizer is not None:
            st = optimizer.state.get(weight)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        st[key][rows] = 0
    return restarted
