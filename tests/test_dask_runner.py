"""Scale-out: the curate flow's shard tasks on a real Dask cluster (a ``distributed.LocalCluster``
started here, reached through its scheduler address exactly like a remote one) give the same curated
outputs as Prefect's thread pool. Dask pickles every submitted task even for in-process workers, so
this also proves the tasks and their inputs are picklable."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_curate_flow import flow_env

ROOT = Path(__file__).resolve().parents[1]

needs_demo_tools = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg")),
    reason="the demo corpus needs fluidsynth, festival, espeak-ng and ffmpeg (installed by scripts/setup.sh)",
)

# Runs in one subprocess (one embedded Prefect server start-up for both runs). Small shards, so each
# mapped step is several tasks spread over the cluster's two workers.
SCRIPT = r"""
import json, shutil, sys
from pathlib import Path
from distributed import LocalCluster
from data.curate import CurateConfig
from flows.common import task_runner
from flows.curate import curate

ws = Path(sys.argv[1])
cfg = {**CurateConfig.demo("small").to_dict(), "rows_per_shard": 5, "token_rows_per_shard": 5}

def outputs():
    work = ws / "curate"
    files = [work / "curated.parquet", work / "subset.json", work / "warmup.json", *sorted((work / "tokens").glob("*"))]
    return {str(p.relative_to(work)): p.read_bytes().hex() for p in files if p.is_file()}

threads = curate.with_options(task_runner=task_runner(""))(config=cfg, workspace=str(ws))
expected = outputs()
shutil.move(ws, ws.with_name("ws-threads"))  # same path again: manifests record absolute paths

# In embedded mode (no Prefect server) the workers must be threads; Dask still
# pickles every task it is handed.
with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                  dashboard_address=None) as cluster:
    runner = task_runner(cluster.scheduler_address)
    dask = curate.with_options(task_runner=runner)(config=cfg, workspace=str(ws))
    from distributed import Client
    with Client(cluster.scheduler_address) as client:
        done = client.run_on_scheduler(lambda dask_scheduler: sum(
            sum(p.state_counts.values()) for p in dask_scheduler.task_prefixes.values()))
        per_worker = client.run(lambda dask_worker: len(dask_worker.state.log))
print("RESULT " + json.dumps({"runner": type(runner).__name__, "address": runner.address, "tasks": done,
                              "workers_used": sum(1 for n in per_worker.values() if n),
                              "same": outputs() == expected, "files": sorted(expected),
                              "counts": [threads["status_counts"], dask["status_counts"]]}))
"""


def test_task_runner_choice(monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.common import task_runner

    monkeypatch.delenv("UNIMOE_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner(), ThreadPoolTaskRunner)
    assert task_runner(max_workers=3)._max_workers == 3
    remote = task_runner("tcp://10.1.2.3:8786")
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.1.2.3:8786"
    monkeypatch.setenv("UNIMOE_DASK_ADDRESS", "tcp://10.9.9.9:8786")
    assert task_runner().address == "tcp://10.9.9.9:8786"
    assert isinstance(task_runner(""), ThreadPoolTaskRunner)  # an explicit empty value overrides the env
    local = task_runner("local", max_workers=2)
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["threads_per_worker"] == 1


def test_curate_tasks_are_picklable_for_dask():
    from distributed.protocol.pickle import dumps, loads

    from flows import curate as F
    from flows.common import persisted

    for t in (F.caption_shard, F.filter_shard, F.tokenize_shard, F.build_corpus, F.ingest, F.segment, F.balance):
        clone = loads(dumps(persisted(t, Path("/tmp/ws"))))
        assert clone.name == t.name and clone.fn.__name__ == t.fn.__name__


@needs_demo_tools
def test_curate_on_a_dask_cluster_equals_the_thread_runner(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ws")], cwd=ROOT, env=flow_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.rindex("RESULT ") + 7:].splitlines()[0])
    assert result["runner"] == "DaskTaskRunner" and result["address"].startswith("tcp://"), result
    # 14 rows in shards of 5: 3 caption + 3 filter + >= 2 tokenise tasks ran on the cluster, on both workers
    assert result["tasks"] >= 8 and result["workers_used"] == 2, result
    assert "curated.parquet" in result["files"] and any(f.startswith("tokens/") for f in result["files"])
    assert result["same"], result
    assert result["counts"][0] == result["counts"][1]


GPU_SCRIPT = r"""
import json, sys
from pathlib import Path
from distributed import Scheduler, SpecCluster, Worker, get_worker
from prefect import flow, task
from flows.common import run_cached_map, task_runner

