"""The ``pipeline`` flow: the whole DAG, curate -> train (each variant) -> benchmark + regression (each
trained variant), every stage a SUBFLOW (flows.curate, flows.train, flows.benchmark).

Wiring only: no step does work of its own. Each subflow caches its tasks across runs
(flows.common.STEP_CACHE), so a re-run with nothing changed redoes nothing: curation and training are
cache hits, and the benchmark's generation and scoring are too (a re-run still records a new benchmark
run, with the same values, and checks it for regressions).

Regression: each variant's benchmark run is compared with the previous ``pipeline`` run of the same
variant on the same benchmark (the benchmark flow's default), or with ``baseline_run`` when given. A regressed variant does not stop
the others: every variant is benchmarked first, then the flow fails with ``RegressionFound``. A variant
whose benchmark had a scorer fail on every item of a task (``ScorersFailed``) is handled the same way:
the others are still benchmarked, then the flow fails with ``ScorersFailed``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from data.curate import CurateConfig
from flows.benchmark import RegressionFound, ScorersFailed, benchmark as benchmark_flow
from flows.codec import codec as codec_flow
from flows.common import task_runner, workspace_root
from flows.curate import curate as curate_flow
from flows.train import train as train_flow

# The demo's optimiser steps per training stage and learning-rate multiplier (on the paper's per-stage
# rates, as `unimoe experiment replicate` uses): minutes on a CPU, enough for the tiny model to learn the
# codes' statistics, so token NLL and the regression gate see a trained model rather than a uniform one.
DEMO_MAX_STEPS = 20
DEMO_LR_SCALE = 30.0
DEFAULT_VARIANTS = ["unimoe-top-p0.7"]


def dashboard_command(ws: str | Path) -> str:
    return f"unimoe dashboard --workspace {ws}"


@flow(name="pipeline", log_prints=True)
def pipeline(workspace: str | None = None, demo_size: str = "default",
             variants: list[str] = DEFAULT_VARIANTS,  # noqa: B006 (Prefect copies parameters)
             preset: str = "tiny", max_steps: int | None = DEMO_MAX_STEPS, batch_size: int | None = None,
             lr_scale: float | None = DEMO_LR_SCALE,
             seeds: list[int] = [0],  # noqa: B006
             benchmark: str = "demo", baseline_run: str | None = None, max_items: int | None = None,
             max_seconds: float | None = None, scorers: list[str] | None = None, curate_config: dict | None = None,
             dask: str | None = None, nproc: int = 1, allow_failed_scorers: bool = False,
             codec_steps: int | None = None, codec_config: dict | None = None) -> dict:
    """Curate the corpus (the offline demo profile of ``demo_size`` unless ``curate_config``), train each of
    ``variants`` on it (``max_steps`` optimiser steps per stage, ``None``: the stage configs'; ``lr_scale`` x the
    paper's per-stage learning rates, ``None``: the paper's), benchmark each
    trained variant (kind ``pipeline``) and fail when any of them regressed.

    ``dask``: a Dask scheduler address (or ``"local"``) for curation's shard tasks and the benchmark's scorer
    tasks (flows.common.task_runner; default the thread pool or $UNIMOE_DASK_ADDRESS). ``nproc > 1`` trains each stage under torchrun.
    ``codec_steps``: first train the project's own codec on the curated corpus (curate up to the filter,
    then the codec flow for that many steps with ``codec_config``, CodecTrainConfig fields, resuming
    ``<ws>/codec/run``) and tokenise with it instead of the preset's codec; the trained models decode
    with it too (the train flow takes the codec the tokens were made with).
    Results: the Parquet tables under <workspace>/results; look at them with ``unimoe dashboard``."""
    from evaluation.runner import new_run_id, results_root

    log = get_run_logger()
    if not variants:
        raise ValueError("variants: name at least one variant to train")
    ws = workspace_root(workspace)
    root = results_root(ws)
    seconds: dict[str, float] = {}
    n = 1 + 2 * len(variants) + (1 if codec_steps else 0)
    step = 0

    def stage(label: str) -> float:
        nonlocal step
        step += 1
        print(f"[pipeline {step}/{n}] {label}")
        return time.perf_counter()

    def done(key: str, t0: float) -> None:
        seconds[key] = round(time.perf_counter() - t0, 2)
        print(f"[pipeline] {key} done in {seconds[key]:.1f} s")

    t_all = time.perf_counter()
    cur = curate_flow if dask is None else curate_flow.with_options(task_runner=task_runner(dask))
    if codec_steps:
        t0 = stage(f"codec: curate up to the filter, then train the codec to step {codec_steps} in {ws}/codec/run")
        cur(config=curate_config, workspace=str(ws), demo_size=demo_size, until="filter")
        c = codec_flow(workspace=str(ws), config={**(codec_config or {}), "steps": int(codec_steps)},
                       export=str(ws / "codec" / "codec.safetensors"))
        curate_config = {**(curate_config or CurateConfig.demo(demo_size).to_dict()),
                         "codec_weights": c["export"], "codec_sha256": c["sha256"]}
        done("codec", t0)
    t0 = stage(f"curate ({'config given' if curate_config else f'demo profile {demo_size!r}'}) in {ws}")
    curated = cur(config=curate_config, workspace=str(ws), demo_size=demo_size)
    done("curate", t0)

    trained: dict[str, dict[str, Any]] = {}
    for v in variants:
        t0 = stage(f"train {v} (preset {preset}, max_steps {max_steps}, nproc {nproc})")
        r = train_flow(variant=v, workspace=str(ws), preset=preset, max_steps=max_steps, batch_size=batch_size,
                       nproc=nproc, lr_scale=lr_scale)
        trained[v] = {"run_id": r["run_id"], "checkpoint": r["checkpoints"]["final"], "workdir": r["workdir"]}
        done(f"train {v}", t0)

    benched: dict[str, dict[str, Any]] = {}
    regressed: dict[str, str] = {}
    failed: dict[str, str] = {}
    for v, t in trained.items():
        run_id = new_run_id(benchmark, v)
        # Default baseline: the previous pipeline run of the same variant (evaluation.regression).
        t0 = stage(f"benchmark {v} on {benchmark!r}, seeds {list(seeds)}; regression baseline "
                   f"{baseline_run or 'the previous pipeline run of ' + v}")
        try:
            bench = benchmark_flow if dask is None else benchmark_flow.with_options(task_runner=task_runner(dask))
            b = bench(checkpoint=t["checkpoint"], benchmark=benchmark, workspace=str(ws), seeds=list(seeds),
                               variant=v, baseline_run=baseline_run, kind="pipeline", run_id=run_id, scorers=scorers,
                               max_items=max_items, max_seconds=max_seconds,
                               allow_failed_scorers=allow_failed_scorers)
            benched[v] = {"run_id": b["run_id"], "regression": b["regression"], "skipped": b["skipped"],
                          "report": b["report"]}
        except RegressionFound as e:
            log.error(f"{v}: REGRESSED\n{e}")
            regressed[v] = str(e)
            benched[v] = {"run_id": run_id, "regression": {"regressed": True}, "skipped": [], "report": None}
        except ScorersFailed as e:
            log.error(f"{v}: SCORERS FAILED\n{e}")
            failed[v] = str(e)
            benched[v] = {"run_id": run_id, "regression": {}, "skipped": [], "report": None, "failed": True}
        done(f"benchmark {v}", t0)

    seconds["total"] = round(time.perf_counter() - t_all, 2)
    result = {"workspace": str(ws), "curate": {k: curated[k] for k in ("curated", "subset", "warmup", "tokens", "summary")},
              "train": trained, "benchmark": benched, "results": str(root),
              "dashboard": dashboard_command(ws), "regressed": sorted(regressed), "scorers_failed": sorted(failed),
              "seconds": seconds}
    _publish(result)
    print(f"[pipeline] finished in {seconds['total']:.1f} s; result tables: {root} "
          f"(aggregate/, items/, regression/); dashboard: {dashboard_command(ws)}")
    if failed:
        raise ScorersFailed(f"pipeline: a scorer failed on every item of a task for {len(failed)} of {len(trained)} "
                            f"variants ({', '.join(sorted(failed))})\n\n" + "\n\n".join(failed.values())
                            + ("\n\n" + "\n\n".join(regressed.values()) if regressed else ""))
    if regressed:
        raise RegressionFound(f"pipeline: {len(regressed)} of {len(trained)} variants regressed "
                              f"({', '.join(sorted(regressed))})\n\n" + "\n\n".join(regressed.values()))
    return result


def _publish(result: dict) -> None:
    lines = ["# Pipeline run", "", f"Workspace: `{result['workspace']}`", "",
             "| variant | checkpoint | benchmark run | baseline | verdict |", "|---|---|---|---|---|"]
    for v, t in result["train"].items():
        b = result["benchmark"].get(v, {})
        reg = b.get("regression") or {}
        verdict = ("SCORERS FAILED" if v in result.get("scorers_failed", []) else
                   "REGRESSED" if v in result["regressed"] else
                   "ok" if reg.get("baseline_run_id") else "ok (no baseline)")
        lines.append(f"| {v} | `{t['checkpoint']}` | `{b.get('run_id')}` | `{reg.get('baseline_run_id')}` | {verdict} |")
    lines += ["", "| stage | seconds |", "|---|---|"] + [f"| {k} | {s} |" for k, s in result["seconds"].items()]
    lines += ["", f"Result tables: `{result['results']}`", "", f"Dashboard: `{result['dashboard']}`"]
    create_markdown_artifact(key="pipeline-summary", markdown="\n".join(lines), description="Pipeline run summary")
