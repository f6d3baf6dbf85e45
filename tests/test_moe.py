"""DCMoE layer (UniMoE-Audio, arXiv 2510.13344): selection rules, mixing weights, grouped dispatch vs the
loop oracle, null/shared experts, balance loss, padding and routing statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from unimoe.config import TASKS, MoEConfig, UniMoEConfig, tiny_preset
from unimoe.moe import (
    DCMoE,
    FFNOutput,
    ConcurrentExperts,
    GroupedDispatcher,
    GroupedExperts,
    LoopDispatcher,
    StackedSwiGLU,
    SwiGLU,
    Router,
    balance_loss,
    balance_loss_from_sums,
    balance_sums,
    build_dispatcher,
    build_ffn,
    combine_weights,
    top_k_mask,
    top_p_mask,
)

D = 16  # 16 floats = 64 bytes: aligned for torch._grouped_mm


def make_moe(router: str = "top_p", seed: int = 0, router_std: float = 1.0, **moe_kw) -> DCMoE:
    # No router input jitter by default: these tests compare forwards of a layer in train mode against
    # oracles; the jitter has tests of its own below.
    kw = dict(num_routed_experts=4, routed_intermediate=8, num_null_experts=1, num_shared_experts=2,
              shared_intermediate=4, top_p=0.7, top_k=2, router_input_jitter=0.0)
    kw.update(moe_kw)
    moe = MoEConfig(**kw)
    moe.validate()
    torch.manual_seed(seed)
    layer = DCMoE(D, moe, router=router, init_std=0.2)
    # A wide router spreads the selections (1..all experts per token) instead of near-uniform probs.
    torch.nn.init.normal_(layer.router.weight, 0.0, router_std)
    return layer


def swiglu(x, wg, wu, wd):
    return F.silu(x @ wg.T) * (x @ wu.T) @ wd.T


# ---- top_p_mask -------------------------------------------------------------------------------------------

TOL = 1e-6


prob_rows = st.lists(st.integers(0, 6), min_size=1, max_size=10).filter(lambda v: sum(v) > 0).map(
    lambda v: torch.tensor(v, dtype=torch.float64) / sum(v))
float_rows = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=10).filter(
    lambda v: sum(v) > 1e-3).map(lambda v: torch.tensor(v, dtype=torch.float32) / sum(v))


def _check_top_p_row(probs: torch.Tensor, p: float, mask: torch.Tensor) -> None:
    probs64 = probs.double()
    sel, unsel = probs64[mask], probs64[~mask]
    assert mask.any(), "at least one entry"
    top = torch.sort(probs64, descending=True, stable=True).indices[0]
    assert mask[top], "the top entry is always selected"
    # the selected entries are the most probable ones; ties are broken towards the lower index
    if unsel.numel():
        assert sel.min() >= unsel.max()
        boundary = sel.min()
        sel_idx = [i for i in range(len(probs)) if mask[i] and probs64[i] == boundary]
        unsel_idx = [i for i in range(len(probs)) if not mask[i] and probs64[i] == boundary]
        if sel_idx and unsel_idx:
            assert max(sel_idx) < min(unsel_idx)
    # zero-probability entries only when needed for "at least one"
    if (probs64 > 0).any():
        assert not (mask & (probs64 == 0)).any()
    nonzero_all = bool(mask[probs64 > 0].all())
    if p >= 1:
        assert nonzero_all
    else:
        # reaches p (or everything non-zero is already in) ...
        assert sel.sum() >= p - TOL or nonzero_all
        # ... and is minimal: without its least probable entry it would not reach p
        if sel.numel() > 1:
            assert sel.sum() - sel.min() < p + TOL


@settings(max_examples=200, deadline=None)
@given(probs=st.one_of(prob_rows, float_rows), p=st.floats(0.01, 1.0))
def test_top_p_mask_properties(probs, p):
    _check_top_p_row(probs, p, top_p_mask(probs, p))


@settings(max_examples=30, deadline=None)
@given(p=st.floats(0.05, 1.5), seed=st.integers(0, 10_000), ties=st.booleans())
def test_top_p_mask_batches_over_leading_dims(p, seed, ties):
    g = torch.Generator().manual_seed(seed)
    if ties:
        logits = torch.randint(0, 3, (3, 4, 7), generator=g).float()
    else:
        logits = torch.randn(3, 4, 7, generator=g) * 2
    probs = torch.softmax(logits, -1)
    mask = top_p_mask(probs, p)
    assert mask.shape == probs.shape and mask.dtype == torch.bool
    for a in range(3):
        for b in range(4):
            row = top_p_mask(probs[a, b], p)
            assert torch.equal(mask[a, b], row)
            _check_top_p_row(probs[a, b], p, row)


@pytest.mark.parametrize("probs,p,expected", [
    ([0.5, 0.2, 0.3], 0.7, [1, 0, 1]),            # 0.5 + 0.3 = 0.8 >= 0.7
    ([0.5, 0.2, 0.3], 0.5, [1, 0, 0]),            # the top entry alone reaches p
    ([0.5, 0.2, 0.3], 0.81, [1, 1, 1]),
    ([0.25, 0.25, 0.25, 0.25], 0.5, [1, 1, 0, 0]),  # ties: lower index first
    ([0.25, 0.25, 0.25, 0.25], 0.51, [1, 1, 1, 0]),
    ([0.1, 0.3, 0.3, 0.3], 0.6, [0, 1, 1, 0]),
    ([0.35, 0.35, 0.30], 0.7, [1, 1, 0]),         # float32 0.35 + 0.35 = 0.69999999 still reaches 0.7
    ([0.6, 0.0, 0.3999999, 0.0], 1.0, [1, 0, 1, 0]),  # sums to 0.9999999: all non-zero, never zeros
    ([0.6, 0.0, 0.4, 0.0], 1.5, [1, 0, 1, 0]),
    ([0.0, 0.0, 0.0], 0.7, [1, 0, 0]),            # at least one: the top (lowest index) entry
    ([0.0, 1.0, 0.0], 1.0, [0, 1, 0]),
    ([1.0], 0.3, [1]),
    ([0.9, 0.1], 0.9, [1, 0]),
])
def test_top_p_mask_examples(probs, p, expected):
    got = top_p_mask(torch.tensor(probs, dtype=torch.float32), p)
    assert got.tolist() == [bool(e) for e in expected]


def test_top_p_mask_p_one_on_softmax_rows():
    probs = torch.softmax(torch.randn(64, 9) * 5, -1)
    assert top_p_mask(probs, 1.0).all()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_mask_exact_k_and_ties(k):
    probs = torch.softmax(torch.randn(32, 5), -1)
    mask = top_k_mask(probs, k)
    assert (mask.sum(-1) == k).all()
    ref = torch.zeros_like(mask).scatter(-1, probs.topk(k, -1).indices, True)
    assert torch.equal(mask, ref)
    tied = torch.full((5,), 0.2)
    assert top_k_mask(tied, 2).tolist() == [True, True, False, False, False]


# ---- dense FFN ---------------------------------------------------------------------------------------------


def test_dense_swiglu_matches_formula():
    torch.manual_seed(0)
    ffn = SwiGLU(D, 24)
    x = torch.randn(2, 3, D)
    res = ffn(x, token_mask=torch.ones(2, 3, dtype=torch.bool))
    assert isinstance(res, FFNOutput) and res.stats is None and float(res.aux_loss) == 0.0
    ref = swiglu(x, ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight)
    torch.testing.assert_close(res.out, ref)
    torch.testing.assert_close(ffn(x.reshape(6, D)).out, ref.reshape(6, D))


# ---- combination weights --------------------------------------------------------------------------------


def _manual_weights(z_dyn, z_sh, sel, weighting, mixing):
    T, E = z_dyn.shape
    S = z_sh.shape[1]
    w_dyn = torch.zeros(T, E, dtype=torch.float64)
    w_sh = torch.zeros(T, S, dtype=torch.float64)
    for t in range(T):
        I = [i for i in range(E) if sel[t, i]]
        P = [math.exp(z_dyn[t, i]) / sum(math.exp(z_dyn[t, j]) for j in range(E)) for i in range(E)]
        if weighting == "paper" and mixing == "add":
            for i in I:
                w_dyn[t, i] = P[i] / sum(P[j] for j in I)
            w_sh[t] = 1.0
        elif weighting == "paper" and mixing == "softmax":
            denom = sum(math.exp(z_dyn[t, j]) for j in I) + sum(math.exp(z_sh[t, s]) for s in range(S))
            for i in I:
                w_dyn[t, i] = math.exp(z_dyn[t, i]) / denom
            for s in range(S):
                w_sh[t, s] = math.exp(z_sh[t, s]) / denom
        elif weighting == "uniform" and mixing == "add":
            for i in I:
                w_dyn[t, i] = 1 / len(I)
            w_sh[t] = 1.0
        else:  # uniform + softmax, the official rule: 1/k of the routed share of the joint softmax
            denom = sum(math.exp(z_dyn[t, j]) for j in I) + sum(math.exp(z_sh[t, s]) for s in range(S))
            routed_share = sum(math.exp(z_dyn[t, j]) for j in I) / denom
            for i in I:
                w_dyn[t, i] = routed_share / len(I)
            for s in range(S):
                w_sh[t, s] = math.exp(z_sh[t, s]) / denom
    return w_dyn, w_sh


@pytest.mark.parametrize("weighting", ["paper", "uniform"])
@pytest.mark.parametrize("mixing", ["softmax", "add"])
def test_combine_weights_match_documented_rule(weighting, mixing):
    torch.manual_seed(1)
    z_dyn, z_sh = torch.randn(12, 5) * 2, torch.randn(12, 2)
    sel = top_p_mask(torch.softmax(z_dyn, -1), 0.7)
    w_dyn, w_sh = combine_weights(z_dyn, z_sh, sel, weighting, mixing)
    ref_dyn, ref_sh = _manual_weights(z_dyn.double(), z_sh.double(), sel, weighting, mixing)
    torch.testing.assert_close(w_dyn.double(), ref_dyn, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_sh.double(), ref_sh, atol=1e-6, rtol=1e-5)
    total = w_dyn.sum(-1) + (w_sh.sum(-1) if mixing == "softmax" else 0)
    torch.testing.assert_close(total, torch.ones(12))


# ---- grouped dispatch == loop oracle -----------------------------------------------------------------------


def _run(layer, x, mask=None, task_ids=None):
    x = x.detach().clone().requires_grad_(True)
    res = layer(x, token_mask=mask, task_ids=task_ids)
    # a loss that touches every output element and the aux loss with distinct weights
    ramp = torch.linspace(-1, 1, res.out.numel()).reshape(res.out.shape)
    loss = (res.out * ramp).sum() + 0.3 * res.aux_loss
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad(loss, [x, *params.values()], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [x, *params.values()])]
    return res, dict(zip(["x", *params], grads))


@pytest.mark.parametrize("router", ["top_p", "top_k"])
@pytest.mark.parametrize("weighting", ["paper", "uniform"])
@pytest.mark.parametrize("mixing", ["softmax", "add"])
@pytest.mark.parametrize("grouped_mm", [True, False])
def test_grouped_matches_loop(router, weighting, mixing, grouped_mm, monkeypatch):
    gmm_calls = []
    if hasattr(torch, "_grouped_mm"):
        real_gmm = torch._grouped_mm
        monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: gmm_calls.append(1) or real_gmm(*a, **k))
    layer = make_moe(router, weighting=weighting, shared_mixing=mixing)
    layer.experts.use_grouped_mm = grouped_mm
    x = torch.randn(2, 9, D)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    assert isinstance(layer.dispatcher, GroupedDispatcher)  # the config's default
    res_g, grads_g = _run(layer, x, mask)
    # the grouped kernel runs exactly when asked for (3 projections forward, no silent fallback)
    assert (len(gmm_calls) >= 3) == (grouped_mm and hasattr(torch, "_grouped_mm"))
    layer.dispatcher = build_dispatcher("loop", layer.num_routed)
    gmm_calls.clear()
    res_l, grads_l = _run(layer, x, mask)
    assert not gmm_calls
    torch.testing.assert_close(res_g.out, res_l.out)
    torch.testing.assert_close(res_g.aux_loss, res_l.aux_loss)
    assert grads_g.keys() == grads_l.keys()
    for name in grads_g:
        torch.testing.assert_close(grads_g[name], grads_l[name], msg=name)
    # the routed experts really got gradients (the comparison is not vacuous)
    assert grads_g["experts.w_gate"].abs().sum() > 0
    if not (weighting == "uniform" and mixing == "add"):  # the one rule with constant weights
        assert grads_g["router.weight"][: layer.num_routed].abs().sum() > 0


@pytest.fixture
def concurrent_cpu_experts(monkeypatch):
    """Two intra-op threads (the suite runs with one) and no minimum size, so that routed and shared
    experts take the concurrent CPU path even at test sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(StackedSwiGLU, "min_concurrent_macs", 0)
    calls = []
    real_apply = ConcurrentExperts.apply
    monkeypatch.setattr(ConcurrentExperts, "apply", lambda *a: calls.append(1) or real_apply(*a))
    yield calls
    torch.set_num_threads(threads)


