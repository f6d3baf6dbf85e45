"""The trainer: AdamW + cosine, gradient accumulation, clipping, bf16 on CUDA, data parallelism,
exact checkpoint/resume and Parquet metrics.

Like torchtitan's ``Trainer``, this module is the step / accumulate / log / checkpoint loop; it delegates
to its components:

* :mod:`unimoe.training.loss` -- the objective (``TrainLoss``: CE + weighted balance loss, each rank's
  exact share of the global-micro-batch value);
* :mod:`unimoe.training.parallel` -- process group, FSDP2 / expert parallelism, gradient reduction;
* :mod:`unimoe.training.shard_layout` -- a sharded model's global clipping and full <-> sharded tensors;
* :mod:`unimoe.training.checkpointing` -- checkpoint paths, optimiser and RNG (de)serialisation;
* :mod:`unimoe.training.metrics_window` -- the statistics reduced into the metrics tables.

Data parallelism: the gradient equals the single-process gradient
-----------------------------------------------------------------
Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on CUDA), the
loss module is wrapped in ``DistributedDataParallel`` (``find_unused_parameters=True``: experts that no
token chose, and the vision tower on batches without video, get no gradient), and each rank takes a
strided slice of every global micro-batch (``DataOrder``). ``TrainLoss`` makes each rank's objective
its share of the global one, scaled by ``world_size``: DDP's average of the ranks' gradients is then the
gradient of the global objective, the same as one process that takes ``batch_size * world_size``
sequences per micro-batch. Clipping uses the synchronised gradient, so it matches too. With
``TrainConfig.fsdp`` / ``expert_parallel`` the model is sharded instead of DDP-wrapped; gradients are
reduced and clipped by ``ShardLayout``, and checkpoints hold the full tensors.

Checkpoints and exact resume
----------------------------
Restoring weights, optimiser, scheduler, RNG and the data order's ``(epoch, cursor)`` makes a resumed CPU
run reproduce the uninterrupted run's losses bit for bit: nothing in a step depends on anything else
(per-item crops and condition dropout are keyed on ``(seed, epoch, index)``, the router input jitter on
``(seed, step, micro-batch, rank)``). Only rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from unimoe.checkpoint import STATE, WEIGHTS, CheckpointError, load_extra_tensors, read_state, save_checkpoint
from unimoe.common.files import atomic_write_text
from unimoe.config import UniMoEConfig
from unimoe.io import sha256_file
from unimoe.model import UniMoEAudio
from unimoe.training.checkpointing import (LATEST, STATE_KIND, checkpoint_dir, latest_checkpoint, load_optimizer_state,
                                           optimizer_state_tensors, prune_checkpoints, remove_stale_temporaries,
                                           rng_state, set_rng_state, step_name)
from unimoe.training.config import TrainConfig
from unimoe.training.data import HELD_OUT_SPLITS, BatchMaker, DataOrder, dataset_view, held_out_positions, subset_indices
from unimoe.training.loss import TrainLoss
from unimoe.training.metrics import MetricsWriter
from unimoe.training.metrics_window import MetricsWindow
from unimoe.training.parallel import (all_reduce_sum_, apply_expert_parallel, barrier, cleanup, dist_env, init_distributed,
                                      wrap_fsdp)
from unimoe.training.shard_layout import ShardLayout

__all__ = ["Trainer", "TrainLoss", "train_stage", "latest_checkpoint", "checkpoint_dir", "step_name", "dist_env",
           "STATE_KIND", "LATEST"]

log = logging.getLogger("unimoe.training")


def _forward_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Torch seed of one micro-batch's forward on one rank (salt 3: the data's salts are 1 and 2)."""
    return int(np.random.default_rng([seed, step, micro, rank, 3]).integers(2 ** 63 - 1))


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
        use_cuda = train_cfg.device == "cuda" or (train_cfg.device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise RuntimeError("train.device='cuda' but CUDA is not available")
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
        self._owns_pg = self.world_size > 1 and not dist.is_initialized()
        if self._owns_pg:
            init_distributed("nccl" if use_cuda else "gloo")
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
        if self.world_size > 1 and train_cfg.expert_parallel:
            apply_expert_parallel(self.model)
        if self.world_size > 1 and train_cfg.fsdp:
            # Only some ranks' batches may hold video: the vision tower stays replicated (see wrap_fsdp).
            vision = list(self.model.vision.parameters()) if self.model.vision is not None else []
            wrap_fsdp(self.model, shard_vision=False, ignored=vision)
        self.shards = ShardLayout(self.model) if self.sharded else None
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

        # -- data and metrics
        self.order = DataOrder(len(dataset), train_cfg.seed, self.rank, self.world_size, shuffle=train_cfg.shuffle)
        self.maker = BatchMaker(model_cfg, train_cfg, builder)
        self.metrics = MetricsWriter(self.workdir, self.run_id, self.variant, self.stage) if self.is_main else None
        self.window = MetricsWindow(model_cfg, self.loss_module.moe_layers)

        # -- progress
        self.step = 0
        self.history: list[dict[str, float]] = []   # one entry per optimiser step of this process
        self.last: dict[str, Any] = {}               # the latest step's values (also checkpointed)
        self.resumed_from: int | None = None
        self.final_checkpoint: Path | None = None
        self._last_saved_step: int | None = None
        self._tokens_this_run = 0
        self._step_seconds_this_run = 0.0
        if resume:
            if self.is_main:
                remove_stale_temporaries(checkpoint_dir(self.workdir))
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

    @property
    def epoch(self) -> float:
        """Epochs of the data order consumed so far (fractional)."""
        return self.order.epoch + self.order.cursor / self.order.n

    def balance_weight(self, step: int | None = None) -> float:
        if not self.model_cfg.is_moe:
            return 0.0
        s = self.step if step is None else step
        return float(self.model_cfg.moe.balance_weight(s + self.balance_step_offset))

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.bf16_on_gpu:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ---- the loop -----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimiser step (``grad_accum`` micro-batches on every rank)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        epoch_before = self.epoch
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
            self.window.add_micro_batch(self.loss_module.last)
            tokens += self.loss_module.last["tokens"]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        if self.shards is not None:
            # replicated grads all-reduced, expert shards scaled; FSDP has reduced its own already
            self.shards.reduce_grads(self.named_trainable)
            grad_norm = self.shards.clip_grad_norm_(self.named_trainable, max_norm)
        else:
            params = [p for _, p in self.named_trainable if p.grad is not None]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params else 0.0
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        # Global values of this step (exact shares summed over ranks), the same on every rank.
        red = torch.cat([parts, torch.tensor([float(tokens)], dtype=torch.float64)])
        all_reduce_sum_(red, self.world_size)
        ce, aux = float(red[0]) / cfg.grad_accum, float(red[1]) / cfg.grad_accum
        seconds = time.perf_counter() - t0
        rec = {"step": self.step, "loss": ce + w_bal * aux, "ce": ce, "aux": aux, "balance_weight": w_bal,
               "lr": lr, "grad_norm": grad_norm, "tokens": float(red[2]), "seconds": seconds,
               "epoch": epoch_before}
        self.history.append(rec)
        self.last = rec
        self.window.add_step(rec)
        self._tokens_this_run += int(red[2])
        self._step_seconds_this_run += seconds
        return rec

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
            "epoch": self.epoch,
            "checkpoint": str(self.final_checkpoint) if self.final_checkpoint else None,
            "v2m_without_video": self.maker.v2m_without_video,
        }

    # ---- logging ----------------------------------------------------------------------------------------------
    def log_window(self) -> None:
        """Reduce the window's statistics over ranks; rank 0 appends one part per metrics table."""
        totals = self.window.reduce(self.world_size)
        steps, seconds = self.window.steps, self.window.seconds
        if self.is_main and steps:
            for table, rows in self.window.rows(totals, self.epoch, self.world_size).items():
                self.metrics.write(table, self.step, rows)
            r = steps[-1]
            log.info("run %s stage %d step %d/%d loss %.4f ce %.4f aux %.4f lr %.3g gnorm %.3f tok/s %.0f",
                     self.run_id, self.stage, self.step, self.cfg.max_steps, r["loss"], r["ce"], r["aux"],
                     r["lr"], r["grad_norm"], float(totals["counters"][0]) / max(seconds, 1e-9))
        self.window.reset()

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_state(self, optimizer_tensors: dict[str, torch.Tensor],
                         optimizer_meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON state, extra tensors) of a checkpoint at the current step, given the optimiser's
        flattened state (:func:`~unimoe.training.checkpointing.optimizer_state_tensors`)."""
        rng, rng_tensors = rng_state()
        state = {
            "kind": STATE_KIND,
            "run_id": self.run_id, "variant": self.variant, "stage": self.stage, "step": self.step,
            "balance_step_offset": self.balance_step_offset,
            "world_size": self.world_size, "global_batch": self.global_batch,
            "dataset_size": len(self.dataset),
            "data_order": self.order.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "optimizer": optimizer_meta,
            "rng": rng,
            "train_config": self.cfg.to_dict(),
            "model_config": self.model_cfg.to_dict(),
            "trainable": [n for n, _ in self.named_trainable],
            "frozen": self.frozen,
            "last": self.last,
            "torch_version": torch.__version__,
        }
        return state, {**optimizer_tensors, **rng_tensors}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-XXXXXX`` and repoint ``checkpoints/latest`` (rank 0; others wait)."""
        root = checkpoint_dir(self.workdir)
        path = root / step_name(self.step)
        # A sharded run gathers full tensors first (collectives on every rank), so its checkpoints are the
        # same as a single process's (loadable anywhere, resumable with any sharding).
        weights = self.shards.full_model_state_dict() if self.shards is not None else self.model.state_dict()
        optim = optimizer_state_tensors(self.optimizer, self._group_names,
                                        self.shards.full if self.shards is not None else None)
        if self.is_main:
            state, extra = self.checkpoint_state(*optim)
            save_checkpoint(path, weights, self.model_cfg, state, tokenizer=getattr(self.builder, "tok", None),
                            extra_tensors=extra)
            atomic_write_text(root / LATEST, path.name + "\n")
            prune_checkpoints(root, self.cfg.keep_last, keep=path)
        barrier()  # the others wait until rank 0 has written
        self._last_saved_step = self.step
        self.final_checkpoint = path
        return path

    def _resume_problems(self, state: dict[str, Any]) -> list[str]:
        """Why the checkpoint ``state`` cannot continue this run (empty: it can)."""
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
        return problems

    def resume(self, path: str | Path | None = None) -> int:
        """Restore weights, optimiser, scheduler, RNG and data order from ``path`` (default: the latest
        checkpoint in the workdir). Returns the restored step."""
        from safetensors.torch import load_file

        path = Path(path) if path is not None else latest_checkpoint(self.workdir)
        if path is None:
            raise CheckpointError(f"no checkpoint to resume from in {checkpoint_dir(self.workdir)}")
        state = read_state(path)
        if state.get("kind") != STATE_KIND:
            raise CheckpointError(f"{path}: not a training checkpoint (kind {state.get('kind')!r})")
        problems = self._resume_problems(state)
        if problems:
            raise CheckpointError(f"{path}: cannot resume this run from it: " + "; ".join(problems))
        if sha256_file(path / WEIGHTS) != state["weights_sha256"]:
            raise CheckpointError(f"{path / WEIGHTS}: SHA-256 differs from the one recorded in {STATE}")
        weights = load_file(str(path / WEIGHTS), device=str(self.device))
        if self.shards is not None:
            try:
                self.shards.load_full_model_state_dict(weights)
            except KeyError as e:
                raise CheckpointError(f"{path}: {e.args[0]}") from None
        else:
            self.model.load_state_dict(weights, strict=True)
        extra = load_extra_tensors(path)
        to_local = None
        if self.shards is not None:  # each optimiser state is laid out like its parameter
            params = dict(self.named_trainable)
            to_local = lambda name, full: self.shards.local(name, full, params[name])  # noqa: E731
        load_optimizer_state(self.optimizer, self._group_names, extra, state["optimizer"], to_local)
        self.scheduler.load_state_dict(state["scheduler"])
        self.order.load_state_dict(state["data_order"])
        set_rng_state(state["rng"], extra)
        self.step = int(state["step"])
        self.last = dict(state.get("last") or {})
        self.resumed_from = self.step
        self._last_saved_step = self.step
        self.final_checkpoint = path
        self.window.reset()
        if self.is_main:
            log.info("run %s stage %d: resumed from %s (step %d)", self.run_id, self.stage, path, self.step)
        return self.step

    # ---- teardown -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.loss_module.remove_hooks()
        if self.ddp is not None:
            # Free the wrapper before the process group. DDP's C++ Reducer owns a reference to the group
            # and is freed with the GIL held; as the group's last owner it would run the gloo destructor,
            # which joins worker threads that may still need the GIL to free a finished collective (the
            # closing barrier): a deadlock at exit, seen as a rank that never exits after the last step.
            # torch's Python handles of the group release the GIL before freeing it.
            self.ddp = None
            gc.collect()
        if self._owns_pg:
            barrier()  # no rank tears the group down while another still has collectives in flight
            cleanup()
            self._owns_pg = False

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
