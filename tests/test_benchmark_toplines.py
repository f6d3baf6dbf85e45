"""The benchmark runner's toplines (ground truth + codec resynthesis), ``n_asked``, token NLL in a run,
and scorers that fail on every item (an error that fails the run unless allowed). No Prefect: the
library steps on a tiny demo-layout corpus of synthetic clips and a tiny random-init checkpoint."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf

from evaluation import results as R
from evaluation import runner as RN
from evaluation.bench import generate as generate_step
from bench_fixtures import demo_workspace, run_steps
from evaluation.scorers import base as SB

TEXTS = {"en-a-test": "the quick brown fox jumps over the lazy dog", "en-a-train": "hello world this is a test",
         "en-b-test": "please call stella and ask her to bring these things",
         "en-b-train": "she can scoop these things into three red bags",
         "m-test": "calm piano melody. Tempo: 90 bpm. Key: C major.", "m-train": "fast strings. Tempo: 140 bpm."}


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)))))


class Probe(SB.Scorer):
    """Per-item RMS of the scored clip and of its reference (prompt for speech, real clip for music)."""

    name = "probe_rms"
    metrics = {"probe_rms": "higher", "probe_ref_rms": "higher"}
    calls: list[str] = []

    @property
    def version(self) -> str:
        return "probe 1"

    def score(self, items):
        Probe.calls += [it.id for it in items]
        return [{"probe_rms": _rms(it.wav), "probe_ref_rms": _rms(it.reference) if it.reference is not None else math.nan}
                for it in items]


class Deaf(SB.Scorer):
    """Fails on every item, saying why (NaN + note_failure)."""

    name = "deaf"
    metrics = {"deaf_score": "higher"}

    @property
    def version(self) -> str:
        return "deaf 1"

    def score(self, items):
        for it in items:
            self.note_failure(it.id, "ValueError: cannot hear anything")
        return [{"deaf_score": math.nan} for _ in items]


class Crashing(Deaf):
    """Raises for the whole batch."""

    name = "crashing"
    metrics = {"crash_score": "higher"}

    def score(self, items):
        raise RuntimeError("model exploded")


class Picky(Deaf):
    """Scores speech only for speaker a's items: some items of a task fail, not all."""

    name = "picky"
    metrics = {"picky_score": "higher"}

    def score(self, items):
        out = []
        for it in items:
            if it.id.startswith("en-b"):
                self.note_failure(it.id, "ValueError: not speaker a")
                out.append({"picky_score": math.nan})
            else:
                out.append({"picky_score": 1.0})
        return out


@pytest.fixture(scope="module", autouse=True)
def fake_scorers():
    SB._import_all()
    names = []
    for cls in (Probe, Deaf, Crashing, Picky):
        SB.register(cls.name)(cls)
        names.append(cls.name)
    yield
    for n in names:
        SB._REGISTRY.pop(n, None)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """2 en_tts test items (speakers a, b, each with a train prompt), 1 t2m test item, a tiny checkpoint."""
    return demo_workspace(tmp_path_factory.mktemp("topl") / "ws", TEXTS)


def _cfg(scorers, **kw):
    return RN.BenchConfig(scorers=scorers, seeds=[0, 1], max_seconds=0.1, **kw)


