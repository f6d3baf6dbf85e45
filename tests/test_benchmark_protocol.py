"""The benchmark protocol of the paper's evaluation: decoding defaults (greedy, 3 seeds) and their knobs on
the CLI, the flow and the deployments; the speech length cap from the target text; WER/MOS on clips from
one predefined voice prompt and SIM on clips from each item's own prompt; and what the result rows record
so that a comparison can be trusted (manifest and reference-set hashes, decoding, scorer protocol,
device, dtype, package versions, ASR transcripts). No Prefect server: the library steps on a tiny
demo-layout corpus of synthetic clips and a tiny random-init checkpoint."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from evaluation import results as R
from evaluation import runner as RN
from bench_fixtures import demo_workspace, run_steps
from evaluation.scorers import base as SB
from evaluation.scorers.transcript import TranscriptScorer

ROOT = Path(__file__).resolve().parents[1]
TEXTS = {"en-a-test": "the quick brown fox jumps over the lazy dog", "en-a-train": "hello world this is a test",
         "en-b-test": "please call stella", "en-b-train": "she can scoop these things into three red bags",
         "m-test": "calm piano melody. Tempo: 90 bpm. Key: C major.", "m-train": "fast strings. Tempo: 140 bpm."}
HEARD = "the quick brown fox"


def _rms(x) -> float:
    return float(np.sqrt(np.mean(np.square(np.asarray(x, dtype=np.float64)))))


class ProbeASR(TranscriptScorer):
    """An ASR error-rate scorer that always hears ``HEARD``; remembers the RMS of each clip it heard."""

    name = "probe_wer"
    metric = "probe_wer"
    language = "en"
    metrics = {"probe_wer": "lower"}
    heard: dict[str, float] = {}

    @property
    def version(self) -> str:
        return "probe-asr 1"

    def info(self):
        return {**super().info(), "crop_seed": 7, "pooling": "none"}

    def recognise(self, item):
        ProbeASR.heard[item.id] = _rms(item.wav)
        return HEARD


class ProbeSim(SB.Scorer):
    """Stands for a speaker-similarity scorer: the RMS of the clip it was given."""

    name = "probe_sim"
    metrics = {"probe_sim": "higher"}
    tasks = RN.SPEECH
    needs_reference = True  # judges the item-prompted clips under the paper's protocol, as speaker similarity

    @property
    def version(self) -> str:
        return "probe-sim 1"

    def score(self, items):
        return [{"probe_sim": _rms(it.wav)} for it in items]


class ProbeSet(SB.SetScorer):
    """A set-level metric against the items' reference recordings (as FAD / KL)."""

    name = "probe_set"
    metrics = {"probe_set_gap": "lower"}
    tasks = RN.MUSIC
    needs_reference = True

    @property
    def version(self) -> str:
        return "probe-set 1"

    def embed(self, items):
        return [np.array([[_rms(it.wav)]], dtype=np.float64) for it in items]

    def compare(self, generated, reference):
        g = np.nanmean(np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in generated]))
        r = np.nanmean(np.concatenate([np.asarray(x, dtype=np.float64).reshape(-1) for x in reference]))
        return {"probe_set_gap": float(abs(g - r))}


@pytest.fixture(scope="module", autouse=True)
def fake_scorers():
    SB._import_all()
    for cls in (ProbeASR, ProbeSim, ProbeSet):
        SB.register(cls.name)(cls)
    yield
    for cls in (ProbeASR, ProbeSim, ProbeSet):
        SB._REGISTRY.pop(cls.name, None)


@pytest.fixture
def spy(monkeypatch):
    """Every generation call: (task, text, prompt_audio, max_frames, greedy, seed) per request."""
    from unimoe.inference import CheckpointGenerator

    calls: list[tuple] = []
    real = CheckpointGenerator.generate

    def generate(self, requests, gen, progress=None):
        calls.extend((r.task, r.text, r.prompt_audio, gen.max_frames, gen.greedy, gen.seed) for r in requests)
        return real(self, requests, gen, progress)

    monkeypatch.setattr(CheckpointGenerator, "generate", generate)
    return calls


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """2 en_tts test items (speakers a, b, each with a train prompt), 1 t2m test item, a tiny checkpoint."""
    return demo_workspace(tmp_path_factory.mktemp("protocol") / "ws", TEXTS)


