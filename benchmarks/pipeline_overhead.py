"""Prefect's overhead on the demo DAG: the ``pipeline`` flow (flows.pipeline: curate -> train -> benchmark
subflows) against the SAME library steps called as plain functions (no Prefect), side by side in one run.
Prints JSON with both wall times and their ratio (target: Prefect / plain <= 1.15).

    .venv/bin/python benchmarks/pipeline_overhead.py [--profile demo|smoke] [--size small|default]
        [--max-steps N] [--max-items N] [--max-seconds S] [--batch-size N] [--scorers a,b] [--variant V]
        [--order plain,prefect] [--keep]

``--profile demo`` (the default) measures the DAG the main job runs (``make pipeline``: the default demo
profile, flows.pipeline.DEMO_MAX_STEPS steps per stage, the demo benchmark's scorers; about 12 minutes a
side on 2 cores). ``--profile smoke`` is the tiny setting of tests/test_pipeline_flow.py (small demo corpus,
2 steps, one item per task, two scorers; about a minute a side), where Prefect's fixed costs weigh the most.
Options given explicitly override the profile's. Each side runs in its own fresh Python process with its own
fresh workspace, PREFECT_HOME (a new Prefect database) and NUMBA_CACHE_DIR (cold: no step cache,
generation/score/caption cache or compiled-kernel cache carried over); the sides run one after the other
(``--order``). Reported per side:

- ``dag_s``: the DAG itself (the ``pipeline(...)`` call, or the plain driver below),
- ``server_startup_s`` (Prefect only): the one-off embedded (ephemeral) Prefect server start-up, started
  explicitly before the DAG (the flow then reuses that server), so it is timed apart; with a fresh
  PREFECT_HOME it includes creating the database (its migrations),
- ``import_s``: importing the modules the side needs, and ``process_wall_s``: the whole child process as
  the parent saw it (interpreter start, imports, server start-up and shutdown included).

Ratios: ``dag`` (server start-up excluded), ``dag_incl_server_startup`` and ``process``, each with
``target_met``; the exit code uses ``dag_incl_server_startup``, the stricter DAG ratio. Both sides must
produce the same aggregate metric values (``metrics_match``; also the final checkpoint's ``weights_sha256``:
``weights_match``).
Exit code 0 when the target is met and the results match, 1 when not, 2 when a side failed.

The plain driver (``plain_*`` below) calls the library functions the flows' tasks call (data.curate,
unimoe.training.launch.run_stage -> execute, evaluation.runner, evaluation.regression.compare_runs), in the
flows' order, with the flows' arguments and the same parallelism (a thread pool of the curate flow's size
for its shard steps, one worker for the benchmark's scorers). It leaves out what only Prefect does: result
persistence and cache keys, task/flow run states, logging to the API and artifacts (the library work an
artifact needs, a stage's loss-curve markdown, is still done). The flows' own helpers live in the libraries
(data.curate.step_config, unimoe.training.launch.stage_spec, ...) and are called here too; the two
constants copied here (the curate thread-pool size, DEMO_MAX_STEPS) are checked against the flows in the
Prefect child (``fidelity``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 1.15
VARIANT = "unimoe-top-p0.7"
SIDES = ("prefect", "plain")
DEMO_MAX_STEPS = 20  # flows.pipeline.DEMO_MAX_STEPS (checked by the Prefect child)
SETTINGS = ("size", "max_steps", "max_items", "max_seconds", "batch_size", "scorers")
# None: the pipeline's own default (as `make pipeline` runs it).
PROFILES = {
    "demo": {"size": "default", "max_steps": DEMO_MAX_STEPS, "max_items": None, "max_seconds": None,
             "batch_size": None, "scorers": None},
    "smoke": {"size": "small", "max_steps": 2, "max_items": 1, "max_seconds": 0.5, "batch_size": 2,
              "scorers": ["dnsmos", "music_adherence"]},
}

def default_workers() -> int:
    """flows.common.default_workers: the thread pool size of the curate flow's shard tasks."""
    return int(os.environ.get("UNIMOE_WORKERS", os.cpu_count() or 2))


# ---- the plain DAG ----------------------------------------------------------------------------------


