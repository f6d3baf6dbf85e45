"""The FFN kinds behind one interface (``build_ffn``): the dense SwiGLU and the DCMoE layer, which wires
router -> combination weights -> dispatcher -> routed experts, plus the shared experts."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimoe.config import MoEConfig, UniMoEConfig
from unimoe.moe.balance import RoutingStats, balance_loss, routing_stats
from unimoe.moe.dispatch import build_dispatcher
from unimoe.moe.experts import GroupedExperts, SharedExperts
from unimoe.moe.router import Router, combine_weights


class FFNOutput(NamedTuple):
    out: Tensor                    # same shape as the input x
    aux_loss: Tensor               # scalar fp32; zero for dense FFNs
    stats: RoutingStats | None     # None for dense FFNs


class SwiGLU(nn.Module):
    """Qwen-style dense FFN: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, init_std: float | None = 0.02):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        if init_std is not None:
            for lin in (self.gate_proj, self.up_proj, self.down_proj):
                nn.init.normal_(lin.weight, 0.0, init_std)

    def forward(self, x: Tensor, token_mask: Tensor | None = None,
                task_ids: Tensor | None = None) -> FFNOutput:
        out = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return FFNOutput(out, torch.zeros((), device=x.device, dtype=torch.float32), None)


class DCMoE(nn.Module):
    """Dynamic-Capacity MoE FFN: router -> dispatcher -> routed experts, plus shared experts (see the
    package docstring)."""

    def __init__(self, hidden: int, moe: MoEConfig, router: str = "top_p", init_std: float = 0.02):
        super().__init__()
        self.num_routed, self.num_null = moe.num_routed_experts, moe.num_null_experts
        self.num_shared = moe.num_shared_experts
        self.num_dynamic = moe.num_dynamic
        self.weighting, self.shared_mixing = moe.weighting, moe.shared_mixing
        self.balance_form = moe.balance_loss
        rules = {"top_p": {"top_p": moe.top_p}, "top_k": {"top_k": moe.top_k}}
        if router not in rules:
            raise ValueError(f"unknown router {router!r}")
        self.router = Router(hidden, self.num_dynamic, self.num_shared, **rules[router],
                             input_jitter=moe.router_input_jitter)
        nn.init.normal_(self.router.weight, 0.0, init_std)
        self.experts = GroupedExperts(self.num_routed, hidden, moe.routed_intermediate, init_std)
        self.shared_experts = SharedExperts(self.num_shared, hidden, moe.shared_intermediate, init_std)
        self.dispatcher = build_dispatcher(moe.dispatch, self.num_routed)
        # Generation turns this off: the balance loss and statistics cost more than a one-token step.
        self.collect_stats = True

    def forward(self, x: Tensor, token_mask: Tensor | None = None,
                task_ids: Tensor | None = None) -> FFNOutput:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        # Padding tokens are skipped entirely (their output is 0) so they never reach routing statistics,
        # the balance loss or the experts.
        keep = None
        if token_mask is not None:
            token_mask = token_mask.reshape(-1).bool()
            if not bool(token_mask.all()):
                keep = token_mask.nonzero().squeeze(-1)
        xv = x if keep is None else x.index_select(0, keep)
        if task_ids is not None:
            task_ids = task_ids.reshape(-1)
            task_ids = task_ids if keep is None else task_ids[keep]

        routing = self.router(xv)
        w_dyn, w_shared = combine_weights(routing.dyn_logits, routing.shared_logits, routing.selected,
                                          self.weighting, self.shared_mixing)
        # Null experts (columns N..N+M-1) output zero: drop them here, weights untouched.
        n = self.num_routed
        y = self.dispatcher(xv, routing.selected[:, :n], w_dyn[:, :n], self.experts)
        if self.num_shared:
            y = y + self.shared_experts(xv, w_shared)

        out = y if keep is None else torch.zeros_like(x).index_copy(0, keep, y)
        if not self.collect_stats:
            return FFNOutput(out.reshape(shape), x.new_zeros((), dtype=torch.float32), None)
        aux = balance_loss(routing.dyn_logits, routing.selected, self.balance_form)
        stats = routing_stats(routing.selected, self.num_routed, task_ids)
        return FFNOutput(out.reshape(shape), aux, stats)


def build_ffn(cfg: UniMoEConfig, kind: str) -> nn.Module:
    """The FFN of one layer: ``dense`` (SwiGLU of ``cfg.intermediate_size``), ``top_p`` or ``top_k`` DCMoE."""
    if kind == "dense":
        return SwiGLU(cfg.hidden_size, cfg.intermediate_size, cfg.init_std)
    if kind in ("top_p", "top_k"):
        return DCMoE(cfg.hidden_size, cfg.moe, router=kind, init_std=cfg.init_std)
    raise ValueError(f"unknown FFN kind {kind!r}")
