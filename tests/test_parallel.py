"""Scale-out: expert parallelism and FSDP on two CPU processes (gloo), plus the single-process
behaviour of the helpers.

The two-process cases run in ONE ``torch.distributed.run`` launch (tests/parallel_worker.py; a launch
costs a few seconds of interpreter start-up on two shared cores). Every rank saves its parallel result
next to the single-process reference computed from identically seeded full weights; the tests below
compare them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unimoe.training import parallel as par

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "parallel_worker.py"
WORLD = 2
CASES = ("ep_forward", "ep_backward", "ep_model", "fsdp", "fsdp_ep", "fsdp_bf16")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every two-process case once; {case: [rank0 results, rank1 results]}."""
    out = tmp_path_factory.mktemp("parallel")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           str(WORKER), ",".join(CASES), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (f"worker failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    res = {}
    for case in CASES:
        ranks = []
        for r in range(WORLD):
            data = torch.load(out / f"{case}_rank{r}.pt", weights_only=False)
            assert data["world"] == WORLD
            ranks.append(data["results"])
        res[case] = ranks
    return res


def _check(results: dict, prefix: str = "", rel: float = 1e-5) -> int:
    """Compare every (got, want) pair whose key starts with ``prefix``: integer/bool tensors exactly,
    float tensors within ``rel`` of the reference's scale (float summation order differs)."""
    n = 0
    for key, (got, want) in results.items():
        if not key.startswith(prefix) or key.startswith("info/"):
            continue
        assert got is not None and want is not None, f"{key}: missing tensor"
        assert got.shape == want.shape, f"{key}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        if want.dtype.is_floating_point:
            scale = float(want.abs().max()) if want.numel() else 0.0
            torch.testing.assert_close(got, want, rtol=rel, atol=rel * max(scale, 1e-6),
                                       msg=lambda m: f"{key}: {m}")
        else:
            assert torch.equal(got, want), f"{key}: {got} != {want}"
        n += 1
    return n


# ---- expert parallelism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("router", ["top_p", "top_k"])
def test_ep_forward_matches_full_dcmoe_on_each_ranks_tokens(results, router):
    """Each rank feeds different tokens (with padding and task ids); its output, balance loss and routing
    statistics equal those of the full single-process DCMoE on its own tokens, also when the other rank
    has only padding (it still takes part in the all-to-alls)."""
    for rank, res in enumerate(results["ep_forward"]):
        assert _check(res, f"{router}_emptyNone/") == 10
        assert _check(res, f"{router}_empty1/") == 10
        out, _ = res[f"{router}_emptyNone/out"]
        assert out.abs().max() > 0.1  # a real output, not an all-zero match
        # the routed experts of this rank are the right slice of the full weights
        got, want = res[f"{router}_emptyNone/shard_w_down"]
        assert got.shape[0] == 4 and torch.equal(got, want)
    # ranks saw different tokens, and the all-reduced routing counts are the sum of the local ones
    a, b = (r[f"{router}_emptyNone/out"][0] for r in results["ep_forward"])
    assert not torch.allclose(a, b)
    g0, g1 = (r[f"{router}_emptyNone/global_counts"][0] for r in results["ep_forward"])
    l0, l1 = (r[f"{router}_emptyNone/expert_counts"][0] for r in results["ep_forward"])
    assert torch.equal(g0, g1) and torch.equal(g0, l0 + l1)


@pytest.mark.parametrize("tag", ["top_p_emptyNone", "top_k_emptyNone", "top_p_empty1"])
def test_ep_backward_matches_single_process_on_both_ranks_tokens(results, tag):
    """Loss = sum over ranks of (out * g).sum() + 0.3 * aux. Router and shared-expert gradients summed
    over ranks (sync_grads), the local expert shards' gradients (they hold every rank's tokens'
    contribution) and the input gradients equal the single-process ones."""
    for rank, res in enumerate(results["ep_backward"]):
        assert _check(res, f"{tag}/") == 8
        got, _ = res[f"{tag}/experts_w_down"]
        assert got.abs().max() > 0  # the shard actually received gradient


# ---- whole model -----------------------------------------------------------------------------------------


def test_ep_model_loss_and_gradients(results):
    """apply_expert_parallel on UniMoEAudio (tiny preset): each rank's loss equals the full model's on its
    batch; after sync_grads every gradient equals the single-process gradient of the mean of the two
    ranks' losses (expert shards: the matching slice); the gathered state dict is the full one."""
    losses = []
    for res in results["ep_model"]:
        assert _check(res) == 40
        losses.append(float(res["loss"][0]))
        assert res["grad/layers.0.mlp.experts.w_gate"][0].shape[0] == 4
        assert res["state_dict/layers.0.mlp.experts.w_gate"][0].shape[0] == 8
    assert losses[0] != losses[1]


# ---- FSDP ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["fsdp", "fsdp_ep"])
def test_fsdp_step_matches_single_process(results, case):
    """wrap_fsdp (FSDP2, gloo, CPU) on the tiny model, one SGD step on two ranks with different batches:
    losses, gradients (full tensors) and updated parameters equal a single-process step on the mean of
    the two ranks' losses; the next forward (re-gathered parameters) agrees too. ``fsdp_ep``: expert
    parallelism + FSDP, the expert shards left out of FSDP and scaled by sync_grads."""
    n_params = 36
    for res in results[case]:
        n_sharded, n_expert = int(res["info/n_sharded"][0]), int(res["info/n_expert_params"][0])
        if case == "fsdp":
            assert (n_sharded, n_expert) == (n_params, 0)
        else:  # 2 MoE layers x (w_gate, w_up, w_down) kept local
            assert (n_sharded, n_expert) == (n_params - 6, 6)
        assert _check(res, "grad/") == n_params
        assert _check(res, "param/") == n_params
        assert _check(res, "loss") == 2  # loss, loss_after_step
        # the step changed the parameters
        after, _ = res["loss_after_step"]
        assert float(after) < float(res["loss"][0])


def test_fsdp_bf16_mixed_precision_smoke(results):
    """mixed_precision="bf16": the loss is the fp32 loss up to bf16 rounding, gradients are finite and
    fp32 (reduced in fp32); with expert parallelism the fp32 expert shards take bf16 activations."""
    for res in results["fsdp_bf16"]:
        for ep in (False, True):
            assert bool(res[f"info/grads_finite_ep{ep}"][0]) and bool(res[f"info/grad_dtypes_ep{ep}"][0])
            got, want = res[f"loss_ep{ep}"]
            assert abs(float(got) - float(want)) < 2e-2 * abs(float(want))


# ---- single process --------------------------------------------------------------------------------------


def test_helpers_are_noops_in_a_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    rank, world, device = par.init_distributed()
    assert (rank, world) == (0, 1) and device.type in ("cpu", "cuda")
    assert not torch.distributed.is_initialized()
    assert par.is_main() and par.get_rank() == 0 and par.get_world_size() == 1
    par.barrier()
    par.cleanup()
    lin = torch.nn.Linear(2, 2)
    lin(torch.ones(1, 2)).sum().backward()
    before = lin.weight.grad.clone()
    par.sync_grads(lin)
    assert torch.equal(lin.weight.grad, before)
    counts, tokens = par.global_routing_counts(torch.tensor([1, 2]), 3)
    assert counts.tolist() == [1, 2] and int(tokens) == 3


def test_expert_parallel_needs_a_process_group():
    from unimoe.config import MoEConfig
    from unimoe.moe import DCMoE

    if torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    moe = DCMoE(16, MoEConfig(num_routed_experts=4, routed_intermediate=8, shared_intermediate=8))
    with pytest.raises(RuntimeError, match="process group"):
        par.expert_parallel(moe)
    with pytest.raises(RuntimeError, match="process group"):
        par.wrap_fsdp(torch.nn.Linear(2, 2))


def test_shard_experts_copies_the_slice():
    from unimoe.moe import GroupedExperts

    torch.manual_seed(0)
    full = GroupedExperts(6, 16, 8, use_grouped_mm=False)
    shard = par.shard_experts(full, 2, 2)
    assert shard.num_experts == 2 and shard.use_grouped_mm is False
    for n in ("w_gate", "w_up", "w_down"):
        assert torch.equal(getattr(shard, n), getattr(full, n)[2:4])
        assert getattr(shard, n).data_ptr() != getattr(full, n).data_ptr()
    with pytest.raises(ValueError):
        par.shard_experts(full, 5, 2)
