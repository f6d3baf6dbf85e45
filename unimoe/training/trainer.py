"""The trainer: AdamW + cosine, gradient accumulation, clipping, bf16 on CUDA, data parallelism,
exact checkpoint/resume and Parquet metrics.

Objective
---------
For one micro-batch, ``loss = CE + w(s) * AUX`` with ``w(s) = moe.balance_weight(s + balance_step_offset)``
and ``s`` the number of optimiser steps taken so far (never micro-batches). An optimiser step averages
the objective over its ``grad_accum`` micro-batches (each micro-batch weighs the same).

* ``CE`` is the per-codebook cross-entropy: for each codebook the mean over the micro-batch's target
  positions, then, over the codebooks that have targets, the SUM (``TrainConfig.codebook_reduction =
  "sum"``, the default: the official code adds its 12 codebook losses, and its balance-loss weights
  0.025 -> 0.001 are set against that scale) or the mean (``"mean"``: the scale of ``UniMoEAudio.loss``
  and of the logged per-codebook and per-task losses). The logged ``ce`` is this objective term.
* ``AUX`` is the balance loss averaged over MoE layers, ``N_dyn * sum_i f_i * Pbar_i`` per layer over
  the micro-batch's non-padding tokens (``switch`` or ``official`` form, as configured). The trainer
  recomputes it from the routers' outputs (captured with forward hooks), so that it can be made exact
  across ranks (below). With one process it is the model's own ``aux_loss``.

Data parallelism: the gradient equals the single-process gradient
-----------------------------------------------------------------
Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on CUDA), the
loss module is wrapped in ``DistributedDataParallel`` (``find_unused_parameters=True``: experts that no
token chose, and the vision tower on batches without video, get no gradient), and each rank takes a
strided slice of every global micro-batch (``DataOrder``). Both terms are ratios of sums over the
global micro-batch, so each rank computes its *share of the global value*:

* CE: per codebook ``k``, rank r contributes ``sum_{r's targets} ce / C_k`` where ``C_k`` is the GLOBAL
  target count (one all-reduce of the counts before backward); summed over ranks this is exactly the
  global per-codebook mean, summed (or averaged) over the codebooks that have targets globally
  (``unimoe.model.codebook_ce`` on the local sums and the global counts).
* AUX: per layer, rank r contributes ``N_dyn * sum_i F_i * S_i^r / T^2`` with ``F_i`` the global
  selection count of expert i, ``T`` the global number of tokens (both all-reduced, no gradient) and
  ``S_i^r`` the sum of expert i's probabilities over r's tokens (differentiable). Summed over ranks this
  is ``N_dyn * sum_i (F_i / T) (S_i / T)`` over the global micro-batch — the same balance loss a single
  process computes on that micro-batch (i.e. balancing over the global batch, not per rank)
  (``unimoe.moe.balance_loss_from_sums`` on the local probability sums and the global counts).

DDP averages gradients over ranks, so the objective each rank differentiates is scaled by
``world_size``; the sum of the ranks' gradients is then the gradient of the global objective, the
same as one process that takes ``batch_size * world_size`` sequences per micro-batch (up to
floating-point summation order, and to the router input jitter, ``MoEConfig.router_input_jitter``,
whose random draws depend on how tokens are split over ranks; set it to 0 for an exact comparison).
Clipping uses the synchronised gradient, so it matches too.

Checkpoints and exact resume
----------------------------
``<workdir>/checkpoints/step-XXXXXX`` (``unimoe.checkpoint.save_checkpoint``: safetensors + JSON,
atomic) and a ``<workdir>/checkpoints/latest`` pointer file (atomic rename) naming the newest one.
``extra.safetensors`` holds the AdamW moments and step counts (``optim.<param>.<key>``) and the torch
RNG states (``rng.torch_cpu``, ``rng.cuda.<i>``); ``state.json`` holds everything else (see
``Trainer.checkpoint_state``). Restoring weights, optimiser, scheduler, RNG and the data order's
``(epoch, cursor)`` makes a resumed CPU run reproduce the uninterrupted run's losses bit for bit:
nothing in a step depends on anything else (per-item crops and condition dropout are keyed on
``(seed, epoch, index)``). Only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from unimoe.audio_tokens import IGNORE_INDEX, audio_labels
from unimoe.checkpoint import STATE, WEIGHTS, CheckpointError, read_state, save_checkpoint
from unimoe.config import TASKS, UniMoEConfig
from unimoe.common.files import atomic_write_text
from unimoe.io import sha256_file
from unimoe.model import Batch, UniMoEAudio, codebook_ce, codebook_ce_sums
from unimoe.moe import DCMoE, Router, balance_loss_from_sums, balance_sums
from unimoe.training.config import TrainConfig
from unimoe.training.data import HELD_OUT_SPLITS, BatchMaker, DataOrder, dataset_view, held_out_positions, subset_indices
from unimoe.training.metrics import MetricsWriter

log = logging.getLogger("unimoe.training")

STATE_KIND = "unimoe.train/1"
LATEST = "latest"


# ---- distributed environment --------------------------------------------------------------------------


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torchrun environment (0, 0, 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, int(os.environ.get("LOCAL_RANK", str(rank))), world


def _all_reduce_(t: Tensor, world_size: int) -> Tensor:
    """Sum ``t`` over ranks in place (through the GPU when the backend is nccl)."""
    if world_size > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            tmp = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(tmp)
            t.copy_(tmp.cpu())
        else:
            dist.all_reduce(t)
    return t


# ---- the loss module (what DDP wraps) ---------------------------------------------------------------------


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
        _all_reduce_(stats, self.world_size)
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


# ---- helpers ----------------------------------------------------------------------------------------------


def checkpoint_dir(workdir: str | Path) -> Path:
    return Path(workdir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{int(step):06d}"


def latest_checkpoint(workdir: str | Path) -> Path | None:
    """The checkpoint ``<workdir>/checkpoints/latest`` points to; without a (valid) pointer, the
    highest complete ``step-*`` checkpoint; ``None`` when there is none."""
    root = checkpoint_dir(workdir)
    pointer = root / LATEST
    if pointer.is_file():
        p = root / pointer.read_text().strip()
        if (p / STATE).is_file():
            return p
    steps = sorted((p for p in root.glob("step-*") if (p / STATE).is_file()), key=lambda p: p.name)
    return steps[-1] if steps else None


def _remove_stale_temporaries(root: Path) -> None:
    """Half-written checkpoint directories left by a killed run (``.step-XXXXXX.<random>``)."""
    if root.is_dir():
        for p in root.glob(".step-*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def _forward_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Torch seed of one micro-batch's forward on one rank (salt 3: the data's salts are 1 and 2)."""
    return int(np.random.default_rng([seed, step, micro, rank, 3]).integers(2 ** 63 - 1))


