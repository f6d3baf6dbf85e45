"""The pipeline flow end to end, as an operator runs it: ``unimoe pipeline --small`` in subprocesses
(Prefect's embedded mode, a temporary PREFECT_HOME) with a few training steps and one benchmark item
per task. A cold run writes result rows for the variant; a re-run with nothing changed is served from
the subflows' caches (no curation or training task runs), much faster, with the same aggregates; a
regression fails the run only after every variant was benchmarked."""

import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from test_curate_flow import flow_env

ROOT = Path(__file__).resolve().parents[1]
UNIMOE = [sys.executable, "-m", "flows.cli"]
VARIANT = "unimoe-top-p0.7"
# One item per task, short clips and the two cheapest scorers: the test is about the wiring.
FAST = ["--max-steps", "2", "--batch-size", "2", "--max-items", "1", "--max-seconds", "0.5",
        "--scorers", "dnsmos,music_adherence"]
# Tasks a run with nothing changed still runs: the benchmark records a new run (and checks it), while
# generation and scoring hand back cached outputs.
ALWAYS_RUN = {"bench-prepare", "bench-generate", "bench-record", "bench-regression"}

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg")),
    reason="the demo corpus needs fluidsynth, festival, espeak-ng and ffmpeg (installed by scripts/setup.sh)",
)