@pytest.mark.parametrize("router", ["top_p", "top_k"])
@pytest.mark.parametrize("mixing", ["softmax", "add"])
def test_concurrent_experts_match_loop(router, mixing, concurrent_cpu_experts):
    layer = make_moe(router, shared_mixing=mixing)
    x = torch.randn(2, 9, D)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    res_c, grads_c = _run(layer, x, mask)
    assert len(concurrent_cpu_experts) == 2  # routed and shared experts both ran concurrently
    # The oracle: loop dispatch and the shared experts' matmul path, one thread.
    torch.set_num_threads(1)
    layer.dispatcher = build_dispatcher("loop", layer.num_routed)
    res_l, grads_l = _run(layer, x, mask)
    assert len(concurrent_cpu_experts) == 2
    torch.testing.assert_close(res_c.out, res_l.out)
    for name in grads_l:
        torch.testing.assert_close(grads_c[name], grads_l[name], msg=name)
    assert grads_c["experts.w_gate"].abs().sum() > 0 and grads_c["shared_experts.w_up"].abs().sum() > 0


def test_concurrent_experts_match_slices_with_an_idle_expert(concurrent_cpu_experts):
    torch.manual_seed(0)
    experts = GroupedExperts(4, D, 8, init_std=0.2, use_grouped_mm=False)
    counts = torch.tensor([3, 0, 5, 2])  # expert 1 gets no tokens: its gradient must be zero, not garbage
    xs = torch.randn(10, D, requires_grad=True)
    params = [xs, *experts.parameters()]
    # .sum(): a broadcast (stride-0) output gradient
    grads_c = torch.autograd.grad(experts(xs, counts).sum(), params)
    assert len(concurrent_cpu_experts) == 1
    experts.concurrent_on_cpu = False
    grads_s = torch.autograd.grad(experts(xs, counts).sum(), params)
    assert len(concurrent_cpu_experts) == 1
    for gc, gs in zip(grads_c, grads_s):
        torch.testing.assert_close(gc, gs)
    assert all(g[1].abs().sum() == 0 for g in grads_c[1:]) and grads_c[1].abs().sum() > 0


