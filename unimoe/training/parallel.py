"""Scale-out building blocks: process-group helpers, expert parallelism for the DCMoE layers, FSDP
wrapping, and gradient synchronisation for data parallel + expert parallel runs (the trainer's view of
the resulting sharded model is ``unimoe.training.shard_layout``).

Everything here runs under ``torchrun`` (``gloo`` on CPU, ``nccl`` on CUDA) and degrades to a no-op in a
single process. Tested with two CPU processes on ``gloo`` (tests/test_parallel.py).

Expert parallelism (EP)
-----------------------
With ``W`` ranks in the EP group and ``N`` routed experts (``N % W == 0``), rank ``r`` holds the routed
experts ``[r * N / W, (r + 1) * N / W)``; the router, the shared experts and the null experts (which have
no parameters) are replicated. Each rank feeds its OWN tokens. :func:`expert_parallel` keeps the
:class:`~unimoe.moe.DCMoE` layer as it is (routing, combination weights, shared experts, balance loss and
statistics on the local tokens) and swaps two of its parts: ``experts`` becomes this rank's shard and
``dispatcher`` the :class:`AllToAllDispatcher` (as torchtitan's ``ExpertParallel`` wraps the experts with
token dispatch / combine), which

1. sorts the selected (token, routed expert) pairs by global expert id (:class:`~unimoe.moe.TokenReorderer`);
   since ranks own contiguous expert blocks this also groups the pairs by destination rank;
2. exchanges the per-(destination rank, local expert) pair counts with ``all_to_all_single`` -- the
   ``[W, N / W]`` count matrix tells every receiver how many rows of each of its experts arrive from each
   source, so neither expert ids nor weights have to travel;
3. sends the token rows with ``all_to_all_single`` (split sizes from the counts), regroups the received
   rows by local expert, runs the local experts on contiguous slices (:class:`~unimoe.moe.GroupedExperts`:
   ``torch._grouped_mm`` or the slice loop), undoes the regrouping, and sends the results back with the
   inverse ``all_to_all_single``;
4. on the source rank, multiplies by the combination weights and scatter-adds -- the same arithmetic, in
   the same pair order, as the single-process grouped dispatch (``GroupedDispatcher.combine``).

So each rank's output equals the single-process DCMoE output on its own tokens (up to float summation
order inside the expert matmuls). The all-to-alls are differentiable (:class:`_AllToAll`: the backward
of an all-to-all is the all-to-all with the split sizes swapped); ``torch.distributed.nn.functional.
all_to_all_single`` exists in torch 2.13 but is deprecated there, so a local autograd Function is used.

Every rank must call the layer the same number of times (the all-to-alls are collectives), also with
zero valid tokens, in ``no_grad`` and during generation.

Gradients under EP: a local expert's gradient already sums the contributions of the tokens of every
rank (they came to it through the all-to-all). The replicated parameters (router, shared experts,
attention, ...) get only the local tokens' contribution and must be all-reduced over the data-parallel
group. :func:`sync_grads` does both: it all-reduces the replicated gradients and leaves the expert
shards local (dividing by ``W`` when averaging so that the result is the gradient of the mean of the
per-rank losses). Do NOT wrap an EP model in DDP (it would average the different expert shards).

Balance loss and routing statistics are computed on the LOCAL tokens, exactly as DCMoE does on a rank's
micro-batch (as under plain data parallelism). The global statistic is the all-reduce of the local
counts: ``f_i = sum_r counts_r[i] / sum_r T_r`` -- see :func:`global_routing_counts`.

FSDP
----
:func:`wrap_fsdp` uses FSDP2 (``torch.distributed.fsdp.fully_shard``), which in torch 2.13 works on CPU
with ``gloo`` (verified by the tests: a training step on two ranks matches a single-process step on the
same global batch). Each ``DecoderLayer`` (and the vision tower) is one FSDP unit, the root holds the
embeddings, final norm and audio head. Gradients are averaged over the mesh (the mean of the per-rank
losses). Expert-parallel shards (if :func:`apply_expert_parallel` ran first) are passed as
``ignored_params``: they stay whole and local; call :func:`sync_grads` after ``backward`` to scale them.
"""

from __future__ import annotations

import os
import warnings
from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unimoe.moe import DCMoE, GroupedDispatcher, GroupedExperts

__all__ = [
    "init_distributed", "dist_env", "is_main", "get_rank", "get_world_size", "barrier", "cleanup",
    "all_reduce_sum_", "is_dtensor", "all_to_all",
    "AllToAllDispatcher", "expert_parallel", "expert_parallel_layers", "shard_experts",
    "apply_expert_parallel", "expert_parallel_parameters", "gather_expert_shard", "gather_expert_state_dict",
    "global_routing_counts", "sync_grads", "wrap_fsdp",
]


