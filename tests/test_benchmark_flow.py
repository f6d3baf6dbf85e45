"""The benchmark flow end to end: a tiny random-init checkpoint on the small demo benchmark, under
Prefect (a temporary test harness): rows written, artifacts published, a cached re-run much faster,
and a regression against a (better) baseline failing the flow and the CLI."""

import json
import shutil
import time
from datetime import datetime, timezone

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("fluidsynth", "text2wave", "espeak-ng", "ffmpeg")),
    reason="the demo corpus needs fluidsynth, festival, espeak-ng and ffmpeg (installed by scripts/setup.sh)",
)

SCORERS = ["dnsmos", "music_adherence"]


@pytest.fixture(scope="module")
def bench_ws(tmp_path_factory):
    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from unimoe.checkpoint import save_checkpoint
    from unimoe.config import tiny_preset
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    ws = tmp_path_factory.mktemp("bench") / "ws"
    meta = build_demo_corpus(ws / "corpus" / "demo", DemoCorpusConfig.small(), progress=False)
    texts = [json.loads(line).get("text") or "" for line in meta.read_text().splitlines()]
    cfg = tiny_preset()
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=[t for t in texts if t] * 5)
    torch.manual_seed(0)
    ckpt = save_checkpoint(ws / "train" / "tiny" / "final", UniMoEAudio(cfg), cfg, {"stage": "init", "variant": "tiny-random"},
                           tokenizer=tok)
    return ws, ckpt


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _run(ws, **kw):
    from flows.benchmark import benchmark

    t = time.perf_counter()
    out = benchmark(workspace=str(ws), seeds=[0, 1], scorers=SCORERS, max_seconds=0.3, **kw)
    return out, time.perf_counter() - t


def test_benchmark_flow_end_to_end(bench_ws, harness):
    from evaluation import results as R
    from flows.benchmark import RegressionFound

    ws, ckpt = bench_ws
    first, t1 = _run(ws)  # checkpoint: the newest under <ws>/train
    root = ws / "results"
    agg = R.read_table(root, "aggregate", run_id=first["run_id"])
    assert set(agg["task"]) == {"en_tts", "zh_tts", "t2m", "v2m"}
    assert {"dnsmos_ovrl", "tempo_adherence", "key_adherence"} <= set(agg["metric"])
    assert (agg["checkpoint"] == str(ckpt)).all() and (agg["variant"] == "tiny-random").all()
    assert (agg["seeds"] == "0,1").all() and (agg["kind"] == "adhoc").all()
    items = R.read_table(root, "items", run_id=first["run_id"])
    assert set(items["seed"]) == {0, 1}
    for p in items["audio_path"].unique():
        assert p.startswith(str(ws / "bench" / first["run_id"] / "audio")) and (ws / p).is_file()
    assert first["regression"]["baseline_run_id"] is None and not first["regression"]["regressed"]
    assert first["skipped"] == []

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts()}
    slug = first["run_id"].lower()[:60]
    assert {f"bench-{slug}", f"bench-report-{slug}", f"bench-regression-{slug}"} <= keys

    # nothing changed: a new run reuses generation and scoring (no model or scorer is loaded)
    second, t2 = _run(ws)
    assert second["run_id"] != first["run_id"] and second["regression"]["baseline_run_id"] == first["run_id"]
    assert not second["regression"]["regressed"]
    assert t2 < 0.25 * t1, (t1, t2)
    a1 = agg.set_index(["task", "metric"])["value"]
    a2 = R.read_table(root, "aggregate", run_id=second["run_id"]).set_index(["task", "metric"])["value"]
    assert a1.sort_index().equals(a2.sort_index())

    # a baseline that was much better on one metric: the flow fails with the report
    rows = R.read_table(root, "aggregate", run_id=first["run_id"])
    rows = rows.drop(columns=["date", "timestamp"]).to_dict("records")
    for r in rows:
        r["run_id"] = "better-baseline"
        if (r["task"], r["metric"]) == ("en_tts", "dnsmos_ovrl"):
            r["value"] += 2.0
    R.write_rows(root, "aggregate", rows, run_id="better-baseline", when=datetime(2000, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(RegressionFound, match="en_tts/dnsmos_ovrl"):
        _run(ws, baseline_run="better-baseline")
    reg = R.read_table(root, "regression", baseline_run_id="better-baseline")
    assert reg["regressed"].sum() == 1

    from typer.testing import CliRunner

    from flows.cli import app

    res = CliRunner().invoke(app, ["bench", "--workspace", str(ws), "--checkpoint", str(ckpt), "--seeds", "0,1",
                                   "--scorers", ",".join(SCORERS), "--max-seconds", "0.3", "--baseline", "better-baseline"])
    assert res.exit_code == 1, res.output


def test_benchmark_scorer_tasks_on_a_dask_cluster(bench_ws, harness):
    """Scale-out: the scorer tasks run on a Dask cluster reached by its scheduler address (a LocalCluster
    here; threads, as the harness's server is in this process) and give the same aggregates."""
    from distributed import Client, LocalCluster

    from evaluation import results as R
    from flows.benchmark import benchmark
    from flows.common import task_runner

    ws, ckpt = bench_ws
    # kind "pipeline": no earlier run of that kind here, so the Dask run's baseline is the plain run
    plain = benchmark(workspace=str(ws), checkpoint=str(ckpt), seeds=[0], scorers=SCORERS, max_seconds=0.3,
                      max_items=1, kind="pipeline")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        flow = benchmark.with_options(task_runner=task_runner(cluster.scheduler_address))
        on_dask = flow(workspace=str(ws), checkpoint=str(ckpt), seeds=[0], scorers=SCORERS, max_seconds=0.3,
                       max_items=1, kind="pipeline")
        with Client(cluster.scheduler_address) as client:
            ran = client.run_on_scheduler(lambda dask_scheduler: sorted(
                k for k in dask_scheduler.task_prefixes if "score" in k))
    assert ran, "no scorer task ran on the cluster"
    root = ws / "results"
    a = R.read_table(root, "aggregate", run_id=plain["run_id"]).set_index(["task", "metric"])["value"].sort_index()
    b = R.read_table(root, "aggregate", run_id=on_dask["run_id"]).set_index(["task", "metric"])["value"].sort_index()
    assert len(a) and a.equals(b)
    assert on_dask["regression"]["baseline_run_id"] == plain["run_id"] and not on_dask["regression"]["regressed"]
