"""Token dispatch: sending the selected (token, routed expert) pairs through the routed experts and summing
their weighted outputs, dropless (torchtitan's token dispatcher). ``grouped`` is the default, ``loop``
the test and benchmark oracle; expert parallelism swaps in the all-to-all dispatcher of
``unimoe.training.parallel``."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimoe.moe.experts import GroupedExperts


class Dispatch(NamedTuple):
    """(token, expert) pairs grouped by expert id: the pairs of expert e are the contiguous rows
    ``counts[:e].sum() .. counts[:e + 1].sum()`` of ``token_idx`` / ``weights``."""

    token_idx: Tensor              # long [P]: source token of each pair
    expert_idx: Tensor             # long [P]: non-decreasing expert ids
    weights: Tensor                # fp32 [P]: combination weight of each pair
    counts: Tensor                 # long [N]: pairs per expert


class TokenReorderer(nn.Module):
    """Sort the selected (token, expert) pairs by expert id and count the pairs per expert."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.num_experts = num_experts

    def forward(self, selected: Tensor, weights: Tensor) -> Dispatch:
        token_idx, expert_idx = selected.nonzero(as_tuple=True)  # token-major order
        # Stable: inside each expert's group tokens stay in order (deterministic scatter-add order).
        perm = torch.argsort(expert_idx, stable=True)
        token_idx, expert_idx = token_idx[perm], expert_idx[perm]
        counts = torch.bincount(expert_idx, minlength=self.num_experts)
        return Dispatch(token_idx, expert_idx, weights[token_idx, expert_idx], counts)


class TokenDispatcher(nn.Module):
    """Sends tokens to the routed experts and sums their weighted outputs:
    ``forward(x [T, D], selected [T, N], weights [T, N], experts) -> [T, D]``, with
    ``out[t] = sum_{e: selected[t, e]} weights[t, e] * experts_e(x[t])``. Holds no parameters."""

    def forward(self, x: Tensor, selected: Tensor, weights: Tensor, experts: GroupedExperts) -> Tensor:
        raise NotImplementedError


class LoopDispatcher(TokenDispatcher):
    """The reference: for each expert, pick its tokens, compute, accumulate (test and benchmark oracle)."""

    def forward(self, x: Tensor, selected: Tensor, weights: Tensor, experts: GroupedExperts) -> Tensor:
        out = torch.zeros_like(x)
        gates, ups, downs = experts.w_gate.unbind(0), experts.w_up.unbind(0), experts.w_down.unbind(0)
        for e in range(experts.num_experts):
            idx = selected[:, e].nonzero().squeeze(-1)
            if idx.numel() == 0:
                continue
            xe = x[idx]
            ye = F.linear(F.silu(F.linear(xe, gates[e])) * F.linear(xe, ups[e]), downs[e])
            out = out.index_add(0, idx, ye * weights[idx, e].to(ye.dtype).unsqueeze(-1))
        return out


class GroupedDispatcher(TokenDispatcher):
    """Local grouped dispatch: gather the token rows of all pairs once (grouped by expert), run the experts
    on their contiguous slices, weight, and scatter-add back once."""

    def __init__(self, num_experts: int):
        super().__init__()
        self.reorderer = TokenReorderer(num_experts)

    def forward(self, x: Tensor, selected: Tensor, weights: Tensor, experts: GroupedExperts) -> Tensor:
        d = self.reorderer(selected, weights)
        return self.combine(x, d, experts(self.gather(x, d), d.counts))

    @staticmethod
    def gather(x: Tensor, d: Dispatch) -> Tensor:
        """The token row of every pair, ``[P, D]`` in ``d`` order."""
        # Advanced indexing rather than index_select: its backward is one index_put_(accumulate=True)
        # kernel, where index_add_ on CPU loops over the rows (several times slower at paper width).
        return x[d.token_idx]

    @staticmethod
    def combine(x: Tensor, d: Dispatch, ys: Tensor) -> Tensor:
        """Scale the pairs' expert outputs ``ys [P, D]`` (in ``d`` order) and scatter-add them per token."""
        ys = ys * d.weights.to(ys.dtype).unsqueeze(-1)
        return torch.zeros_like(x).index_put_((d.token_idx,), ys, accumulate=True)


def build_dispatcher(kind: str, num_experts: int) -> TokenDispatcher:
    """``MoEConfig.dispatch``: ``grouped`` or ``loop`` (expert parallelism installs its own)."""
    if kind == "grouped":
        return GroupedDispatcher(num_experts)
    if kind == "loop":
        return LoopDispatcher()
    raise ValueError(f"unknown dispatch {kind!r}")
