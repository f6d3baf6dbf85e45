"""Worker for tests/test_parallel.py, launched as

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/parallel_worker.py CASES OUTDIR

CASES is a comma-separated list of case names (see CASES below). Every rank computes the parallel
result AND the single-process reference (from identically seeded full weights) and saves both to
``OUTDIR/<case>_rank<r>.pt``; the parent test compares them. Nothing is asserted here, so a mismatch is
reported by pytest with the tensor names, not as a hung or crashed process. Keys starting with
``info/`` hold ``(value, None)``: facts about the run (e.g. how many parameters FSDP sharded).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unimoe.config import MoEConfig, overlay, tiny_preset  # noqa: E402
from unimoe.model import Batch, UniMoEAudio  # noqa: E402
from unimoe.moe import DCMoE  # noqa: E402
from unimoe.training import parallel as par  # noqa: E402

HIDDEN = 64


def moe_config() -> MoEConfig:
    # Tiny preset MoE shapes: 8 routed experts of width 32, one null, two shared of width 16. No router
    # input jitter: its draws depend on how tokens are split over ranks, and these cases compare exactly.
    return MoEConfig(num_routed_experts=8, routed_intermediate=32, num_null_experts=1, num_shared_experts=2,
                     shared_intermediate=16, top_p=0.7, top_k=2, router_input_jitter=0.0)


def full_dcmoe(router: str) -> DCMoE:
    torch.manual_seed(0)
    m = DCMoE(HIDDEN, moe_config(), router=router, init_std=0.2)  # large std: spread routing decisions
    return m


def tokens(rank: int, empty_rank: int | None = None):
    """Rank-specific tokens [3, 7, D], a padding mask and task ids (``empty_rank``: all padding there)."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(3, 7, HIDDEN, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 3 + rank:] = False
    if rank == empty_rank:
        mask[:] = False
    task = torch.randint(0, 4, (3, 1), generator=g).expand(3, 7)
    return x, mask, task


# ---- expert parallelism: one DCMoE layer -----------------------------------------------------------------


def case_ep_forward(rank, world):
    res = {}
    for router in ("top_p", "top_k"):
        for empty in (None, 1):
            tag = f"{router}_empty{empty}"
            full = full_dcmoe(router)
            ep = par.expert_parallel(copy.deepcopy(full))
            x, mask, task = tokens(rank, empty)
            with torch.no_grad():
                got, want = ep(x, mask, task), full(x, mask, task)
            res[f"{tag}/out"] = (got.out, want.out)
            res[f"{tag}/aux"] = (got.aux_loss, want.aux_loss)
            for f in ("selected", "expert_counts", "routed_per_token", "task_counts"):
                res[f"{tag}/{f}"] = (getattr(got.stats, f), getattr(want.stats, f))
            # global routing counts = local counts of both ranks summed
            counts, n = par.global_routing_counts(got.stats.expert_counts, got.stats.selected.shape[0])
            ref_counts, ref_n = 0, 0
            for r in range(world):
                xr, mr, tr = tokens(r, empty)
                with torch.no_grad():
                    st = full(xr, mr, tr).stats
                ref_counts, ref_n = ref_counts + st.expert_counts, ref_n + st.selected.shape[0]
            res[f"{tag}/global_counts"] = (counts, ref_counts)
            res[f"{tag}/global_tokens"] = (n, torch.tensor(ref_n))
            # the shard holds the right slice of the full weights
            s = slice(rank * 4, rank * 4 + 4)
            res[f"{tag}/shard_w_down"] = (ep.experts.w_down.detach(), full.experts.w_down[s].detach())
            # stats off (generation): still a collective, same output
            ep.collect_stats = full.collect_stats = False
            with torch.no_grad():
                res[f"{tag}/out_nostats"] = (ep(x, mask, task).out, full(x, mask, task).out)
    return res


