"""Multi-machine runs: a Dask worker that shares nothing with the flow process but one folder.

The worker is a separate ``dask worker`` process started in another working directory, with its own HOME,
PREFECT_HOME, TMPDIR and (empty) weights store; it reaches the corpus, the workspace and the codec file
only through the shared folder's absolute path, as a worker on another machine reaches a shared mount,
and reports to a Prefect server (PREFECT_API_URL) as every machine of a multi-machine run does. The flow
starts in the shared folder with relative paths (``--workspace ws-dask``, ``corpus_root: corpus``, a
``codec_weights`` file relative to its weights store), which mean nothing in the worker's working
directory: the flow must resolve them before it hands tasks out.
Right means: the curated statuses and the token shards' tensors equal a thread-pool run's, Prefect's
persisted results lie under the shared workspace, and nothing but Dask's scratch space lands in the
worker's (or the flow's) private folders."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from conftest import assert_processes_end
from test_curate_flow import flow_env

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from curate_scale import build_corpus  # noqa: E402  (procedural 1 s chords + a generic metadata.csv)

DASK = Path(sys.executable).with_name("dask")
PREFECT = Path(sys.executable).with_name("prefect")
DEMO_CODEC = ROOT / "unimoe" / "assets" / "codecs" / "demo-dac.safetensors"

pytestmark = pytest.mark.skipif(not DASK.exists() or not PREFECT.exists(), reason="needs the dask and prefect CLIs")

# 24 one-second music clips in shards of 8: three caption, three filter and three tokenise tasks. Both
# paths are relative: the corpus to the flow's working directory, the codec file to its weights store
# (./weights there); the worker's own store (./weights in its working directory) is empty.
CONFIG = ("corpus: generic\ncorpus_root: corpus\ncodec_weights: codecs/shared-dac.safetensors\nclip_seconds: 1.0\n"
          "rows_per_shard: 8\ntoken_rows_per_shard: 8\nbalance: {by: count, total: 1000}\n")


def private_env(base: Path, tmp: Path, **extra: str) -> dict:
    """``flow_env`` with a HOME, PREFECT_HOME and TMPDIR of its own under ``base`` (and a working folder)."""
    dirs = {k: base / k.lower() for k in ("HOME", "PREFECT_HOME", "TMPDIR")}
    for d in [*dirs.values(), base / "cwd"]:
        d.mkdir(parents=True)
    env = {**flow_env(tmp), **{k: str(d) for k, d in dirs.items()}, "PYTHONPATH": str(ROOT), **extra}
    env.pop("UNIMOE_WEIGHTS", None)
    return env


def start(cmd: list, base: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=base / "cwd", env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def wait_for(ready, what: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, f"{what} did not start in {timeout:.0f} s"
        time.sleep(0.5)


def curate(shared: Path, workspace: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "flows.cli", "curate", "--config", "curate.yaml",
                          "--workspace", workspace], cwd=shared, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout[out.stdout.index("{"):out.stdout.rindex("}") + 1])


def outputs(result: dict) -> tuple[list, dict]:
    """(id, task, status, reason) of every curated row, and every token shard's tensors."""
    rows = sorted((r["id"], r["task"], r["status"], r["reason"]) for r in pq.read_table(result["curated"]).to_pylist())
    shards = sorted(Path(result["tokens"]).glob("*.safetensors"))
    return rows, {p.name: {k: v.tolist() for k, v in load_file(p).items()} for p in shards}


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_curate_config_paths_are_made_absolute_where_the_flow_runs(tmp_path, monkeypatch):
    from data.curate import CurateConfig

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNIMOE_WEIGHTS", "store")
    cfg = CurateConfig(corpus="generic", corpus_root="corpus", codec_weights="codecs/x.safetensors")
    got = cfg.with_absolute_paths()
    assert got.corpus_root == str(tmp_path / "corpus")
    assert got.codec_weights == str(tmp_path / "store" / "codecs" / "x.safetensors")  # relative to the store
    assert got.with_absolute_paths() == got and got.to_dict().keys() == cfg.to_dict().keys()
    builtin = CurateConfig(codec_weights="builtin:codecs/demo-dac.safetensors").with_absolute_paths()
    assert builtin.codec_weights == "builtin:codecs/demo-dac.safetensors" and builtin.corpus_root is None