# ---- process group helpers -------------------------------------------------------------------------------


def _launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Initialise the default process group when launched by ``torchrun`` (``nccl`` when CUDA is
    available, else ``gloo``) and return ``(rank, world_size, device)``. In a plain single process it
    initialises nothing and returns ``(0, 1, cuda:0 or cpu)``. Idempotent."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return rank, world, _device_for(dist.get_backend())
    if not (dist.is_available() and _launched_by_torchrun()):
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = _device_for(backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, **({"device_id": device} if device.type == "cuda" else {}))
    return dist.get_rank(), dist.get_world_size(), device


def _device_for(backend: str) -> torch.device:
    if "nccl" in str(backend) and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank(group=None) -> int:
    return dist.get_rank(group) if _initialized() else 0


def get_world_size(group=None) -> int:
    return dist.get_world_size(group) if _initialized() else 1


def is_main() -> bool:
    """True on global rank 0, and in a single process."""
    return get_rank() == 0


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size): from the process group when there is one, else from the torchrun
    environment (0, 0, 1 outside torchrun)."""
    if _initialized():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, int(os.environ.get("LOCAL_RANK", str(rank))), world


def barrier() -> None:
    if _initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if one was initialised."""
    if _initialized():
        dist.destroy_process_group()


def all_reduce_sum_(t: Tensor, world_size: int) -> Tensor:
    """Sum ``t`` over the ranks of the default group, in place; a CPU tensor goes through the GPU when
    the backend is nccl (which reduces CUDA tensors only). Identity when ``world_size == 1``."""
    if world_size > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            tmp = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(tmp)
            t.copy_(tmp.cpu())
        else:
            dist.all_reduce(t)
    return t


def is_dtensor(t: Tensor) -> bool:
    """True for an FSDP2-sharded parameter (or its gradient / optimiser state)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


# ---- differentiable all-to-all ---------------------------------------------------------------------------


def _all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=out_splits, input_split_sizes=in_splits,
                           group=group)
    return out


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` along dim 0 with split sizes; backward sends the gradients back (splits
    swapped). Every rank runs the backward too, in the same order (the graphs have the same structure)."""

    @staticmethod
    def forward(ctx, x: Tensor, out_splits: list[int], in_splits: list[int], group) -> Tensor:
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        return _all_to_all(x, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _all_to_all(grad, ctx.in_splits, ctx.out_splits, ctx.group), None, None, None


def all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group=None) -> Tensor:
    """Differentiable ``all_to_all_single`` over dim 0 (rows ``in_splits[r]`` go to rank r; rows
    ``out_splits[r]`` arrive from rank r)."""
    return _AllToAll.apply(x, list(out_splits), list(in_splits), group)


# ---- expert parallelism ----------------------------------------------------------------------------------


class AllToAllDispatcher(GroupedDispatcher):
    """The :class:`~unimoe.moe.TokenDispatcher` of an expert-parallel DCMoE (module docstring): the
    layer's ``experts`` hold only the global experts ``[expert_start, expert_start + num_local)``, the
    other ranks' experts are reached through all-to-alls over ``group``. It keeps a reference to
    ``group``; with a non-default group the layer cannot be deep-copied."""

    def __init__(self, num_experts: int, group=None):
        super().__init__(num_experts)
        if not _initialized():
            raise RuntimeError("expert parallelism needs an initialised process group (init_distributed)")
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if num_experts % world:
            raise ValueError(f"{num_experts} routed experts cannot be split evenly over {world} ranks")
        self.group, self.world_size, self.rank = group, world, rank
        self.num_local = num_experts // world
        self.expert_start = rank * self.num_local

    def extra_repr(self) -> str:
        return (f"rank={self.rank}, world_size={self.world_size}, "
                f"experts=[{self.expert_start}, {self.expert_start + self.num_local})")

    def forward(self, x: Tensor, selected: Tensor, weights: Tensor, experts: GroupedExperts) -> Tensor:
        w, nl = self.world_size, self.num_local
        d = self.reorderer(selected, weights)  # pairs sorted by global expert id => by destination rank
        send_counts = d.counts.view(w, nl)      # [destination rank, its local expert]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=self.group)  # [source, my expert]
        in_splits = send_counts.sum(1).tolist()
        out_splits = recv_counts.sum(1).tolist()

        xr = all_to_all(self.gather(x, d), out_splits, in_splits, self.group)
        # Received rows are source-major, expert-minor: regroup them by local expert (stable).
        local_ids = torch.arange(nl, device=x.device).repeat(w).repeat_interleave(recv_counts.flatten())
        order = torch.argsort(local_ids, stable=True)
        # Rows travel in the activation dtype; the experts compute in their parameters' dtype (they differ
        # under FSDP mixed precision, which leaves the expert shards out and in full precision).
        ys = experts(xr.index_select(0, order).to(experts.w_gate.dtype), recv_counts.sum(0)).to(x.dtype)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        yb = all_to_all(ys.index_select(0, inverse), in_splits, out_splits, self.group)  # back, in d order
        return self.combine(x, d, yb)