def case_ep_backward(rank, world):
    res = {}
    for router, empty in (("top_p", None), ("top_k", None), ("top_p", 1)):
        tag = f"{router}_empty{empty}"
        full = full_dcmoe(router)
        ep = par.expert_parallel(copy.deepcopy(full))

        def loss_of(module, r, leaf):
            x, mask, task = tokens(r, empty)
            x = x.clone().requires_grad_(True) if leaf else x
            g = torch.randn(x.shape, generator=torch.Generator().manual_seed(200 + r))
            out = module(x, mask, task)
            return (out.out * g).sum() + 0.3 * out.aux_loss, x

        loss, x_ep = loss_of(ep, rank, True)
        loss.backward()
        par.sync_grads(ep, average=False)  # router/shared: sum over ranks; expert shards: local

        ref_total, x_ref = 0.0, None
        for r in range(world):
            lr, xr = loss_of(full, r, True)
            ref_total = ref_total + lr
            if r == rank:
                x_ref = xr
        ref_total.backward()

        s = slice(ep.dispatcher.expert_start, ep.dispatcher.expert_start + ep.dispatcher.num_local)
        res[f"{tag}/x_grad"] = (x_ep.grad, x_ref.grad)
        res[f"{tag}/router"] = (ep.router.weight.grad, full.router.weight.grad)
        for n in ("w_gate", "w_up", "w_down"):
            res[f"{tag}/shared_{n}"] = (getattr(ep.shared_experts, n).grad,
                                        getattr(full.shared_experts, n).grad)
            res[f"{tag}/experts_{n}"] = (getattr(ep.experts, n).grad, getattr(full.experts, n).grad[s])
    return res


# ---- whole model -----------------------------------------------------------------------------------------


def model_config():
    # No router input jitter (see moe_config).
    return overlay(tiny_preset(), {"vision": None, "moe": {"router_input_jitter": 0.0}})