@pytest.mark.parametrize("router", ["top_p", "top_k"])
def test_uniform_weighting_gives_the_router_a_task_loss_gradient(router):
    """Issue 12: ``weighting: uniform`` (the official rule) must let the task loss train the router: the
    routed/shared split of the joint softmax depends on the logits of the selected routed experts and of
    the shared experts. A constant 1/(k+S) would leave the router without any task-loss gradient."""
    layer = make_moe(router, weighting="uniform", shared_mixing="softmax")
    x = torch.randn(2, 9, D)
    res = layer(x)
    task_loss = (res.out * torch.linspace(-1, 1, res.out.numel()).reshape(res.out.shape)).sum()  # no aux loss
    (g,) = torch.autograd.grad(task_loss, layer.router.weight)
    assert g[: layer.num_routed].abs().sum() > 0           # routed experts' logits
    assert g[layer.num_dynamic:].abs().sum() > 0           # shared experts' logits
    # and the weights are the official ones: equal over the selected set, summing to the routed share
    z = x.reshape(-1, D) @ layer.router.weight.T
    sel = res.stats.selected
    n_dyn = layer.num_dynamic
    w_dyn, w_sh = combine_weights(z[:, :n_dyn], z[:, n_dyn:], sel, "uniform", "softmax")
    joint = torch.softmax(torch.cat([z[:, :n_dyn].masked_fill(~sel, float("-inf")), z[:, n_dyn:]], -1), -1)
    k = sel.sum(-1, keepdim=True)
    torch.testing.assert_close(w_dyn, sel * joint[:, :n_dyn].sum(-1, keepdim=True) / k)
    torch.testing.assert_close(w_sh, joint[:, n_dyn:])


