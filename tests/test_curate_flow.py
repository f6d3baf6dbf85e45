"""The curate flow end to end on the small demo corpus, under Prefect (ephemeral mode), in
subprocesses exactly as an operator runs it: a cold run, a cached re-run, and a run killed with
SIGKILL and started again, whose outputs must equal the uninterrupted run's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from conftest import assert_processes_end

ROOT = Path(__file__).resolve().parents[1]
UNIMOE = [sys.executable, "-m", "flows.cli"]

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg")),
    reason="the demo corpus needs fluidsynth, festival, espeak-ng and ffmpeg (installed by scripts/setup.sh)",
)


def flow_env(tmp: Path) -> dict:
    """The environment of a flow subprocess: offline, a Prefect home of its own under ``tmp``, and none of
    the caller's workspace, Dask scheduler or Prefect server (test_dask_runner, test_pipeline_flow use it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_HOME=str(tmp / "prefect-home"),
               PYTHONUNBUFFERED="1")
    for k in ("UNIMOE_WORKSPACE", "UNIMOE_DASK_ADDRESS", "PREFECT_API_URL"):
        env.pop(k, None)
    return env


def _curate(ws: Path, tmp: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*UNIMOE, "curate", "--small", "--workspace", str(ws)], cwd=ROOT, env=flow_env(tmp),
                          capture_output=True, text=True, timeout=600, **kw)