def _pmap(pool: ThreadPoolExecutor, fn, **kwargs: list[Any]) -> list[Any]:
    """Like flows.common.run_cached_map's ``task.map(**kwargs)``: one call per index, submitted together."""
    n = len(next(iter(kwargs.values()))) if kwargs else 0
    futures = [pool.submit(fn, **{k: v[i] for k, v in kwargs.items()}) for i in range(n)]
    return [f.result() for f in futures]


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def plain_curate(ws: Path, demo_size: str) -> dict:
    """flows.curate.curate, its tasks as plain calls of data.curate."""
    import torch

    from data import curate as C
    from evaluation.scorers import load_scorers

    def quality_scorers(c):  # flows.curate.load_quality_scorers
        return load_scorers(C.quality_scorer_names(c), {"dnsmos": {"num_threads": 1}})

    workers = default_workers()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    cfg_obj = C.CurateConfig.demo(demo_size)
    cfg = cfg_obj.to_dict()
    conf = lambda step: C.CurateConfig.from_dict(C.step_config(cfg, step))  # noqa: E731  (each task's _cfg(part))
    work = ws / "curate"
    steps: list[dict] = []

    def step(name, fn, rows_of=None):
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        steps.append(C.step_report(name, rows_of(out) if rows_of else 0, seconds))
        return out

    def caption(shard: str, out: str, cache_dir: str) -> str:
        c = conf("caption")
        key = os.environ.get("GEMINI_API_KEY") if c.captioner == "gemini" else None
        return str(C.caption_shard(c, shard, out, cache_dir, api_key=key))

    def filter_(shard: str, out: str) -> str:
        c = conf("filter")
        scorers, unavailable = quality_scorers(c)
        return str(C.filter_shard(c, shard, out, scorers, unavailable))

    def tokenize(manifest: str, ids: list[str], index: int, tokens_dir: str) -> dict:
        return C.tokenize_one_shard(conf("tokenize"), manifest, ids, index, tokens_dir)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        corpus_dir = str(ws / "corpus" / cfg_obj.corpus)
        root = step("build-corpus", lambda: str(C.build_corpus(conf("build"), corpus_dir)))
        raw = step("ingest", lambda: str(C.ingest(conf("ingest"), root, str(work / "raw.parquet"))), _rows)
        seg = step("segment", lambda: str(C.segment(conf("segment"), raw, str(work / "segmented.parquet"))), _rows)
        shards = [str(p) for p in C.split_shards(seg, str(work / "shards"), cfg_obj.rows_per_shard)]
        captioned = step("caption", lambda: _pmap(
            pool, caption, shard=shards, out=[str(work / "captioned" / Path(s).name) for s in shards],
            cache_dir=[str(ws / "cache" / "captions")] * len(shards)), lambda ps: sum(_rows(p) for p in ps))
        filtered = step("filter", lambda: _pmap(
            pool, filter_, shard=captioned, out=[str(work / "filtered" / Path(s).name) for s in captioned]),
            lambda ps: sum(_rows(p) for p in ps))
        pre_tokens = str(C.merge(filtered, str(work / "filtered.parquet")))
        C.check_accounting(seg, pre_tokens)
        bal = step("balance", lambda: C.balance_subsets(conf("balance"), pre_tokens, str(work)),
                   lambda r: r["subset_rows"])
        tokens_dir = str(work / "tokens")
        plans = C.plan_token_shards(conf("tokenize"), pre_tokens, tokens_dir)
        results = step("tokenize", lambda: _pmap(
            pool, tokenize, manifest=[pre_tokens] * len(plans), ids=plans, index=list(range(len(plans))),
            tokens_dir=[tokens_dir] * len(plans)), lambda rs: sum(r["num_rows"] for r in rs))
        tokens = C.finish_tokens(conf("tokenize"), pre_tokens, results, tokens_dir, str(work / "curated.parquet"))
    C.check_accounting(seg, tokens["manifest"])

    scorers, unavailable = quality_scorers(cfg_obj)
    plan = C.quality_plan(cfg_obj, sorted(scorers), unavailable)
    doc = C.summary(tokens["manifest"], bal, steps, plan, work / "summary.json")
    doc["tokens"] = tokens
    return {"workspace": str(ws), "curated": tokens["manifest"], "subset": bal["subset"], "warmup": bal["warmup"],
            "tokens": tokens_dir, "summary": str(work / "summary.json"), "status_counts": doc["task_status"],
            "steps": steps}


