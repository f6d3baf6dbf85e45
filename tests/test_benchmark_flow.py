"""The benchmark flow end to end: a tiny random-init checkpoint on the small demo benchmark, under
Prefect (a temporary test harness): rows written (model and topline systems), artifacts published, a
cached re-run much faster, a regression against a (better) baseline failing the flow and the CLI, and a
scorer that fails on every item failing them too unless --allow-failed-scorers."""

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
    assert (agg["kind"] == "adhoc").all() and (agg["n_asked"] >= agg["n"]).all()
    # every metric for the model and for the two toplines (the real recordings, their codec resynthesis)
    per_system = agg.groupby("system")[["task", "metric"]].apply(lambda g: set(zip(g["task"], g["metric"])))
    assert set(per_system.index) == {"model", "ground_truth", "codec_resynth"}
    assert per_system["model"] == per_system["ground_truth"] == per_system["codec_resynth"]
    assert (agg.loc[agg["system"] == "model", "seeds"] == "0,1").all()
    assert (agg.loc[agg["system"] != "model", "seeds"] == "0").all()
    items = R.read_table(root, "items", run_id=first["run_id"])
    assert set(items.loc[items["system"] == "model", "seed"]) == {0, 1}
    for p in items.loc[items["system"] == "model", "audio_path"].unique():
        assert p.startswith(str(ws / "bench" / first["run_id"] / "audio")) and (ws / p).is_file()
    for p in items.loc[items["system"] == "codec_resynth", "audio_path"].unique():
        assert p.startswith(str(ws / "bench" / "cache" / "resynth")) and (ws / p).is_file()
    assert first["regression"]["baseline_run_id"] is None and not first["regression"]["regressed"]
    assert first["skipped"] == [] and first["failed"] == []

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
    a1 = agg.set_index(["system", "task", "metric"])["value"]
    a2 = R.read_table(root, "aggregate", run_id=second["run_id"]).set_index(["system", "task", "metric"])["value"]
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


class _Deaf:
    """A scorer that fails on every item, saying why (built lazily: the module imports nothing heavy)."""

    name = "deaf_demo"

    @staticmethod
    def make():
        from evaluation.scorers.base import Scorer

        class Deaf(Scorer):
            name = _Deaf.name
            metrics = {_Deaf.name: "higher"}
            version = "deaf 1"

            def score(self, items):
                for it in items:
                    self.note_failure(it.id, "ValueError: no voice found")
                return [{_Deaf.name: float("nan")} for _ in items]

        return Deaf()


@pytest.fixture
def deaf_scorer():
    from evaluation.scorers import base as SB

    SB._import_all()
    SB.register(_Deaf.name, SB.Scorer)(_Deaf.make)  # builds a Scorer subclass: every task
    yield _Deaf.name
    SB._REGISTRY.pop(_Deaf.name, None)


def test_a_scorer_failing_on_every_item_fails_the_flow_and_the_cli(bench_ws, harness, deaf_scorer):
    from typer.testing import CliRunner

    from evaluation import results as R
    from flows.benchmark import ScorersFailed, benchmark
    from flows.cli import app

    ws, ckpt = bench_ws
    kw = dict(workspace=str(ws), checkpoint=str(ckpt), seeds=[0], max_seconds=0.3, max_items=1, toplines=False)
    with pytest.raises(ScorersFailed, match=r"scorer `deaf_demo` failed on all 1 items of task en_tts \(system model\); "
                                            r"first failure \(item `[^`]+`\): ValueError: no voice found"):
        benchmark(scorers=["dnsmos", deaf_scorer], kind="pipeline", **kw)
    args = ["bench", "--workspace", str(ws), "--checkpoint", str(ckpt), "--seeds", "0", "--max-seconds", "0.3",
            "--max-items", "1", "--no-toplines", "--kind", "pipeline", "--scorers", f"dnsmos,{deaf_scorer}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 3, res.output
    assert "deaf_demo" in res.output and "ValueError: no voice found" in res.output
    res = CliRunner().invoke(app, args + ["--allow-failed-scorers"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{\n"):])
    assert {(f["scorer"], f["system"]) for f in out["failed"]} == {(deaf_scorer, "model")}
    assert "## ERRORS: scorers that failed on every item" in res.output
    agg = R.read_table(ws / "results", "aggregate", run_id=out["run_id"])
    row = agg[(agg["scorer"] == deaf_scorer) & (agg["task"] == "en_tts")].iloc[0]
    assert row["n"] == 0 and row["n_asked"] == 1 and set(agg["system"]) == {"model"}


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
