"""Run one curriculum stage in this process or as a ``torchrun`` job (data parallel over ``nproc``
processes: gloo on CPU, nccl on CUDA; the Trainer initialises the process group).

A stage is described by a JSON-serialisable *spec*:

    {"kind": "specialist" | "warmup" | "joint",
     "model_config": {...}, "workdir": str, "run_id": str, "variant": str,
     "train_overrides": {...}, "variant_overlay": {...},
     "dataset": {"kind": "tokens" | "synthetic", "args": [...], "kwargs": {...}},
     "tokenizer": "path/to/tokenizer.json" | null,       # null: the dataset's load_tokenizer()
     # kind-specific:
     "task": str,                                          # specialist
     "specialists": {task: ckpt}, "warmup_ids": [...],     # warmup
     "init": ckpt | null, "subset_ids": [...], "stage": 3 | "joint"}   # joint

The dataset is one of :data:`DATASETS`, built by every rank from the spec's arguments: ``"tokens"``,
the token shards in a directory (:class:`unimoe.training.shards.TokenShardReader`), or
``"synthetic"`` (:func:`unimoe.training.data.synthetic_dataset`, for tests and smoke runs). A closed
set rather than an import string: the spec names data, never code to import.
``run_stage(spec, nproc)`` runs it in process (``nproc == 1``) or launches

    python -m torch.distributed.run --standalone --nproc-per-node N -m unimoe.training.launch SPEC.json

and returns the final checkpoint written by rank 0. Each rank's global batch is ``batch_size * N *
grad_accum`` (``batch_size`` is per process), so N processes with ``batch_size = B / N`` follow the
single-process run with batch ``B`` (see :mod:`unimoe.training.trainer`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from unimoe.procguard import guarded_command

KINDS = ("specialist", "warmup", "joint")
RESULT = "launch-result.json"


def stage_spec(kind: str, model_config: dict, tokens: str, workdir: str, run_id: str, variant: str,
               train_overrides: dict, variant_overlay: dict, **extra: Any) -> dict[str, Any]:
    """The spec of one stage trained on the token shards in ``tokens`` (every rank, and the in-process
    path, builds its own reader); ``extra``: the kind's fields (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; choose from {KINDS}")
    return {"kind": kind, "model_config": model_config, "workdir": workdir, "run_id": run_id, "variant": variant,
            "train_overrides": train_overrides, "variant_overlay": variant_overlay,
            "dataset": {"kind": "tokens", "args": [tokens], "kwargs": {}},
            "tokenizer": None, **extra}


DATASETS = ("tokens", "synthetic")


def build_dataset(spec: dict[str, Any]):
    """The stage's dataset: ``spec["dataset"]["kind"]`` (one of :data:`DATASETS`) called with its args."""
    from unimoe.training.data import synthetic_dataset
    from unimoe.training.shards import TokenShardReader

    ds = spec["dataset"]
    build = {"tokens": TokenShardReader, "synthetic": synthetic_dataset}.get(ds.get("kind"))
    if build is None:
        raise ValueError(f"unknown dataset kind {ds.get('kind')!r}; choose from {DATASETS}")
    return build(*ds.get("args", []), **ds.get("kwargs", {}))


def execute(spec: dict[str, Any]) -> Path:
    """Run the stage described by ``spec`` in this process (one rank of a torchrun job, or alone)."""
    from unimoe.config import UniMoEConfig
    from unimoe.tokenizer import TextTokenizer
    from unimoe.training import curriculum

    kind = spec["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}; choose from {KINDS}")
    dataset = build_dataset(spec)
    tok = TextTokenizer.load(spec["tokenizer"]) if spec.get("tokenizer") else dataset.load_tokenizer()
    cfg = UniMoEConfig.from_dict(spec["model_config"])
    common = dict(run_id=spec["run_id"], variant=spec["variant"], train_overrides=spec.get("train_overrides") or {},
                  variant_overlay=spec.get("variant_overlay") or {})
    if kind == "specialist":
        return curriculum.train_specialist(cfg, spec["task"], dataset, tok, spec["workdir"], **common)
    if kind == "warmup":
        return curriculum.train_moe_warmup(cfg, spec["specialists"], dataset, tok, spec["workdir"],
                                           warmup_ids=curriculum.tokenised_ids(spec["warmup_ids"], dataset), **common)
    return curriculum.train_joint(cfg, spec.get("init"), dataset, tok, spec["workdir"],
                                  subset_ids=curriculum.tokenised_ids(spec["subset_ids"], dataset),
                                  stage=spec.get("stage", 3), **common)


def torchrun_command(spec_path: str | Path, nproc: int) -> list[str]:
    """The torchrun job, under a watchdog that stops it if this process dies (unimoe.procguard): a
    killed run must not leave a job writing the stage's checkpoints while its resumption starts."""
    return guarded_command([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                            str(int(nproc)), "-m", "unimoe.training.launch", str(spec_path)])


def run_stage(spec: dict[str, Any], nproc: int = 1, *, env: dict[str, str] | None = None,
              timeout: float | None = None) -> Path:
    """The stage's final checkpoint: trained in this process when ``nproc == 1``, else by ``nproc``
    torchrun processes (their output is streamed to this process's stdout/stderr)."""
    if int(nproc) < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if int(nproc) == 1:
        return Path(execute(spec))
    from unimoe.common.files import atomic_write_json

    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = workdir / "launch-spec.json", workdir / RESULT
    atomic_write_json(spec_path, spec)
    result_path.unlink(missing_ok=True)
    run_env = dict(os.environ if env is None else env)
    # The launched module must import this checkout's packages (flows run from the repository root).
    root = str(Path(__file__).resolve().parents[2])
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, run_env.get("PYTHONPATH")) if p)
    run_env.setdefault("OMP_NUM_THREADS", "1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        run_env.pop(k, None)  # a fresh job, never a nested one
    done = subprocess.run(torchrun_command(spec_path, nproc), env=run_env, capture_output=True, text=True,
                          timeout=timeout)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"torchrun ({nproc} processes) for {spec['kind']} stage in {workdir} failed with exit "
                           f"code {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}")
    return Path(json.loads(result_path.read_text())["checkpoint"])


def main(argv: list[str] | None = None) -> int:
    import logging

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m unimoe.training.launch SPEC.json (under torchrun)", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(args[0]).read_text())
    ckpt = execute(spec)
    if rank == 0:
        from unimoe.common.files import atomic_write_json

        atomic_write_json(Path(spec["workdir"]) / RESULT, {"checkpoint": str(ckpt)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