def expert_parallel(moe: DCMoE, group=None) -> DCMoE:
    """Make ``moe`` expert-parallel over ``group``, in place: its ``experts`` become a copy of this rank's
    slice of the routed experts and its ``dispatcher`` an :class:`AllToAllDispatcher` (whatever
    ``MoEConfig.dispatch`` chose: the loop is a single-process oracle). Identical full weights on every
    rank give the single-process math. ``state_dict()`` then holds the local shard (``[N / W, ...]``);
    :func:`gather_expert_state_dict` rebuilds the full one, and a full checkpoint is loaded into the plain
    model BEFORE this. Returns ``moe``."""
    dispatcher = AllToAllDispatcher(moe.num_routed, group)
    moe.experts = shard_experts(moe.experts, dispatcher.expert_start, dispatcher.num_local)
    moe.dispatcher = dispatcher
    return moe


def expert_parallel_layers(model: nn.Module) -> list[tuple[str, DCMoE]]:
    """``(name, layer)`` of every expert-parallel DCMoE in ``model`` (its dispatcher says where its expert
    shard sits: ``layer.dispatcher.expert_start``, ``.num_local``)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, DCMoE) and isinstance(m.dispatcher, AllToAllDispatcher)]


@torch.no_grad()
def shard_experts(experts: GroupedExperts, start: int, count: int) -> GroupedExperts:
    """A :class:`GroupedExperts` holding copies of experts ``start .. start + count`` of ``experts``
    (same device, dtype and ``use_grouped_mm`` setting)."""
    if not 0 <= start < start + count <= experts.num_experts:
        raise ValueError(f"experts [{start}, {start + count}) out of range for {experts.num_experts}")
    w = experts.w_gate
    with torch.device("meta"):
        shard = GroupedExperts(count, experts.hidden, experts.intermediate,
                               use_grouped_mm=experts.use_grouped_mm)
    shard = shard.to_empty(device=w.device).to(w.dtype)
    for name in ("w_gate", "w_up", "w_down"):
        src = getattr(experts, name)
        getattr(shard, name).copy_(src[start:start + count])
        getattr(shard, name).requires_grad_(src.requires_grad)
    return shard


def apply_expert_parallel(model: nn.Module, group=None) -> nn.Module:
    """Make every :class:`DCMoE` in ``model`` expert-parallel (:func:`expert_parallel`, in place). Call
    it with identical full weights on every rank (same seed or same checkpoint) and before building the
    optimizer. Returns ``model``."""
    done = {id(m) for _, m in expert_parallel_layers(model)}
    for m in model.modules():
        if isinstance(m, DCMoE) and id(m) not in done:
            expert_parallel(m, group)
    return model


def expert_parallel_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The rank-local routed-expert parameters (different on every rank; never all-reduced)."""
    return [p for _, m in expert_parallel_layers(model) for p in m.experts.parameters()]


def gather_expert_shard(shard: Tensor, dispatcher: AllToAllDispatcher) -> Tensor:
    """The full ``[N, ...]`` tensor of an expert-sharded ``[N / W, ...]`` one (a parameter or its optimiser
    state). A collective over the layer's EP group."""
    parts = [torch.empty_like(shard) for _ in range(dispatcher.world_size)]
    dist.all_gather(parts, shard.detach().contiguous(), group=dispatcher.group)
    return torch.cat(parts)


