"""Training hyper-parameters: one validated config, serialisable like ``unimoe.config``.

``TrainConfig.from_dict`` rejects unknown keys and wrong types (the same rules as the model config),
so a typo in a YAML overlay fails loudly. ``TrainConfig.for_stage(stage)`` gives the paper's per-stage
defaults (AdamW + cosine in every stage; lr 1e-4 / 3e-5 / 1e-5 for stages 1 / 2 / 3).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from unimoe.config import ConfigError, ConfigFile, _check, deep_merge

# Paper learning rates per curriculum stage (its training recipe).
STAGE_LR = {1: 1e-4, 2: 3e-5, 3: 1e-5}
CROP_MODES = ("start", "random")
CODEBOOK_REDUCTIONS = ("sum", "mean")
MISSING_VIDEO = ("error", "caption_only")
DEVICES = ("auto", "cpu", "cuda")

# Fields that may change between a checkpoint and the run resuming it (they do not change what has
# been computed so far; max_steps extends or shortens the remaining schedule).
RESUME_MUTABLE = ("max_steps", "log_every", "checkpoint_every", "keep_last", "device", "bf16_on_gpu", "fsdp",
                  "expert_parallel")


class TrainConfig(ConfigFile):
    """Hyper-parameters of one training stage. Steps are OPTIMISER steps throughout."""

    section = "train"

    lr: float = 1e-4
    min_lr_ratio: float = 0.1          # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 100            # linear warm-up: lr * (s + 1) / warmup_steps for s < warmup_steps
    max_steps: int = 1000              # optimiser steps
    batch_size: int = 8                # sequences per rank per micro-batch
    grad_accum: int = 1                # micro-batches per optimiser step
    weight_decay: float = 0.1          # AdamW decoupled decay, matrices only (not norms / 1-d params)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0             # max global grad norm; <= 0 disables clipping (norm still logged)
    seed: int = 0                      # data order, crops and condition dropout
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3                 # step checkpoints kept (0 = keep all); the latest is never removed
    max_frames: int = 1500             # target audio frames per example (30 s at 50 Hz); longer is cropped
    crop: str = "start"                # "start": first max_frames; "random": seeded offset per (epoch, item)
    cond_dropout: float = 0.1          # probability of the unconditional prompt (classifier-free guidance)
    # How the per-codebook cross-entropies (each a mean over target frames) are combined into CE:
    # "sum" (the official code sums its 12 codebook losses, so the balance-loss weights 0.025 -> 0.001
    # act against a K-times larger CE) or "mean" (CE on the scale of one codebook; with the same
    # balance weights the balance loss then pulls K times harder than in the official recipe).
    codebook_reduction: str = "sum"
    bf16_on_gpu: bool = True           # bf16 autocast on CUDA only; CPU always runs fp32
    shuffle: bool = True               # False: dataset order every epoch (still deterministic)
    missing_video: str = "error"       # v2m item without frames: "error" or "caption_only" (no video)
    device: str = "auto"               # "auto": cuda:<local_rank> when available, else cpu
    # Scale-out under torchrun (no effect in one process; checkpoints hold full tensors either way, so a
    # run may resume with other settings): FSDP2-shard the model instead of DDP, and/or split the routed
    # experts of every MoE layer over the ranks (unimoe.training.parallel).
    fsdp: bool = False
    expert_parallel: bool = False

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        _check(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
               f"train.betas must be two numbers in [0, 1), got {self.betas}")
        _check(self.eps > 0, "train.eps must be > 0")
        _check(self.log_every >= 1, "train.log_every must be >= 1")
        _check(self.checkpoint_every >= 1, "train.checkpoint_every must be >= 1")
        _check(self.keep_last >= 0, "train.keep_last must be >= 0")
        _check(self.max_frames >= 1, "train.max_frames must be >= 1")
        _check(self.crop in CROP_MODES, f"train.crop: unknown {self.crop!r} (choose from {CROP_MODES})")
        _check(0.0 <= self.cond_dropout <= 1.0, f"train.cond_dropout must be in [0, 1], got {self.cond_dropout}")
        _check(self.codebook_reduction in CODEBOOK_REDUCTIONS, f"train.codebook_reduction: unknown "
               f"{self.codebook_reduction!r} (choose from {CODEBOOK_REDUCTIONS})")
        _check(self.missing_video in MISSING_VIDEO,
               f"train.missing_video: unknown {self.missing_video!r} (choose from {MISSING_VIDEO})")
        _check(self.device in DEVICES, f"train.device: unknown {self.device!r} (choose from {DEVICES})")
        return self

    def lr_multiplier(self, step: int) -> float:
        """LR factor for the update made at optimiser step ``step`` (0-based): linear warm-up to 1 over
        ``warmup_steps`` updates, then cosine from 1 to ``min_lr_ratio`` at ``max_steps``."""
        import math

        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.max_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    # ---- (de)serialisation: to_dict/to_json/to_yaml/save/load/config_hash from ConfigFile ------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return super().from_dict(data).validate()

    def overlay(self, changes: dict[str, Any]) -> "TrainConfig":
        """A new config with ``changes`` merged over this one (validated; unknown keys rejected)."""
        return TrainConfig.from_dict(deep_merge(self.to_dict(), changes))

    @classmethod
    def for_stage(cls, stage: int, **overrides: Any) -> "TrainConfig":
        """The paper's defaults for curriculum stage 1, 2 or 3 (learning rate), plus ``overrides``."""
        if stage not in STAGE_LR:
            raise ConfigError(f"unknown stage {stage!r}; choose from {sorted(STAGE_LR)}")
        return cls.from_dict({**cls().to_dict(), "lr": STAGE_LR[stage], **overrides})

    def resume_mismatches(self, other: dict[str, Any]) -> list[str]:
        """Fields (other than ``RESUME_MUTABLE``) where ``other`` (a saved config dict) differs."""
        mine = self.to_dict()
        keys = sorted(set(mine) | set(other))
        return [k for k in keys if k not in RESUME_MUTABLE and mine.get(k) != other.get(k)]
