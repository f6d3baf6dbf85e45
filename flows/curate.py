"""The ``curate`` flow: build/ingest -> segment -> caption -> filter -> balance -> tokenise.

Wiring only: every step is a function of data.curate; this module turns them into Prefect tasks
(one per step, or one per shard for captioning, filtering and tokenisation), caches them across runs
(flows.common.STEP_CACHE) and publishes artifacts. Scorers come from evaluation.scorers and are
injected into data.quality here, which keeps data/ free of evaluation/ and Prefect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from data import curate as C
from flows.common import (
    StepProgress, check_cluster_reaches_prefect, default_workers, run_cached, run_cached_map, task_runner,
    workspace_root,
)  # fmt: skip


def _cfg(cfg: dict[str, Any]) -> C.CurateConfig:
    return C.CurateConfig.from_dict(cfg)


def _exists(path: Any) -> bool:
    return all(Path(p).exists() for p in (path if isinstance(path, list) else [path]))


@task(name="build-corpus")
def build_corpus(cfg: dict, out_dir: str) -> str:
    return str(C.build_corpus(_cfg(cfg), out_dir))


@task(name="ingest")
def ingest(cfg: dict, root: str, out: str) -> str:
    return str(C.ingest(_cfg(cfg), root, out))


@task(name="segment")
def segment(cfg: dict, manifest: str, out: str) -> str:
    return str(C.segment(_cfg(cfg), manifest, out))


@task(name="split-shards")
def split_shards(manifest: str, out_dir: str, rows_per_shard: int) -> list[str]:
    return [str(p) for p in C.split_shards(manifest, out_dir, rows_per_shard)]


def _gemini_key(secret_block: str | None) -> str | None:
    """The Gemini key from a Prefect Secret block (when named) or the environment. Resolved inside
    the task, so it never becomes a task input, a parameter or a cache key."""
    if secret_block:
        from prefect.blocks.system import Secret

        return Secret.load(secret_block).get()
    return os.environ.get("GEMINI_API_KEY")


def _retry_unless_fatal(task, task_run, state) -> bool:
    """Prefect's task retries are for a lost worker or a failed write (the caption cache makes a re-run
    cheap); transient API faults are retried inside the captioner, and a rejected key never heals."""
    from data.captioning.base import CaptionerFatalError

    try:
        state.result()
    except CaptionerFatalError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth another attempt
        return True
    return True


@task(name="caption-shard", retries=2, retry_delay_seconds=10, retry_condition_fn=_retry_unless_fatal)
def caption_shard(cfg: dict, shard: str, out: str, cache_dir: str, secret_block: str | None = None) -> str:
    c = _cfg(cfg)
    key = _gemini_key(secret_block) if c.captioner == "gemini" else None
    return str(C.caption_shard(c, shard, out, cache_dir, api_key=key))


def load_quality_scorers(cfg: C.CurateConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """Every scorer the quality config may use that can run here; why the others cannot."""
    from evaluation.scorers import load_scorers
    from unimoe.settings import compute_device

    # One thread per scorer session: shard tasks already run in parallel, one per core. The scorers that
    # declare a GPU run on this worker's GPU when it has one.
    device = compute_device()
    return load_scorers(C.quality_scorer_names(cfg), {"dnsmos": {"num_threads": 1}},
                        gpu_device=None if device == "cpu" else device)


def filter_resources(cfg: C.CurateConfig) -> dict[str, float]:
    """Dask worker resources a filter task needs: those the quality config's scorer classes declare (a GPU
    for UTMOS / aesthetics / CLAP; none for the demo profile's DNSMOS), read without loading any model."""
    from evaluation.scorers import scorer_resources

    return scorer_resources(sorted(C.quality_scorer_names(cfg)))


@task(name="filter-shard", retries=1)
def filter_shard(cfg: dict, shard: str, out: str) -> str:
    c = _cfg(cfg)
    scorers, unavailable = load_quality_scorers(c)
    return str(C.filter_shard(c, shard, out, scorers, unavailable))


@task(name="merge")
def merge(paths: list[str], out: str) -> str:
    return str(C.merge(paths, out))