def test_layer_matches_per_token_reference():
    """Independent oracle: per token, evaluate the selected experts one by one with the documented rule."""
    layer = make_moe("top_p", seed=3)
    x = torch.randn(10, D)
    out = layer(x).out.detach()
    z = (x @ layer.router.weight.T).detach()
    E, N = layer.num_dynamic, layer.num_routed
    sel = top_p_mask(torch.softmax(z[:, :E], -1), 0.7)
    w_dyn, w_sh = _manual_weights(z[:, :E].double(), z[:, E:].double(), sel, "paper", "softmax")
    ex, sh = layer.experts, layer.shared_experts
    for t in range(10):
        ref = torch.zeros(D)
        for i in range(N):
            if sel[t, i]:
                ref += float(w_dyn[t, i]) * swiglu(x[t:t + 1], ex.w_gate[i], ex.w_up[i], ex.w_down[i])[0]
        for s in range(layer.num_shared):
            ref += float(w_sh[t, s]) * swiglu(x[t:t + 1], sh.w_gate[s], sh.w_up[s], sh.w_down[s])[0]
        torch.testing.assert_close(out[t], ref, atol=1e-5, rtol=1e-4)


# ---- null and shared experts -------------------------------------------------------------------------------


def _force_null(layer):
    """Router weights such that the null expert takes ~all probability for inputs with x[:, 0] > 0."""
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[layer.num_routed, 0] = 50.0
        layer.router.weight[layer.num_dynamic:, 1] = 1.0  # shared logits vary per token


