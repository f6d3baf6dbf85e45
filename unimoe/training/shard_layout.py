"""The trainer's view of a sharded model (FSDP2 and/or expert parallel, ``unimoe.training.parallel``):
gradient reduction, the global gradient norm, and the conversions between this rank's shards and the
full tensors of the equivalent single-process model.

Checkpoints of a sharded run
----------------------------
A sharded run writes the same checkpoint as one process (loadable anywhere, resumable with any
sharding). FSDP's DTensors go through ``torch.distributed.checkpoint.state_dict`` (``full_state_dict``);
the expert shards are plain tensors FSDP ignores, so they are gathered
(``parallel.gather_expert_state_dict``) and sliced by hand. The optimiser state is converted tensor by
tensor with the same two functions (:meth:`ShardLayout.full`, :meth:`ShardLayout.local`), because the
checkpoint stores it flat, keyed by parameter name (``unimoe.training.checkpointing``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from unimoe.training.parallel import (AllToAllDispatcher, all_reduce_sum_, expert_parallel_layers, gather_expert_shard,
                                      gather_expert_state_dict, get_world_size, is_dtensor, sync_grads)


class ShardLayout:
    """Where the parameters of a sharded model (FSDP2 and/or expert parallel) live on this rank, and the
    conversions between its shards and the full tensors of the equivalent single-process model (module
    docstring, "Checkpoints of a sharded run"). Build it after ``parallel.apply_expert_parallel`` /
    ``parallel.wrap_fsdp``. Every method that returns full tensors is a collective: all ranks call it, in the
    same order."""

    def __init__(self, model: nn.Module):
        self.model = model
        # expert-shard parameter name -> (its layer's dispatcher: EP group, first expert, count)
        self.expert_shards: dict[str, AllToAllDispatcher] = {
            f"{mname}.experts.{pname}": m.dispatcher
            for mname, m in expert_parallel_layers(model) for pname, _ in m.experts.named_parameters()}

    def full(self, name: str, t: Tensor) -> Tensor:
        """The full tensor of parameter ``name``'s shard ``t`` (or of its optimiser state's)."""
        if is_dtensor(t):
            return t.full_tensor()
        if name in self.expert_shards and t.dim() > 0:
            return gather_expert_shard(t, self.expert_shards[name])
        return t

    def local(self, name: str, full: Tensor, like: Tensor) -> Tensor:
        """This rank's shard of ``full`` for parameter ``name``, laid out like ``like``."""
        if is_dtensor(like):
            from torch.distributed.tensor import distribute_tensor

            return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements)
        if name in self.expert_shards and full.dim() > 0:
            d = self.expert_shards[name]
            return full[d.expert_start:d.expert_start + d.num_local]
        return full

    def full_model_state_dict(self) -> dict[str, Tensor]:
        """The single-process model's state dict (FSDP shards through DCP's ``full_state_dict``, then
        the expert shards)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        return gather_expert_state_dict(self.model, sd)

    def load_full_model_state_dict(self, full: dict[str, Tensor]) -> None:
        """Load a single-process model's state dict into this rank's shards (``full`` must hold exactly the
        model's keys: DCP would keep the current values of missing ones)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        own = self.model.state_dict()
        if set(own) != set(full):
            raise KeyError(f"weights do not match the model's parameters (missing {sorted(set(own) - set(full))[:5]}, "
                           f"unexpected {sorted(set(full) - set(own))[:5]})")
        # DCP distributes the DTensors' full values; the expert shards are sliced here (FSDP ignores them).
        local = {k: (self.local(k, v, own[k]) if k in self.expert_shards else v) for k, v in full.items()}
        set_model_state_dict(self.model, local, options=StateDictOptions(full_state_dict=True, strict=True))

    def reduce_grads(self, named_params: Sequence[tuple[str, nn.Parameter]]) -> None:
        """Data-parallel gradient reduction after ``backward`` (``parallel.sync_grads``). Every rank must
        all-reduce the same replicated tensors, so a trainable one this rank did not use (the vision tower
        without video) contributes zeros."""
        for _, p in named_params:
            if p.grad is None and not is_dtensor(p):
                p.grad = torch.zeros_like(p)
        sync_grads(self.model)

    @torch.no_grad()
    def clip_grad_norm_(self, named_params: Sequence[tuple[str, nn.Parameter]], max_norm: float) -> float:
        """The global gradient norm over sharded (DTensor, expert-shard) and replicated gradients, and the
        clipping of ``torch.nn.utils.clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``, at most
        1). Sharded squares are summed over ranks, replicated ones (equal on every rank) are not; the norm
        is accumulated in float64 so it does not depend on how the shards are cut."""
        replicated = torch.zeros((), dtype=torch.float64)
        sharded = torch.zeros((), dtype=torch.float64)
        grads = []
        for name, p in named_params:
            if p.grad is None:
                continue
            grads.append(p.grad)
            if is_dtensor(p.grad):
                sharded += p.grad.to_local().double().pow(2).sum().cpu()
            elif name in self.expert_shards:
                sharded += p.grad.double().pow(2).sum().cpu()
            else:
                replicated += p.grad.double().pow(2).sum().cpu()
        all_reduce_sum_(sharded, get_world_size())
        norm = float((replicated + sharded).sqrt())
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for g in grads:
                g.mul_(coef)
        return norm