@task(name="balance")
def balance(cfg: dict, manifest: str, out_dir: str) -> dict:
    return C.balance_subsets(_cfg(cfg), manifest, out_dir)


@task(name="plan-token-shards")
def plan_token_shards(cfg: dict, manifest: str, tokens_dir: str) -> list[list[str]]:
    return C.plan_token_shards(_cfg(cfg), manifest, tokens_dir)


# The tokeniser runs a neural codec: on a cluster with GPU workers its shards go there (placed_on).
CODEC_RESOURCES = {"GPU": 1}


@task(name="tokenize-shard")
def tokenize_shard(cfg: dict, manifest: str, ids: list[str], index: int, tokens_dir: str) -> dict:
    return C.tokenize_one_shard(_cfg(cfg), manifest, ids, index, tokens_dir)


@task(name="finish-tokens")
def finish_tokens(cfg: dict, manifest: str, results: list[dict], tokens_dir: str, out_manifest: str) -> dict:
    return C.finish_tokens(_cfg(cfg), manifest, results, tokens_dir, out_manifest)


# Shard tasks run in parallel threads, one per core by default ($UNIMOE_WORKERS), or on the Dask cluster
# that $UNIMOE_DASK_ADDRESS names (read at import); per run: curate.with_options(task_runner=task_runner(addr)).
WORKERS = default_workers()


