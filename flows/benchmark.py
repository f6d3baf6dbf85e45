"""The ``benchmark`` flow: generate -> toplines -> score -> tables -> regression.

Wiring only: every step is a function of evaluation.runner / evaluation.regression. Generation (with
the toplines: ground truth + codec resynthesis, in the same task) and scoring are cached across runs
(flows.common.STEP_CACHE): generation returns a content-addressed scoring index, so scoring steps of a
new run whose clips did not change are cache hits and no scorer is even loaded. A skipped scorer (missing
weights) is never cached, so it is retried once its weights are in place, nor is a scorer that failed on
every item of a task. Recording and the regression check are cheap and run every time (recording is
idempotent per run id). The flow run FAILS when a metric regresses, and when a scorer failed on every
item of a task (``ScorersFailed``) unless ``allow_failed_scorers``.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from evaluation.runner import ScorersFailed
from flows.common import run_cached, run_cached_map, task_runner, workspace_root

__all__ = ["RegressionFound", "ScorersFailed", "benchmark"]


class RegressionFound(RuntimeError):
    """A benchmark metric regressed against the baseline (the message holds the report)."""


@task(name="bench-prepare")
def prepare(workspace: str, checkpoint: str | None, config: dict, run_id: str | None, variant: str | None,
            kind: str) -> dict:
    from evaluation.runner import BenchConfig, prepare as _prepare

    return _prepare(workspace, checkpoint, BenchConfig.from_dict(config), run_id=run_id, variant=variant, kind=kind)


@task(name="bench-generate")
def generate(run: dict, checkpoint: str, manifest: str) -> str:
    """The run's scoring index: the generated clips, then the toplines (ground truth, codec resynthesis)."""
    # checkpoint and manifest are passed separately so their file fingerprints key the cache
    from evaluation.runner import generate as _generate, toplines as _toplines

    return _toplines(run, _generate(run))


@task(name="bench-score", retries=1, retry_delay_seconds=5)
def score(outputs_index: str, scorer: str, tasks: list[str], cache_dir: str, out_dir: str, n_boot: int,
          checkpoint: str) -> dict:
    from evaluation.runner import score as _score

    return _score(outputs_index, scorer, tasks, cache_dir, out_dir, n_boot, checkpoint=checkpoint)


@task(name="bench-record")
def record(run: dict, outputs_index: str, scored: list[dict]) -> dict:
    from evaluation.runner import record as _record

    return _record(run, outputs_index, scored)


@task(name="bench-regression")
def regression(results: str, run_id: str, baseline_run: str | None) -> dict:
    from evaluation.regression import compare_runs

    s = compare_runs(results, run_id, baseline_run)
    return {**s.to_dict(), "report": s.report}


