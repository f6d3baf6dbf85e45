"""KV-cache decoding speed, measured side by side in one run (tiny preset by default).

Prints JSON with:
- per-step time of cached decoding around step 100 and around step 1000, and their ratio
  (target: step 1000 <= 1.5x step 100: the cache keeps a step's cost nearly flat);
- the time of one cached step at step 1000 vs recomputing the whole 1000-frame sequence for that
  step (target: >= 20x), and the total time of 1000 steps cached vs uncached.

    .venv/bin/python benchmarks/decode.py [--steps 1000] [--preset tiny] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from unimoe.config import get_preset
from unimoe.generation import GenerationConfig, generate
from unimoe.model import UniMoEAudio
from unimoe.sequence import Example, SequenceBuilder
from unimoe.tokenizer import TextTokenizer


def step_times(model, builder, examples, steps: int, use_cache: bool) -> list[float]:
    """Wall time of each decoding step (EOS suppressed so every run lasts ``steps`` frames)."""
    stamps: list[float] = []
    gen = GenerationConfig(max_frames=steps, min_frames=steps, use_cache=use_cache)
    t0 = time.perf_counter()
    generate(model, builder, examples, gen, progress=lambda i, n: stamps.append(time.perf_counter()))
    stamps.insert(0, t0)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--window", type=int, default=21, help="steps averaged (median) around each probe point")
    # One thread by default: the tiny model is overhead-bound and extra threads only add noise.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = get_preset(args.preset)
    tok = TextTokenizer.train(["a calm piano melody in c major", "hello world"] * 20, cfg.tokenizer.trained_vocab_size)
    model = UniMoEAudio(cfg).eval()
    builder = SequenceBuilder(cfg, tok)
    examples = [Example("t2m", text="a calm piano melody in c major")]

    cached = step_times(model, builder, examples, args.steps, use_cache=True)
    half = args.window // 2

    def around(times, step):
        return statistics.median(times[step - half:step + half + 1])

    at_100, at_end = around(cached, 100), around(cached, args.steps - half - 1)
    uncached = step_times(model, builder, examples, args.steps, use_cache=False)
    recompute_at_end = around(uncached, args.steps - half - 1)
    report = {
        "preset": args.preset,
        "threads": args.threads,
        "steps": args.steps,
        "cached_step_ms_at_100": round(at_100 * 1e3, 3),
        f"cached_step_ms_at_{args.steps}": round(at_end * 1e3, 3),
        "ratio_step_end_vs_100": round(at_end / at_100, 3),
        f"recompute_step_ms_at_{args.steps}": round(recompute_at_end * 1e3, 3),
        "speedup_cached_vs_recompute_at_end": round(recompute_at_end / at_end, 1),
        "total_s_cached": round(sum(cached), 3),
        "total_s_recompute": round(sum(uncached), 3),
        "speedup_total": round(sum(uncached) / sum(cached), 1),
        "targets": {"ratio_step_end_vs_100": "<= 1.5", "speedup_cached_vs_recompute_at_end": ">= 20"},
    }
    report["pass"] = report["ratio_step_end_vs_100"] <= 1.5 and report["speedup_cached_vs_recompute_at_end"] >= 20
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