def plain_train(ws: Path, variant: str, preset: str, max_steps: int | None, batch_size: int | None) -> dict:
    """flows.train.train (nproc 1), its stage tasks as plain calls of unimoe.training.launch.run_stage."""
    from data.balance import read_subset
    from unimoe.config import TASKS, get_preset
    from unimoe.training.curriculum import plan, step_overrides
    from unimoe.training.curves import stage_curve_markdown
    from unimoe.training.launch import run_stage, stage_spec

    cur = ws / "curate"
    tokens, subset, warmup = str(cur / "tokens"), str(cur / "subset.json"), str(cur / "warmup.json")
    for p in (tokens, subset, warmup):
        if not Path(p).exists():
            raise FileNotFoundError(f"{p} not found")
    p = plan(variant, get_preset(preset))
    model_cfg, curriculum, overlay = p["model_config"], p["curriculum"], p["train_overlay"]
    overrides = step_overrides(max_steps, batch_size)
    run_id = f"{variant}-{preset}"
    out = ws / "train" / run_id
    stages = curriculum["stages"]
    common = dict(run_id=run_id, variant=variant, train_overrides=overrides, variant_overlay=overlay)

    def stage_run(kind: str, out_dir: Path, **extra: Any) -> str:
        return str(run_stage(stage_spec(kind, model_cfg, tokens, str(out_dir), **common, **extra), 1))

    ckpts: dict[str, Any] = {}
    if 1 in stages:
        ckpts["stage1"] = {}
        for t in TASKS:
            ckpts["stage1"][t] = stage_run("specialist", out / "stage1" / t, task=t)
            stage_curve_markdown(out / "stage1" / t, f"{run_id}: stage 1 specialist {t}", run_id=run_id)
    if 2 in stages:
        ckpts["stage2"] = stage_run("warmup", out / "stage2", specialists=ckpts["stage1"],
                                    warmup_ids=read_subset(warmup))
        stage_curve_markdown(out / "stage2", f"{run_id}: stage 2 MoE warm-up", run_id=run_id)
    final_stage = 3 if 3 in stages else "joint"
    init = ckpts.get("stage2") if curriculum.get("init") != "random" else None
    ckpts["final"] = stage_run("joint", out / "stage3", init=init, subset_ids=read_subset(subset), stage=final_stage)
    stage_curve_markdown(out / "stage3", f"{run_id}: stage {final_stage}", run_id=run_id)
    return {"run_id": run_id, "variant": variant, "workdir": str(out), "checkpoints": ckpts}


def plain_benchmark(ws: Path, checkpoint: str, benchmark: str, seeds: list[int], variant: str, run_id: str,
                    scorers: list[str] | None, max_items: int | None, max_seconds: float | None) -> dict:
    """flows.benchmark.benchmark (kind "pipeline", default baseline), its tasks as plain calls of
    evaluation.runner and evaluation.regression."""
    from evaluation import runner as RN
    from evaluation.regression import compare_runs

    cfg = RN.BenchConfig(benchmark=benchmark, seeds=[int(s) for s in seeds], scorers=scorers, max_items=max_items,
                         **({"max_seconds": float(max_seconds)} if max_seconds is not None else {}))
    run = RN.prepare(str(ws), checkpoint, RN.BenchConfig.from_dict(cfg.to_dict()), run_id=run_id, variant=variant,
                     kind="pipeline")
    index = RN.toplines(run, RN.generate(run))  # the flow's generate + toplines steps
    cache = RN.bench_dir(ws) / "cache"
    plan = RN.score_plan(run)
    n = len(plan)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the benchmark flow's task runner: one scorer at a time
        scored = _pmap(pool, RN.score, outputs_index=[index] * n, scorer_name=list(plan), tasks=list(plan.values()),
                       cache_dir=[str(cache)] * n, out_dir=[str(cache / "scored")] * n, n_boot=[cfg.set_n_boot] * n,
                       checkpoint=[run["checkpoint"]] * n)
    summary = RN.record(run, index, scored)
    if summary["failed"]:
        raise RN.ScorersFailed(RN.failure_message(run["run_id"], summary["failed"]))
    s = compare_runs(summary["results"], run["run_id"], None)
    reg = {**s.to_dict(), "report": s.report}
    if reg["regressed"]:
        raise RuntimeError(f"plain benchmark run {run['run_id']} regressed against {reg['baseline_run_id']}")
    return {"run_id": run["run_id"], "results": summary["results"], "run_dir": run["run_dir"],
            "report": summary["report"], "skipped": summary["skipped"],
            "regression": {k: v for k, v in reg.items() if k != "report"}}