def _manifest(ws, run_id):
    from evaluation.sets import read_manifest

    return read_manifest(ws / "bench" / run_id / "manifest.jsonl")


# ---- decoding defaults and knobs --------------------------------------------------------------------

PAPER_SETS = ("seedtts-en", "seedtts-zh", "librispeech-test-clean", "aishell3-test", "musiccaps", "v2m-bench")


@pytest.mark.parametrize("name", PAPER_SETS)
def test_paper_benchmarks_default_to_greedy_over_three_seeds_and_the_predefined_prompt(name):
    cfg = RN.BenchConfig(benchmark=name)
    assert cfg.greedy is True and cfg.seeds == [0, 1, 2] and cfg.speech_prompts == "paper"
    assert cfg.generation(0, 100).greedy is True and cfg.decoding_label() == "greedy, guidance official (10 music, 1 speech)"
    assert RN.BenchConfig.from_dict(cfg.to_dict()) == cfg  # the resolved values are what a run records


def test_demo_defaults_are_explicit_and_every_default_can_be_overridden():
    demo = RN.BenchConfig(benchmark="demo")
    assert demo.greedy is False and demo.seeds == [0] and demo.speech_prompts == "item"
    assert demo.decoding_label() == "sampling (temperature 1, top-k 0, top-p 0.95)"
    assert RN.benchmark_defaults("demo") == {"greedy": False, "seeds": [0], "speech_prompts": "item",
                                             "guidance_scale": 0.0}
    mine = RN.BenchConfig(benchmark="seedtts-en", greedy=False, seeds=[4, 5], speech_prompts="item")
    assert (mine.greedy, mine.seeds, mine.speech_prompts) == (False, [4, 5], "item")
    assert mine.to_dict()["greedy"] is False and mine.to_dict()["seeds"] == [4, 5]
    with pytest.raises(ValueError, match="speech_prompts"):
        RN.BenchConfig(speech_prompts="sometimes")
    with pytest.raises(ValueError, match="go together"):
        RN.BenchConfig(voice_prompt_audio="x.wav")


def test_speech_cap_follows_the_target_text_not_a_fixed_ten_seconds():
    cfg = RN.BenchConfig(benchmark="seedtts-en")
    long_en = " ".join(["word"] * 40)  # 199 bytes: ~14 s of ordinary speech, cut by a 10 s cap
    assert cfg.clip_seconds("en_tts", "hi there") == math.ceil(2 + 8 / 7) == 4
    assert cfg.clip_seconds("en_tts", long_en) == math.ceil(2 + 199 / 7) == 31 > 10
    # a CJK character is 3 UTF-8 bytes: 40 characters ~ 9 s of ordinary Mandarin speech
    assert cfg.clip_seconds("zh_tts", "你好" * 20) == math.ceil(2 + 120 / 7) == 20
    assert cfg.clip_seconds("en_tts", "a" * 10) < cfg.clip_seconds("en_tts", "a" * 100)
    assert cfg.clip_seconds("t2m", long_en) == cfg.clip_seconds("v2m", None) == 10.0  # music: the clip length
    assert RN.BenchConfig(max_seconds=3).clip_seconds("en_tts", long_en) == 3.0  # an explicit ceiling


