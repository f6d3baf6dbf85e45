"""The experts of a DCMoE layer: SwiGLUs stored stacked (``w_gate/w_up [E, I, D]``, ``w_down [E, D, I]``),
run on every token (:class:`SharedExperts`) or on the contiguous per-expert slices a dispatcher lays
out (:class:`GroupedExperts`: on a multi-threaded CPU the experts run concurrently, one single-threaded
worker each; elsewhere one ``torch._grouped_mm`` per projection where the kernel runs)."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from unimoe.moe.layer import SwiGLU


@functools.cache
def grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs on this device type and dtype: tried once on a tiny input
    (older torch builds lack the op; CUDA needs a recent architecture)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    try:
        x = torch.zeros(4, 8, device=device_type, dtype=dtype)
        w = torch.zeros(2, 8, 8, device=device_type, dtype=dtype)
        offs = torch.tensor([2, 4], dtype=torch.int32, device=device_type)
        torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
        return True
    except (RuntimeError, NotImplementedError) as e:
        warnings.warn(f"torch._grouped_mm unavailable for {device_type}/{dtype} ({e}); using the slice loop")
        return False


def _gmm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Rows ``offs[e-1]:offs[e]`` of ``x [P, K]`` times ``w[e].T`` (``w [E, N, K]``, nn.Linear layout)."""
    y = torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)
    if y.requires_grad:
        # The CPU backward kernel rejects broadcast (stride-0) gradients such as the one of y.sum().
        y.register_hook(lambda g: g.contiguous())
    return y


@functools.cache
def _expert_workers(num_threads: int, pid: int) -> ThreadPoolExecutor:
    """``num_threads`` workers with one intra-op thread each (ATen keeps that setting per thread). Keyed
    by process id: a forked child does not inherit the parent's threads."""
    return ThreadPoolExecutor(num_threads, thread_name_prefix="unimoe-experts",
                              initializer=torch.set_num_threads, initargs=(1,))


def _run_concurrently(jobs: list[tuple[int, Callable[[], None]]]) -> None:
    """Run ``(rows, job)`` pairs on the expert workers, most rows first (the last to start are the
    shortest), outside autograd (grad mode is per thread); re-raises the first job's error."""
    pool = _expert_workers(torch.get_num_threads(), os.getpid())
    futures = [pool.submit(torch.no_grad()(job)) for _, job in sorted(jobs, key=lambda j: -j[0])]
    for f in futures:
        f.result()


class ConcurrentExperts(torch.autograd.Function):
    """``E`` SwiGLU experts on contiguous row slices ``bounds[e] = (lo, hi)`` of ``xs [P, D]``, the
    experts running concurrently, each with single-threaded matmuls, in forward and backward.

    On a CPU, torch's intra-op threads split every matmul and meet at a barrier after it: a layer of
    small expert matmuls pays one barrier per matmul, and each one waits for the slowest thread (long
    waits on a shared machine). Independent experts need no barrier but the last."""

    @staticmethod
    def forward(ctx, xs: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor,
                bounds: list[tuple[int, int]]) -> Tensor:
        xs = xs.contiguous()
        gate = xs.new_empty(xs.shape[0], w_gate.shape[1])
        up = torch.empty_like(gate)
        out = torch.empty_like(xs)

        def expert(e: int, lo: int, hi: int) -> None:
            x = xs[lo:hi]
            torch.mm(x, w_gate[e].t(), out=gate[lo:hi])
            torch.mm(x, w_up[e].t(), out=up[lo:hi])
            torch.mm(F.silu(gate[lo:hi]) * up[lo:hi], w_down[e].t(), out=out[lo:hi])

        _run_concurrently([(hi - lo, functools.partial(expert, e, lo, hi))
                           for e, (lo, hi) in enumerate(bounds) if hi > lo])
        ctx.save_for_backward(xs, w_gate, w_up, w_down, gate, up)
        ctx.bounds = bounds
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        xs, w_gate, w_up, w_down, gate, up = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        need_x, need_gate, need_up, need_down = ctx.needs_input_grad[:4]
        grad_x = torch.empty_like(xs) if need_x else None
        grad_w = [torch.empty_like(w) if need else None
                  for w, need in ((w_gate, need_gate), (w_up, need_up), (w_down, need_down))]
        grad_gate, grad_up, grad_down = grad_w

        def expert(e: int, lo: int, hi: int) -> None:
            if hi == lo:  # an expert without tokens gets a zero gradient, as in autograd
                for g in grad_w:
                    if g is not None:
                        g[e].zero_()
                return
            g, x, a, b = grad_out[lo:hi], xs[lo:hi], gate[lo:hi], up[lo:hi]
            act = F.silu(a)
            if grad_down is not None:
                torch.mm(g.t(), act * b, out=grad_down[e])
            grad_h = g @ w_down[e]
            grad_a = torch.ops.aten.silu_backward(grad_h * b, a)
            grad_b = grad_h * act
            if grad_gate is not None:
                torch.mm(grad_a.t(), x, out=grad_gate[e])
            if grad_up is not None:
                torch.mm(grad_b.t(), x, out=grad_up[e])
            if grad_x is not None:
                torch.mm(grad_a, w_gate[e], out=grad_x[lo:hi])
                grad_x[lo:hi].addmm_(grad_b, w_up[e])

        _run_concurrently([(hi - lo, functools.partial(expert, e, lo, hi))
                           for e, (lo, hi) in enumerate(ctx.bounds)])
        return grad_x, grad_gate, grad_up, grad_down, None


