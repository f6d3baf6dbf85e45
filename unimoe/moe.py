"""Dynamic-Capacity Mixture-of-Experts (DCMoE) feed-forward layer and the dense SwiGLU FFN
(UniMoE-Audio, arXiv 2510.13344, section 3).

Every FFN of the model is one of three kinds behind one interface (``build_ffn``):

* ``dense``  -- a plain SwiGLU (Unify-Dense baseline, the stage-1 specialists);
* ``top_p``  -- DCMoE with Top-P routing (the paper's model);
* ``top_k``  -- DCMoE with Top-K routing (the Unify-MoE ablation).

All of them take ``forward(x, token_mask=None, task_ids=None)`` with ``x`` of shape [B, L, D] or
[T, D] and return an :class:`FFNOutput` ``(out, aux_loss, stats)``.

A DCMoE layer is a pipeline of small modules, as torchtitan's MoE (``torchtitan/models/moe``):
``router`` (logits, selection) -> combination weights -> ``dispatcher`` (routes the selected
(token, routed expert) pairs through ``experts`` and sums the weighted outputs) + ``shared_experts``
(every token). The dispatcher is chosen by ``MoEConfig.dispatch``: ``grouped`` (:class:`GroupedDispatcher`,
the default), ``loop`` (:class:`LoopDispatcher`, the test and benchmark oracle); expert parallelism swaps
in the all-to-all dispatcher of ``unimoe.training.parallel``.

Experts of a DCMoE layer
------------------------
The dynamic pool is ``N`` routed experts followed by ``M`` null experts; ``S`` shared experts come
last. The router's gate is one ``[N + M + S, D]`` matrix (no bias) evaluated in fp32; its logit columns
are ordered ``[routed 0..N-1 | null N..N+M-1 | shared N+M..N+M+S-1]``.

* routed experts: SwiGLUs stored stacked (``w_gate/w_up [N, I, D]``, ``w_down [N, D, I]``, the
  ``nn.Linear`` weight layout) so that stage 2 can copy slices of the specialists' FFNs into them;
* null experts: parameter-free, output zero. They take part in routing (probability, selection,
  balance loss) so a token can skip routed computation;
* shared experts: SwiGLUs of width ``shared_intermediate``, run on every token.

Selection over the dynamic pool, with ``P = softmax(z_dyn)``:

* Top-P: the smallest set of most probable experts whose probability reaches ``p``
  (``sort P desc; c = cumsum; k = 1 + #{j: c_j < p}``), see :func:`top_p_mask`;
* Top-K: the ``k`` most probable experts (ties: lower index first).

Mixing rule (the documented combination weights)
------------------------------------------------
Let ``I`` be the selected dynamic set of a token (``k = |I|``), ``z`` its router logits, ``S`` the
number of shared experts and ``g = softmax([z_I, z_shared])`` one softmax over the selected dynamic
logits and the shared logits. ``out = sum_{i in I, i routed} w_i E_i(x) + sum_s v_s Shared_s(x)`` with

==============  ===================================  ==========================================
weighting       shared_mixing = "softmax" (default)   shared_mixing = "add"
==============  ===================================  ==========================================
"paper"         ``w_i = g_i``, ``v_s = g_s``; so      ``w_i = P_i / sum_{j in I} P_j`` (eq. 3),
                ``w_i ∝ P_i`` and sum(w) + sum(v) = 1 ``v_s = 1``
"uniform"       ``w_i = (1/k) * sum_{j in I} g_j``,   ``w_i = 1 / k``, ``v_s = 1``
                ``v_s = g_s`` (the official rule)
==============  ===================================  ==========================================

"uniform" with "softmax" is what the official code computes (``calculate_audio_global_routing_weight``
in UniMoE_Audio_core.py): its inference-time sparse mixer gives each selected expert multiplier 1
(up to near-ties, logits within 2 % of the running maximum), renormalised to 1/k, and those are scaled
by the routed share of ``g``. That share depends on the router logits, so the router gets a task-loss
gradient. Every other cell is also differentiable except "uniform" with "add" (constant weights: the
router then learns from the balance loss alone).

Null experts receive their weight like any selected expert but output zero; their weight is NOT
redistributed to the other experts (a token that picks only the null expert gets the shared part
alone, scaled by the shared weights).

Router input jitter (training only): with ``MoEConfig.router_input_jitter = j > 0`` and the module in
train mode, the router sees ``x * u`` with ``u ~ U(1 - j, 1 + j)`` drawn per element (the official
``input_jitter_noise = 0.01``); the experts always see ``x``. Eval mode never jitters.

Balance loss (per layer, over the dynamic pool including null experts, non-padding tokens only):
``L_aux = N_dyn * sum_i f_i * Pbar_i`` with ``f_i`` the fraction of tokens that selected expert i and
``Pbar_i`` the mean probability of expert i: the full softmax over the dynamic logits (``switch``) or
the softmax over the logits masked to the token's selected experts (``official``). It is computed from
sums over tokens (:class:`BalanceSums`: selection counts, probability sums, token count) so that the
data-parallel trainer can all-reduce the counts and get the loss of the global batch. The layer returns
the unweighted loss; the caller averages over layers and multiplies by ``MoEConfig.balance_weight``.

Dispatch is dropless. ``grouped`` sorts (token, expert) pairs by expert id (:class:`TokenReorderer`),
runs each expert on one contiguous slice (a single ``torch._grouped_mm`` where available) and
scatter-adds back once; ``loop`` is the straightforward loop over experts.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimoe.config import TASKS, MoEConfig, UniMoEConfig

__all__ = [
    "FFNOutput", "RoutingStats", "Routing", "Dispatch", "BalanceSums",
    "top_p_mask", "top_k_mask", "combine_weights", "balance_sums", "balance_loss_from_sums", "balance_loss",
    "routing_stats", "SwiGLU", "StackedSwiGLU", "GroupedExperts", "SharedExperts", "TokenReorderer",
    "TokenDispatcher", "GroupedDispatcher", "LoopDispatcher", "build_dispatcher", "Router", "TopPRouter",
    "TopKRouter", "DCMoE", "build_ffn",
]


# ---- outputs ------------------------------------------------------------------------------------------


@dataclass
class RoutingStats:
    """Routing decisions of one layer for the non-padding tokens (for the paper's figures 3 and 5)."""

    selected: Tensor               # bool [T_valid, E_dyn]: selection mask (routed + null experts)
    experts_per_token: Tensor      # long [T_valid]: dynamic experts selected (null included)
    routed_per_token: Tensor       # long [T_valid]: routed (non-null) experts that actually ran
    expert_counts: Tensor          # long [E_dyn]: tokens that selected each dynamic expert
    task_counts: Tensor | None     # long [len(TASKS), E_dyn] when task ids are given


class FFNOutput(NamedTuple):
    out: Tensor                    # same shape as the input x
    aux_loss: Tensor               # scalar fp32; zero for dense FFNs
    stats: RoutingStats | None     # None for dense FFNs


class Routing(NamedTuple):
    dyn_logits: Tensor             # fp32 [T, E_dyn]
    shared_logits: Tensor          # fp32 [T, S]
    probs: Tensor                  # fp32 [T, E_dyn] = softmax(dyn_logits)
    selected: Tensor               # bool [T, E_dyn]


class Dispatch(NamedTuple):
    """(token, expert) pairs grouped by expert id: the pairs of expert e are the contiguous rows
    ``counts[:e].sum() .. counts[:e + 1].sum()`` of ``token_idx`` / ``weights``."""

    token_idx: Tensor              # long [P]: source token of each pair
    expert_idx: Tensor             # long [P]: non-decreasing expert ids
    weights: Tensor                # fp32 [P]: combination weight of each pair
    counts: Tensor                 # long [N]: pairs per expert


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


# ---- combination weights and balance loss -------------------------------------------------------------


def combine_weights(dyn_logits: Tensor, shared_logits: Tensor, selected: Tensor, weighting: str = "paper",
                    shared_mixing: str = "softmax") -> tuple[Tensor, Tensor]:
    """Weights of the dynamic experts ``[T, E_dyn]`` (zero where not selected) and of the shared experts
    ``[T, S]``, following the mixing rule in the module docstring. fp32, differentiable w.r.t. the logits
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


class BalanceSums(NamedTuple):
    """The balance loss of a set of tokens as sums over those tokens (module docstring). Counts and
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


# ---- dense FFN ------------------------------------------------------------------------------------------


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


# ---- routed / shared experts ------------------------------------------------------------------------------


@functools.cache
def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs on this device type and dtype: tried once on a tiny input
    (older torch builds lack the op; CUDA needs a recent architecture)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.zeros(4, 8, device=device_type, dtype=dtype)
        w = torch.zeros(2, 8, 8, device=device_type, dtype=dtype)
        offs = torch.tensor([2, 4], dtype=torch.int32, device=device_type)
        torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        return True
    except (RuntimeError, NotImplementedError) as e:
        warnings.warn(f"torch._grouped_mm unavailable for {device_type}/{dtype} ({e}); using the slice loop")
        return False


def _gmm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Rows ``offs[e-1]:offs[e]`` of ``x [P, K]`` times ``w[e].T`` (``w [E, N, K]``, nn.Linear layout)."""
    y = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    if y.requires_grad:
        # The CPU backward kernel rejects broadcast (stride-0) gradients such as the one of y.sum().
        y.register_hook(lambda g: g.contiguous())
    return y


class StackedSwiGLU(nn.Module):
    """``E`` SwiGLU experts stored stacked: ``w_gate, w_up [E, I, D]`` and ``w_down [E, D, I]``.

    Expert e computes ``w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x))``, i.e. exactly a
    :class:`SwiGLU` whose ``gate_proj/up_proj/down_proj`` weights are ``w_gate[e]/w_up[e]/w_down[e]``.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02):
        super().__init__()
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
        self.w_gate = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.w_up = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, 0.0, std)

    @torch.no_grad()
    def load_expert_from_dense(self, index: int, dense: SwiGLU, start: int = 0) -> None:
        """Copy intermediate channels ``start .. start + I`` of a dense SwiGLU into expert ``index``
        (stage 2 builds routed experts by slicing the specialists' FFNs along the intermediate dim)."""
        end = start + self.intermediate
        self.w_gate[index].copy_(dense.gate_proj.weight[start:end])
        self.w_up[index].copy_(dense.up_proj.weight[start:end])
        self.w_down[index].copy_(dense.down_proj.weight[:, start:end])

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, hidden={self.hidden}, intermediate={self.intermediate}"

    def forward_all(self, x: Tensor, weights: Tensor) -> Tensor:
        """Every expert on every token, ``sum_e weights[:, e] * expert_e(x)`` (``x [T, D]``,
        ``weights [T, E]``). The stacked gate/up weights are read as one ``[E * I, D]`` matrix (a view, no
        copy), so the up-projections of all experts are two matmuls."""
        t, e, i = x.shape[0], self.num_experts, self.intermediate
        h = F.silu(F.linear(x, self.w_gate.view(e * i, self.hidden))) * F.linear(x, self.w_up.view(e * i, self.hidden))
        # Scaling the [T, I] activations is the same as scaling the output (down is linear).
        h = (h.view(t, e, i) * weights.to(h.dtype).unsqueeze(-1)).unbind(1)
        out = torch.zeros_like(x)
        for k, down in enumerate(self.w_down.unbind(0)):
            out = out + F.linear(h[k], down)
        return out


