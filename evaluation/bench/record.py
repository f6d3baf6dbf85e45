"""Step 4 of a benchmark run: aggregate the scores and append them to the result tables, once per run id,
with the run report (``evaluation.report.render_run_report``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from evaluation import aggregate as A
from evaluation import results as R
from evaluation.bench.cache import _hash, file_hash, read_index, results_root
from evaluation.bench.config import BenchConfig, scores_row
from evaluation.bench.generate import clip_path
from evaluation.bench.score import ITEM_COLUMNS, _system
from evaluation.report import failure_lines, render_run_report
from unimoe.common.files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


class ScorersFailed(RuntimeError):
    """A scorer failed on every item of a task (and system) of a benchmark run (the message names them)."""


def failure_message(run_id: str, failed: list[dict]) -> str:
    """The error of a run in which some scorer failed on every item (see ``ScorersFailed``)."""
    return (f"benchmark run {run_id}: {len(failed)} scorer/task result(s) FAILED on every item:\n"
            + "\n".join(f"- {line}" for line in failure_lines(failed))
            + "\nThe results are recorded (the aggregate rows read NaN with n = 0). Fix the scorer, or pass "
              "--allow-failed-scorers (flow parameter allow_failed_scorers=True) to accept the run.")


def record(rec: dict[str, Any], outputs_index: str, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate and append this run's rows to the items and aggregate tables (once per run id: a
    re-run of a recorded run writes nothing new) and write the run report. Returns a summary
    (``failed``: the scorers that failed on every item of a task and system)."""
    cfg = BenchConfig.from_dict(rec["config"])
    root = results_root(rec["workspace"])
    run_dir = Path(rec["run_dir"])
    existing = R.read_table(root, "aggregate", run_id=rec["run_id"])
    index = read_index(outputs_index)

    def audio_path(r: dict) -> str:
        return str(clip_path(run_dir, r)) if _system(r) == R.MODEL else str(r["audio"])

    audio_of = {(_system(r), r["item"]["id"], int(r["seed"]), r.get("voice_prompt")): audio_path(r) for r in index}
    any_audio = {}
    for (system, iid, seed, _), path in audio_of.items():
        any_audio.setdefault((system, iid, seed), path)
    ok = [s for s in scored if s["status"] == "ok"]
    item_frames = []
    for s in ok:
        if s.get("items"):
            df = pd.read_parquet(s["items"])
            for col, default in (("system", R.MODEL), ("voice_prompt", None), ("transcript", None)):
                if col not in df.columns:  # a score table cached by an older version
                    df[col] = default
            item_frames.append(df)
    items = pd.concat(item_frames, ignore_index=True) if item_frames else pd.DataFrame(columns=ITEM_COLUMNS)
    agg_rows: list[dict] = []
    for s in ok:
        trust = {"scorer_protocol": s.get("protocol")}
        if s.get("items"):
            df = items[items["scorer"] == s["scorer"]]
            for (system, task), sub in df.groupby(["system", "task"], sort=True):
                n_asked = int(sub["item_id"].nunique())
                prompts = sorted({str(v) for v in sub["voice_prompt"] if isinstance(v, str)})
                scores = sub.drop(columns=["system", "error", "voice_prompt", "transcript"], errors="ignore")
                agg_rows += [{**r, **trust, "system": system, "n_asked": n_asked,
                              "voice_prompt": ",".join(prompts) or None}
                             for r in A.aggregate_items(scores, s["directions"], n_boot=cfg.n_boot)]
        if s.get("aggregates"):
            rows = json.loads(Path(s["aggregates"]).read_text())
            for r in rows:
                judged = [x for x in index if x["item"]["task"] == r["task"]
                          and _system(x) == r.get("system", R.MODEL) and scores_row(s["scorer"], x)]
                prompts = sorted({str(x["voice_prompt"]) for x in judged if x.get("voice_prompt")})
                agg_rows.append({"system": R.MODEL, "n_asked": None, **r, **trust,
                                 "voice_prompt": ",".join(prompts) or None,
                                 "reference_hash": reference_set_hash(judged)})
    run_cols = {k: rec[k] for k in ("run_id", "kind", "checkpoint", "checkpoint_hash", "variant", "benchmark",
                                    "git_commit", "config_hash")}
    made: dict[tuple[str, str], set[str]] = {}
    for x in index:
        for k in ("device", "dtype"):
            if _system(x) == R.MODEL and x.get(k):
                made.setdefault((x["item"]["task"], k), set()).add(str(x[k]))

    def generated_by(task: str, key: str) -> str | None:
        return ",".join(sorted(made.get((task, key), ()))) or None

    agg_rows = [{**run_cols, "reference_hash": None, **r, "manifest_hash": rec.get("manifest_hash"),
                 "packages": R.package_versions(),
                 # decoding and the generating device describe the model's clips; the toplines were not generated
                 **({"decoding": cfg.decoding_label(), "device": generated_by(r["task"], "device"),
                     "dtype": generated_by(r["task"], "dtype")} if r.get("system", R.MODEL) == R.MODEL
                    else {"decoding": None, "device": None, "dtype": None})}
                for r in agg_rows]
    failed = [f for s in ok for f in s.get("failed") or []]
    written = {}
    if existing.empty:
        now = R.utc_now()
        item_rows = [{"run_id": rec["run_id"], "variant": rec["variant"], "benchmark": rec["benchmark"], "task": r.task,
                      "item_id": r.item_id, "seed": int(r.seed), "metric": r.metric, "value": float(r.value),
                      "scorer": r.scorer, "scorer_version": r.scorer_version, "system": r.system,
                      "audio_path": audio_of.get((r.system, r.item_id, int(r.seed), _text(r.voice_prompt)))
                      or any_audio.get((r.system, r.item_id, int(r.seed)), ""),
                      "voice_prompt": _text(r.voice_prompt), "transcript": _text(r.transcript)}
                     for r in items.itertuples(index=False)]
        written["items"] = str(R.write_rows(root, "items", item_rows, run_id=rec["run_id"], when=now))
        written["aggregate"] = str(R.write_rows(root, "aggregate", agg_rows, run_id=rec["run_id"], when=now))
    else:
        log.info(f"run {rec['run_id']} already recorded ({len(existing)} aggregate rows); nothing appended")
    skipped = [{"scorer": s["scorer"], "tasks": s["tasks"], "reason": s["reason"]} for s in scored if s["status"] != "ok"]
    report = render_run_report(rec, agg_rows, skipped, failed)
    atomic_write_text(run_dir / "report.md", report)
    summary = {"run_id": rec["run_id"], "results": str(root), "aggregate_rows": len(agg_rows), "item_rows": len(items),
               "skipped": skipped, "failed": failed, "written": written, "report": str(run_dir / "report.md"),
               "aggregate": [{k: r[k] for k in ("system", "task", "metric", "value", "ci_low", "ci_high", "n",
                                                "n_asked", "scorer")} for r in agg_rows]}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _text(x: Any) -> str | None:
    """A string cell, None for a missing one (None or NaN after a concatenation)."""
    return x if isinstance(x, str) else None


def reference_set_hash(rows: Iterable[dict]) -> str | None:
    """The reference recordings a set-level metric compared with: the (item id, file SHA-256) of the
    ``reference_audio`` of the judged rows' items; None when none has one."""
    refs = sorted({(r["item"]["id"], file_hash(r["item"]["reference_audio"]))
                   for r in rows if r["item"].get("reference_audio")})
    return _hash(refs)[:16] if refs else None

