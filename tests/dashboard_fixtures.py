"""A small workspace for the dashboard tests: result tables written with ``evaluation.results.write_rows``
(aggregate / items / regression, hive-partitioned by date) and training tables written with
``unimoe/training/metrics.py``'s ``MetricsWriter`` (train / routing_hist / routing_tasks).

Values are fixed so tests can check exact numbers: ``EXPECTED_DELTAS`` holds the deltas the dashboard
must show against the baseline variant, and which of them count as regressions."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

from evaluation.results import write_rows
from unimoe.config import TASKS
from unimoe.training.metrics import MetricsWriter

BASELINE = "unify-dense"
VARIANTS = ("unimoe-top-p0.7", "wo-init")
NIGHTLY_VARIANT = "unimoe-top-p0.7"

# (benchmark, task, metric, higher_is_better, scorer) and per variant (value, half-width of the CI).
METRICS = [
    ("demo", "en_tts", "wer_pocketsphinx", False, "pocketsphinx_wer"),
    ("demo", "en_tts", "sim_resemblyzer", True, "resemblyzer_sim"),
    ("demo", "en_tts", "dnsmos_ovrl", True, "dnsmos"),
    ("demo", "t2m", "tempo_adherence", True, "music_adherence"),
    ("demo", "t2m", "key_adherence", True, "music_adherence"),
    ("musiccaps", "t2m", "fad", False, "openl3_fad"),
    ("musiccaps", "t2m", "clap", True, "clap"),
]
VALUES = {
    BASELINE:          [(0.300, 0.02), (0.700, 0.02), (3.00, 0.05), (0.500, 0.05), (0.400, 0.05), (5.00, 0.3), (0.300, 0.01)],
    "unimoe-top-p0.7": [(0.250, 0.02), (0.750, 0.02), (3.20, 0.05), (0.600, 0.05), (0.420, 0.05), (4.00, 0.3), (0.320, 0.01)],
    # wo-init: worse WER and FAD beyond their CIs (regressions), key adherence worse but within its CI.
    "wo-init":         [(0.400, 0.02), (0.690, 0.02), (3.10, 0.05), (0.550, 0.05), (0.380, 0.05), (6.00, 0.3), (0.300, 0.01)],
}
RUN_IDS = {BASELINE: "run-dense", "unimoe-top-p0.7": "run-topp", "wo-init": "run-woinit"}
# Toplines recorded by run-topp for the demo en_tts metrics (METRICS[:3]): (value, half-width of the CI).
TOPLINES = {"ground_truth": [(0.050, 0.01), (0.900, 0.01), (3.80, 0.05)],
            "codec_resynth": [(0.120, 0.01), (0.820, 0.01), (3.40, 0.05)]}
TOPLINE_RUN = "run-topp"
# The nightly history precedes the ablation runs, so each variant's latest results are the ablation's.
NIGHTLY_DATES = [datetime(2025, 3, 1 + i, 2, 0, tzinfo=timezone.utc) for i in range(5)]
RUN_DATE = datetime(2025, 3, 8, 12, 0, tzinfo=timezone.utc)
NIGHTLY_WER = [0.25, 0.24, 0.26, 0.25, 0.33]  # the last night regresses


# The nightly check's default thresholds for the fixture's metrics (configs/regression_thresholds.yaml:
# wer* 0.01 absolute, fad 5% of the baseline, anything else 2%).
THRESHOLDS = {"wer_pocketsphinx": lambda b: 0.01, "fad": lambda b: 0.05 * abs(b)}


def expected_deltas() -> dict[tuple[str, str, str, str], tuple[float, bool]]:
    """``(variant, benchmark, task, metric) -> (delta vs baseline, regressed)``: regressed when worse than the
    baseline by more than the threshold and the baseline outside the variant's CI."""
    out = {}
    for v in VARIANTS:
        for (bench, task, metric, hib, _), (val, hw), (bval, _) in zip(METRICS, VALUES[v], VALUES[BASELINE]):
            delta = val - bval
            worse_by = -delta if hib else delta
            thr = THRESHOLDS.get(metric, lambda b: 0.02 * abs(b))(bval)
            out[(v, bench, task, metric)] = (delta, worse_by > thr and not (val - hw <= bval <= val + hw))
    return out


def _agg_row(run_id, kind, variant, spec, value, hw, ts, system="model"):
    bench, task, metric, hib, scorer = spec
    return {"run_id": run_id, "kind": kind, "checkpoint": f"/ckpt/{variant}", "checkpoint_hash": "abc123",
            "variant": variant, "benchmark": bench, "task": task, "metric": metric, "higher_is_better": hib,
            "value": value, "ci_low": value - hw, "ci_high": value + hw, "n": 40, "scorer": scorer,
            "scorer_version": "1", "seeds": "0,1,2", "git_commit": "deadbeef", "config_hash": "cafe",
            "system": system, "n_asked": 40, "timestamp": ts}