def _shared_part(layer, x, w_sh):
    sh = layer.shared_experts
    return sum(w_sh[:, s:s + 1] * swiglu(x, sh.w_gate[s], sh.w_up[s], sh.w_down[s])
               for s in range(layer.num_shared))


@pytest.mark.parametrize("mixing", ["softmax", "add"])
@pytest.mark.parametrize("dispatch", ["grouped", "loop"])
def test_only_null_selected_gives_shared_part_only(mixing, dispatch):
    layer = make_moe("top_p", shared_mixing=mixing, dispatch=dispatch)
    _force_null(layer)
    x = torch.randn(7, D)
    x[:, 0] = x[:, 0].abs() + 1.0
    res = layer(x)
    assert res.stats.selected[:, layer.num_routed].all()
    assert (res.stats.routed_per_token == 0).all() and (res.stats.experts_per_token == 1).all()
    z = x @ layer.router.weight.T
    if mixing == "add":
        w_sh = torch.ones(7, layer.num_shared)
    else:  # the null expert keeps its (large) weight: nothing is redistributed to the shared experts
        zz = torch.cat([z[:, layer.num_routed:layer.num_dynamic], z[:, layer.num_dynamic:]], -1)
        w_sh = torch.softmax(zz, -1)[:, 1:]
        assert (w_sh.sum(-1) < 1e-6).all()
    torch.testing.assert_close(res.out, _shared_part(layer, x, w_sh))
    res.out.sum().backward()
    for w in (layer.experts.w_gate, layer.experts.w_up, layer.experts.w_down):
        assert w.grad is None or not w.grad.any()


def test_null_weight_not_redistributed():
    """Top-2 forced onto (routed 0, null): the routed expert keeps P_0 / (P_0 + P_null), not 1."""
    layer = make_moe("top_k", top_k=2, shared_mixing="add")
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0] = 3.0
        layer.router.weight[layer.num_routed, 0] = 3.5
    x = torch.randn(5, D)
    x[:, 0] = x[:, 0].abs() + 1.0
    res = layer(x)
    sel = res.stats.selected
    assert sel[:, 0].all() and sel[:, layer.num_routed].all() and (res.stats.routed_per_token == 1).all()
    z = x @ layer.router.weight.T
    w0 = torch.softmax(z[:, [0, layer.num_routed]], -1)[:, :1]
    assert (w0 < 0.5).all()
    ex = layer.experts
    ref = w0 * swiglu(x, ex.w_gate[0], ex.w_up[0], ex.w_down[0]) + _shared_part(layer, x, torch.ones(5, 2))
    torch.testing.assert_close(res.out, ref)


@pytest.mark.parametrize("router", ["top_p", "top_k"])
def test_shared_experts_always_active(router):
    layer = make_moe(router, shared_mixing="add")
    with torch.no_grad():
        layer.experts.w_down.zero_()  # routed outputs vanish; what is left is the shared part
    x = torch.randn(11, D)
    res = layer(x)
    torch.testing.assert_close(res.out, _shared_part(layer, x, torch.ones(11, 2)))
    assert (res.out.abs().sum(-1) > 0).all()
    # every token's output depends on every shared expert
    for s in range(layer.num_shared):
        g = torch.autograd.grad(res.out[:, 0].sum(), layer.shared_experts.w_down, retain_graph=True)[0]
        assert g[s].abs().sum() > 0


# ---- balance loss ------------------------------------------------------------------------------------------