def test_generation_caps_each_clip_from_its_text(ws, spy):
    cfg = RN.BenchConfig(benchmark="demo", scorers=["probe_sim"], seeds=[0], toplines=False, speech_bytes_per_second=20,
                         speech_pad_seconds=0.1, music_seconds=0.3)
    s = run_steps(ws, None, cfg)
    frame_rate = 50.0  # the tiny preset's codec
    caps = {text: frames for _, text, _, frames, _, _ in spy}
    for it in _manifest(ws, s["run_id"]).items:
        assert caps[it.text] == int(cfg.clip_seconds(it.task, it.text) * frame_rate), it.id
    long, short = TEXTS["en-a-test"], TEXTS["en-b-test"]
    assert caps[long] > caps[short]


def test_greedy_generates_one_clip_for_every_seed_sampling_one_per_seed(ws, spy):
    kw = dict(benchmark="demo", scorers=["probe_sim"], toplines=False, max_seconds=0.12)
    s = run_steps(ws, None, RN.BenchConfig(greedy=True, seeds=[0, 1, 2], **kw))
    n_items = len(_manifest(ws, s["run_id"]).items)
    assert len(spy) == n_items and all(greedy for *_, greedy, _ in spy)
    items = R.read_table(ws / "results", "items", run_id=s["run_id"])
    assert set(items["seed"]) == {0, 1, 2}
    per_item = items.groupby("item_id")["value"].nunique()
    assert (per_item == 1).all()  # the same clip under every seed
    spy.clear()
    run_steps(ws, None, RN.BenchConfig(greedy=False, seeds=[0, 1], **kw))
    assert len(spy) == 2 * n_items and {seed for *_, seed in spy} == {0, 1}