def test_toplines_n_asked_and_token_nll_in_the_tables(ws, monkeypatch):
    Probe.calls.clear()
    s = run_steps(ws, None, _cfg(["probe_rms", "token_nll"]))
    assert s["failed"] == [] and s["skipped"] == []
    root = ws / "results"
    agg = R.read_table(root, "aggregate", run_id=s["run_id"])
    probe = agg[agg["scorer"] == "probe_rms"]
    assert set(zip(probe["task"], probe["system"], probe["metric"])) == {
        (t, sys_, m) for t in ("en_tts", "t2m") for sys_ in R.SYSTEMS for m in ("probe_rms", "probe_ref_rms")}
    asked = {"en_tts": 2, "t2m": 1}
    assert all(r.n_asked == asked[r.task] and r.n == asked[r.task] for r in agg.itertuples())
    assert set(probe.loc[probe["system"] == "model", "seeds"]) == {"0,1"}
    assert set(probe.loc[probe["system"] != "model", "seeds"]) == {"0"}  # the toplines do not depend on the seed
    # token NLL: the model's only, per task and codebook, near ln(vocab) at init
    nll = agg[agg["scorer"] == "token_nll"]
    assert set(nll["system"]) == {"model"} and set(nll["task"]) == {"en_tts", "t2m"}
    assert set(nll["metric"]) == {"token_nll"} | {f"token_nll_cb{k}" for k in range(4)}
    assert all(abs(v - math.log(1027)) < 0.5 for v in nll["value"])
    assert all(math.isfinite(r.ci_low) and r.ci_low <= r.value <= r.ci_high for r in nll[nll["task"] == "en_tts"].itertuples())

    items = R.read_table(root, "items", run_id=s["run_id"])
    gt = items[(items["system"] == "ground_truth") & (items["metric"] == "probe_rms")].set_index("item_id")
    rs = items[(items["system"] == "codec_resynth") & (items["metric"] == "probe_rms")].set_index("item_id")
    corpus = ws / "corpus" / "demo" / "audio"
    for iid in ("en-a-test", "en-b-test", "m-test"):
        x, _ = sf.read(str(corpus / f"{iid}.wav"))
        assert gt.loc[iid, "value"] == pytest.approx(_rms(x), rel=1e-4)  # the ground truth itself was scored
        assert gt.loc[iid, "audio_path"] == str((corpus / f"{iid}.wav").resolve())
        y, sr = sf.read(rs.loc[iid, "audio_path"])
        assert sr == 16000 and rs.loc[iid, "audio_path"].startswith(str(ws / "bench" / "cache" / "resynth"))
        assert rs.loc[iid, "value"] == pytest.approx(_rms(y), rel=1e-3) and len(y) >= len(x)
    # speech is compared with the voice prompt for the ground truth too (the SIM protocol's reference)
    ref = items[(items["system"] == "ground_truth") & (items["metric"] == "probe_ref_rms")].set_index("item_id")
    manifest = {it["id"]: it for it in map(json.loads, (ws / "bench" / s["run_id"] / "manifest.jsonl").read_text().splitlines()[1:])}
    prompt, _ = sf.read(manifest["en-a-test"]["prompt_audio"])
    assert manifest["en-a-test"]["prompt_audio"].endswith("en-a-train.wav")
    assert ref.loc["en-a-test", "value"] == pytest.approx(_rms(prompt), rel=1e-4)
    report = (ws / "bench" / s["run_id"] / "report.md").read_text()
    assert "| en_tts | probe_rms | ground_truth |" in report and "| 2 / 2 |" in report and "ERROR" not in report

    # each ground truth was encoded once for both the resynthesis and token_nll (shared codes cache)
    assert len(list((ws / "bench" / "cache" / "codes").rglob("*.npy"))) == 3
    # a second run of the same set and codec: toplines and their scores come from the cache
    resynth = sorted((ws / "bench" / "cache" / "resynth").rglob("*.wav"))
    mtimes = [p.stat().st_mtime_ns for p in resynth]
    Probe.calls.clear()

    def no_codec(*a, **k):
        raise AssertionError("the codec was built although every resynthesis is cached")

    monkeypatch.setattr(generate_step, "checkpoint_codec", no_codec)
    s2 = run_steps(ws, None, _cfg(["probe_rms"]))
    assert Probe.calls == []
    assert [p.stat().st_mtime_ns for p in sorted((ws / "bench" / "cache" / "resynth").rglob("*.wav"))] == mtimes
    a2 = R.read_table(root, "aggregate", run_id=s2["run_id"]).set_index(["system", "task", "metric"])["value"]
    assert a2.sort_index().equals(probe.set_index(["system", "task", "metric"])["value"].sort_index())
    # toplines can be turned off
    s3 = run_steps(ws, None, _cfg(["probe_rms"], toplines=False))
    assert set(R.read_table(root, "aggregate", run_id=s3["run_id"])["system"]) == {"model"}


def test_scorer_failing_on_every_item_fails_the_run(ws):
    with pytest.raises(RN.ScorersFailed) as e:
        run_steps(ws, None, _cfg(["probe_rms", "deaf", "picky"]))
    msg = str(e.value)
    assert "scorer `deaf` failed on all 2 items of task en_tts (system model)" in msg
    assert "scorer `deaf` failed on all 1 items of task t2m (system ground_truth)" in msg
    assert "ValueError: cannot hear anything" in msg and "--allow-failed-scorers" in msg
    assert "picky" not in msg and "probe_rms" not in msg  # some items scored: not a failure

    s = run_steps(ws, None, _cfg(["probe_rms", "deaf", "picky"]), allow_failed_scorers=True)
    assert {(f["scorer"], f["task"], f["system"]) for f in s["failed"]} == {
        ("deaf", t, sys_) for t in ("en_tts", "t2m") for sys_ in R.SYSTEMS}
    assert all(f["reason"] == "ValueError: cannot hear anything" for f in s["failed"])
    agg = R.read_table(ws / "results", "aggregate", run_id=s["run_id"])
    deaf = agg[agg["scorer"] == "deaf"]
    assert deaf["value"].isna().all() and (deaf["n"] == 0).all()
    assert sorted(set(zip(deaf["task"], deaf["n_asked"]))) == [("en_tts", 2), ("t2m", 1)]
    picky = agg[(agg["scorer"] == "picky") & (agg["task"] == "en_tts")]
    assert set(zip(picky["n"], picky["n_asked"])) == {(1, 2)}
    report = (ws / "bench" / s["run_id"] / "report.md").read_text()
    assert "## ERRORS: scorers that failed on every item" in report
    assert "**ERROR** scorer `deaf` failed on all 2 items of task en_tts (system model)" in report
    assert "| en_tts | deaf_score | model | higher | nan **ERROR** |" in report
    # failed items are never cached: the next run asks the scorer again
    assert not list((ws / "bench" / "cache" / "scores" / "deaf").rglob("*.json"))
    assert list((ws / "bench" / "cache" / "scores" / "picky").rglob("*.json"))


def test_a_scorer_raising_on_every_batch_is_reported_with_its_reason(ws):
    with pytest.raises(RN.ScorersFailed, match=r"scorer `crashing` failed on all 1 items of task t2m \(system model\); "
                                               r"first failure \(item `m-test`\): RuntimeError: model exploded"):
        run_steps(ws, None, _cfg(["crashing"]))
