"""What the benchmark-runner tests share: a tiny demo-layout workspace (synthetic clips, a tiny random-init
checkpoint) and every step of a run without Prefect, as ``flows.benchmark`` wires them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from evaluation import runner as RN

SR = 16000


def write_clip(path: Path, seconds: float, freq: float, seed: int) -> None:
    t = np.arange(int(seconds * SR)) / SR
    x = (0.1 + 0.05 * seed) * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), SR)


def demo_workspace(ws: Path, texts: dict[str, str]) -> Path:
    """A demo-layout workspace at ``ws``: per id of ``texts`` a clip (``m-*``: t2m, else en_tts with the
    speaker after the first dash; ``*test``: test split, else train), and a tiny random-init checkpoint
    under <ws>/train."""
    from unimoe.checkpoint import save_checkpoint
    from unimoe.config import tiny_preset
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    corpus = ws / "corpus" / "demo"
    rows = []
    for i, (rid, text) in enumerate(sorted(texts.items())):
        task = "t2m" if rid.startswith("m-") else "en_tts"
        rel = f"audio/{rid}.wav"
        write_clip(corpus / rel, 0.3 if task == "t2m" else 0.2 + 0.02 * i, 200.0 + 60 * i, i)
        rows.append({"id": rid, "task": task, "language": "en" if task == "en_tts" else None, "audio": rel,
                     "text": text, "speaker": rid.split("-")[1] if task == "en_tts" else None,
                     "split": "test" if rid.endswith("test") else "train"})
    (corpus / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_preset()
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=list(texts.values()) * 5)
    torch.manual_seed(0)
    save_checkpoint(ws / "train" / "tiny" / "final", UniMoEAudio(cfg), cfg, {"stage": "init", "variant": "tiny"},
                    tokenizer=tok)
    return ws


def run_steps(ws: Path, checkpoint: str | None, cfg: RN.BenchConfig, *,
              allow_failed_scorers: bool = False) -> dict[str, Any]:
    """prepare -> generate -> toplines -> score (each scorer) -> record -> regression check; raises
    ScorersFailed (after recording) when a scorer failed on every item of a task, unless allowed."""
    from evaluation.regression import compare_runs

    rec = RN.prepare(ws, checkpoint, cfg)
    index = RN.toplines(rec, RN.generate(rec, progress=False), progress=False)
    cache = RN.bench_dir(ws) / "cache"
    scored = [RN.score(index, name, tasks, str(cache), str(cache / "scored"), cfg.set_n_boot, False,
                       checkpoint=rec["checkpoint"])
              for name, tasks in RN.score_plan(rec).items()]
    summary = RN.record(rec, index, scored)
    summary["regression"] = compare_runs(RN.results_root(ws), rec["run_id"], None).to_dict()
    if summary["failed"] and not allow_failed_scorers:
        raise RN.ScorersFailed(RN.failure_message(rec["run_id"], summary["failed"]))
    return summary