def _manual_balance(z_dyn, sel, form):
    T, E = z_dyn.shape
    total = 0.0
    for i in range(E):
        f_i = sum(bool(sel[t, i]) for t in range(T)) / T
        pbar = 0.0
        for t in range(T):
            cols = range(E) if form == "switch" else [j for j in range(E) if sel[t, j]]
            if i in cols:
                pbar += math.exp(z_dyn[t, i]) / sum(math.exp(z_dyn[t, j]) for j in cols)
        total += f_i * pbar / T
    return E * total


@pytest.mark.parametrize("form", ["switch", "official"])
@pytest.mark.parametrize("router", ["top_p", "top_k"])
def test_balance_loss_matches_direct_computation(form, router):
    layer = make_moe(router, balance_loss=form)
    x = torch.randn(3, 5, D)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=torch.bool)
    res = layer(x, token_mask=mask)
    xv = x[mask]
    z = (xv @ layer.router.weight.T)[:, : layer.num_dynamic].detach().double()
    assert torch.equal(res.stats.selected, layer.router(xv).selected)
    expected = _manual_balance(z, res.stats.selected, form)
    assert res.aux_loss.dtype == torch.float32 and res.aux_loss.dim() == 0
    assert res.aux_loss.detach().item() == pytest.approx(expected, rel=1e-5)
    # also the bare function on the same inputs
    direct = balance_loss(z.float(), res.stats.selected, form).detach().item()
    assert direct == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("form", ["switch", "official"])
def test_balance_sums_add_up_over_shards(form):
    """Data parallelism: with the selection counts and token counts summed over shards of a batch and each
    shard's own probability sums, the shards' losses add up to the loss of the whole batch."""
    torch.manual_seed(0)
    z = torch.randn(11, 5, dtype=torch.float64)
    sel = top_p_mask(torch.softmax(z, -1), 0.7)
    whole = balance_loss(z, sel, form)
    shards = [balance_sums(z[a:b], sel[a:b], form) for a, b in ((0, 4), (4, 4), (4, 11))]  # one empty
    counts, tokens = sum(s.counts for s in shards), sum(s.tokens for s in shards)
    assert tokens == 11 and torch.equal(counts, sel.sum(0).double())
    parts = [balance_loss_from_sums(counts, s.prob_sums, tokens) for s in shards]
    torch.testing.assert_close(sum(parts), whole)
    assert float(parts[1]) == 0.0 and abs(float(parts[0]) - float(whole)) > 1e-3  # shares, not copies
    # each shard on its own is a different (local) balance loss
    assert abs(float(balance_loss(z[:4], sel[:4], form)) - float(whole)) > 1e-3


def test_balance_loss_is_one_for_perfect_balance():
    # uniform probabilities and uniform selection: N_dyn * sum (1/E * 1/E) * E... = 1
    z = torch.zeros(6, 3)
    sel = torch.eye(3, dtype=torch.bool).repeat(2, 1)
    assert float(balance_loss(z, sel, "switch")) == pytest.approx(1.0)


# ---- padding, statistics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dispatch", ["grouped", "loop"])
def test_padding_excluded(dispatch):
    layer = make_moe("top_p", dispatch=dispatch)
    x = torch.randn(2, 6, D)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    tasks = torch.tensor([[0, 0, 0, 0, 0, 0], [3, 3, 3, 3, 3, 3]])
    a = layer(x, mask, tasks)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), D) * 100
    b = layer(x2, mask, tasks)
    for field in ("selected", "experts_per_token", "routed_per_token", "expert_counts", "task_counts"):
        assert torch.equal(getattr(a.stats, field), getattr(b.stats, field)), field
    assert torch.equal(a.aux_loss, b.aux_loss)
    torch.testing.assert_close(a.out[mask], b.out[mask])
    assert torch.isfinite(b.out).all()
    assert a.stats.selected.shape == (7, layer.num_dynamic)
    # same as running the valid tokens alone
    c = layer(x[mask])
    torch.testing.assert_close(c.out, a.out[mask])
    torch.testing.assert_close(c.aux_loss, a.aux_loss)
    # flat [T, D] input with a flat [T] mask gives the same
    flat = layer(x.reshape(12, D), mask.reshape(12), tasks.reshape(12))
    torch.testing.assert_close(flat.out, a.out.reshape(12, D))
    assert torch.equal(flat.stats.task_counts, a.stats.task_counts)