class StackedSwiGLU(nn.Module):
    """``E`` SwiGLU experts stored stacked: ``w_gate, w_up [E, I, D]`` and ``w_down [E, D, I]``.

    Expert e computes ``w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x))``, i.e. exactly a
    :class:`SwiGLU` whose ``gate_proj/up_proj/down_proj`` weights are ``w_gate[e]/w_up[e]/w_down[e]``.
    """

    # Below this many multiply-adds per call, handing experts to worker threads costs more than it saves.
    min_concurrent_macs = 2**26

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02,
                 concurrent_on_cpu: bool = True):
        super().__init__()
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
        self.concurrent_on_cpu = concurrent_on_cpu
        self.w_gate = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.w_up = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.reset_parameters(init_std)

    def reset_parameters(self, std: float = 0.02) -> None:
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.normal_(w, 0.0, std)

    @torch.no_grad()
    def load_expert_from_dense(self, index: int, dense: SwiGLU, start: int = 0) -> None:
        """Copy intermediate channels ``start .. start + I`` of a dense SwiGLU into expert ``index``
        (stage 2 builds routed experts by slicing the specialists' FFNs along the intermediate dim)."""
        end = start + self.intermediate
        self.w_gate[index].copy_(dense.gate_proj.weight[start:end])
        self.w_up[index].copy_(dense.up_proj.weight[start:end])
        self.w_down[index].copy_(dense.down_proj.weight[:, start:end])

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, hidden={self.hidden}, intermediate={self.intermediate}, "
                f"concurrent_on_cpu={self.concurrent_on_cpu}")

    def _can_run_concurrently(self, xs: Tensor, rows: int) -> bool:
        """Whether the experts run as :class:`ConcurrentExperts` on ``rows`` rows like ``xs``: on a CPU
        with more than one intra-op thread but no more threads than experts (each worker runs whole
        experts), for calls big enough to pay for the hand-over. CPU autocast is per thread (the workers
        would not see it), so it stays with autograd."""
        return (self.concurrent_on_cpu and xs.device.type == "cpu"
                and 1 < torch.get_num_threads() <= self.num_experts
                and rows * self.hidden * self.intermediate >= self.min_concurrent_macs
                and xs.dtype == self.w_gate.dtype and not torch.is_autocast_enabled("cpu"))

    def forward_all(self, x: Tensor, weights: Tensor) -> Tensor:
        """Every expert on every token, ``sum_e weights[:, e] * expert_e(x)`` (``x [T, D]``,
        ``weights [T, E]``). The stacked gate/up weights are read as one ``[E * I, D]`` matrix (a view, no
        copy), so the up-projections of all experts are two matmuls."""
        t, e, i = x.shape[0], self.num_experts, self.intermediate
        h = F.silu(F.linear(x, self.w_gate.view(e * i, self.hidden))) * F.linear(x, self.w_up.view(e * i, self.hidden))
        # Scaling the [T, I] activations is the same as scaling the output (down is linear).
        h = (h.view(t, e, i) * weights.to(h.dtype).unsqueeze(-1)).unbind(1)
        out = torch.zeros_like(x)
        for k, down in enumerate(self.w_down.unbind(0)):
            out = out + F.linear(h[k], down)
        return out


