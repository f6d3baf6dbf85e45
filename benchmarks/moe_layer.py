"""Forward+backward time of one DCMoE layer: grouped dispatch vs the loop reference vs a dense SwiGLU
doing the same active FLOPs.

    .venv/bin/python benchmarks/moe_layer.py [--shapes tiny,paper] [--tokens 256] [--repeats 5]
                                             [--device cpu|cuda] [--dtype float32|bfloat16]

The dense baseline runs the same tokens through one SwiGLU whose intermediate width is the active width
of the MoE in this very run: mean routed width per token (measured from the routing) + all shared widths.
Variants are timed round-robin (one sample each per round) so that load from other processes hits all of
them alike; each time is the median over ``--repeats`` samples after ``--warmup`` steps, where a sample
averages as many steps as needed to last >= 50 ms. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unimoe.config import paper_preset, tiny_preset  # noqa: E402
from unimoe.moe import DCMoE, SwiGLU, build_dispatcher  # noqa: E402

SHAPES = {"tiny": tiny_preset, "paper": paper_preset}
MIN_SAMPLE_S = 0.05


def fwd_bwd(module, x: torch.Tensor, grad: torch.Tensor, setup=None):
    """A timer for ``n`` steps of forward + backward (into the params and x); returns seconds per step.
    Grads are dropped after each step, as an optimiser's zero_grad(set_to_none=True) would."""

    def steps(n: int = 1) -> float:
        if setup is not None:
            setup()
        total = 0.0
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            res = module(x)
            loss = (res.out * grad).sum() + res.aux_loss
            loss.backward()
            sync()  # CUDA launches are asynchronous: time the work, not the launch
            total += time.perf_counter() - t0
            x.grad = None
            for p in module.parameters():
                p.grad = None
        return total / n

    return steps


def bench_shape(name: str, tokens: int, repeats: int, warmup: int, router: str, seed: int,
                device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    cfg = SHAPES[name]()
    moe_cfg, hidden = cfg.moe, cfg.hidden_size
    torch.manual_seed(seed)
    layer = DCMoE(hidden, moe_cfg, router=router, init_std=cfg.init_std).to(device, dtype)
    x = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(tokens, hidden, device=device, dtype=dtype)

    with torch.no_grad():
        stats = layer(x).stats
    routed_per_token = stats.routed_per_token.float().mean().item()
    active = round(routed_per_token * moe_cfg.routed_intermediate
                   + moe_cfg.num_shared_experts * moe_cfg.shared_intermediate)
    dense = SwiGLU(hidden, active, init_std=cfg.init_std).to(device, dtype)

    dispatchers = {kind: build_dispatcher(kind, moe_cfg.num_routed_experts) for kind in ("grouped", "loop")}

    def use(dispatch: str, grouped_mm: bool = True, concurrent: bool = True):
        def setup():
            layer.dispatcher = dispatchers[dispatch]
            layer.experts.use_grouped_mm = grouped_mm
            layer.experts.concurrent_on_cpu = layer.shared_experts.concurrent_on_cpu = concurrent
        return setup

    # dcmoe_grouped is the default path (on a multi-threaded CPU: concurrent experts); the next two are
    # the other kernels GroupedExperts can take.
    variants = {
        "dcmoe_grouped": fwd_bwd(layer, x, grad, use("grouped")),
        "dcmoe_grouped_mm": fwd_bwd(layer, x, grad, use("grouped", True, False)),
        "dcmoe_grouped_slices": fwd_bwd(layer, x, grad, use("grouped", False, False)),
        "dcmoe_loop": fwd_bwd(layer, x, grad, use("loop")),
        "dense_active": fwd_bwd(dense, x, grad),
    }
    # Warm-up, then pick per variant how many steps one sample averages over, so that each sample
    # lasts >= MIN_SAMPLE_S (millisecond-scale tiny shapes are otherwise dominated by timer noise).
    inner = {}
    for k, steps in variants.items():
        for _ in range(warmup):
            steps()
        dt = min(steps() for _ in range(3))
        inner[k] = max(1, math.ceil(MIN_SAMPLE_S / max(dt, 1e-9)))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, steps in variants.items():
            times[k].append(steps(inner[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "hidden": hidden,
        "routed": f"{moe_cfg.num_routed_experts} x {moe_cfg.routed_intermediate}",
        "null": moe_cfg.num_null_experts,
        "shared": f"{moe_cfg.num_shared_experts} x {moe_cfg.shared_intermediate}",
        "router": router,
        "top_p" if router == "top_p" else "top_k": moe_cfg.top_p if router == "top_p" else moe_cfg.top_k,
        "tokens": tokens,
        "steps_per_sample": inner,
        "experts_per_token_mean": round(stats.experts_per_token.float().mean().item(), 3),
        "routed_per_token_mean": round(routed_per_token, 3),
        "dense_active_intermediate": active,
        "median_s": {k: round(v, 6) for k, v in med.items()},
        "min_s": {k: round(min(v), 6) for k, v in times.items()},
        "moe_vs_dense_active": round(med["dcmoe_grouped"] / med["dense_active"], 3),
        "moe_vs_loop": round(med["dcmoe_grouped"] / med["dcmoe_loop"], 3),
        "grouped_mm_vs_dense_active": round(med["dcmoe_grouped_mm"] / med["dense_active"], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,paper", help="comma-separated: tiny, paper")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--router", choices=["top_p", "top_k"], default="top_p")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice); 1 is steadier on a busy machine")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="parameter/activation dtype (default: float32 on cpu, bfloat16 on cuda)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; choose from {sorted(SHAPES)}")
    result = {
        "benchmark": "moe_layer_fwd_bwd",
        "device": args.device,
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "grouped_mm_available": hasattr(torch, "_grouped_mm"),
        "repeats": args.repeats,
        "shapes": {s: bench_shape(s, args.tokens, args.repeats, args.warmup, args.router, args.seed,
                                  args.device, dtype)
                   for s in shapes},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