@flow(name="curate", log_prints=True, task_runner=task_runner())
def curate(config: dict | None = None, workspace: str | None = None, demo_size: str = "default",
           gemini_secret_block: str | None = None, until: str | None = None) -> dict:
    """Curate a corpus into a filtered, balanced, tokenised training set under <workspace>/curate.

    ``config``: CurateConfig fields (default: the offline demo profile of ``demo_size``); ``until``:
    ``"filter"`` stops after the filter step (what ``unimoe codec train`` reads: a codec is trained
    before the corpus is tokenised with it)."""
    if until not in (None, "filter"):
        raise ValueError(f"until must be None or 'filter', got {until!r}")
    log = get_run_logger()
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))  # parallel shard tasks share the cores
    # Paths are resolved here, once: shard tasks may run on Dask workers on other machines, in other
    # working directories (see the README's "Multi-machine runs").
    cfg_obj = C.CurateConfig.from_dict(config) if config else C.CurateConfig.demo(demo_size)
    cfg_obj = cfg_obj.with_absolute_paths()
    cfg = cfg_obj.to_dict()
    ws = workspace_root(workspace)
    check_cluster_reaches_prefect(log)
    work = ws / "curate"
    steps: list[dict] = []

    def step(name: str, fn, rows_of=None):
        t0 = _now()
        out = fn()
        seconds = _now() - t0
        rows = rows_of(out) if rows_of else None  # building the corpus has no rows to count
        steps.append(C.step_report(name, rows, seconds))
        log.info(f"{name}: {'done' if rows is None else f'{rows} rows'} in {seconds:.1f} s")
        return out

    corpus_dir = str(ws / "corpus" / cfg_obj.corpus)
    root = step("build-corpus", lambda: run_cached(build_corpus, ws, C.step_config(cfg, "build"), corpus_dir, output_exists=_exists))
    raw = step("ingest", lambda: run_cached(ingest, ws, C.step_config(cfg, "ingest"), root, str(work / "raw.parquet"), output_exists=_exists),
               _rows)
    seg = step("segment", lambda: run_cached(segment, ws, C.step_config(cfg, "segment"), raw, str(work / "segmented.parquet"),
                                             output_exists=_exists), _rows)
    shards = run_cached(split_shards, ws, seg, str(work / "shards"), cfg_obj.rows_per_shard, output_exists=_exists)
    log.info(f"{len(shards)} shards of up to {cfg_obj.rows_per_shard} rows")

    shard_rows = [_rows(s) for s in shards]
    captioned = step("caption", lambda: run_cached_map(
        caption_shard, ws, output_exists=_exists, progress=StepProgress("caption", shard_rows),
        cfg=[C.step_config(cfg, "caption")] * len(shards), shard=shards,
        out=[str(work / "captioned" / Path(s).name) for s in shards],
        cache_dir=[str(ws / "cache" / "captions")] * len(shards), secret_block=[gemini_secret_block] * len(shards)),
        lambda ps: sum(_rows(p) for p in ps))
    filtered = step("filter", lambda: run_cached_map(
        filter_shard, ws, output_exists=_exists, progress=StepProgress("filter", shard_rows),
        resources=filter_resources(cfg_obj),
        cfg=[C.step_config(cfg, "filter")] * len(captioned), shard=captioned,
        out=[str(work / "filtered" / Path(s).name) for s in captioned]), lambda ps: sum(_rows(p) for p in ps))
    pre_tokens = run_cached(merge, ws, filtered, str(work / "filtered.parquet"), output_exists=_exists)
    C.check_accounting(seg, pre_tokens)
    if until == "filter":
        return {"workspace": str(ws), "filtered": pre_tokens, "steps": steps}

    bal = step("balance", lambda: run_cached(balance, ws, C.step_config(cfg, "balance"), pre_tokens, str(work),
                                             output_exists=lambda r: _exists([r["subset"], r["warmup"]])),
               lambda r: r["subset_rows"])
    tokens_dir = str(work / "tokens")
    plans = run_cached(plan_token_shards, ws, C.step_config(cfg, "tokenize"), pre_tokens, tokens_dir)
    results = step("tokenize", lambda: run_cached_map(
        tokenize_shard, ws, output_exists=lambda r: Path(tokens_dir, f"{r['name']}.safetensors").exists(),
        progress=StepProgress("tokenize", [len(p) for p in plans]), resources=CODEC_RESOURCES,
        cfg=[C.step_config(cfg, "tokenize")] * len(plans), manifest=[pre_tokens] * len(plans), ids=plans, index=list(range(len(plans))),
        tokens_dir=[tokens_dir] * len(plans)), lambda rs: sum(r["num_rows"] for r in rs))
    tokens = run_cached(finish_tokens, ws, C.step_config(cfg, "tokenize"), pre_tokens, results, tokens_dir, str(work / "curated.parquet"),
                        output_exists=lambda r: _exists([r["manifest"], r["index"]]))
    C.check_accounting(seg, tokens["manifest"])

    scorers, unavailable = load_quality_scorers(cfg_obj)
    plan = C.quality_plan(cfg_obj, sorted(scorers), unavailable)
    doc = C.summary(tokens["manifest"], bal, steps, plan, work / "summary.json")
    doc["tokens"] = tokens
    _publish(doc, work)
    return {"workspace": str(ws), "curated": tokens["manifest"], "subset": bal["subset"], "warmup": bal["warmup"],
            "tokens": tokens_dir, "summary": str(work / "summary.json"), "status_counts": doc["task_status"],
            "steps": steps}


def _dash(value) -> str:
    return "—" if value is None else str(value)


def _rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _now() -> float:
    import time

    return time.perf_counter()


def _publish(doc: dict, work: Path) -> None:
    counts = doc["task_status"]
    table = [{"task": t, **{s: counts[t].get(s, 0) for s in ("kept", "filtered", "quarantined")}} for t in counts]
    create_table_artifact(key="curate-counts", table=table, description="Rows per task and status after curation")
    lines = ["# Curation report", "", f"Workspace: `{work}`", "", "| step | rows | seconds | rows/s |",
             "|---|---|---|---|"]
    lines += [f"| {s['step']} | {_dash(s['rows'])} | {s['seconds']} | {_dash(s['rows_per_s'])} |" for s in doc["steps"]]
    lines += ["", "## Non-kept rows by reason", ""] + [f"- `{k}`: {v}" for k, v in doc["reasons"].items()]
    plan = doc.get("quality_plan") or {}
    if plan:
        lines += ["", "## Quality scorers", "", f"```json\n{C.json_dump(plan)}\n```"]
    lines += ["", f"Codec used for tokens: **{doc['tokens']['codec_label']}**"]
    create_markdown_artifact(key="curate-report", markdown="\n".join(lines), description="Curation summary")