class SharedExperts(StackedSwiGLU):
    """The always-on experts of a DCMoE layer: ``forward(x [T, D], weights [T, S])`` runs every expert
    on every token and returns the weighted sum (concurrently on a multi-threaded CPU: expert s takes
    rows ``s * T .. (s + 1) * T`` of ``x`` repeated ``S`` times)."""

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        t, s = x.shape[0], self.num_experts
        if not self._can_run_concurrently(x, s * t):
            return self.forward_all(x, weights)
        bounds = [(k * t, (k + 1) * t) for k in range(s)]
        ys = ConcurrentExperts.apply(x.repeat(s, 1), self.w_gate, self.w_up, self.w_down, bounds)
        return (ys.view(s, t, -1) * weights.t().to(ys.dtype).unsqueeze(-1)).sum(0)


class GroupedExperts(StackedSwiGLU):
    """The routed experts: ``forward(xs [P, D], counts [E])`` runs expert e on its contiguous rows
    ``counts[:e].sum() .. counts[:e + 1].sum()`` of ``xs`` (as a dispatcher lays them out) and returns the
    un-weighted outputs ``[P, D]``. On a CPU with more than one intra-op thread the experts run
    concurrently (``concurrent_on_cpu``, :class:`ConcurrentExperts`); otherwise one ``torch._grouped_mm``
    per projection where the kernel runs (``use_grouped_mm``, tried once per device type and dtype), or
    a loop over the slices."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02,
                 use_grouped_mm: bool = True, concurrent_on_cpu: bool = True):
        super().__init__(num_experts, hidden, intermediate, init_std, concurrent_on_cpu)
        self.use_grouped_mm = use_grouped_mm

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, use_grouped_mm={self.use_grouped_mm}"

    def forward(self, xs: Tensor, counts: Tensor) -> Tensor:
        if self._can_run_concurrently(xs, xs.shape[0]):
            ends = counts.cumsum(0).tolist()
            bounds = list(zip([0, *ends[:-1]], ends))
            return ConcurrentExperts.apply(xs, self.w_gate, self.w_up, self.w_down, bounds)
        if self._can_use_gmm(xs):
            offs = counts.cumsum(0).to(torch.int32)
            return _gmm(F.silu(_gmm(xs, self.w_gate, offs)) * _gmm(xs, self.w_up, offs), self.w_down, offs)
        # split/unbind (not xs[a:b] / w[e]) so that backward builds each gradient once, instead of one
        # full-size zero tensor per expert.
        outs = []
        gates, ups, downs = self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0)
        for e, xe in enumerate(xs.split(counts.tolist())):
            if xe.shape[0]:
                outs.append(F.linear(F.silu(F.linear(xe, gates[e])) * F.linear(xe, ups[e]), downs[e]))
        return torch.cat(outs) if outs else xs.new_zeros(0, self.hidden)

    def _can_use_gmm(self, xs: Tensor) -> bool:
        # The kernel wants 16-byte aligned row strides and does not do float64.
        esize = xs.element_size()
        return (self.use_grouped_mm and xs.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and xs.dtype == self.w_gate.dtype
                and (self.hidden * esize) % 16 == 0 and (self.intermediate * esize) % 16 == 0
                and grouped_mm_works(xs.device.type, xs.dtype))