def test_all_padding_is_finite():
    layer = make_moe("top_p")
    res = layer(torch.randn(2, 3, D), token_mask=torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(res.out).all() and not res.out.any()
    assert res.aux_loss.detach().item() == 0.0 and res.stats.selected.shape == (0, layer.num_dynamic)
    assert res.stats.expert_counts.tolist() == [0] * layer.num_dynamic


def test_stats_and_task_counts():
    layer = make_moe("top_p")
    x = torch.randn(3, 8, D)
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[2, 5:] = False
    tasks = torch.tensor([[0] * 8, [2] * 4 + [1] * 4, [3] * 8])
    tasks[1, 0] = -1  # unknown task: counted in the statistics but in no task row
    st_ = layer(x, mask, tasks).stats
    sel = st_.selected
    assert sel.dtype == torch.bool and sel.shape == (int(mask.sum()), layer.num_dynamic)
    assert torch.equal(st_.experts_per_token, sel.sum(-1))
    assert torch.equal(st_.routed_per_token, sel[:, : layer.num_routed].sum(-1))
    assert torch.equal(st_.expert_counts, sel.sum(0))
    valid_tasks = tasks[mask].tolist()
    expected = torch.zeros(len(TASKS), layer.num_dynamic, dtype=torch.long)
    for row, t in zip(sel.long(), valid_tasks):
        if t >= 0:
            expected[t] += row
    assert torch.equal(st_.task_counts, expected)
    assert layer(x, mask).stats.task_counts is None


def test_top_k_selects_exactly_k():
    layer = make_moe("top_k", top_k=3)
    st_ = layer(torch.randn(20, D)).stats
    assert (st_.experts_per_token == 3).all()
    assert (layer.router.top_k, layer.router.top_p) == (3, None)  # the layer's router selects by top_k


def test_top_p_selects_variable_number():
    layer = make_moe("top_p", router_std=2.0)
    st_ = layer(torch.randn(64, D)).stats
    assert (layer.router.top_p, layer.router.top_k) == (0.7, None)  # the default top_p of make_moe
    assert st_.experts_per_token.min() >= 1 and st_.experts_per_token.unique().numel() > 1


def test_a_router_selects_by_exactly_one_rule():
    """``top_p`` or ``top_k``, never both or neither; the rule given is the one applied."""
    for rules in ({}, {"top_p": 0.7, "top_k": 2}):
        with pytest.raises(ValueError, match="exactly one rule"):
            Router(4, 3, 1, **rules)
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    assert Router(4, 3, 1, top_k=2).select(probs).tolist() == [[True, True, False]]
    assert Router(4, 3, 1, top_p=0.9).select(probs).tolist() == [[True, True, True]]
    assert Router(4, 3, 1, top_p=0.5).select(probs).tolist() == [[True, False, False]]


# ---- construction ------------------------------------------------------------------------------------------


def test_build_ffn_kinds_and_router_layout():
    cfg: UniMoEConfig = tiny_preset()
    dense = build_ffn(cfg, "dense")
    assert isinstance(dense, SwiGLU)
    assert dense.gate_proj.weight.shape == (cfg.intermediate_size, cfg.hidden_size)
    for kind in ("top_p", "top_k"):
        layer = build_ffn(cfg, kind)
        m = cfg.moe
        assert isinstance(layer, DCMoE) and m.dispatch == "grouped"
        assert isinstance(layer.dispatcher, GroupedDispatcher)
        assert layer.router.weight.shape == (m.num_dynamic + m.num_shared_experts, cfg.hidden_size)
        assert layer.experts.w_gate.shape == (m.num_routed_experts, m.routed_intermediate, cfg.hidden_size)
        assert layer.experts.w_down.shape == (m.num_routed_experts, cfg.hidden_size, m.routed_intermediate)
        shared_shape = (m.num_shared_experts, m.shared_intermediate, cfg.hidden_size)
        assert layer.shared_experts.w_up.shape == shared_shape
        x = torch.randn(2, 3, cfg.hidden_size)
        res = layer(x)
        assert res.out.shape == x.shape and res.aux_loss.dim() == 0
    with pytest.raises(ValueError):
        build_ffn(cfg, "moe")
    with pytest.raises(ValueError, match="unknown dispatch"):
        build_dispatcher("scatter", 4)


def test_checkpoint_keys_are_the_released_layout():
    """Checkpoints written before the router/dispatcher split hold exactly these keys (the router's gate
    as ``router.weight``, the stacked experts as ``w_gate/w_up/w_down``); they must load strictly, and
    the dispatchers add no state."""
    old_keys = {"router.weight", "experts.w_gate", "experts.w_up", "experts.w_down",
                "shared_experts.w_gate", "shared_experts.w_up", "shared_experts.w_down"}
    src, dst = make_moe("top_p", seed=1), make_moe("top_p", seed=2, dispatch="loop")
    old_format = {k: v.clone() for k, v in src.state_dict().items()}
    assert set(old_format) == old_keys
    assert not any(torch.equal(old_format[k], dst.state_dict()[k]) for k in old_keys)
    dst.load_state_dict(old_format, strict=True)
    x = torch.randn(5, D)
    torch.testing.assert_close(dst(x).out, src(x).out)  # loop and grouped dispatch, same weights


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm not in this torch")
def test_use_grouped_mm_is_per_layer(monkeypatch):
    """No process-wide switch: turning the kernel off in one layer leaves another layer on it."""
    calls = []
    real_gmm = torch._grouped_mm
    monkeypatch.setattr(torch, "_grouped_mm", lambda *a, **k: calls.append(1) or real_gmm(*a, **k))
    a, b = make_moe("top_p", seed=0), make_moe("top_p", seed=0)
    a.experts.use_grouped_mm = False
    x = torch.randn(6, D)
    out_a = a(x).out
    assert not calls
    torch.testing.assert_close(b(x).out, out_a)
    assert len(calls) >= 3


# ---- router input jitter (issue 14) -----------------------------------------------------------------------


def test_router_input_jitter_default_is_official_and_validated():
    assert MoEConfig().router_input_jitter == 0.01  # official input_jitter_noise
    for bad in (-0.1, 1.0):
        with pytest.raises(Exception, match="router_input_jitter"):
            MoEConfig(router_input_jitter=bad).validate()
    layer = build_ffn(tiny_preset(), "top_p")
    assert layer.router.input_jitter == tiny_preset().moe.router_input_jitter


def test_router_input_jitter_is_multiplicative_and_train_only():
    router = Router(4, 3, 1, top_p=0.7, input_jitter=0.01)
    with torch.no_grad():
        router.weight.copy_(torch.eye(4))  # logits = the (jittered) input itself
    x = torch.randn(200, 4).abs() + 0.5
    router.train()
    ratio = torch.cat([router(x).dyn_logits, router(x).shared_logits], -1) / x
    assert (ratio >= 0.99 - 1e-6).all() and (ratio <= 1.01 + 1e-6).all()
    assert (ratio - 1).abs().max() > 0.005 and ratio.std() > 0.003   # really U(0.99, 1.01) noise
    router.eval()
    assert torch.equal(router(x).dyn_logits, x[:, :3])


def test_router_input_jitter_changes_routing_only():
    """The experts see the clean input: replaying the jittered routing in eval mode gives the same output."""
    layer = make_moe("top_p", router_input_jitter=0.01).train()
    captured = []
    hook = layer.router.register_forward_hook(lambda mod, inp, out: captured.append(out))
    x = torch.randn(12, D)
    out_train = layer(x).out
    hook.remove()
    layer.eval()
    assert not torch.equal(captured[0].dyn_logits, layer.router(x).dyn_logits)  # the jitter was applied
    layer.router.forward = lambda xv: captured[0]
    torch.testing.assert_close(layer(x).out, out_train)


def test_router_logits_fp32_under_bf16():
    layer = make_moe("top_p").to(torch.bfloat16)
    r = layer.router(torch.randn(4, D, dtype=torch.bfloat16))
    assert r.dyn_logits.dtype == torch.float32 and r.probs.dtype == torch.float32
    out = layer(torch.randn(4, D, dtype=torch.bfloat16))
    assert out.out.dtype == torch.bfloat16 and torch.isfinite(out.out).all()


def test_experts_sliced_from_dense_reassemble_it():
    """Stage 2 slices a dense FFN along the intermediate dim: the slices' outputs sum to the dense output."""
    torch.manual_seed(0)
    dense = SwiGLU(D, 32)
    ex = GroupedExperts(4, D, 8)
    for e in range(4):
        ex.load_expert_from_dense(e, dense, start=8 * e)
    x = torch.randn(6, D)
    sel = torch.ones(6, 4, dtype=torch.bool)
    torch.testing.assert_close(LoopDispatcher()(x, sel, torch.ones(6, 4), ex), dense(x).out)
    torch.testing.assert_close(GroupedDispatcher(4)(x, sel, torch.ones(6, 4), ex), dense(x).out)