def plain_pipeline(workspace: str, demo_size: str, variants: list[str], preset: str, max_steps: int | None,
                   batch_size: int | None, seeds: list[int], benchmark: str, max_items: int | None,
                   max_seconds: float | None, scorers: list[str] | None) -> dict:
    """flows.pipeline.pipeline without Prefect: curate -> train (each variant) -> benchmark (each variant)."""
    from evaluation.runner import new_run_id

    ws = Path(workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    plain_curate(ws, demo_size)
    seconds["curate"] = round(time.perf_counter() - t0, 2)
    trained = {}
    for v in variants:
        t0 = time.perf_counter()
        r = plain_train(ws, v, preset, max_steps, batch_size)
        trained[v] = {"run_id": r["run_id"], "checkpoint": r["checkpoints"]["final"], "workdir": r["workdir"]}
        seconds[f"train {v}"] = round(time.perf_counter() - t0, 2)
    benched = {}
    for v, t in trained.items():
        t0 = time.perf_counter()
        b = plain_benchmark(ws, t["checkpoint"], benchmark, list(seeds), v, new_run_id(benchmark, v), scorers,
                            max_items, max_seconds)
        benched[v] = {"run_id": b["run_id"], "regression": b["regression"], "skipped": b["skipped"],
                      "report": b["report"]}
        seconds[f"benchmark {v}"] = round(time.perf_counter() - t0, 2)
    seconds["total"] = round(time.perf_counter() - t_all, 2)
    return {"workspace": str(ws), "train": trained, "benchmark": benched, "seconds": seconds}


# ---- one side, in a child process ---------------------------------------------------------------------


def _fidelity() -> dict:
    """Compare this script's copies of two flow constants with the flows' own (Prefect child only)."""
    import flows.common
    import flows.curate
    import flows.pipeline

    checks = {"workers": flows.curate.WORKERS == default_workers() == flows.common.default_workers(),
              "DEMO_MAX_STEPS": flows.pipeline.DEMO_MAX_STEPS == DEMO_MAX_STEPS}
    return {"ok": all(checks.values()), **checks}


def _outcome(ws: Path, result: dict, variant: str) -> dict:
    from evaluation import results as R

    run_id = result["benchmark"][variant]["run_id"]
    agg = R.read_table(ws / "results", "aggregate", run_id=run_id).sort_values(["task", "metric"])
    ckpt = Path(result["train"][variant]["checkpoint"])
    return {"run_id": run_id, "aggregate": [[t, m, float(v)] for t, m, v in zip(agg["task"], agg["metric"], agg["value"])],
            "weights_sha256": json.loads((ckpt / "state.json").read_text())["weights_sha256"],
            "skipped": [s if isinstance(s, str) else s.get("scorer") for s in result["benchmark"][variant]["skipped"]]}


def child(args: argparse.Namespace) -> int:
    ws = Path(args.workspace)
    st = json.loads(args.settings)
    kwargs = dict(workspace=str(ws), demo_size=st["size"], variants=[args.variant], preset="tiny",
                  max_steps=st["max_steps"], batch_size=st["batch_size"], seeds=[0], benchmark="demo",
                  max_items=st["max_items"], max_seconds=st["max_seconds"], scorers=st["scorers"])
    doc: dict[str, Any] = {"side": args.side}
    t0 = time.perf_counter()
    if args.side == "prefect":
        from flows.pipeline import pipeline

        doc["import_s"] = time.perf_counter() - t0
        doc["fidelity"] = _fidelity()
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value():
            raise SystemExit(f"PREFECT_API_URL is set ({PREFECT_API_URL.value()}): this measures the embedded server")
        t0 = time.perf_counter()
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()  # the same singleton the flow's client starts (and then reuses)
        doc["server_startup_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = pipeline(**kwargs)
        doc["dag_s"] = time.perf_counter() - t0
    else:
        import data.curate  # noqa: F401
        import evaluation.regression  # noqa: F401
        import evaluation.runner  # noqa: F401
        import unimoe.training.launch  # noqa: F401

        doc["import_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = plain_pipeline(**kwargs)
        doc["dag_s"] = time.perf_counter() - t0
        doc["prefect_imported"] = "prefect" in sys.modules
    doc["stage_seconds"] = result["seconds"]
    doc.update(_outcome(ws, result, args.variant))
    Path(args.out).write_text(json.dumps(doc))
    return 0


def _scorers(text: str) -> list[str] | None:
    names = [s.strip() for s in text.split(",") if s.strip()]
    return names or None


def settings(args: argparse.Namespace) -> dict:
    """The profile's settings, with the options given explicitly in their place."""
    st = dict(PROFILES[args.profile])
    for k in SETTINGS:
        v = getattr(args, k)
        if v is not None:
            st[k] = _scorers(v) if k == "scorers" else v
    return st


# ---- the parent: both sides, then the comparison -------------------------------------------------------


def _env(side_dir: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_HOME=str(side_dir / "prefect-home"),
               NUMBA_CACHE_DIR=str(side_dir / "numba-cache"), PYTHONUNBUFFERED="1")
    for k in ("UNIMOE_WORKSPACE", "UNIMOE_DASK_ADDRESS", "PREFECT_API_URL"):
        env.pop(k, None)
    return env


def run_side(side: str, tmp: Path, args: argparse.Namespace, st: dict) -> dict:
    d = tmp / side
    d.mkdir()
    out = d / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--workspace", str(d / "ws"), "--out", str(out),
           "--settings", json.dumps(st), "--variant", args.variant]
    print(f"[overhead] {side}: running (log {d / 'log.txt'})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(d / "log.txt", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=_env(d), stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0 or not out.is_file():
        tail = (d / "log.txt").read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{side} side failed (exit {rc}); log tail:\n{tail}")
    doc = json.loads(out.read_text())
    doc["process_wall_s"] = wall
    print(f"[overhead] {side}: DAG {doc['dag_s']:.1f} s, process {wall:.1f} s", file=sys.stderr, flush=True)
    return doc


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def compare(p: dict, q: dict) -> dict:
    pa = {(t, m): v for t, m, v in p["aggregate"]}
    qa = {(t, m): v for t, m, v in q["aggregate"]}
    diff = [{"task": k[0], "metric": k[1], "prefect": pa.get(k), "plain": qa.get(k)}
            for k in sorted(set(pa) | set(qa)) if k not in pa or k not in qa or not _same(pa[k], qa[k])]
    return {"metrics_match": bool(pa) and not diff, "n_metrics": len(pa), "mismatches": diff,
            "weights_match": p["weights_sha256"] == q["weights_sha256"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="demo",
                    help="demo: the main job's DAG (default); smoke: the tests' tiny setting")
    ap.add_argument("--size", choices=("small", "default"), help="demo corpus size")
    ap.add_argument("--max-steps", type=int, help="optimiser steps per training stage")
    ap.add_argument("--max-items", type=int, help="benchmark items per task")
    ap.add_argument("--max-seconds", type=float, help="generation cap per benchmark clip")
    ap.add_argument("--batch-size", type=int, help="sequences per training step")
    ap.add_argument("--scorers", help="comma-separated; '' = the benchmark's")
    ap.add_argument("--variant", default=VARIANT)
    ap.add_argument("--order", default="plain,prefect", help="which side runs first")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (workspaces, logs)")
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:
        return child(args)

    order = [s.strip() for s in args.order.split(",")]
    if sorted(order) != sorted(SIDES):
        ap.error(f"--order must name both sides, e.g. {','.join(SIDES)}")
    tmp = Path(tempfile.mkdtemp(prefix="pipeline-overhead-"))
    try:
        st = settings(args)
        sides = {s: run_side(s, tmp, args, st) for s in order}
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        print(f"[overhead] kept {tmp}", file=sys.stderr)
        return 2
    p, q = sides["prefect"], sides["plain"]
    match = compare(p, q)
    ratios = {"dag": p["dag_s"] / q["dag_s"],
              "dag_incl_server_startup": (p["dag_s"] + p["server_startup_s"]) / q["dag_s"],
              "process": p["process_wall_s"] / q["process_wall_s"]}
    r3 = lambda x: round(x, 3)  # noqa: E731
    report = {
        "settings": {"profile": args.profile, **st, "variant": args.variant, "order": args.order,
                     "workers": default_workers(), "cpus": os.cpu_count()},
        "prefect": {"dag_s": r3(p["dag_s"]), "server_startup_s": r3(p["server_startup_s"]),
                    "dag_incl_server_startup_s": r3(p["dag_s"] + p["server_startup_s"]), "import_s": r3(p["import_s"]),
                    "process_wall_s": r3(p["process_wall_s"]), "stage_seconds": p["stage_seconds"]},
        "plain": {"dag_s": r3(q["dag_s"]), "import_s": r3(q["import_s"]), "process_wall_s": r3(q["process_wall_s"]),
                  "stage_seconds": q["stage_seconds"], "prefect_imported": q["prefect_imported"]},
        "ratio": {k: r3(v) for k, v in ratios.items()},
        "target": TARGET,
        "target_met": {k: v <= TARGET for k, v in ratios.items()},
        **match,
        "skipped_scorers": {"prefect": p["skipped"], "plain": q["skipped"]},
        "fidelity": p["fidelity"],
    }
    print(json.dumps(report, indent=2))
    if args.keep:
        print(f"[overhead] kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = (report["target_met"]["dag_incl_server_startup"] and match["metrics_match"] and match["weights_match"]
          and p["fidelity"]["ok"] and not q["prefect_imported"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