class SharedExperts(StackedSwiGLU):
    """The always-on experts of a DCMoE layer: ``forward(x [T, D], weights [T, S])`` runs every expert
    on every token and returns the weighted sum."""

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.forward_all(x, weights)


class GroupedExperts(StackedSwiGLU):
    """The routed experts: ``forward(xs [P, D], counts [E])`` runs expert e on its contiguous rows
    ``counts[:e].sum() .. counts[:e + 1].sum()`` of ``xs`` (as a dispatcher lays them out) and returns the
    un-weighted outputs ``[P, D]``, with one ``torch._grouped_mm`` per projection where the kernel runs
    (``use_grouped_mm``, tried once per device type and dtype) or a loop over the slices otherwise."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02,
                 use_grouped_mm: bool = True):
        super().__init__(num_experts, hidden, intermediate, init_std)
        self.use_grouped_mm = use_grouped_mm

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, use_grouped_mm={self.use_grouped_mm}"

    def forward(self, xs: Tensor, counts: Tensor) -> Tensor:
        if self._can_use_gmm(xs):
            offs = counts.cumsum(0).to(torch.int32)
            return _gmm(F.silu(_gmm(xs, self.w_gate, offs)) * _gmm(xs, self.w_up, offs), self.w_down, offs)
        # split/unbind (not xs[a:b] / w[e]) so that backward builds each gradient once, instead of one
        # full-size zero tensor per expert.
        outs = []
        gates, ups, downs = self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0)
        for e, xe in enumerate(xs.split(counts.tolist())):
            if xe.shape[0]:
                outs.append(F.linear(F.silu(F.linear(xe, gates[e])) * F.linear(xe, ups[e]), downs[e]))
        return torch.cat(outs) if outs else xs.new_zeros(0, self.hidden)

    def _can_use_gmm(self, xs: Tensor) -> bool:
        # The kernel wants 16-byte aligned row strides and does not do float64.
        esize = xs.element_size()
        return (self.use_grouped_mm and xs.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and xs.dtype == self.w_gate.dtype
                and (self.hidden * esize) % 16 == 0 and (self.intermediate * esize) % 16 == 0
                and grouped_mm_works(xs.device.type, xs.dtype))


# ---- token dispatch ---------------------------------------------------------------------------------------


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


# ---- router ---------------------------------------------------------------------------------------------


class Router(nn.Module):
    """The gate ``z = x W_g`` (no bias, fp32) with one logit per routed, null and shared expert, in that
    order; ``forward`` returns a :class:`Routing`, subclasses choose the selection rule over the dynamic
    pool. ``weight`` is the gate in the ``nn.Linear`` layout ``[E_dyn + S, D]`` (kept under that name, so
    checkpoints hold ``...router.weight``). In train mode with ``input_jitter > 0`` the input is first
    multiplied by ``U(1 - input_jitter, 1 + input_jitter)`` noise (module docstring)."""

    def __init__(self, hidden: int, num_dynamic: int, num_shared: int, input_jitter: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_dynamic + num_shared, hidden))
        self.num_dynamic, self.num_shared = num_dynamic, num_shared
        self.input_jitter = input_jitter
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation: DCMoE overwrites it, but drawing it keeps the random stream,
        # and so every seeded model, the same as when the router was an nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def select(self, probs: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"hidden={self.weight.shape[1]}, num_dynamic={self.num_dynamic}, "
                f"num_shared={self.num_shared}, input_jitter={self.input_jitter}")

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


class TopPRouter(Router):
    def __init__(self, hidden: int, num_dynamic: int, num_shared: int, top_p: float,
                 input_jitter: float = 0.0):
        super().__init__(hidden, num_dynamic, num_shared, input_jitter)
        self.top_p = top_p

    def select(self, probs: Tensor) -> Tensor:
        return top_p_mask(probs, self.top_p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_p={self.top_p}"


class TopKRouter(Router):
    def __init__(self, hidden: int, num_dynamic: int, num_shared: int, top_k: int,
                 input_jitter: float = 0.0):
        super().__init__(hidden, num_dynamic, num_shared, input_jitter)
        self.top_k = top_k

    def select(self, probs: Tensor) -> Tensor:
        return top_k_mask(probs, self.top_k)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}"


# ---- the layer ---------------------------------------------------------------------------------------------


class DCMoE(nn.Module):
    """Dynamic-Capacity MoE FFN: router -> dispatcher -> routed experts, plus shared experts (see the
    module docstring)."""

    def __init__(self, hidden: int, moe: MoEConfig, router: str = "top_p", init_std: float = 0.02):
        super().__init__()
        self.num_routed, self.num_null = moe.num_routed_experts, moe.num_null_experts
        self.num_shared = moe.num_shared_experts
        self.num_dynamic = moe.num_dynamic
        self.weighting, self.shared_mixing = moe.weighting, moe.shared_mixing
        self.balance_form = moe.balance_loss
        if router == "top_p":
            self.router: Router = TopPRouter(hidden, self.num_dynamic, self.num_shared, moe.top_p,
                                             moe.router_input_jitter)
        elif router == "top_k":
            self.router = TopKRouter(hidden, self.num_dynamic, self.num_shared, moe.top_k,
                                     moe.router_input_jitter)
        else:
            raise ValueError(f"unknown router {router!r}")
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