def test_a_worker_sharing_only_one_folder_gives_the_local_run_outputs(tmp_path):
    import psutil

    shared = tmp_path / "shared"
    build_corpus(shared / "corpus", 24)
    (shared / "weights" / "codecs").mkdir(parents=True)
    shutil.copy(DEMO_CODEC, shared / "weights" / "codecs" / "shared-dac.safetensors")
    (shared / "curate.yaml").write_text(CONFIG)

    # The services every machine reaches: a Prefect server and a Dask scheduler, each with private dirs.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    scheduler_file = tmp_path / "scheduler.json"
    procs = [start([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], tmp_path / "server",
                   private_env(tmp_path / "server", tmp_path), tmp_path / "server.log"),
             start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                    str(scheduler_file)], tmp_path / "scheduler", private_env(tmp_path / "scheduler", tmp_path),
                   tmp_path / "scheduler.log")]
    try:
        wait_for(scheduler_file.exists, "the Dask scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        worker = tmp_path / "worker"
        procs.append(start([str(DASK), "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                            "--name", "elsewhere"], worker, private_env(worker, tmp_path, PREFECT_API_URL=api),
                           tmp_path / "worker.log"))
        wait_for(lambda: "Starting Worker plugin" in (tmp_path / "worker.log").read_text()
                 or "Registered to" in (tmp_path / "worker.log").read_text(), "the Dask worker")
        wait_for(lambda: _healthy(api), "the Prefect server")
        flow = tmp_path / "flow"
        flow_private = private_env(flow, tmp_path, PREFECT_API_URL=api)
        local = curate(shared, "ws-local", flow_private)  # Prefect's thread pool, in the flow process
        remote = curate(shared, "ws-dask", {**flow_private, "UNIMOE_DASK_ADDRESS": address})
    finally:
        alive = [psutil.Process(p.pid) for p in procs if p.poll() is None]
        for p in procs:
            p.terminate()
        assert_processes_end(alive, timeout=60)
    log = (tmp_path / "worker.log").read_text()
    ws = shared / "ws-dask"
    assert remote["curated"] == str(ws / "curate" / "curated.parquet")
    rows, shards = outputs(remote)
    assert (rows, shards) == outputs(local)
    assert {r[2] for r in rows} == {"kept"} and len(rows) == 24 and len(shards) == 3, rows
    for name in ("caption-shard", "filter-shard", "tokenize-shard"):  # every shard task ran on that worker
        assert log.count(f"Task run '{name}") == 3, log[-3000:]
    assert "temporary server" not in log  # it reported to the shared Prefect server
    # Prefect's persisted results, the shard tasks' among them, are in the shared workspace ...
    assert len(files_under(ws / ".prefect-results")) >= 9
    # ... and the worker's (and the flow's) own folders hold nothing but Dask's scratch space
    for base in (worker, flow):
        for folder in ("home", "prefect_home", "tmpdir", "cwd"):
            left = [f for f in files_under(base / folder) if not f.startswith("dask-scratch-space")]
            assert left == [], (base.name, folder, left)


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def test_a_dask_cluster_with_prefect_embedded_is_warned_about(monkeypatch):
    """Embedded Prefect listens on loopback only: a flow sending tasks to a scheduler address without a
    Prefect server says so (workers elsewhere would each start a temporary server); with one, or under the
    thread pool, it says nothing."""
    from types import SimpleNamespace

    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    import flows.common as common

    said: list[str] = []
    log = SimpleNamespace(warning=said.append)
    for runner, api, warned in [(DaskTaskRunner(address="tcp://10.0.0.5:8786"), None, True),
                                (DaskTaskRunner(address="tcp://10.0.0.5:8786"), "http://10.0.0.5:4200/api", False),
                                (ThreadPoolTaskRunner(max_workers=2), None, False)]:
        monkeypatch.setattr(common, "_flow_context", lambda: SimpleNamespace(task_runner=runner))
        said.clear()
        with temporary_settings(updates={PREFECT_API_URL: api}):
            common.check_cluster_reaches_prefect(log)
        assert len(said) == int(warned), (runner, api, said)
    monkeypatch.setattr(common, "_flow_context", lambda: None)  # outside a flow run: nothing to check
    said.clear()
    common.check_cluster_reaches_prefect(log)
    assert said == []