def make_batch(cfg, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    b, n, k = 2, 14, cfg.audio.num_codebooks
    pos = torch.arange(n)[None].expand(b, n)
    attention = torch.ones(b, n, dtype=torch.bool)
    attention[1, n - 3 - seed % 2:] = False
    audio = (pos >= 4) & attention
    target = (pos >= 5) & attention
    codes = torch.randint(0, cfg.audio.codebook_size, (b, n, k), generator=g)
    codes = torch.where(audio[..., None], codes, torch.full_like(codes, cfg.audio.pad_id))
    ids = torch.randint(0, cfg.vocab_size, (b, n), generator=g)
    return Batch(input_ids=ids, audio_codes=codes, audio_mask=audio, target_mask=target,
                 attention_mask=attention, task_ids=torch.tensor([seed % 4, (seed + 1) % 4]))


def full_model(cfg):
    torch.manual_seed(0)
    return UniMoEAudio(cfg).train()


def model_loss(model, batch):
    out = model.loss(batch)
    return out["ce"] + 0.1 * out["aux"]


def reference_grads(cfg, world):
    """Single-process model, loss = mean over ranks of the per-rank losses (the data-parallel mean)."""
    ref = full_model(cfg)
    losses = [model_loss(ref, make_batch(cfg, 10 + r)) for r in range(world)]
    (sum(losses) / world).backward()
    return ref, losses


def _expert_slice(name, ep_model):
    """For an expert-shard parameter name, the slice of the full tensor this rank holds."""
    d = ep_model.get_submodule(name.rsplit(".experts.", 1)[0]).dispatcher
    return slice(d.expert_start, d.expert_start + d.num_local)


def case_ep_model(rank, world):
    cfg = model_config()
    ref, ref_losses = reference_grads(cfg, world)
    model = par.apply_expert_parallel(full_model(cfg))
    res = {}
    # the gathered state dict is the full model's
    full_sd, gathered = full_model(cfg).state_dict(), par.gather_expert_state_dict(model)
    res["state_dict_keys"] = (torch.tensor(sorted(gathered) == sorted(full_sd)), torch.tensor(True))
    for k in ("layers.0.mlp.experts.w_gate", "layers.1.mlp.experts.w_down"):
        res[f"state_dict/{k}"] = (gathered[k], full_sd[k])

    loss = model_loss(model, make_batch(cfg, 10 + rank))
    res["loss"] = (loss.detach(), ref_losses[rank].detach())
    loss.backward()
    par.sync_grads(model)  # mean over ranks
    ref_params = dict(ref.named_parameters())
    expert_names = {id(p) for p in par.expert_parallel_parameters(model)}
    for name, p in model.named_parameters():
        want = ref_params[name].grad
        if id(p) in expert_names:
            want = want[_expert_slice(name, model)]
        res[f"grad/{name}"] = (p.grad, want)
    return res


# ---- FSDP ------------------------------------------------------------------------------------------------


def _fsdp_step(rank, world, expert_parallel: bool):
    cfg = model_config()
    ref, ref_losses = reference_grads(cfg, world)
    torch.optim.SGD(ref.parameters(), lr=0.5).step()  # grads kept: compared below

    model = full_model(cfg)
    if expert_parallel:
        par.apply_expert_parallel(model)
    par.wrap_fsdp(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = model_loss(model, make_batch(cfg, 10 + rank))
    loss.backward()
    par.sync_grads(model)  # FSDP reduced the sharded params; this only scales expert shards (if any)

    from torch.distributed.tensor import DTensor

    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    res = {"loss": (loss.detach(), ref_losses[rank].detach())}
    ref_params = dict(ref.named_parameters())
    expert_ids = {id(p) for p in par.expert_parallel_parameters(model)}
    local = {name: _expert_slice(name, model) if id(p) in expert_ids else slice(None)
             for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        res[f"grad/{name}"] = (full(p.grad), ref_params[name].grad[local[name]])
    opt.step()
    n_sharded = 0
    for name, p in model.named_parameters():
        n_sharded += isinstance(p, DTensor)
        res[f"param/{name}"] = (full(p.detach()), ref_params[name].detach()[local[name]])
    res["info/n_sharded"] = (torch.tensor(n_sharded), None)
    res["info/n_expert_params"] = (torch.tensor(len(expert_ids)), None)
    # a second forward after the step runs (parameters re-gathered from the updated shards)
    with torch.no_grad():
        res["loss_after_step"] = (model_loss(model, make_batch(cfg, 10 + rank)),
                                  model_loss(ref, make_batch(cfg, 10 + rank)))
    return res


def case_fsdp(rank, world):
    return _fsdp_step(rank, world, expert_parallel=False)


def case_fsdp_ep(rank, world):
    return _fsdp_step(rank, world, expert_parallel=True)


def case_fsdp_bf16(rank, world):
    """Smoke test of mixed precision: bf16 compute, fp32 gradient reduction (with and without EP)."""
    from torch.distributed.tensor import DTensor

    cfg = model_config()
    _, ref_losses = reference_grads(cfg, world)
    res = {}
    for ep in (False, True):
        model = full_model(cfg)
        if ep:
            par.apply_expert_parallel(model)
        par.wrap_fsdp(model, mixed_precision="bf16")
        loss = model_loss(model, make_batch(cfg, 10 + rank))
        loss.backward()
        par.sync_grads(model)
        grads = [p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad for p in model.parameters()]
        res[f"loss_ep{ep}"] = (loss.detach().float(), ref_losses[rank].detach())
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        res[f"info/grads_finite_ep{ep}"] = (torch.tensor(finite), None)
        res[f"info/grad_dtypes_ep{ep}"] = (torch.tensor(all(g.dtype == torch.float32 for g in grads)), None)
    return res


CASES = {"ep_forward": case_ep_forward, "ep_backward": case_ep_backward, "ep_model": case_ep_model,
         "fsdp": case_fsdp, "fsdp_ep": case_fsdp_ep, "fsdp_bf16": case_fsdp_bf16}


def main() -> None:
    cases, outdir = sys.argv[1].split(","), Path(sys.argv[2])
    torch.set_num_threads(1)
    rank, world, _ = par.init_distributed()
    try:
        for case in cases:
            res = CASES[case](rank, world)
            res = {k: tuple(None if t is None else t.detach().clone() for t in v) for k, v in res.items()}
            torch.save({"world": world, "results": res}, outdir / f"{case}_rank{rank}.pt")
            par.barrier()
    finally:
        par.cleanup()


if __name__ == "__main__":
    main()
