"""The training objective, normalised over the global micro-batch so that data parallelism computes
the single-process gradient.

For one micro-batch, ``loss = CE + w(s) * AUX`` with ``w(s) = moe.balance_weight(s + balance_step_offset)``
and ``s`` the number of optimiser steps taken so far (never micro-batches). An optimiser step averages
the objective over its ``grad_accum`` micro-batches (each micro-batch weighs the same).

* ``CE`` is the per-codebook cross-entropy: for each codebook the mean over the micro-batch's target
  positions, then, over the codebooks that have targets, the SUM (``TrainConfig.codebook_reduction =
  "sum"``, the default: the official code adds its 12 codebook losses, and its balance-loss weights
  0.025 -> 0.001 are set against that scale) or the mean (``"mean"``: the scale of ``UniMoEAudio.loss``
  and of the logged per-codebook and per-task losses). The logged ``ce`` is this objective term.
* ``AUX`` is the balance loss averaged over MoE layers, ``N_dyn * sum_i f_i * Pbar_i`` per layer over
  the micro-batch's non-padding tokens (``switch`` or ``official`` form, as configured). It is
  recomputed from the routers' outputs (captured with forward hooks), so that it can be made exact
  across ranks (below). With one process it is the model's own ``aux_loss``.

Each rank computes its share of the global value
-----------------------------------------------
Each rank holds a strided slice of every global micro-batch. Both terms are ratios of sums over the
global micro-batch, so rank r contributes:

* CE: per codebook ``k``, ``sum_{r's targets} ce / C_k`` where ``C_k`` is the GLOBAL target count (one
  all-reduce of the counts before backward); summed over ranks this is exactly the global per-codebook
  mean, summed (or averaged) over the codebooks that have targets globally (``unimoe.model.codebook_ce``
  on the local sums and the global counts).
* AUX: per layer, ``N_dyn * sum_i F_i * S_i^r / T^2`` with ``F_i`` the global selection count of expert
  i, ``T`` the global number of tokens (both all-reduced, no gradient) and ``S_i^r`` the sum of expert
  i's probabilities over r's tokens (differentiable). Summed over ranks this is
  ``N_dyn * sum_i (F_i / T) (S_i / T)`` over the global micro-batch -- the same balance loss a single
  process computes on that micro-batch (i.e. balancing over the global batch, not per rank)
  (``unimoe.moe.balance_loss_from_sums`` on the local probability sums and the global counts).

DDP averages gradients over ranks, so the objective each rank differentiates is scaled by
``world_size`` (the trainer's ``scale``); the sum of the ranks' gradients is then the gradient of the
global objective, the same as one process that takes ``batch_size * world_size`` sequences per
micro-batch (up to floating-point summation order, and to the router input jitter,
``MoEConfig.router_input_jitter``, whose random draws depend on how tokens are split over ranks; set it
to 0 for an exact comparison).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from unimoe.audio_tokens import IGNORE_INDEX, audio_labels
from unimoe.config import TASKS
from unimoe.model import Batch, UniMoEAudio, codebook_ce, codebook_ce_sums
from unimoe.moe import DCMoE, Router, balance_loss_from_sums, balance_sums
from unimoe.training.parallel import all_reduce_sum_


class TrainLoss(nn.Module):
    """Model forward + the globally normalised objective (see the module docstring).

    ``forward(batch, balance_weight, scale)`` returns ``{"objective", "ce_part", "aux_part"}``: the
    tensor to differentiate (``scale * (ce_part + w * aux_part)``) and this rank's shares of the global
    CE and balance loss (summing them over ranks gives the global values). ``codebook_reduction``
    combines the per-codebook means into CE: ``"sum"`` (official) or ``"mean"``. Statistics for metrics
    are left in ``self.last``.
    """

    def __init__(self, model: UniMoEAudio, world_size: int = 1, codebook_reduction: str = "sum"):
        super().__init__()
        if codebook_reduction not in ("sum", "mean"):
            raise ValueError(f"unknown codebook_reduction {codebook_reduction!r}")
        self.model = model
        self.cfg = model.cfg
        self.world_size = world_size
        self.codebook_reduction = codebook_reduction
        self._captured: list[tuple[int, Any]] = []
        self._capturing = False
        self._hooks = []
        self.moe_layers: list[int] = []
        self._balance_form: dict[int, str] = {}   # MoE layer -> its balance loss form
        for li, layer in enumerate(model.layers):
            if isinstance(layer.mlp, DCMoE):
                self.moe_layers.append(li)
                self._balance_form[li] = layer.mlp.balance_form
                router = layer.mlp.router
                self._hooks.append(router.register_forward_hook(self._make_hook(li)))
        self.last: dict[str, Any] = {}

    def _make_hook(self, li: int):
        def hook(module: Router, inputs, output) -> None:
            if self._capturing:
                self._captured.append((li, output))
        return hook

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def forward(self, batch: Batch, balance_weight: float, scale: float) -> dict[str, Tensor]:
        self._captured = []
        self._capturing = True
        try:
            out = self.model(batch)
        finally:
            self._capturing = False
        captured, self._captured = self._captured, []
        if [li for li, _ in captured] != self.moe_layers:
            raise RuntimeError(f"router outputs captured for layers {[li for li, _ in captured]}, "
                               f"expected {self.moe_layers}")
        predict_from = batch.target_mask[:, 1:]
        hidden = out.hidden[:, :-1][predict_from]                                # [N, D]
        labels = audio_labels(batch.audio_codes[:, 1:][predict_from], self.cfg.audio)  # [N, K]
        ce, ce_sums, counts = codebook_ce_sums(self.model.audio_logits(hidden), labels)
        k = ce.shape[1]
        sums = [balance_sums(r.dyn_logits, r.selected, self._balance_form[li]) for li, r in captured]

        # One all-reduce of every denominator: target counts per codebook, selection counts per MoE layer
        # and expert, tokens per MoE layer. The numerators (CE and probability sums) stay local.
        tokens = torch.tensor([float(b.tokens) for b in sums], dtype=torch.float64, device=ce.device)
        stats = torch.cat([counts.double()] + [b.counts.double() for b in sums] + [tokens])
        all_reduce_sum_(stats, self.world_size)
        ce_part = codebook_ce(ce_sums, stats[:k], self.codebook_reduction)

        aux_part = ce_sums.new_zeros(())
        if sums:
            off, n_tok = k, stats[-len(sums):]
            for b, t_glob in zip(sums, n_tok.tolist()):
                n_dyn = b.counts.shape[0]
                f_glob = stats[off:off + n_dyn].float()
                aux_part = aux_part + balance_loss_from_sums(f_glob, b.prob_sums, t_glob)
                off += n_dyn
            aux_part = aux_part / len(sums)

        objective = scale * (ce_part + balance_weight * aux_part)

        # Detached statistics for metrics (summed over ranks at logging time).
        with torch.no_grad():
            n_tasks = len(TASKS)
            task_ids = batch.task_ids if batch.task_ids is not None else torch.zeros(
                batch.input_ids.shape[0], dtype=torch.long, device=ce.device)
            rows = torch.arange(batch.input_ids.shape[0], device=ce.device)[:, None].expand_as(predict_from)[predict_from]
            row_task = task_ids[rows]
            task_ce = torch.zeros(n_tasks, k, dtype=torch.float64, device=ce.device).index_add_(
                0, row_task, ce.detach().double())
            task_cnt = torch.zeros(n_tasks, k, dtype=torch.float64, device=ce.device).index_add_(
                0, row_task, (labels != IGNORE_INDEX).double())
            self.last = {
                "task_ce": task_ce, "task_cnt": task_cnt,
                "routing": [out.routing[li] for li in self.moe_layers],
                "tokens": int(batch.attention_mask.sum()),
                "target_frames": int(counts[0]) if k else 0,
                "sequences": int(batch.input_ids.shape[0]),
            }
        return {"objective": objective, "ce_part": ce_part.detach(), "aux_part": aux_part.detach()}