def write_results(ws: Path) -> None:
    root = ws / "results"
    for variant, values in VALUES.items():
        run = RUN_IDS[variant]
        rows = [_agg_row(run, "adhoc", variant, spec, val, hw, RUN_DATE) for spec, (val, hw) in zip(METRICS, values)]
        if run == TOPLINE_RUN:
            rows += [_agg_row(run, "adhoc", variant, spec, val, hw, RUN_DATE, system=system)
                     for system, vals in TOPLINES.items() for spec, (val, hw) in zip(METRICS, vals)]
        write_rows(root, "aggregate", rows, run_id=run, when=RUN_DATE)
        items = [{"run_id": run, "variant": variant, "benchmark": "demo", "task": "en_tts", "item_id": f"i{i}",
                  "seed": 0, "metric": "wer_pocketsphinx", "value": values[0][0], "scorer": "pocketsphinx_wer",
                  "scorer_version": "1", "audio_path": f"/audio/{run}/i{i}.wav", "system": "model",
                  "timestamp": RUN_DATE}
                 for i in range(3)]
        write_rows(root, "items", items, run_id=run, when=RUN_DATE)
    # Nightly history of the default variant: five nights, the last one regressing on WER.
    for i, (ts, wer) in enumerate(zip(NIGHTLY_DATES, NIGHTLY_WER)):
        run = f"nightly-{ts:%Y%m%d}"
        rows = [_agg_row(run, "nightly", NIGHTLY_VARIANT, METRICS[0], wer, 0.02, ts),
                _agg_row(run, "nightly", NIGHTLY_VARIANT, METRICS[1], 0.74 + 0.01 * i, 0.02, ts)]
        write_rows(root, "aggregate", rows, run_id=run, when=ts)
        base = NIGHTLY_WER[0]
        reg = [{"run_id": run, "baseline_run_id": "nightly-20250301", "benchmark": "demo", "task": "en_tts",
                "metric": "wer_pocketsphinx", "value": wer, "baseline_value": base, "delta": wer - base,
                "threshold": 0.05, "ci_low": wer - 0.02, "ci_high": wer + 0.02, "regressed": wer - base > 0.05,
                "higher_is_better": False, "delta_ci_low": wer - base - 0.02, "delta_ci_high": wer - base + 0.02,
                "rule": "paired-item-bootstrap", "comparable": True, "reason": "", "n_items": 40, "n_pairs": 120,
                "item_set_hash": "f00d", "baseline_item_set_hash": "f00d", "timestamp": ts}]
        write_rows(root, "regression", reg, run_id=run, when=ts)


# Training: run "train-topp" (three stages; stage 1 = four specialists in their own folders) and
# "train-woinit" (stage 3 only). MoE layers 1 and 3, 4 routed + 2 null experts.
MOE_LAYERS = (1, 3)
N_ROUTED, N_NULL = 4, 2
STEPS = (10, 20, 30, 40)
# Fraction of tokens selecting k = 0..3 dynamic experts, per layer (mean experts/token checked in tests).
HIST_SHARE = {1: [0.0, 0.5, 0.5, 0.0], 3: [0.0, 0.25, 0.5, 0.25]}
TOKENS_PER_WINDOW = 400


def _train_row(step: int, stage: int, tasks: tuple[str, ...]) -> dict:
    loss = 8.0 / (1 + 0.05 * step) + stage * 0.1
    row = {"loss": loss, "ce": loss - 0.01, "aux": 0.5, "balance_weight": 0.02, "lr": 1e-4, "grad_norm": 1.0,
           "steps_in_window": 10, "tokens": 1000.0, "target_frames": 500.0, "sequences": 8.0, "tokens_per_s": 100.0,
           "step_seconds": 10.0, "epoch": step / 100, "world_size": 1, "per_codebook": [loss] * 4}
    for i, t in enumerate(TASKS):
        row[f"loss_{t}"] = loss + 0.1 * i if t in tasks else math.nan
        row[f"frames_{t}"] = 100.0 if t in tasks else 0.0
    return row


def _routing(writer: MetricsWriter, step: int, expert_bias: int) -> None:
    hist, sel = [], []
    for layer in MOE_LAYERS:
        for kind in ("dynamic", "routed"):
            for k, share in enumerate(HIST_SHARE[layer]):
                hist.append({"layer": layer, "kind": kind, "num_experts": k, "count": share * TOKENS_PER_WINDOW})
        for ti, task in enumerate(TASKS):
            for e in range(N_ROUTED + N_NULL):
                # Expert e prefers task e % 4: 30 selections from its task, 10 from each other.
                count = 30.0 if (e + expert_bias) % len(TASKS) == ti else 10.0
                sel.append({"layer": layer, "task": task, "expert": e, "is_null": e >= N_ROUTED, "count": count})
    writer.write("routing_hist", step, hist)
    writer.write("routing_tasks", step, sel)


def write_training(ws: Path) -> None:
    train = ws / "train"
    for task in TASKS:
        w = MetricsWriter(train / "train-topp" / "stage1" / task, "train-topp", "unimoe-top-p0.7", 1)
        for s in STEPS:
            w.write("train", s, [_train_row(s, 1, (task,))])
    for stage in (2, 3):
        w = MetricsWriter(train / "train-topp" / f"stage{stage}", "train-topp", "unimoe-top-p0.7", stage)
        for s in STEPS:
            w.write("train", s, [_train_row(s, stage, TASKS)])
            _routing(w, s, 0)
    w = MetricsWriter(train / "train-woinit" / "stage3", "train-woinit", "wo-init", 3)
    for s in STEPS:
        w.write("train", s, [_train_row(s, 3, TASKS)])
        _routing(w, s, 1)


def make_workspace(ws: Path) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    write_results(ws)
    write_training(ws)
    return ws


def mean_experts(layer: int) -> float:
    return sum(k * s for k, s in enumerate(HIST_SHARE[layer]))

