"""How ``AudioCodec`` runs the DAC network exactly and fast: per-item masks at every convolution (so items
of different lengths share a batch without changing each other's output), windows with enough context
for chunked processing, and an in-place Snake activation for inference."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from unimoe.codec_weights import CodecLoadError


# ---- exact batching: per-item masks at every convolution ------------------------------------------


@dataclass
class _ConvLen:
    """Input length of one convolution as ``a * units + b`` (units: hops for the encoder, frames for
    the decoder) and its receptive span in input elements."""

    module: nn.Module
    a: int
    b: int
    span: int


@dataclass
class StackPlan:
    convs: list[_ConvLen]
    out_a: int
    out_b: int
    context_units: int  # margin (in units) that covers the stack's receptive field on either side


def plan_stack(stack: nn.Module, make_input, units: Sequence[int] = (1, 2, 3)) -> StackPlan:
    """Measure how every conv's input length depends on the stack's input length (it is affine)."""
    convs = [m for m in stack.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    seen: dict[int, list[int]] = {id(m): [] for m in convs}
    outs = []

    def record(module, args):
        seen[id(module)].append(args[0].shape[-1])

    handles = [m.register_forward_pre_hook(record) for m in convs]
    try:
        with torch.inference_mode():
            for n in units:
                outs.append(stack(make_input(n)).shape[-1])
    finally:
        for h in handles:
            h.remove()

    def affine(vals: list[int], what: str) -> tuple[int, int]:
        a = vals[1] - vals[0]
        b = vals[0] - a * units[0]
        if any(v != a * n + b for v, n in zip(vals, units)) or a <= 0:
            raise CodecLoadError(f"codec {what}: lengths {vals} are not affine in the input length; cannot batch exactly")
        return a, b

    plans = []
    context = 0.0
    for m in convs:
        vals = seen[id(m)]
        if len(vals) != len(units):
            raise CodecLoadError("codec: a convolution ran a different number of times than the stack")
        a, b = affine(vals, type(m).__name__)
        k, d, s = m.kernel_size[0], m.dilation[0], m.stride[0]
        span = (k - 1) * d + 1 if isinstance(m, nn.Conv1d) else -(-k // s) + 1
        plans.append(_ConvLen(m, a, b, span))
        context += span / a  # this conv's reach, in units
    out_a, out_b = affine(outs, "output")
    return StackPlan(plans, out_a, out_b, int(math.ceil(context)) + 1)


@contextmanager
def masked_convs(plan: StackPlan, units: torch.Tensor) -> Iterator[None]:
    """Zero each item's positions past its own length at the input of every conv of the stack."""

    def hook_for(c: _ConvLen):
        valid = (c.a * units + c.b).tolist()

        def hook(module, args):
            # Zeroed in place: positions past an item's length feed nothing valid downstream, so writing
            # them in a tensor another layer also reads changes no valid output (and avoids a masked copy).
            x = args[0]
            for row, n in enumerate(valid):
                if n < x.shape[-1]:
                    x[row, :, max(n, 0):] = 0
            return None

        return hook

    handles = [c.module.register_forward_pre_hook(hook_for(c)) for c in plan.convs]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def windows(total: int, core: int, context: int) -> list[tuple[int, int, int, int]]:
    """Split ``total`` units into cores of ``core`` units with ``context`` units either side:
    ``(window_start, window_end, core_start, core_end)``."""
    if total <= core:
        return [(0, total, 0, total)]
    out = []
    for start in range(0, total, core):
        end = min(start + core, total)
        out.append((max(0, start - context), min(total, end + context), start, end))
    return out


# ---- inference-speed Snake ------------------------------------------------------------------------------


def _snake_class():
    from dac.nn.layers import Snake1d

    class InferenceSnake1d(Snake1d):
        """DAC's Snake, ``x + sin(alpha x)^2 / (alpha + 1e-9)``, computed in place when no gradient is
        needed: the same floating-point operations in the same order (bit-identical output, tested), one
        buffer instead of four. Snake was half the encoder's CPU time (tokenisation profile)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled() or x.dim() != 3:
                return super().forward(x)
            y = torch.mul(x, self.alpha)
            y.sin_().square_().mul_((self.alpha + 1e-9).reciprocal())
            return y.add_(x)

    return Snake1d, InferenceSnake1d


def use_inference_snake(model: nn.Module) -> nn.Module:
    """Switch every DAC Snake1d of ``model`` to ``InferenceSnake1d`` (same parameters and state-dict keys;
    training, with gradients on, takes DAC's own path)."""
    base, fast = _snake_class()
    for m in model.modules():
        if type(m) is base:
            m.__class__ = fast
    return model