@task
def where(i: int) -> str:
    return get_worker().name

def cluster(with_gpu: bool) -> SpecCluster:
    workers = {"cpu": {"cls": Worker, "options": {"nthreads": 1, "name": "cpu"}}}
    if with_gpu:
        workers["gpu"] = {"cls": Worker, "options": {"nthreads": 1, "name": "gpu", "resources": {"GPU": 1}}}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})

out = {}
for name, with_gpu, resources in [("mixed", True, {"GPU": 1}), ("mixed-free", True, None), ("cpu-only", False, {"GPU": 1})]:
    with cluster(with_gpu) as c:
        @flow(task_runner=task_runner(c.scheduler_address))
        def run(ws: str) -> list:
            return run_cached_map(where, Path(ws), resources=resources, i=list(range(8)))
        out[name] = run(str(Path(sys.argv[1]) / name))
print("RESULT " + json.dumps(out))
"""


def test_gpu_tasks_go_to_gpu_workers_and_never_wait_for_a_missing_one(tmp_path):
    """Tasks that need a worker resource (a GPU scorer's) run only on the worker declaring it in a mixed
    CPU/GPU cluster; without such a worker they still run (on any worker) instead of waiting for ever."""
    out = subprocess.run([sys.executable, "-c", GPU_SCRIPT, str(tmp_path / "ws")], cwd=ROOT, env=flow_env(tmp_path),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.rindex("RESULT ") + 7:].splitlines()[0])
    assert result["mixed"] == ["gpu"] * 8
    assert set(result["mixed-free"]) <= {"cpu", "gpu"} and len(result["mixed-free"]) == 8
    assert result["cpu-only"] == ["cpu"] * 8
    assert "no Dask worker declares {'GPU': 1}; they run on any worker" in out.stdout + out.stderr


def test_scorers_declare_the_resources_their_tasks_need():
    from evaluation.scorers import scorer_class, scorer_resources

    assert scorer_resources(["dnsmos"]) == {}  # ONNX on the CPU: the demo filter needs no GPU
    for name in ("utmos22_strong", "audiobox_aesthetics", "clap"):  # the paper's quality scorers
        assert scorer_class(name).resources == {"GPU": 1}
    assert scorer_resources(["dnsmos", "utmos22_strong", "clap"]) == {"GPU": 1}


def test_filter_resources_come_from_the_scorer_classes_without_loading_a_model(monkeypatch):
    """The filter step's Dask resources are those the quality config's scorer classes declare: the demo
    profile names the paper's GPU scorers (UTMOS, aesthetics, CLAP; a cluster without a GPU worker runs the
    tasks anywhere, as the test above shows), a DNSMOS-only config needs nothing. No scorer is built."""
    import evaluation.scorers.base as scorers_base
    from data.curate import CurateConfig
    from flows.curate import filter_resources

    def no_loading(name, **options):
        raise AssertionError(f"filter_resources built scorer {name!r}")

    monkeypatch.setattr(scorers_base, "load_scorer", no_loading)
    demo = CurateConfig.demo("small")
    assert filter_resources(demo) == {"GPU": 1}
    dnsmos_only = demo.quality.model_copy(update={"speech_paper": ("dnsmos",), "music_paper": ()})
    assert filter_resources(demo.model_copy(update={"quality": dnsmos_only})) == {}
