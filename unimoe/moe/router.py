"""The DCMoE router: the gate, the Top-P / Top-K selection rules over the dynamic pool, and the
combination weights of the selected and shared experts (the mixing rule of :mod:`unimoe.moe`)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Routing(NamedTuple):
    dyn_logits: Tensor             # fp32 [T, E_dyn]
    shared_logits: Tensor          # fp32 [T, S]
    probs: Tensor                  # fp32 [T, E_dyn] = softmax(dyn_logits)
    selected: Tensor               # bool [T, E_dyn]


# ---- selection rules ----------------------------------------------------------------------------------

# Cumulative sums within this of p count as reaching p: float32 softmax outputs carry ~1e-7 relative
# rounding, so e.g. 0.35 + 0.35 stored in float32 (0.69999999) must still reach p = 0.7.
_TOP_P_TOL = {torch.float64: 1e-12}
_TOP_P_TOL_DEFAULT = 1e-6


def top_p_mask(probs: Tensor, p: float) -> Tensor:
    """Per row (last dim), the smallest set of most probable entries whose sum reaches ``p``.

    ``sort desc (stable: ties keep the lower index first); c = cumsum; k = 1 + #{j: c_j < p}``. Entry j
    of the sorted row is kept iff j == 0 or the mass before it is still below p. ``p >= 1`` keeps every
    entry with non-zero probability (robust to rows summing to 0.9999999). Zero-probability entries are
    never kept, except that the top entry always is (at least one per row). Works on any leading dims.
    A cumulative sum within 1e-6 of p (float32 rounding; 1e-12 for float64 input) counts as reaching p.
    """
    if probs.shape[-1] == 0:
        raise ValueError("top_p_mask needs at least one entry per row")
    sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    if p >= 1.0:
        keep = sorted_p > 0
    else:
        tol = _TOP_P_TOL.get(probs.dtype, _TOP_P_TOL_DEFAULT)
        # float64 cumsum: no drift from the summation itself; the mass strictly before entry j.
        c = sorted_p.double().cumsum(-1)
        before = torch.cat([torch.zeros_like(c[..., :1]), c[..., :-1]], dim=-1)
        keep = (before < p - tol) & (sorted_p > 0)
    keep[..., 0] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


def top_k_mask(probs: Tensor, k: int) -> Tensor:
    """Per row, the ``k`` most probable entries (stable: ties keep the lower index first)."""
    k = min(max(int(k), 1), probs.shape[-1])
    order = torch.sort(probs, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, True)


# ---- combination weights ------------------------------------------------------------------------------


def combine_weights(dyn_logits: Tensor, shared_logits: Tensor, selected: Tensor, weighting: str = "paper",
                    shared_mixing: str = "softmax") -> tuple[Tensor, Tensor]:
    """Weights of the dynamic experts ``[T, E_dyn]`` (zero where not selected) and of the shared experts
    ``[T, S]``, following the mixing rule of :mod:`unimoe.moe`. fp32, differentiable w.r.t. the logits
    (except ``uniform`` with ``add``, whose weights are constants)."""
    if weighting not in ("paper", "uniform"):
        raise ValueError(f"unknown weighting {weighting!r}")
    n_dyn = dyn_logits.shape[-1]
    masked = dyn_logits.masked_fill(~selected, float("-inf"))
    sel = selected.to(dyn_logits.dtype)
    k = sel.sum(-1, keepdim=True)
    if shared_mixing == "softmax":
        g = torch.softmax(torch.cat([masked, shared_logits], dim=-1), dim=-1)
        g_dyn, g_shared = g[:, :n_dyn], g[:, n_dyn:]
        if weighting == "paper":
            # exp(z_i) ∝ P_i, so the dynamic part of this softmax is eq. 3 scaled by the routed share.
            return g_dyn, g_shared
        # Official rule: the k selected experts split the routed share equally.
        return sel / k * g_dyn.sum(-1, keepdim=True), g_shared
    if shared_mixing == "add":
        ones = shared_logits.new_ones(shared_logits.shape)
        if weighting == "paper":
            # softmax over the selected logits == P_i / sum_{j in I} P_j (eq. 3), computed stably.
            return torch.softmax(masked, dim=-1), ones
        return sel / k, ones
    raise ValueError(f"unknown shared_mixing {shared_mixing!r}")


# ---- the router -----------------------------------------------------------------------------------------


class Router(nn.Module):
    """The gate ``z = x W_g`` (no bias, fp32) with one logit per routed, null and shared expert, in that
    order; ``forward`` returns a :class:`Routing`. The selection rule over the dynamic pool is the one
    parameter given: ``top_p`` (:func:`top_p_mask`, the paper's router) or ``top_k`` (:func:`top_k_mask`,
    the Unify-MoE ablation). ``weight`` is the gate in the ``nn.Linear`` layout ``[E_dyn + S, D]`` (kept
    under that name, so checkpoints hold ``...router.weight``). In train mode with ``input_jitter > 0``
    the input is first multiplied by ``U(1 - input_jitter, 1 + input_jitter)`` noise (package docstring)."""

    def __init__(self, hidden: int, num_dynamic: int, num_shared: int, *, top_p: float | None = None,
                 top_k: int | None = None, input_jitter: float = 0.0):
        super().__init__()
        if (top_p is None) == (top_k is None):
            raise ValueError("a Router selects by exactly one rule: give top_p or top_k")
        self.weight = nn.Parameter(torch.empty(num_dynamic + num_shared, hidden))
        self.num_dynamic, self.num_shared = num_dynamic, num_shared
        self.top_p, self.top_k = top_p, top_k
        self.input_jitter = input_jitter
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation: DCMoE overwrites it, but drawing it keeps the random stream,
        # and so every seeded model, the same as when the router was an nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def select(self, probs: Tensor) -> Tensor:
        """The selection mask ``[T, E_dyn]`` of the dynamic pool."""
        return top_p_mask(probs, self.top_p) if self.top_p is not None else top_k_mask(probs, self.top_k)

    def extra_repr(self) -> str:
        rule = f"top_p={self.top_p}" if self.top_p is not None else f"top_k={self.top_k}"
        return (f"hidden={self.weight.shape[1]}, num_dynamic={self.num_dynamic}, "
                f"num_shared={self.num_shared}, {rule}, input_jitter={self.input_jitter}")

    def forward(self, x: Tensor) -> Routing:
        x = x.float()
        if self.training and self.input_jitter > 0:
            # Official UniMoE-Audio (input_jitter_noise): multiplicative noise on the router input only,
            # so near-tied routing decisions vary between steps; the experts get the clean input.
            x = x * torch.empty_like(x).uniform_(1.0 - self.input_jitter, 1.0 + self.input_jitter)
        logits = F.linear(x, self.weight.float())
        dyn, shared = logits[:, : self.num_dynamic], logits[:, self.num_dynamic:]
        probs = torch.softmax(dyn, dim=-1)
        with torch.no_grad():
            selected = self.select(probs)
        return Routing(dyn, shared, probs, selected)