@torch.no_grad()
def gather_expert_state_dict(model: nn.Module, state_dict: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``state_dict`` (default ``model.state_dict()``) with every expert shard all-gathered into the full
    ``[N, ...]`` tensor under its usual key, i.e. the state dict of the equivalent single-process model (for
    checkpoints). A collective: every rank of each EP group must call it."""
    sd = model.state_dict() if state_dict is None else state_dict
    for name, m in expert_parallel_layers(model):
        for pname, p in m.experts.named_parameters():
            sd[f"{name}.experts.{pname}"] = gather_expert_shard(p, m.dispatcher)
    return sd


@torch.no_grad()
def global_routing_counts(expert_counts: Tensor, num_tokens: int | Tensor,
                          group=None) -> tuple[Tensor, Tensor]:
    """All-reduce a layer's local ``RoutingStats.expert_counts`` and local token count: the global
    selection fraction of expert i is ``counts[i] / tokens``. Collective (identity in one process)."""
    counts = expert_counts.clone()
    tokens = torch.as_tensor(num_tokens, dtype=torch.long, device=counts.device).clone()
    if _initialized():
        dist.all_reduce(counts, group=group)
        dist.all_reduce(tokens, group=group)
    return counts, tokens


def sync_grads(model: nn.Module, group=None, average: bool = True) -> None:
    """Data-parallel gradient synchronisation for an (optionally expert-parallel) model, after
    ``backward`` and before the optimizer step.

    * replicated parameters (plain tensors): all-reduced over ``group`` (mean, or sum if not ``average``);
    * expert-parallel shards: left local (they already hold every rank's contribution); divided by the
      world size when averaging, so all gradients are those of the mean of the per-rank losses;
    * FSDP-managed parameters (DTensors): skipped, FSDP has reduced them already.

    With ``average=False`` the result is the gradient of the SUM of the per-rank losses. No-op in one
    process."""
    if not _initialized():
        return
    world = dist.get_world_size(group)
    expert_ids = {id(p) for p in expert_parallel_parameters(model)}
    replicated: list[Tensor] = []
    for p in model.parameters():
        if p.grad is None or is_dtensor(p):
            continue
        if id(p) in expert_ids:
            if average:
                p.grad.div_(world)
        else:
            replicated.append(p.grad)
    _all_reduce_coalesced(replicated, group, average)


def _all_reduce_coalesced(grads: list[Tensor], group, average: bool) -> None:
    by_dtype: dict[tuple, list[Tensor]] = {}
    for g in grads:
        by_dtype.setdefault((g.dtype, g.device), []).append(g)
    for bucket in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, group=group)
        if average:
            flat.div_(dist.get_world_size(group))
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


# ---- FSDP ------------------------------------------------------------------------------------------------


_MP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
              "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}


def wrap_fsdp(model: nn.Module, *, mixed_precision=None, mesh=None, reshard_after_forward: bool = True,
              units: Iterable[type[nn.Module]] | None = None, shard_vision: bool = True,
              ignored: Iterable[nn.Parameter] = ()) -> nn.Module:
    """Shard ``model`` with FSDP2 (``fully_shard``): each DecoderLayer (and the vision tower, if any)
    is one unit, then the root. Returns the same module object (its class is swapped to an FSDP one).

    ``shard_vision=False`` keeps the vision tower out of its own unit. ``ignored``: parameters FSDP leaves
    alone (replicated; sync their gradients with :func:`sync_grads`). FSDP2 reduce-scatters only the
    parameters that have a gradient, so a tower used by some ranks only (video in some batches) must be
    ignored and synchronised by hand (zero gradients where unused).
    ``mixed_precision``: None (fp32), a dtype name (``"bf16"``/``"fp16"``: parameters cast for compute,
    gradients reduced in fp32) or a ``MixedPrecisionPolicy``. ``mesh``: a 1-D DeviceMesh (default: all
    ranks, on the device type of the backend). Expert-parallel shards are ignored by FSDP (kept local);
    see :func:`sync_grads`. ``model.loss`` and ``model.audio_logits`` are registered as FSDP forward
    methods, so calling them all-gathers the root parameters like ``forward`` does.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if not _initialized():
        raise RuntimeError("wrap_fsdp needs an initialised process group (init_distributed)")
    if mesh is None:
        from torch.distributed.device_mesh import init_device_mesh

        device_type = "cuda" if "nccl" in str(dist.get_backend()) else "cpu"
        mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    if mixed_precision is None:
        mp = MixedPrecisionPolicy()
    elif isinstance(mixed_precision, MixedPrecisionPolicy):
        mp = mixed_precision
    elif isinstance(mixed_precision, (str, torch.dtype)):
        dtype = _MP_DTYPES[mixed_precision] if isinstance(mixed_precision, str) else mixed_precision
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    else:
        raise TypeError("mixed_precision: expected None, a dtype name or a MixedPrecisionPolicy, "
                        f"got {mixed_precision!r}")

    if units is None:
        from unimoe.model import DecoderLayer

        units = (DecoderLayer,)
    units = tuple(units)
    ignored = (set(expert_parallel_parameters(model)) | set(ignored)) or None
    kwargs = dict(mesh=mesh, mp_policy=mp, ignored_params=ignored)
    for name, m in list(model.named_modules()):
        if name and (isinstance(m, units) or (shard_vision and name == "vision")):
            fully_shard(m, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    # The decoder layers return (x + ffn.out, ffn) and the root a ModelOutput; FSDP2 warns when such an
    # output is a view, in case the caller modifies it in place. The model code never does (all updates
    # of x are out of place), so the warning is noise for these two module classes only.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDP(DecoderLayer|UniMoEAudio)\) "
                                              r"returned a view tensor")
    for method in ("loss", "audio_logits"):
        if callable(getattr(model, method, None)):
            register_fsdp_forward_method(model, method)
    return model

