"""What the router's choices add up to: the balance loss, as sums over tokens that add up over ranks
(:class:`BalanceSums`, used alike by the layer and the data-parallel trainer), and the routing
statistics behind the paper's figures 3 and 5."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from unimoe.config import TASKS


class BalanceSums(NamedTuple):
    """The balance loss of a set of tokens as sums over those tokens (:mod:`unimoe.moe`). Counts and
    token numbers add up over ranks; see :func:`balance_loss_from_sums`."""

    counts: Tensor                 # fp32 [E_dyn]: tokens that selected each dynamic expert (no gradient)
    prob_sums: Tensor              # fp32 [E_dyn]: sum over tokens of each expert's probability
    tokens: int                    # number of tokens


def balance_sums(dyn_logits: Tensor, selected: Tensor, form: str = "switch") -> BalanceSums:
    """The sums behind the balance loss of the given (non-padding) tokens; ``form`` picks the
    probabilities: full softmax (``switch``) or softmax over each token's selected experts (``official``)."""
    if form == "switch":
        probs = torch.softmax(dyn_logits, dim=-1)
    elif form == "official":
        probs = torch.softmax(dyn_logits.masked_fill(~selected, float("-inf")), dim=-1)
    else:
        raise ValueError(f"unknown balance loss form {form!r}")
    return BalanceSums(selected.sum(0).to(probs.dtype), probs.sum(0), dyn_logits.shape[0])


def balance_loss_from_sums(counts: Tensor, prob_sums: Tensor, tokens: float) -> Tensor:
    """``N_dyn * sum_i (counts_i / T) * (prob_sums_i / T)``; 0 (still in the graph) when ``T = 0``.

    With ``counts`` and ``tokens`` summed over the ranks of a data-parallel group and each rank's own
    ``prob_sums``, the ranks' values add up to the balance loss of the global batch."""
    if tokens == 0:
        return prob_sums.sum() * 0.0  # keeps the router in the graph
    return counts.shape[-1] * (counts * prob_sums).sum() / (tokens * tokens)


def balance_loss(dyn_logits: Tensor, selected: Tensor, form: str = "switch") -> Tensor:
    """``N_dyn * sum_i f_i * Pbar_i`` over the given (non-padding) tokens; 0 when there are none."""
    return balance_loss_from_sums(*balance_sums(dyn_logits, selected, form))


# ---- routing statistics ------------------------------------------------------------------------------


@dataclass
class RoutingStats:
    """Routing decisions of one layer for the non-padding tokens (for the paper's figures 3 and 5)."""

    selected: Tensor               # bool [T_valid, E_dyn]: selection mask (routed + null experts)
    experts_per_token: Tensor      # long [T_valid]: dynamic experts selected (null included)
    routed_per_token: Tensor       # long [T_valid]: routed (non-null) experts that actually ran
    expert_counts: Tensor          # long [E_dyn]: tokens that selected each dynamic expert
    task_counts: Tensor | None     # long [len(TASKS), E_dyn] when task ids are given


@torch.no_grad()
def routing_stats(selected: Tensor, num_routed: int, task_ids: Tensor | None = None) -> RoutingStats:
    """Statistics of a selection mask ``[T, E_dyn]``. ``task_ids`` (``[T]``, indices into ``TASKS``);
    tokens with an id outside ``0..len(TASKS)-1`` (e.g. -1 for "no task") are left out of task_counts."""
    sel = selected.long()
    task_counts = None
    if task_ids is not None:
        task_ids = task_ids.reshape(-1).long()
        known = (task_ids >= 0) & (task_ids < len(TASKS))
        task_counts = sel.new_zeros(len(TASKS), selected.shape[-1])
        task_counts.index_add_(0, task_ids[known], sel[known])
    return RoutingStats(
        selected=selected,
        experts_per_token=sel.sum(-1),
        routed_per_token=sel[:, :num_routed].sum(-1),
        expert_counts=sel.sum(0),
        task_counts=task_counts,
    )
