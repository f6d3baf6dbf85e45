"""prefect.yaml against a real Prefect server: a server on loopback (its own PREFECT_HOME), the process work
pool, ``prefect deploy --all`` from the repository root, a process worker, and the ``benchmark``
deployment triggered through the API on a prepared tiny workspace (random-init tiny checkpoint, small
demo corpus). Checks the deployments (the nightly one with its cron schedule), the flow run's final
state, the Parquet rows it wrote and the artifacts it published. Everything started here is stopped
(whole process groups) at teardown."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
POOL = "unimoe-process"
DEPLOYMENTS = {"curate/curate", "train/train", "benchmark/benchmark", "benchmark/nightly-benchmark",
               "pipeline/pipeline"}
RUN_ID = "e2e-deployment-run"

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg")),
    reason="the demo corpus needs fluidsynth, festival, espeak-ng and ffmpeg (installed by scripts/setup.sh)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, api_url: str | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_HOME=str(home), PYTHONUNBUFFERED="1", PREFECT_WORKER_QUERY_SECONDS="1")
    for k in ("UNIMOE_WORKSPACE", "UNIMOE_DASK_ADDRESS", "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE"):
        env.pop(k, None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:  # the child keeps its own handle
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the process and everything it started (its own session / process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _prepare_workspace(ws: Path) -> Path:
    """The small demo corpus (the demo benchmark's items) and a random-init tiny checkpoint, as in
    tests/test_benchmark_flow.py."""
    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from unimoe.checkpoint import save_checkpoint
    from unimoe.config import tiny_preset
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    meta = build_demo_corpus(ws / "corpus" / "demo", DemoCorpusConfig.small(), progress=False)
    texts = [json.loads(line).get("text") or "" for line in meta.read_text().splitlines()]
    cfg = tiny_preset()
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=[t for t in texts if t] * 5)
    torch.manual_seed(0)
    return save_checkpoint(ws / "train" / "tiny" / "final", UniMoEAudio(cfg), cfg,
                           {"stage": "init", "variant": "tiny-random"}, tokenizer=tok)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server on loopback, the process work pool, the deployments of prefect.yaml and a
    worker; yields (api_url, client env, workspace, checkpoint, logs folder)."""
    import httpx

    tmp = tmp_path_factory.mktemp("deploy")
    home = tmp / "prefect-home"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    procs: list[subprocess.Popen] = []
    try:
        srv = _start([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], _env(home, None),
                     tmp / "server.log")
        procs.append(srv)
        ws = tmp / "ws"
        ckpt = _prepare_workspace(ws)  # while the server migrates its database
        deadline = time.time() + 120
        while True:
            assert srv.poll() is None, "server exited:\n" + _tail(tmp / "server.log")
            try:
                if httpx.get(f"{url}/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert time.time() < deadline, "server not healthy in 120 s:\n" + _tail(tmp / "server.log")
            time.sleep(0.5)
        env = _env(home, url)
        for cmd in ([*PREFECT, "work-pool", "create", POOL, "--type", "process"],
                    [*PREFECT, "--no-prompt", "deploy", "--all"]):
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        procs.append(_start([*PREFECT, "worker", "start", "--pool", POOL, "--type", "process"], env,
                            tmp / "worker.log"))
        yield url, env, ws, ckpt, tmp
    finally:
        for p in reversed(procs):  # the worker (and any flow run it started) before the server
            _stop(p)


def _client(url: str):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api=url)


def test_deploy_all_creates_the_deployments_with_the_nightly_schedule(server):
    url, env, *_ = server
    with _client(url) as c:
        found = {f"{c.read_flow(d.flow_id).name}/{d.name}": d for d in c.read_deployments()}
    assert DEPLOYMENTS <= set(found), sorted(found)
    for name in DEPLOYMENTS:
        d = found[name]
        assert d.work_pool_name == POOL, (name, d.work_pool_name)
        # flow runs start in this checkout (the directory `prefect deploy` ran in)
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}], d.pull_steps
    assert found["curate/curate"].entrypoint == "flows/curate.py:curate"
    assert found["pipeline/pipeline"].entrypoint == "flows/pipeline.py:pipeline"
    nightly = found["benchmark/nightly-benchmark"]
    assert nightly.entrypoint == "flows/benchmark.py:benchmark"
    assert nightly.parameters["kind"] == "nightly"
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 3 * * *", "UTC", True)]
    for name in DEPLOYMENTS - {"benchmark/nightly-benchmark"}:
        assert found[name].schedules == [], name  # only the nightly benchmark runs on a schedule
    # the pipeline deployment exposes the flow's parameters (the UI and the API validate runs against them)
    props = found["pipeline/pipeline"].parameter_openapi_schema["properties"]
    assert {"workspace", "demo_size", "variants", "max_steps", "seeds", "baseline_run", "dask"} <= set(props)


def test_benchmark_deployment_runs_on_the_process_worker(server):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from evaluation import results as R

    url, env, ws, ckpt, tmp = server
    params = dict(workspace=str(ws), checkpoint=str(ckpt), max_items=1, max_seconds=0.3,
                  scorers=["dnsmos", "music_adherence"], run_id=RUN_ID)
    with _client(url) as c:
        dep = c.read_deployment_by_name("benchmark/benchmark")
        run = c.create_flow_run_from_deployment(dep.id, parameters=params)
        deadline = time.time() + 300
        while True:
            fr = c.read_flow_run(run.id)
            if fr.state is not None and fr.state.is_final():
                break
            assert time.time() < deadline, f"flow run still {fr.state} after 300 s:\n{_tail(tmp / 'worker.log')}"
            time.sleep(1)
        assert fr.state.is_completed(), f"{fr.state}:\n{_tail(tmp / 'worker.log')}"
        assert fr.deployment_id == dep.id and fr.parameters["run_id"] == RUN_ID
        artifacts = {a.key: a for a in c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))) if a.key}

    root = ws / "results"
    agg = R.read_table(root, "aggregate", run_id=RUN_ID)
    assert set(agg["task"]) == {"en_tts", "zh_tts", "t2m", "v2m"}
    assert {"dnsmos_ovrl", "tempo_adherence", "key_adherence"} <= set(agg["metric"])
    assert (agg["checkpoint"] == str(ckpt)).all() and (agg["variant"] == "tiny-random").all()
    assert (agg["kind"] == "adhoc").all() and agg["value"].notna().any()
    items = R.read_table(root, "items", run_id=RUN_ID)
    assert len(items) > 0 and set(items["seed"]) == {0}
    assert (ws / "bench" / RUN_ID / "run.json").is_file()

    slug = RUN_ID
    assert {f"bench-{slug}", f"bench-report-{slug}", f"bench-regression-{slug}"} <= set(artifacts), sorted(artifacts)
    table = artifacts[f"bench-{slug}"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {(r["task"], r["metric"]) for r in rows} == set(zip(agg["task"], agg["metric"]))
    assert RUN_ID in artifacts[f"bench-report-{slug}"].data