# Scorers load whole models: in process they run one at a time. On a Dask cluster ($UNIMOE_DASK_ADDRESS, or
# per run benchmark.with_options(task_runner=task_runner(address))) each scorer task runs on a worker.
@flow(name="benchmark", log_prints=True, task_runner=task_runner(max_workers=1))
def benchmark(checkpoint: str | None = None, benchmark: str = "demo", workspace: str | None = None,
              seeds: list[int] | None = None, variant: str | None = None, baseline_run: str | None = None,
              kind: str = "adhoc", run_id: str | None = None, scorers: list[str] | None = None,
              max_items: int | None = None, max_seconds: float | None = None, toplines: bool = True,
              allow_failed_scorers: bool = False, greedy: bool | None = None,
              speech_prompts: str | None = None) -> dict:
    """Benchmark ``checkpoint`` (default: the newest under <workspace>/train) on ``benchmark``, with the
    ground-truth and codec-resynthesis toplines (``toplines``); append the result tables under
    <workspace>/results; compare with ``baseline_run`` (default: the previous run of the same benchmark,
    kind and variant) and fail when anything regresses, or when a scorer failed on every item of a task
    (unless ``allow_failed_scorers``).

    ``seeds``, ``greedy`` (False: sampling) and ``speech_prompts`` ("paper" | "item"): None takes the
    benchmark's defaults (evaluation.runner.benchmark_defaults: greedy, seeds 0,1,2 and the predefined voice
    prompt for the paper's sets). ``max_seconds``: a ceiling on every clip (None: speech capped from the
    target text, music at its clip length)."""
    from evaluation import runner as RN

    log = get_run_logger()
    ws = workspace_root(workspace)
    given = {"seeds": None if seeds is None else [int(s) for s in seeds], "greedy": greedy,
             "speech_prompts": speech_prompts, "max_seconds": None if max_seconds is None else float(max_seconds)}
    cfg = RN.BenchConfig(benchmark=benchmark, scorers=scorers, max_items=max_items, toplines=bool(toplines),
                         **{k: v for k, v in given.items() if v is not None})
    ckpt = str(checkpoint) if checkpoint else str(RN.find_checkpoint(ws))
    run = prepare(str(ws), ckpt, cfg.to_dict(), run_id, variant, kind)
    log.info(f"run {run['run_id']}: {run['n_items']} items of {run['tasks']} x seeds {cfg.seeds} from {ckpt}, "
             f"{cfg.decoding_label()}, speech prompts {cfg.speech_prompts!r}")

    index = run_cached(generate, ws, run, run["checkpoint"], run["manifest"], output_exists=lambda p: Path(p).is_file())
    cache = RN.bench_dir(ws) / "cache"
    plan = RN.score_plan(run)
    n = len(plan)
    # One task per scorer, submitted together: the flow's task runner runs them (one at a time in process,
    # where each loads its model; in parallel on a Dask cluster).
    scored = run_cached_map(score, ws, outputs_index=[index] * n, scorer=list(plan), tasks=list(plan.values()),
                            cache_dir=[str(cache)] * n, out_dir=[str(cache / "scored")] * n,
                            n_boot=[cfg.set_n_boot] * n, checkpoint=[run["checkpoint"]] * n,
                            # a scorer that failed on every item of a task is retried, not served from the cache
                            output_exists=lambda r: r["status"] == "ok" and not r.get("failed")
                            and all(Path(r[k]).is_file() for k in ("items", "aggregates") if r[k]))
    for name, r in zip(plan, scored):
        if r["status"] != "ok":
            log.warning(f"scorer {name} skipped for {plan[name]}: {r['reason']}")
    summary = record(run, index, scored)
    for line in RN.failure_lines(summary["failed"]):
        log.error(f"ERROR: {line}")
    reg = regression(summary["results"], run["run_id"], baseline_run)
    _publish(run, summary, reg)
    result = {"run_id": run["run_id"], "results": summary["results"], "run_dir": run["run_dir"],
              "report": summary["report"], "skipped": summary["skipped"], "failed": summary["failed"],
              "regression": {k: v for k, v in reg.items() if k != "report"}}
    if summary["failed"] and not allow_failed_scorers:
        extra = f"\n\nIt also regressed against {reg['baseline_run_id']}: {', '.join(reg['regressions'])}" \
            if reg["regressed"] else ""
        raise ScorersFailed(RN.failure_message(run["run_id"], summary["failed"]) + extra)
    if reg["regressed"]:
        raise RegressionFound(f"benchmark run {run['run_id']} regressed against {reg['baseline_run_id']}: "
                              f"{', '.join(reg['regressions'])}\n\n{reg['report']}")
    return result


def _publish(run: dict, summary: dict, reg: dict) -> None:
    slug = _slug(run["run_id"])[:60]
    table = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in summary["aggregate"]]
    create_table_artifact(key=f"bench-{slug}", table=table or [{"note": "no metrics"}],
                          description=f"Aggregates of benchmark run {run['run_id']} ({run['benchmark']})")
    create_markdown_artifact(key=f"bench-report-{slug}", markdown=Path(summary["report"]).read_text(),
                             description=f"Benchmark run {run['run_id']}")
    create_markdown_artifact(key=f"bench-regression-{slug}", markdown=reg["report"],
                             description=f"Regression check of {run['run_id']}")


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")
