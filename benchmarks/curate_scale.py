"""How curation cost grows with the corpus: synthetic corpora of N short clips (procedural chords with a
generated caption, 1 s each, described by a generic CSV manifest), each curated cold by the same
profile; prints per-step rows/s, wall time, peak RSS and the log-log slope of time against N (targets:
slope <= 1.05; peak RSS at 16K rows <= 2 GB, growing no faster than the manifest).

    python benchmarks/curate_scale.py                    # N = 1000, 4000, 16000
    python benchmarks/curate_scale.py --sizes 500,2000   # a quicker look

The clips are music rows (text-to-music): the filter runs the signal checks (the music scorers'
weights are not in a fresh machine's store), captioning the offline analyser, tokenisation the demo
codec. Building a corpus costs a few seconds per thousand clips, so the curate flow dominates.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_speed import ROOT, measure  # noqa: E402  (the same cold-run measurement)

SR = 16_000
CLIP_S = 1.0
WORDS = ("calm", "bright", "slow", "piano", "strings", "warm", "minor", "major", "chord", "pad", "soft", "low")


def build_corpus(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` one-second chords (three random partials, decaying, a little noise) and a metadata.csv."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_S * SR)) / SR
    (root / "audio").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text", "task", "split"])
        for i in range(n):
            freqs = 110 * 2 ** (rng.integers(0, 36, 3) / 12)
            x = 0.2 * np.exp(-2 * t) * np.sin(2 * np.pi * freqs[:, None] * t).sum(0) + 0.005 * rng.standard_normal(t.size)
            rel = f"audio/{i // 1000:03d}/clip{i:06d}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, x.astype(np.float32), SR)
            w.writerow([rel, " ".join(rng.choice(WORDS, 4)), "t2m", "train"])
    return root


def profile(root: Path, out: Path) -> Path:
    """The curate config every size uses: the generic adapter on ``root``, one clip per row."""
    cfg = {"corpus": "generic", "corpus_root": str(root), "clip_seconds": CLIP_S, "rows_per_shard": 512,
           "token_rows_per_shard": 1024, "balance": {"by": "count", "total": 10**9}}
    out.write_text(json.dumps(cfg))
    return out


def slope(ns: list[int], seconds: list[float]) -> float:
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0]) if len(ns) > 1 else math.nan


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,4000,16000")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    with tempfile.TemporaryDirectory(prefix="curate-scale-") as tmp:
        tmp = Path(tmp)
        for n in sizes:
            root = build_corpus(tmp / f"corpus-{n}", n)
            cfg = profile(root, tmp / f"profile-{n}.yaml")
            manifest_mb = (root / "metadata.csv").stat().st_size / 2**20
            r = measure(ROOT, False, tmp / f"ws-{n}", f"N={n}", ["--config", str(cfg)])
            runs.append({"n": n, "wall_s": r["wall_s"], "curate_steps_s": r["curate_steps_s"],
                         "peak_rss_mb": r["peak_rss_mb"], "manifest_csv_mb": round(manifest_mb, 2),
                         "rows_per_s": {k: v["rows_per_s"] for k, v in r["steps"].items()},
                         "rows": r["outputs"]["rows"]})
    ns = [r["n"] for r in runs]
    doc = {"sizes": ns, "runs": runs,
           "slope_curate_seconds": round(slope(ns, [r["curate_steps_s"] for r in runs]), 3),
           "slope_peak_rss": round(slope(ns, [r["peak_rss_mb"] for r in runs]), 3),
           "targets": {"slope_max": 1.05, "peak_rss_mb_at_16k_max": 2048}}
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
