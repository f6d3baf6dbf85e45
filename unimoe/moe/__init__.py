"""Dynamic-Capacity Mixture-of-Experts (DCMoE) feed-forward layer and the dense SwiGLU FFN
(UniMoE-Audio, arXiv 2510.13344, section 3).

Every FFN of the model is one of three kinds behind one interface (``build_ffn``):

* ``dense``  -- a plain SwiGLU (Unify-Dense baseline, the stage-1 specialists);
* ``top_p``  -- DCMoE with Top-P routing (the paper's model);
* ``top_k``  -- DCMoE with Top-K routing (the Unify-MoE ablation).

All of them take ``forward(x, token_mask=None, task_ids=None)`` with ``x`` of shape [B, L, D] or
[T, D] and return an :class:`FFNOutput` ``(out, aux_loss, stats)``.

A DCMoE layer is a pipeline of small modules, as torchtitan's MoE (``torchtitan/models/moe``), one
module each: ``router`` (:mod:`.router`: logits, selection, combination weights) -> ``dispatcher``
(:mod:`.dispatch`: routes the selected (token, routed expert) pairs through ``experts`` and sums the
weighted outputs) + ``shared_experts`` (:mod:`.experts`, every token); the balance loss and routing
statistics are :mod:`.balance`, the layer and the dense FFN :mod:`.layer`. The dispatcher is chosen by
``MoEConfig.dispatch``: ``grouped`` (:class:`GroupedDispatcher`, the default), ``loop``
(:class:`LoopDispatcher`, the test and benchmark oracle); expert parallelism swaps in the all-to-all
dispatcher of ``unimoe.training.parallel``.

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
runs each expert on one contiguous slice and scatter-adds back once; ``loop`` is the straightforward
loop over experts. On a CPU with more than one intra-op thread the experts (routed and shared) run
concurrently, one single-threaded worker each, in forward and backward (:class:`ConcurrentExperts`):
many small matmuls each split over all threads spend their time at the barrier after each matmul.
Elsewhere the routed experts are a single ``torch._grouped_mm`` per projection where available.
"""

from unimoe.moe.balance import (BalanceSums, RoutingStats, balance_loss, balance_loss_from_sums, balance_sums,
                                routing_stats)
from unimoe.moe.dispatch import (Dispatch, GroupedDispatcher, LoopDispatcher, TokenDispatcher, TokenReorderer,
                                 build_dispatcher)
from unimoe.moe.experts import (ConcurrentExperts, GroupedExperts, SharedExperts, StackedSwiGLU,
                                grouped_mm_works)
from unimoe.moe.layer import DCMoE, FFNOutput, SwiGLU, build_ffn
from unimoe.moe.router import Router, Routing, combine_weights, top_k_mask, top_p_mask

__all__ = [
    "FFNOutput", "RoutingStats", "Routing", "Dispatch", "BalanceSums",
    "top_p_mask", "top_k_mask", "combine_weights", "balance_sums", "balance_loss_from_sums", "balance_loss",
    "routing_stats", "SwiGLU", "StackedSwiGLU", "GroupedExperts", "SharedExperts", "TokenReorderer",
    "TokenDispatcher", "GroupedDispatcher", "LoopDispatcher", "build_dispatcher", "Router", "DCMoE", "build_ffn",
    "grouped_mm_works", "ConcurrentExperts",
]