def _outputs(ws: Path) -> dict[str, bytes]:
    """Every output that must be reproducible (timings in summary.json excluded)."""
    work = ws / "curate"
    files = [work / "curated.parquet", work / "subset.json", work / "warmup.json", *sorted((work / "tokens").glob("*"))]
    return {str(p.relative_to(work)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("curate")
    ws = tmp / "ws"
    first = _curate(ws, tmp)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = _curate(ws, tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    return tmp, ws, first, again


def test_curate_outputs_and_accounting(clean_run):
    tmp, ws, first, _ = clean_run
    work = ws / "curate"
    curated = pq.read_table(work / "curated.parquet").to_pylist()
    segmented = pq.read_table(work / "segmented.parquet").to_pylist()
    # nothing lost: every segmented row ends in exactly one status
    assert sorted(r["id"] for r in curated) == sorted(r["id"] for r in segmented)
    assert {r["status"] for r in curated} <= {"kept", "filtered", "quarantined"}
    assert all(r["reason"] for r in curated if r["status"] != "kept")
    kept = [r for r in curated if r["status"] == "kept"]
    assert {r["task"] for r in kept} == {"en_tts", "zh_tts", "t2m", "v2m"}
    # every kept row was judged by a named scorer, substitutes declared
    for r in kept:
        quality = json.loads(r["meta"])["quality"]
        assert quality["decided_by"], r["id"]
        if r["task"] in ("en_tts", "zh_tts"):
            assert "dnsmos" in quality["decided_by"] and quality["substitute_for"] == ["utmos22_strong"]
        else:
            assert "signal_checks" in quality["decided_by"]
    # music rows carry a machine caption, the original description kept
    for r in kept:
        if r["task"] in ("t2m", "v2m"):
            meta = json.loads(r["meta"])
            assert meta["caption"]["backend"] == "offline" and "description" in meta and r["text"]
    subset = json.loads((work / "subset.json").read_text())["ids"]
    warmup = json.loads((work / "warmup.json").read_text())["ids"]
    assert subset and set(warmup) <= set(subset) <= {r["id"] for r in kept}
    index = json.loads((work / "tokens" / "index.json").read_text())
    # the demo profile tokenises with the shipped demo codec, not a random-init one
    assert index["is_random_init"] is False and "demo-dac.safetensors" in index["codec_label"]
    summary = json.loads((work / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["build-corpus", "ingest", "segment", "caption", "filter",
                                                     "balance", "tokenize"]
    # building the corpus counts no rows (it was logged as "0 rows"); every later step counts its own
    assert summary["steps"][0]["rows"] is None and all(s["rows"] > 0 for s in summary["steps"][1:])
    assert "rows/s" in first.stdout


def test_rerun_with_nothing_changed_is_served_from_cache(clean_run):
    _, _, first, again = clean_run
    log = again.stdout + again.stderr
    ran = [line for line in log.splitlines() if "Finished in state Completed()" in line and "Task run" in line]
    cached = [line for line in log.splitlines() if "Cached(type=COMPLETED)" in line]
    assert cached and ran == [], ran


def test_train_flow_runs_the_curriculum_on_curated_data(clean_run):
    """The train flow on the curate flow's outputs: four specialists, the MoE warm-up, stage 3."""
    tmp, ws, _, _ = clean_run
    out = subprocess.run([*UNIMOE, "train", "--workspace", str(ws), "--max-steps", "2", "--batch-size", "2"],
                         cwd=ROOT, env=flow_env(tmp), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])
    ckpts = result["checkpoints"]
    assert sorted(ckpts["stage1"]) == ["en_tts", "t2m", "v2m", "zh_tts"]
    for path in [*ckpts["stage1"].values(), ckpts["stage2"], ckpts["final"]]:
        state = json.loads((Path(path) / "state.json").read_text())
        assert state["step"] == 2
    assert json.loads((Path(ckpts["stage2"]) / "state.json").read_text())["stage"] == 2
    provenance = json.loads((Path(result["workdir"]) / "stage2" / "provenance.json").read_text())
    assert provenance and (Path(result["workdir"]) / "stage3" / "metrics").is_dir()


def test_train_flow_nproc_2_runs_stages_under_torchrun(clean_run):
    """``unimoe train --nproc 2``: every stage is a 2-process torchrun job (gloo), resumable like the
    in-process path; each stage's loss curve comes from its metrics table."""
    tmp, ws, _, _ = clean_run
    out = subprocess.run([*UNIMOE, "train", "--workspace", str(ws), "--variant", "wo-init", "--max-steps", "2",
                          "--batch-size", "1", "--nproc", "2"],
                         cwd=ROOT, env=flow_env(tmp), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])
    state = json.loads((Path(result["checkpoints"]["final"]) / "state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 2 and state["global_batch"] == 2
    # the stage's loss-curve artifact, as stored by Prefect
    code = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as c:\n"
            "        return {a.key: a.data for a in await c.read_artifacts() if a.key}\n"
            "print(json.dumps(asyncio.run(main())))\n")
    got = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=flow_env(tmp), capture_output=True, text=True,
                         timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    artifacts = json.loads(got.stdout.strip().splitlines()[-1])
    curve = artifacts["loss-wo-init-tiny-stage3"]
    assert "| step | loss | ce | aux | lr |" in curve and "data:image/svg+xml;base64," in curve
    assert "loss-unimoe-top-p0-7-tiny-stage1-v2m" in artifacts  # the in-process run of the test above


def test_experiment_replicate_on_the_small_demo(clean_run):
    """``unimoe experiment replicate`` with a miniature config (2 seeds, a few steps) on the curated small
    demo: tables, report and verdicts written; held-out rows are the corpus's "test" split."""
    tmp, ws, _, _ = clean_run
    out = subprocess.run([*UNIMOE, "experiment", "replicate", "--workspace", str(ws), "--seeds", "0,1",
                          "--stage1-steps", "2", "--stage2-steps", "1", "--stage3-steps", "2", "--joint-steps", "2",
                          "--batch-size", "2", "--max-frames", "40"],
                         cwd=ROOT, env=flow_env(tmp), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = ws / "experiments" / "replicate"
    nll = pq.read_table(root / "nll.parquet").to_pandas()
    assert {"model", "seed", "task", "codebook", "nll"} <= set(nll.columns) and set(nll.seed) == {0, 1}
    assert set(nll.model) == {"specialist", "unify-dense", "unify-moe-top2", "wo-init", "unimoe-top-p0.7"}
    test_ids = {r["id"] for r in pq.read_table(ws / "curate" / "curated.parquet").to_pylist()
                if r["status"] == "kept" and r["split"] == "test"}
    items = pq.read_table(root / "nll_items.parquet").to_pandas()
    assert set(items.item_id) <= test_ids and len(set(items.item_id)) > 0
    claims = json.loads((root / "claims.json").read_text())["claims"]
    assert len(claims) == 3 and all(c["verdict"] in (root / "report.md").read_text() for c in claims)
    assert "[ 20/20]" in out.stdout  # progress, stage 1 shared: 2 seeds x (4 + 6) stage runs


def test_killed_run_resumes_to_identical_outputs(clean_run):
    """Runs last in this file: it moves the clean run's workspace aside and re-runs at the same path
    (manifests and token shards record absolute paths, so outputs compare byte for byte)."""
    tmp, ws, _, _ = clean_run
    expected = _outputs(ws)
    shutil.move(ws, tmp / "ws-clean")
    proc = subprocess.Popen([*UNIMOE, "curate", "--small", "--workspace", str(ws)], cwd=ROOT, env=flow_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Kill mid-flow: once captioning has started (the corpus is built and ingested by then).
    deadline = time.time() + 300
    for line in proc.stdout:
        if "caption-shard" in line or time.time() > deadline:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children)  # the embedded Prefect server
    proc.send_signal(signal.SIGKILL)  # the CLI process alone, as `kill -9 PID` does: its children must follow
    proc.wait()
    assert_processes_end(children)
    assert not (ws / "curate" / "curated.parquet").exists()
    resumed = _curate(ws, tmp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _outputs(ws) == expected


def test_gemini_key_comes_from_a_prefect_secret_block(tmp_path, monkeypatch):
    """The key is resolved inside the task from a Secret block (or the environment), never passed in."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    code = (
        "from prefect.blocks.system import Secret\n"
        "from flows.curate import _gemini_key\n"
        "Secret(value='k-test-123').save('gemini-key', overwrite=True)\n"
        "assert _gemini_key('gemini-key') == 'k-test-123'\n"
        "assert _gemini_key(None) is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=flow_env(tmp_path), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
