"""Cached re-run cost of the benchmark flow: run it twice on the small demo benchmark with a tiny
random-init checkpoint and print the first run's time, the second's and their ratio (target <= 5%).

    .venv/bin/python benchmarks/bench_rerun.py [--workspace DIR] [--seeds 0,1,2] [--max-seconds 0.5]

Without --workspace a temporary one is used (the small demo corpus is built into it first; that
build is not timed). The timings include Prefect's per-flow overhead, not its one-off start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def setup(ws: Path) -> Path:
    import torch

    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from unimoe.checkpoint import save_checkpoint
    from unimoe.config import tiny_preset
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    meta = build_demo_corpus(ws / "corpus" / "demo", DemoCorpusConfig.small(), progress=False)
    texts = [t for t in (json.loads(line).get("text") for line in meta.read_text().splitlines()) if t]
    cfg = tiny_preset()
    torch.manual_seed(0)
    return save_checkpoint(ws / "train" / "bench-rerun" / "final", UniMoEAudio(cfg), cfg,
                           {"stage": "init", "variant": "tiny-random"},
                           tokenizer=TextTokenizer.from_config(cfg.tokenizer, corpus_texts=texts * 5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-seconds", type=float, default=0.5)
    ap.add_argument("--scorers", default=None, help="comma-separated (default: the demo benchmark's defaults)")
    args = ap.parse_args()
    tmp = None
    if args.workspace is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-rerun-")
        args.workspace = Path(tmp.name)
    ckpt = setup(args.workspace)

    from prefect import flow

    from flows.benchmark import benchmark

    @flow(name="warm-up")
    def warm_up() -> None:  # starts the ephemeral Prefect server, so neither timed run pays for it
        return None

    warm_up()
    kw = dict(checkpoint=str(ckpt), workspace=str(args.workspace), seeds=[int(s) for s in args.seeds.split(",")],
              max_seconds=args.max_seconds, scorers=args.scorers.split(",") if args.scorers else None)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        out = benchmark(**kw)
        times.append(time.perf_counter() - t)
    print(f"first run   {times[0]:8.2f} s")
    print(f"second run  {times[1]:8.2f} s   (run {out['run_id']}, skipped scorers: {[s['scorer'] for s in out['skipped']]})")
    print(f"ratio       {times[1] / times[0]:8.2%}   (target <= 5%)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if times[1] <= 0.05 * times[0] else 1


if __name__ == "__main__":
    sys.exit(main())
