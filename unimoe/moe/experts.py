"""The experts of a DCMoE layer: SwiGLUs stored stacked (``w_gate/w_up [E, I, D]``, ``w_down [E, D, I]``),
run on every token (:class:`SharedExperts`) or on the contiguous per-expert slices a dispatcher lays
out (:class:`GroupedExperts`, one ``torch._grouped_mm`` per projection where the kernel runs)."""

from __future__ import annotations

import functools
import warnings
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


class StackedSwiGLU(nn.Module):
    """``E`` SwiGLU experts stored stacked: ``w_gate, w_up [E, I, D]`` and ``w_down [E, D, I]``.

    Expert e computes ``w_down[e] @ (silu(w_gate[e] @ x) * (w_up[e] @ x))``, i.e. exactly a
    :class:`SwiGLU` whose ``gate_proj/up_proj/down_proj`` weights are ``w_gate[e]/w_up[e]/w_down[e]``.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02):
        super().__init__()
        self.num_experts, self.hidden, self.intermediate = num_experts, hidden, intermediate
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
        return f"num_experts={self.num_experts}, hidden={self.hidden}, intermediate={self.intermediate}"

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
    on every token and returns the weighted sum."""

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.forward_all(x, weights)


class GroupedExperts(StackedSwiGLU):
    """The routed experts: ``forward(xs [P, D], counts [E])`` runs expert e on its contiguous rows
    ``counts[:e].sum() .. counts[:e + 1].sum()`` of ``xs`` (as a dispatcher lays them out) and returns the
    un-weighted outputs ``[P, D]``, with one ``torch._grouped_mm`` per projection where the kernel runs
    (``use_grouped_mm``, tried once per device type and dtype) or a loop over the slices otherwise."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int, init_std: float = 0.02,
                 use_grouped_mm: bool = True):
        super().__init__(num_experts, hidden, intermediate, init_std)
        self.use_grouped_mm = use_grouped_mm

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, use_grouped_mm={self.use_grouped_mm}"

    def forward(self, xs: Tensor, counts: Tensor) -> Tensor:
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