def _json_python_rng(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(obj: list) -> tuple:
    return (obj[0], tuple(obj[1]), obj[2])


def _json_numpy_rng(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, [int(x) for x in keys], int(pos), int(has_gauss), float(cached)]


def _numpy_rng_from_json(obj: list) -> tuple:
    return (obj[0], np.asarray(obj[1], dtype=np.uint32), obj[2], obj[3], obj[4])


# ---- the trainer ----------------------------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on ``dataset`` for ``train_cfg.max_steps`` optimiser steps (see module docstring).

    ``trainable``: predicate on parameter names; parameters it rejects get ``requires_grad=False`` and
    are left out of the optimiser (stage 2 trains only router and shared experts). ``None`` keeps the
    parameters' current ``requires_grad`` flags. ``balance_step_offset`` shifts the step at which the
    balance-loss weight is evaluated (e.g. to continue a decay across stages). ``resume=True``
    restores the latest checkpoint in ``workdir`` when there is one. ``callbacks`` are called with the
    trainer after every optimiser step (after logging and checkpointing). ``wrap(loss_module, device)``
    replaces the default ``DistributedDataParallel`` wrapping under torchrun (e.g. FSDP); the wrapped
    module must average gradients over ranks like DDP (and offer ``no_sync()`` for ``grad_accum > 1``).
    """

    def __init__(self, model: UniMoEAudio, model_cfg: UniMoEConfig, train_cfg: TrainConfig, dataset: Any,
                 builder, workdir: str | Path, *, run_id: str, variant: str = "default", stage: int = 1,
                 trainable: Callable[[str], bool] | None = None, balance_step_offset: int = 0,
                 resume: bool = False, callbacks: Iterable[Callable[["Trainer"], None]] = (),
                 wrap: Callable[[nn.Module, torch.device], nn.Module] | None = None):
        train_cfg.validate()
        if len(dataset) < 1:
            raise ValueError("the training dataset is empty")
        held_out = held_out_positions(dataset)
        if held_out:  # the last line of defence: held-out rows must never be trained on
            raise ValueError(f"the training dataset holds {len(held_out)} row(s) of held-out split(s) "
                             f"{list(HELD_OUT_SPLITS)} (e.g. position {held_out[0]}); build it with "
                             "dataset_view(..., exclude_splits=HELD_OUT_SPLITS)")
        self.model_cfg, self.cfg = model_cfg, train_cfg
        self.dataset, self.builder = dataset, builder
        self.workdir = Path(workdir)
        self.run_id, self.variant, self.stage = str(run_id), str(variant), int(stage)
        self.balance_step_offset = int(balance_step_offset)
        self.callbacks = list(callbacks)

        # -- distributed set-up
        self.rank, self.local_rank, self.world_size = dist_env()
        self._owns_pg = False
        use_cuda = train_cfg.device == "cuda" or (train_cfg.device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("train.device='cuda' but CUDA is not available")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self._owns_pg = True
        self.is_main = self.rank == 0

        # Global RNGs: seeded and checkpointed. Item randomness is keyed (data.item_rng); the one draw
        # of a training forward, the router input jitter, uses the torch RNG re-seeded per micro-batch
        # (train_step), so it too is a function of (seed, step, micro-batch, rank).
        random.seed(train_cfg.seed)
        np.random.seed(train_cfg.seed % (2 ** 32))
        torch.manual_seed(train_cfg.seed)

        # -- model and parameters
        self.model = model.to(self.device)
        if trainable is not None:
            for name, p in self.model.named_parameters():
                p.requires_grad_(bool(trainable(name)))
        # Sharding under torchrun, chosen by the config (before the optimizer: both swap parameters).
        self.sharded = self.world_size > 1 and (train_cfg.fsdp or train_cfg.expert_parallel)
        self._ep_slices: dict[str, tuple[int, int]] = {}   # expert-shard parameter -> (first expert, count)
        if self.world_size > 1 and train_cfg.expert_parallel:
            from unimoe.training.parallel import apply_expert_parallel, expert_parallel_layers

            apply_expert_parallel(self.model)
            for mname, m in expert_parallel_layers(self.model):
                shard = (m.dispatcher.expert_start, m.dispatcher.num_local)
                for pname, _ in m.experts.named_parameters():
                    self._ep_slices[f"{mname}.experts.{pname}"] = shard
        if self.world_size > 1 and train_cfg.fsdp:
            from unimoe.training.parallel import wrap_fsdp

            # Only some ranks' batches may hold video: the vision tower stays replicated (see wrap_fsdp).
            vision = list(self.model.vision.parameters()) if self.model.vision is not None else []
            wrap_fsdp(self.model, shard_vision=False, ignored=vision)
        self.named_trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.named_trainable:
            raise ValueError("no trainable parameters (check the `trainable` predicate)")
        self.frozen = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        decay = [(n, p) for n, p in self.named_trainable if p.dim() >= 2]
        no_decay = [(n, p) for n, p in self.named_trainable if p.dim() < 2]
        self._group_names = [[n for n, _ in decay], [n for n, _ in no_decay]]
        groups = [{"params": [p for _, p in decay], "weight_decay": train_cfg.weight_decay},
                  {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=tuple(train_cfg.betas), eps=train_cfg.eps)
        cfg = train_cfg
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: cfg.lr_multiplier(s))

        # -- loss module (DDP-wrapped under torchrun)
        self.loss_module = TrainLoss(self.model, self.world_size, train_cfg.codebook_reduction)
        self.ddp = None
        if wrap is not None:
            self.ddp = wrap(self.loss_module, self.device)
        elif self.world_size > 1 and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.loss_module, device_ids=[self.local_rank] if use_cuda else None,
                           find_unused_parameters=True, forward_sync_buffers=False)

        # -- data
        self.order = DataOrder(len(dataset), train_cfg.seed, self.rank, self.world_size, shuffle=train_cfg.shuffle)
        self.maker = BatchMaker(model_cfg, train_cfg, builder)
        self.metrics = MetricsWriter(self.workdir, self.run_id, self.variant, self.stage) if self.is_main else None

        # -- progress
        self.step = 0
        self.history: list[dict[str, float]] = []   # one entry per optimiser step of this process
        self.last: dict[str, Any] = {}               # the latest step's values (also checkpointed)
        self.resumed_from: int | None = None
        self.final_checkpoint: Path | None = None
        self._last_saved_step: int | None = None
        self._tokens_this_run = 0
        self._step_seconds_this_run = 0.0
        self._reset_window()
        if resume:
            if self.is_main:
                _remove_stale_temporaries(checkpoint_dir(self.workdir))
            path = latest_checkpoint(self.workdir)
            if path is not None:
                self.resume(path)

    # ---- properties ------------------------------------------------------------------------------------
    @property
    def global_micro_batch(self) -> int:
        return self.cfg.batch_size * self.world_size

    @property
    def global_batch(self) -> int:
        return self.global_micro_batch * self.cfg.grad_accum

    def balance_weight(self, step: int | None = None) -> float:
        if not self.model_cfg.is_moe:
            return 0.0
        s = self.step if step is None else step
        return float(self.model_cfg.moe.balance_weight(s + self.balance_step_offset))

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.bf16_on_gpu:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---- metrics window ---------------------------------------------------------------------------------
    def _reset_window(self) -> None:
        k, n_tasks = self.model_cfg.audio.num_codebooks, len(TASKS)
        n_moe = len(self.loss_module.moe_layers)
        moe = self.model_cfg.moe
        self._win = {
            "task_ce": torch.zeros(n_tasks, k, dtype=torch.float64),
            "task_cnt": torch.zeros(n_tasks, k, dtype=torch.float64),
            "hist_dyn": torch.zeros(n_moe, moe.num_dynamic + 1, dtype=torch.float64),
            "hist_routed": torch.zeros(n_moe, moe.num_routed_experts + 1, dtype=torch.float64),
            "task_sel": torch.zeros(n_moe, n_tasks, moe.num_dynamic, dtype=torch.float64),
            "counters": torch.zeros(3, dtype=torch.float64),  # tokens, target frames, sequences
        }
        self._win_steps: list[dict[str, float]] = []
        self._win_seconds = 0.0

    def _accumulate(self, last: dict[str, Any]) -> None:
        w = self._win
        w["task_ce"] += last["task_ce"].cpu()
        w["task_cnt"] += last["task_cnt"].cpu()
        moe = self.model_cfg.moe
        for j, st in enumerate(last["routing"]):
            if st is None:
                continue
            w["hist_dyn"][j] += torch.bincount(st.experts_per_token.cpu(), minlength=moe.num_dynamic + 1)[: moe.num_dynamic + 1].double()
            w["hist_routed"][j] += torch.bincount(st.routed_per_token.cpu(), minlength=moe.num_routed_experts + 1)[: moe.num_routed_experts + 1].double()
            if st.task_counts is not None:
                w["task_sel"][j] += st.task_counts.cpu().double()
        w["counters"] += torch.tensor([last["tokens"], last["target_frames"], last["sequences"]], dtype=torch.float64)

    # ---- the loop -----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches on every rank)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        epoch_before = self.order.epoch + self.order.cursor / self.order.n
        positions = self.order.take(self.global_batch)
        w_bal = self.balance_weight()
        scale = self.world_size / cfg.grad_accum
        module = self.ddp if self.ddp is not None else self.loss_module
        self.optimizer.zero_grad(set_to_none=True)
        parts = torch.zeros(2, dtype=torch.float64)
        tokens = 0
        for m in range(cfg.grad_accum):
            micro = positions[m * self.global_micro_batch:(m + 1) * self.global_micro_batch]
            batch = self.maker.batch(self.dataset, self.order.shard(micro)).to(self.device)
            # Router input jitter (MoEConfig.router_input_jitter) draws from the torch RNG: key it like
            # the data's randomness, so a resumed run redraws it exactly on every rank (only rank 0's RNG
            # state is checkpointed).
            torch.manual_seed(_forward_seed(cfg.seed, self.step, m, self.rank))
            skip_sync = self.ddp is not None and m < cfg.grad_accum - 1 and hasattr(self.ddp, "no_sync")
            with (self.ddp.no_sync() if skip_sync else nullcontext()):
                with self._autocast():
                    out = module(batch, w_bal, scale)
                out["objective"].backward()
            parts += torch.stack([out["ce_part"], out["aux_part"]]).double().cpu()
            self._accumulate(self.loss_module.last)
            tokens += self.loss_module.last["tokens"]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if self.sharded:
            from unimoe.training.parallel import _is_dtensor, sync_grads

            # Every rank must all-reduce the same replicated tensors: a parameter this rank did not use
            # (the vision tower without video) contributes zeros.
            for _, p in self.named_trainable:
                if p.grad is None and not _is_dtensor(p):
                    p.grad = torch.zeros_like(p)
            sync_grads(self.model)  # replicated grads all-reduced, expert shards scaled; FSDP reduced already
            grad_norm = self._sharded_clip(max_norm)
        else:
            params = [p for _, p in self.named_trainable if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        # Global values of this step (exact shares summed over ranks), the same on every rank.
        red = torch.cat([parts, torch.tensor([float(tokens)], dtype=torch.float64)])
        _all_reduce_(red, self.world_size)
        ce, aux = float(red[0]) / cfg.grad_accum, float(red[1]) / cfg.grad_accum
        seconds = time.perf_counter() - t0
        rec = {"step": self.step, "loss": ce + w_bal * aux, "ce": ce, "aux": aux, "balance_weight": w_bal,
               "lr": lr, "grad_norm": grad_norm, "tokens": float(red[2]), "seconds": seconds,
               "epoch": epoch_before}
        self.history.append(rec)
        self.last = rec
        self._win_steps.append(rec)
        self._win_seconds += seconds
        self._tokens_this_run += int(red[2])
        self._step_seconds_this_run += seconds
        return rec

    # ---- sharded runs (FSDP / expert parallelism) ---------------------------------------------------------
    def _sharded_clip(self, max_norm: float) -> float:
        """Global gradient norm over sharded (DTensor, expert-shard) and replicated gradients, and the same
        clipping as ``clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``, at most 1)."""
        from unimoe.training.parallel import _is_dtensor

        rep = torch.zeros((), dtype=torch.float64)
        shard = torch.zeros((), dtype=torch.float64)
        grads = []
        for n, p in self.named_trainable:
            if p.grad is None:
                continue
            grads.append(p.grad)
            if _is_dtensor(p.grad):
                shard += p.grad.to_local().detach().double().pow(2).sum().cpu()
            elif n in self._ep_slices:
                shard += p.grad.detach().double().pow(2).sum().cpu()
            else:
                rep += p.grad.detach().double().pow(2).sum().cpu()
        _all_reduce_(shard, self.world_size)
        norm = float((rep + shard).sqrt())
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return norm

    def _full(self, name: str, t: Tensor) -> Tensor:
        """The full tensor of parameter ``name``'s (or its optimiser state's) shard. A collective."""
        from unimoe.training.parallel import _is_dtensor

        if _is_dtensor(t):
            return t.full_tensor()
        if name in self._ep_slices and t.dim() > 0:
            parts = [torch.empty_like(t) for _ in range(self.world_size)]
            dist.all_gather(parts, t.detach().contiguous())
            return torch.cat(parts)
        return t

    def _local(self, name: str, full: Tensor, like: Tensor) -> Tensor:
        """This rank's shard of ``full`` for parameter ``name`` (shaped like ``like``)."""
        from torch.distributed.tensor import distribute_tensor

        from unimoe.training.parallel import _is_dtensor

        if _is_dtensor(like):
            return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements)
        if name in self._ep_slices and full.dim() > 0:
            start, count = self._ep_slices[name]
            return full[start:start + count]
        return full

    def _gather_for_checkpoint(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Full model and optimiser tensors of a sharded run (every rank calls it, in the same order)."""
        model = {k: self._full(k, v) for k, v in self.model.state_dict().items()}
        names = self._param_names()
        optim = {}
        for idx, st in sorted(self.optimizer.state_dict()["state"].items()):
            for key, val in st.items():
                if isinstance(val, Tensor):
                    optim[f"optim.{names[idx]}.{key}"] = self._full(names[idx], val)
        return model, optim

    def train(self) -> dict[str, Any]:
        """Run until ``max_steps``; log every ``log_every`` steps, checkpoint every ``checkpoint_every``
        steps and at the end. Returns :meth:`summary`."""
        self.loss_module.train()
        while self.step < self.cfg.max_steps:
            self.train_step()
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                self.log_window()
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.max_steps:
                self.save_checkpoint()
            for cb in self.callbacks:
                cb(self)
        if self._last_saved_step != self.step:  # e.g. resumed at (or beyond) max_steps
            path = latest_checkpoint(self.workdir)
            if path is not None and read_state(path).get("step") == self.step:
                self.final_checkpoint = path
            else:
                self.save_checkpoint()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        last = self.last or {}
        return {
            "run_id": self.run_id, "variant": self.variant, "stage": self.stage,
            "steps": self.step, "steps_this_run": len(self.history), "resumed_from": self.resumed_from,
            "final_loss": last.get("loss"), "final_ce": last.get("ce"), "final_aux": last.get("aux"),
            "tokens_this_run": self._tokens_this_run,
            "tokens_per_s": (self._tokens_this_run / self._step_seconds_this_run) if self._step_seconds_this_run else None,
            "world_size": self.world_size, "dataset_size": len(self.dataset),
            "epoch": self.order.epoch + self.order.cursor / self.order.n,
            "checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "v2m_without_video": self.maker.v2m_without_video,
        }

    # ---- logging ----------------------------------------------------------------------------------------------
    def log_window(self) -> None:
        """Reduce the window's statistics over ranks; rank 0 appends one part per table."""
        w = self._win
        flat = torch.cat([w[k].reshape(-1) for k in ("task_ce", "task_cnt", "hist_dyn", "hist_routed", "task_sel", "counters")])
        _all_reduce_(flat, self.world_size)
        tensors, off = {}, 0
        for key in ("task_ce", "task_cnt", "hist_dyn", "hist_routed", "task_sel", "counters"):
            n = w[key].numel()
            tensors[key] = flat[off:off + n].view(w[key].shape)
            off += n
        steps, seconds = self._win_steps, self._win_seconds
        if self.is_main and steps:
            self._write_metrics(tensors, steps, seconds)
        if self.is_main and steps:
            r = steps[-1]
            log.info("run %s stage %d step %d/%d loss %.4f ce %.4f aux %.4f lr %.3g gnorm %.3f tok/s %.0f",
                     self.run_id, self.stage, self.step, self.cfg.max_steps, r["loss"], r["ce"], r["aux"],
                     r["lr"], r["grad_norm"], float(tensors["counters"][0]) / max(seconds, 1e-9))
        self._reset_window()

    def _write_metrics(self, t: dict[str, Tensor], steps: list[dict], seconds: float) -> None:
        last = steps[-1]
        mean = lambda key: float(np.mean([s[key] for s in steps]))  # noqa: E731
        cb_cnt = t["task_cnt"].sum(0)
        per_cb = torch.where(cb_cnt > 0, t["task_ce"].sum(0) / cb_cnt.clamp(min=1), torch.full_like(cb_cnt, math.nan))
        row = {"loss": mean("loss"), "ce": mean("ce"), "aux": mean("aux"), "balance_weight": last["balance_weight"],
               "lr": last["lr"], "grad_norm": last["grad_norm"], "steps_in_window": len(steps),
               "tokens": float(t["counters"][0]), "target_frames": float(t["counters"][1]),
               "sequences": float(t["counters"][2]), "tokens_per_s": float(t["counters"][0]) / max(seconds, 1e-9),
               "step_seconds": seconds, "epoch": self.order.epoch + self.order.cursor / self.order.n,
               "world_size": self.world_size, "per_codebook": [float(x) for x in per_cb]}
        for ti, task in enumerate(TASKS):
            cnt = t["task_cnt"][ti]
            has = cnt > 0
            row[f"loss_{task}"] = float((t["task_ce"][ti][has] / cnt[has]).mean()) if bool(has.any()) else math.nan
            row[f"frames_{task}"] = float(cnt[0])
        self.metrics.write("train", self.step, [row])
        moe = self.model_cfg.moe
        hist, tasks_rows = [], []
        for j, layer in enumerate(self.loss_module.moe_layers):
            for kind, key in (("dynamic", "hist_dyn"), ("routed", "hist_routed")):
                for n_exp, count in enumerate(t[key][j].tolist()):
                    hist.append({"layer": layer, "kind": kind, "num_experts": n_exp, "count": float(count)})
            for ti, task in enumerate(TASKS):
                for e, count in enumerate(t["task_sel"][j, ti].tolist()):
                    tasks_rows.append({"layer": layer, "task": task, "expert": e,
                                       "is_null": e >= moe.num_routed_experts, "count": float(count)})
        self.metrics.write("routing_hist", self.step, hist)
        self.metrics.write("routing_tasks", self.step, tasks_rows)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _param_names(self) -> list[str]:
        return [n for names in self._group_names for n in names]

    def optimizer_tensors(self, full: dict[str, Tensor] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """AdamW state flattened to ``optim.<param name>.<key>`` tensors + JSON-safe group settings
        (``full``: the gathered tensors of a sharded run, used instead of the local shards)."""
        sd = self.optimizer.state_dict()
        names = self._param_names()
        tensors, scalars = {}, {}
        for idx, st in sd["state"].items():
            for key, val in st.items():
                if isinstance(val, Tensor):
                    k = f"optim.{names[idx]}.{key}"
                    tensors[k] = full[k] if full is not None else val
                else:
                    scalars.setdefault(names[idx], {})[key] = val
        groups = []
        for g, gnames in zip(sd["param_groups"], self._group_names):
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
            d["param_names"] = gnames
            groups.append(d)
        return tensors, {"param_groups": groups, "scalars": scalars}

    def load_optimizer(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        names = self._param_names()
        saved = [n for g in meta["param_groups"] for n in g["param_names"]]
        if saved != names:
            missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
            raise CheckpointError(f"optimizer state is for other trainable parameters (missing {missing[:5]}, "
                                  f"unexpected {extra[:5]}): was the checkpoint made with another `trainable`?")
        index = {n: i for i, n in enumerate(names)}
        state: dict[int, dict[str, Any]] = {}
        params = dict(self.named_trainable)
        for key, val in tensors.items():
            if not key.startswith("optim."):
                continue
            pname, field = key[len("optim."):].rsplit(".", 1)
            if self.sharded:
                val = self._local(pname, val, params[pname]) if val.dim() > 0 else val
            state.setdefault(index[pname], {})[field] = val
        for pname, sc in meta.get("scalars", {}).items():
            state.setdefault(index[pname], {}).update(sc)
        groups, start = [], 0
        for g in meta["param_groups"]:
            d = {k: v for k, v in g.items() if k != "param_names"}
            if "betas" in d:
                d["betas"] = tuple(d["betas"])
            d["params"] = list(range(start, start + len(g["param_names"])))
            start += len(g["param_names"])
            groups.append(d)
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def checkpoint_state(self, full_optim: dict[str, Tensor] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """(JSON state, extra tensors) of a checkpoint at the current step."""
        opt_tensors, opt_meta = self.optimizer_tensors(full_optim)
        extra = dict(opt_tensors)
        extra["rng.torch_cpu"] = torch.get_rng_state()
        n_cuda = 0
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                extra[f"rng.cuda.{i}"] = s
                n_cuda += 1
        state = {
            "kind": STATE_KIND,
            "run_id": self.run_id, "variant": self.variant, "stage": self.stage, "step": self.step,
            "balance_step_offset": self.balance_step_offset,
            "world_size": self.world_size, "global_batch": self.global_batch,
            "dataset_size": len(self.dataset),
            "data_order": self.order.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "optimizer": opt_meta,
            "rng": {"python": _json_python_rng(random.getstate()), "numpy": _json_numpy_rng(np.random.get_state()),
                    "torch_cpu": "extra:rng.torch_cpu", "cuda_devices": n_cuda},
            "train_config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "trainable": [n for n, _ in self.named_trainable],
            "frozen": self.frozen,
            "last": self.last,
            "torch_version": torch.__version__,
        }
        return state, extra

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-XXXXXX`` and repoint ``checkpoints/latest`` (rank 0; others wait)."""
        root = checkpoint_dir(self.workdir)
        path = root / step_name(self.step)
        # A sharded run gathers full tensors first (collectives on every rank), so its checkpoints are the
        # same as a single process's (loadable anywhere, resumable with any sharding).
        full_model, full_optim = self._gather_for_checkpoint() if self.sharded else (None, None)
        if self.is_main:
            state, extra = self.checkpoint_state(full_optim)
            save_checkpoint(path, _StateDict(full_model) if full_model is not None else self.model, self.model_cfg,
                            state, tokenizer=getattr(self.builder, "tok", None), extra_tensors=extra)
            atomic_write_text(root / LATEST, path.name + "\n")
            self._prune(root, keep=path)
        if self.world_size > 1:
            dist.barrier()
        self._last_saved_step = self.step
        self.final_checkpoint = path
        return path

    def _prune(self, root: Path, keep: Path) -> None:
        if self.cfg.keep_last <= 0:
            return
        steps = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: p.name)
        for p in steps[: max(len(steps) - self.cfg.keep_last, 0)]:
            if p != keep:
                shutil.rmtree(p, ignore_errors=True)

    def resume(self, path: str | Path | None = None) -> int:
        """Restore weights, optimiser, scheduler, RNG and data order from ``path`` (default: the latest
        checkpoint in the workdir). Returns the restored step."""
        from safetensors.torch import load_file

        from unimoe.checkpoint import load_extra_tensors

        path = Path(path) if path is not None else latest_checkpoint(self.workdir)
        if path is None:
            raise CheckpointError(f"no checkpoint to resume from in {checkpoint_dir(self.workdir)}")
        state = read_state(path)
        if state.get("kind") != STATE_KIND:
            raise CheckpointError(f"{path}: not a training checkpoint (kind {state.get('kind')!r})")
        problems = []
        for key, mine in (("run_id", self.run_id), ("variant", self.variant), ("stage", self.stage)):
            if state.get(key) != mine:
                problems.append(f"{key} {state.get(key)!r} != {mine!r}")
        if state.get("config_hash") != self.model_cfg.config_hash():
            problems.append("the model config differs")
        if state.get("balance_step_offset", 0) != self.balance_step_offset:
            problems.append(f"balance_step_offset {state.get('balance_step_offset')} != {self.balance_step_offset}")
        diff = self.cfg.resume_mismatches(state.get("train_config", {}))
        if diff:
            problems.append(f"train config differs in {diff}")
        if state.get("global_batch") != self.global_batch:
            problems.append(f"global batch {state.get('global_batch')} != {self.global_batch} "
                            "(batch_size * world_size * grad_accum must not change on resume)")
        if problems:
            raise CheckpointError(f"{path}: cannot resume this run from it: " + "; ".join(problems))
        if sha256_file(path / WEIGHTS) != state["weights_sha256"]:
            raise CheckpointError(f"{path / WEIGHTS}: SHA-256 differs from the one recorded in {STATE}")
        weights = load_file(str(path / WEIGHTS), device=str(self.device))
        if self.sharded:
            own = self.model.state_dict()
            if set(own) != set(weights):
                raise CheckpointError(f"{path}: weights do not match the model's parameters")
            with torch.no_grad():
                for k, t in own.items():
                    local = self._local(k, weights[k], t)
                    (t.to_local() if hasattr(t, "to_local") else t).copy_(
                        local.to_local() if hasattr(local, "to_local") else local)
        else:
            self.model.load_state_dict(weights, strict=True)
        extra = load_extra_tensors(path)
        self.load_optimizer(extra, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.load_state_dict(state["data_order"])
        rng = state["rng"]
        random.setstate(_python_rng_from_json(rng["python"]))
        np.random.set_state(_numpy_rng_from_json(rng["numpy"]))
        torch.set_rng_state(extra["rng.torch_cpu"])
        if rng.get("cuda_devices") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([extra[f"rng.cuda.{i}"] for i in range(rng["cuda_devices"])])
        self.step = int(state["step"])
        self.last = dict(state.get("last") or {})
        self.resumed_from = self.step
        self._last_saved_step = self.step
        self.final_checkpoint = path
        self._reset_window()
        if self.is_main:
            log.info("run %s stage %d: resumed from %s (step %d)", self.run_id, self.stage, path, self.step)
        return self.step

    # ---- teardown -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.loss_module.remove_hooks()
        if self._owns_pg and dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still has collectives in flight
            dist.destroy_process_group()
            self._owns_pg = False

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _StateDict:
    """Stands in for a module whose (gathered) state dict is already at hand (``save_checkpoint``)."""

    def __init__(self, sd: dict[str, Tensor]):
        self.sd = sd

    def state_dict(self) -> dict[str, Tensor]:
        return self.sd


# ---- convenience for the flows ---------------------------------------------------------------------------------


def train_stage(model: UniMoEAudio, model_cfg: UniMoEConfig, train_cfg: TrainConfig, dataset: Any, builder,
                workdir: str | Path, *, run_id: str, variant: str = "default", stage: int = 1,
                tasks: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                trainable: Callable[[str], bool] | None = None, balance_step_offset: int = 0,
                resume: bool = True, callbacks: Iterable[Callable[[Trainer], None]] = (),
                wrap: Callable[[nn.Module, torch.device], nn.Module] | None = None) -> tuple[Path, dict[str, Any]]:
    """Train one stage: view ``dataset`` (``tasks`` filter and/or ``ids`` subset), build the trainer
    (resuming from ``workdir`` when it holds a checkpoint of this run), train to ``max_steps``.

    Rows of the held-out splits (``HELD_OUT_SPLITS``: "test") are always left out, also when ``ids``
    names them (logged as a warning: a subset should never contain them).

    ``builder`` is a ``SequenceBuilder`` (or a ``TextTokenizer``, wrapped in one). Returns the final
    checkpoint's path and :meth:`Trainer.summary` (steps, final loss, tokens/s, ...).
    """
    from unimoe.sequence import SequenceBuilder
    from unimoe.tokenizer import TextTokenizer

    if isinstance(builder, TextTokenizer):
        builder = SequenceBuilder(model_cfg, builder)
    if ids is not None:
        ids = list(ids)
        kept = subset_indices(dataset, tasks=tasks, ids=ids, exclude_splits=HELD_OUT_SPLITS)
        if len(kept) < len(subset_indices(dataset, tasks=tasks, ids=ids)):
            log.warning("run %s stage %s: the id subset names held-out (%s) rows; they are left out",
                        run_id, stage, "/".join(HELD_OUT_SPLITS))
    view = dataset_view(dataset, tasks=tasks, ids=ids, exclude_splits=HELD_OUT_SPLITS)
    trainer = Trainer(model, model_cfg, train_cfg, view, builder, workdir, run_id=run_id, variant=variant,
                      stage=stage, trainable=trainable, balance_step_offset=balance_step_offset, resume=resume,
                      callbacks=callbacks, wrap=wrap)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    return trainer.final_checkpoint, summary