def test_cli_exposes_greedy_sampling_seeds_and_speech_prompts(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import flows.benchmark as FB
    from flows.cli import app

    got = []
    report = tmp_path / "report.md"
    report.write_text("report\n")

    def fake_flow(**kw):
        got.append(kw)
        return {"run_id": "r", "results": "x", "skipped": [], "failed": [], "regression": {}, "report": str(report)}

    monkeypatch.setattr(FB, "benchmark", fake_flow)
    runner = CliRunner()
    ok = runner.invoke(app, ["bench", "--benchmark", "seedtts-en", "--sampling", "--seeds", "3,4",
                             "--speech-prompts", "item"])
    assert ok.exit_code == 0, ok.output
    assert got[-1]["greedy"] is False and got[-1]["seeds"] == [3, 4] and got[-1]["speech_prompts"] == "item"
    assert runner.invoke(app, ["bench", "--greedy"]).exit_code == 0 and got[-1]["greedy"] is True
    assert runner.invoke(app, ["bench"]).exit_code == 0
    assert got[-1]["greedy"] is None and got[-1]["seeds"] is None and got[-1]["speech_prompts"] is None
    bad = runner.invoke(app, ["bench", "--speech-prompts", "sometimes"])
    assert bad.exit_code == 2 and "speech-prompts" in bad.output


def test_flow_and_deployments_expose_decoding():
    from flows.benchmark import benchmark

    params = inspect.signature(benchmark.fn).parameters
    assert params["greedy"].default is None and params["seeds"].default is None
    assert params["speech_prompts"].default is None
    deployments = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for name in ("benchmark", "nightly-benchmark"):
        assert set(deployments[name]["parameters"]) <= set(params), name
        assert {"greedy", "seeds", "speech_prompts"} <= set(deployments[name]["parameters"]), name
    nightly = deployments["nightly-benchmark"]["parameters"]
    assert nightly["greedy"] is False and nightly["seeds"] == [0, 1, 2] and nightly["speech_prompts"] == "item"


# ---- voice prompts -------------------------------------------------------------------------------------

def test_paper_protocol_wer_on_the_predefined_prompt_sim_on_the_items_own(ws, spy):
    cfg = RN.BenchConfig(benchmark="demo", speech_prompts="paper", greedy=True, seeds=[0, 1],
                         scorers=["probe_wer", "probe_sim"], toplines=False, max_seconds=0.1)
    ProbeASR.heard.clear()
    s = run_steps(ws, None, cfg)
    run_dir = ws / "bench" / s["run_id"]
    rec = json.loads((run_dir / "run.json").read_text())
    vp = rec["voice_prompts"]["en_tts"]
    speech = [it for it in _manifest(ws, s["run_id"]).items if it.task == "en_tts"]
    own = {it.prompt_audio for it in speech}
    assert vp["audio"] in own and vp["sha256"] == RN.file_hash(vp["audio"])
    # two generations per speech item (greedy: once for both seeds; one where the item's own prompt IS the
    # predefined one: same conditioning, same clip), one per music item
    asked = sorted((text, prompt) for task, text, prompt, *_ in spy if task == "en_tts")
    assert asked == sorted({(it.text, it.prompt_audio) for it in speech} | {(it.text, vp["audio"]) for it in speech})
    assert len(asked) == 2 * len(speech) - sum(it.prompt_audio == vp["audio"] for it in speech) == 3
    assert len([c for c in spy if c[0] == "t2m"]) == 1

    items = R.read_table(ws / "results", "items", run_id=s["run_id"])
    wer = items[items["metric"] == "probe_wer"]
    sim = items[items["metric"] == "probe_sim"]
    assert set(wer["voice_prompt"]) == {"fixed"} and set(sim["voice_prompt"]) == {"item"}
    for r in wer.itertuples():
        assert r.audio_path == str(run_dir / "audio" / str(r.seed) / "fixed-prompt" / f"{r.item_id}.wav")
    for r in sim.itertuples():
        assert r.audio_path == str(run_dir / "audio" / str(r.seed) / f"{r.item_id}.wav")
        assert r.value == pytest.approx(_rms(sf.read(r.audio_path)[0]), rel=1e-4)  # SIM judged the item-prompted clip
    fixed_rms = {i.split(" ")[0]: v for i, v in ProbeASR.heard.items()}
    for r in wer[wer["seed"] == 0].itertuples():
        assert fixed_rms[r.item_id] == pytest.approx(_rms(sf.read(r.audio_path)[0]), rel=1e-4)  # WER the fixed one
    agg = R.read_table(ws / "results", "aggregate", run_id=s["run_id"]).set_index("metric")
    assert agg.loc["probe_wer", "voice_prompt"] == "fixed" and agg.loc["probe_sim", "voice_prompt"] == "item"
    report = (run_dir / "report.md").read_text()
    assert "predefined voice prompt" in report and Path(vp["audio"]).name in report
    # both clips are cached: a second run generates nothing
    spy.clear()
    run_steps(ws, None, cfg)
    assert spy == []


def test_predefined_prompt_is_the_same_for_any_subset_and_can_be_given(ws):
    cfg = RN.BenchConfig(benchmark="demo", speech_prompts="paper", toplines=False)
    full = RN.prepare(ws, None, cfg)
    one = RN.prepare(ws, None, RN.BenchConfig(benchmark="demo", speech_prompts="paper", toplines=False, max_items=1))
    assert full["voice_prompts"] == one["voice_prompts"] and full["voice_prompts"]["en_tts"]["source"].startswith(
        "the voice prompt of item")
    assert _manifest(ws, full["run_id"]).info["voice_prompts"] == full["voice_prompts"]
    chosen = Path(full["voice_prompts"]["en_tts"]["audio"]).stem
    other = "en-a-train" if chosen == "en-b-train" else "en-b-train"
    given = str(ws / "corpus" / "demo" / "audio" / f"{other}.wav")
    mine = RN.prepare(ws, None, RN.BenchConfig(benchmark="demo", speech_prompts="paper", voice_prompt_audio=given,
                                               voice_prompt_text=TEXTS[other]))
    assert mine["voice_prompts"]["en_tts"] == {"audio": given, "text": TEXTS[other],
                                               "sha256": RN.file_hash(given), "source": "config"}
    assert mine["manifest_hash"] != full["manifest_hash"]  # another voice, another benchmark
    assert RN.prepare(ws, None, RN.BenchConfig(benchmark="demo"))["voice_prompts"] == {}


# ---- what the rows record ---------------------------------------------------------------------------------

def test_result_rows_record_what_a_comparison_needs(ws, spy):
    cfg = RN.BenchConfig(benchmark="demo", scorers=["probe_wer", "probe_set"], seeds=[0], max_seconds=0.14)
    ProbeASR.heard.clear()
    s = run_steps(ws, None, cfg)
    rec = json.loads((ws / "bench" / s["run_id"] / "run.json").read_text())
    manifest = _manifest(ws, s["run_id"])
    root = ws / "results"
    agg = R.read_table(root, "aggregate", run_id=s["run_id"])
    assert set(agg["scorer"]) == {"probe_wer", "probe_set"}
    # the manifest hash: the items and their files' content, not their paths
    assert rec["manifest_hash"] == RN.manifest_hash(manifest.items, rec["voice_prompts"])
    assert set(agg["manifest_hash"]) == {rec["manifest_hash"]}
    edited = [type(it)(**{**it.to_dict(), "text": it.text + "!"}) if it.id == "en-a-test" else it
              for it in manifest.items]
    assert RN.manifest_hash(edited) != rec["manifest_hash"]
    # items asked vs scored
    assert agg["n_asked"].notna().all() and (agg["n_asked"] >= agg["n"]).all()
    model, tops = agg[agg["system"] == "model"], agg[agg["system"] != "model"]
    assert set(model["decoding"]) == {"sampling (temperature 1, top-k 0, top-p 0.95)"} and tops["decoding"].isna().all()
    assert set(model["device"]) == {"cpu"} and set(model["dtype"]) == {"float32"}
    packages = json.loads(agg["packages"].iloc[0])
    assert {"python", "torch", "numpy"} <= set(packages) and packages["torch"] == torch.__version__
    protocol = json.loads(agg.loc[agg["scorer"] == "probe_wer", "scorer_protocol"].iloc[0])
    assert protocol["crop_seed"] == 7 and protocol["pooling"] == "none" and protocol["scorer"] == "probe_wer"
    # the reference set of the set-level metric: its items' reference recordings (id + file SHA-256)
    (m_test,) = [it for it in manifest.items if it.task == "t2m"]
    refs = [[m_test.id, hashlib.sha256(Path(m_test.reference_audio).read_bytes()).hexdigest()]]
    expected = hashlib.sha256(json.dumps(refs, sort_keys=True).encode()).hexdigest()[:16]
    assert set(agg.loc[agg["scorer"] == "probe_set", "reference_hash"]) == {expected}
    assert agg.loc[agg["scorer"] == "probe_wer", "reference_hash"].isna().all()
    # per-item ASR transcripts
    items = R.read_table(root, "items", run_id=s["run_id"])
    asr = items[items["scorer"] == "probe_wer"]
    assert not asr.empty and set(asr["transcript"]) == {HEARD}
    assert ProbeASR.heard  # the recogniser was asked
    # cached transcripts come back without asking the recogniser again
    ProbeASR.heard.clear()
    s2 = run_steps(ws, None, cfg)
    assert ProbeASR.heard == {}
    again = R.read_table(root, "items", run_id=s2["run_id"])
    assert set(again.loc[again["scorer"] == "probe_wer", "transcript"]) == {HEARD}
    # nothing from the environment in a row
    assert not any("HF_HUB_OFFLINE" in str(v) for v in agg.astype(str).to_numpy().ravel())


def test_paper_benchmarks_use_the_official_guidance_the_demo_none():
    paper = RN.BenchConfig(benchmark="musiccaps")
    assert paper.guidance_scale == RN.OFFICIAL_GUIDANCE and paper.generation(0, 100).guidance_scale is None
    assert "guidance official" in paper.decoding_label()
    demo = RN.BenchConfig(benchmark="demo")
    assert demo.guidance_scale == 0.0 and demo.generation(0, 100).guidance_scale == 0.0
    assert RN.BenchConfig(benchmark="musiccaps", guidance_scale=3).generation(0, 100).guidance_scale == 3.0