def _pipeline(ws: Path, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    out = subprocess.run([*UNIMOE, "pipeline", "--small", "--workspace", str(ws), *FAST, *args], cwd=ROOT,
                         env=flow_env(tmp), capture_output=True, text=True, timeout=900)
    return out, time.perf_counter() - t


def _result(out: subprocess.CompletedProcess) -> dict:
    m = re.search(r"^\{$.*?^\}$", out.stdout, re.M | re.S)
    assert m, out.stdout[-3000:]
    return json.loads(m.group(0))


def _tasks_run(out: subprocess.CompletedProcess) -> set[str]:
    """Names of the task runs that ran (not served from the cache)."""
    log = out.stdout + out.stderr
    return {re.sub(r"-[0-9a-f]{3}$", "", m) for m in
            re.findall(r"Task run '([^']+)' - Finished in state Completed\(\)", log)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    ws = tmp / "ws"
    first, t1 = _pipeline(ws, tmp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again, t2 = _pipeline(ws, tmp)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    print(f"pipeline --small: cold {t1:.1f} s, re-run {t2:.1f} s (wall, incl. Prefect start-up)")
    return tmp, ws, (first, t1), (again, t2)


def test_pipeline_writes_results_for_the_variant(runs):
    from evaluation import results as R

    tmp, ws, (first, _), _ = runs
    res = _result(first)
    run_id = res["benchmark"][VARIANT]["run_id"]
    agg = R.read_table(ws / "results", "aggregate", run_id=run_id)
    assert set(agg["task"]) == {"en_tts", "zh_tts", "t2m", "v2m"}
    assert {"dnsmos_ovrl", "tempo_adherence", "key_adherence"} <= set(agg["metric"])
    assert (agg["variant"] == VARIANT).all() and (agg["kind"] == "pipeline").all()
    # the benchmarked checkpoint is the train subflow's final one
    ckpt = res["train"][VARIANT]["checkpoint"]
    assert (agg["checkpoint"] == ckpt).all() and str(ws / "train") in ckpt
    state = json.loads((Path(ckpt) / "state.json").read_text())
    assert state["step"] == 2
    assert (ws / "curate" / "curated.parquet").is_file()
    assert res["benchmark"][VARIANT]["regression"]["baseline_run_id"] is None  # first run: nothing to compare
    # progress lines, the total time and where the results and the dashboard are
    log = first.stdout + first.stderr
    assert "[pipeline 1/3] curate" in log and "[pipeline 3/3] benchmark" in log
    assert re.search(r"^pipeline done in [0-9.]+ s$", first.stdout, re.M)
    assert f"results: {ws / 'results'}" in first.stdout
    assert f"dashboard: unimoe dashboard --workspace {ws}" in first.stdout


def test_rerun_with_nothing_changed_is_cached_fast_and_identical(runs):
    from evaluation import results as R

    tmp, ws, (first, t1), (again, t2) = runs
    r1, r2 = _result(first), _result(again)
    ran = _tasks_run(again)
    assert ran <= ALWAYS_RUN, ran - ALWAYS_RUN  # no curation, training, generation-model or scorer task
    assert "Cached(type=COMPLETED)" in again.stdout + again.stderr
    assert r2["train"] == r1["train"]
    s1, s2 = r1["seconds"]["total"], r2["seconds"]["total"]
    assert s2 < 0.25 * s1, (s1, s2)   # the flow itself
    assert t2 < 0.5 * t1, (t1, t2)    # the whole command, Prefect's embedded start-up included
    id1, id2 = r1["benchmark"][VARIANT]["run_id"], r2["benchmark"][VARIANT]["run_id"]
    assert id1 != id2 and r2["benchmark"][VARIANT]["regression"]["baseline_run_id"] == id1
    assert not r2["benchmark"][VARIANT]["regression"]["regressed"]
    a1 = R.read_table(ws / "results", "aggregate", run_id=id1).set_index(["task", "metric"])["value"].sort_index()
    a2 = R.read_table(ws / "results", "aggregate", run_id=id2).set_index(["task", "metric"])["value"].sort_index()
    assert len(a1) > 0 and a1.equals(a2)


def test_a_regression_fails_the_pipeline_after_every_variant_is_benchmarked(runs):
    """A baseline much better on one metric: the first variant regresses, the second (another model, compared
    with the same baseline, so it may regress too) is still trained and benchmarked, then the command exits 1
    naming the regressed variants."""
    from evaluation import results as R

    tmp, ws, (first, _), _ = runs
    root = ws / "results"
    base = _result(first)["benchmark"][VARIANT]["run_id"]
    rows = R.read_table(root, "aggregate", run_id=base).drop(columns=["date", "timestamp"]).to_dict("records")
    for r in rows:
        r["run_id"] = "better-baseline"
        if (r["task"], r["metric"]) == ("en_tts", "dnsmos_ovrl"):
            r["value"] += 2.0
    R.write_rows(root, "aggregate", rows, run_id="better-baseline", when=datetime(2000, 1, 1, tzinfo=timezone.utc))

    out, _ = _pipeline(ws, tmp, "--variants", f"{VARIANT},wo-init", "--baseline", "better-baseline")
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    m = re.search(r"pipeline: (\d) of 2 variants regressed \(([^)]*)\)", out.stderr)
    assert m and VARIANT in m.group(2).split(", "), out.stderr[-3000:]
    assert "en_tts/dnsmos_ovrl" in out.stderr
    assert "pipeline REGRESSED in" in out.stdout
    runs_now = R.runs(root, kind="pipeline")
    assert "wo-init" in set(runs_now["variant"])  # benchmarked after the regressed variant
    reg = R.read_table(root, "regression", baseline_run_id="better-baseline")
    flagged = reg[reg["regressed"]]
    assert ("en_tts", "dnsmos_ovrl") in set(zip(flagged["task"], flagged["metric"]))


# A codec of the tiny preset's audio shape (4 x 1024 codes, 50 frames/s), trained for two steps: the
# test is about the wiring (curate to the filter -> codec flow -> tokenise and decode with its export).
TINY_CODEC = {"encoder_dim": 4, "decoder_dim": 16, "n_codebooks": 4, "codebook_size": 1024, "batch_size": 2,
              "segment_seconds": 0.1, "kmeans_batches": 2, "kmeans_iters": 2, "disc_fft_sizes": [256, 128],
              "mel_window_lengths": [64, 256], "mel_n_mels": [10, 40], "save_every": 1, "log_every": 1}


def test_codec_steps_train_the_codec_first_and_everything_downstream_uses_it(runs):
    """``--codec-steps`` in a fresh workspace holding a copy of the module's built corpus (so nothing is
    rebuilt, and there is no earlier run to compare with: the 2-step codec's audio is not the point)."""
    import yaml

    from unimoe.checkpoint import load_checkpoint

    tmp, module_ws, _, _ = runs
    ws = tmp / "ws-codec"
    shutil.copytree(module_ws / "corpus", ws / "corpus")
    cfg = tmp / "codec.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CODEC))
    out, _ = _pipeline(ws, tmp, "--codec-steps", "2", "--codec-config", str(cfg))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = _result(out)
    assert "codec" in result["seconds"]
    export = ws / "codec" / "codec.safetensors"
    prov = json.loads(export.with_suffix(".json").read_text())
    assert prov["steps"] == 2 and prov["config"]["encoder_dim"] == 4
    index = json.loads((ws / "curate" / "tokens" / "index.json").read_text())
    assert index["codec"]["weights_sha256"] == prov["sha256"] and "codec.safetensors" in index["codec_label"]
    _, model_cfg, _ = load_checkpoint(result["train"][VARIANT]["checkpoint"])
    assert (model_cfg.codec.variant, model_cfg.codec.weights_sha256) == ("trained", prov["sha256"])
    assert model_cfg.codec.weights_path == str(export.resolve())
