#!/usr/bin/env python
"""Training entry point for one stage, runnable directly or under torchrun.

    python scripts/train_worker.py --workdir W --run-id R --stage 3 --preset tiny \
        --train '{"max_steps": 8, "batch_size": 2}' --synthetic 8 --tokenizer tok.json
    torchrun --standalone --nproc_per_node 2 scripts/train_worker.py ...   # data parallel

Data: ``--tokens DIR`` (token shards written by the curate flow, read with
``unimoe.training.shards.TokenShardReader``; ``--tasks`` / ``--ids-file`` select a view) or
``--synthetic N`` (deterministic random items, for tests and smoke runs). Like the training library,
this script imports nothing from ``data/`` (checked by tests/test_layering.py). The model is built
from ``--preset`` + ``--model-overlay`` (JSON) with ``--init-seed``, or loaded with ``--init-checkpoint``.
The run resumes from ``<workdir>/checkpoints/latest`` unless ``--no-resume``.

Test hooks: ``--hang-after-step K`` writes ``<workdir>/hang-<K>`` after optimiser step K and then sleeps
(so a test can SIGKILL the process mid-stage); ``--summary FILE`` writes the summary and the per-step
history as JSON (rank 0).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--variant", default="default")
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--model-overlay", default="{}", help="JSON dict merged over the preset")
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--init-checkpoint", default=None)
    ap.add_argument("--train", default="{}", help="JSON dict merged over TrainConfig.for_stage(stage)")
    ap.add_argument("--tokens", default=None, help="token shard directory (unimoe/training/shards.py)")
    ap.add_argument("--synthetic", type=int, default=0, help="N synthetic items instead of token shards")
    ap.add_argument("--synthetic-seed", type=int, default=0)
    ap.add_argument("--synthetic-tasks", default="zh_tts,en_tts,t2m")
    ap.add_argument("--tasks", default=None, help="comma-separated task filter")
    ap.add_argument("--ids-file", default=None,
                    help="ids to train on: a subset file (data/balance.py write_subset), a JSON list, or "
                         "whitespace-separated ids")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the shards' tokenizer)")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--hang-after-step", type=int, default=None)
    ap.add_argument("--summary", default=None)
    return ap.parse_args(argv)


def read_ids(path: str) -> list[str]:
    """The ids of ``--ids-file``: the ``ids`` of a subset file (data/balance.py's JSON object), a JSON
    list, or whitespace-separated ids."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, (dict, list)):  # e.g. one id that happens to parse as a JSON number
        return text.split()
    ids = doc.get("ids") if isinstance(doc, dict) else doc
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise SystemExit(f"{path}: expected a subset file, a JSON list of ids or whitespace-separated ids")
    return ids


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from unimoe.checkpoint import load_checkpoint
    from unimoe.config import get_preset, overlay
    from unimoe.model import UniMoEAudio
    from unimoe.sequence import SequenceBuilder
    from unimoe.tokenizer import TextTokenizer
    from unimoe.training import TrainConfig, Trainer, synthetic_dataset
    from unimoe.training.data import dataset_view

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(name)s %(message)s")

    if args.init_checkpoint:
        model, model_cfg, _ = load_checkpoint(args.init_checkpoint)
    else:
        model_cfg = overlay(get_preset(args.preset), json.loads(args.model_overlay))
        torch.manual_seed(args.init_seed)
        model = UniMoEAudio(model_cfg)
    train_cfg = TrainConfig.for_stage(args.stage, **json.loads(args.train))

    if args.tokens:
        from unimoe.training.shards import TokenShardReader

        dataset = TokenShardReader(args.tokens)
        tokenizer = TextTokenizer.load(args.tokenizer) if args.tokenizer else dataset.load_tokenizer()
    else:
        if args.synthetic < 1:
            raise SystemExit("give --tokens DIR or --synthetic N")
        if not args.tokenizer:
            raise SystemExit("--synthetic needs --tokenizer")
        dataset = synthetic_dataset(args.synthetic, model_cfg.audio.num_codebooks, seed=args.synthetic_seed,
                                    tasks=args.synthetic_tasks.split(","))
        tokenizer = TextTokenizer.load(args.tokenizer)
    ids = read_ids(args.ids_file) if args.ids_file else None
    tasks = args.tasks.split(",") if args.tasks else None
    view = dataset_view(dataset, tasks=tasks, ids=ids)
    builder = SequenceBuilder(model_cfg, tokenizer)

    callbacks = []
    if args.hang_after_step is not None:
        def hang(trainer) -> None:
            if trainer.step == args.hang_after_step:
                if trainer.is_main:
                    (Path(args.workdir) / f"hang-{trainer.step}").write_text(str(os.getpid()))
                while True:  # wait to be killed
                    time.sleep(1)
        callbacks.append(hang)

    trainer = Trainer(model, model_cfg, train_cfg, view, builder, args.workdir, run_id=args.run_id,
                      variant=args.variant, stage=args.stage, resume=not args.no_resume, callbacks=callbacks)
    try:
        summary = trainer.train()
        if args.summary and trainer.is_main:
            Path(args.summary).write_text(json.dumps({"summary": summary, "history": trainer.history}, indent=1))
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
