"""Power of the regression gate (evaluation/regression.py): its false-alarm rate on null pairs and its
detection rate on injected regressions. Prints ONE JSON object (progress goes to stderr).

    .venv/bin/python benchmarks/regression_power.py --small [--workspace DIR] [--seeds N] [--per-run K]
        [--pairs P] [--max-steps N] [--noise 0.05,0.2,0.5] [--zero-codebook C] [--keep]

Targets: false alarms <= 5% over >= 20 null pairs; detection >= 90% for the earlier checkpoint.

What is done, exactly
---------------------
1. Workspace (``--workspace``, default a temporary folder): the offline demo corpus built by the project's
   own builder (``data.demo_corpus``, the ``small`` settings with more sentences, ``test_fraction`` 0.5 and
   no video, so each task has enough held-out items to pair), a byte-level BPE tokenizer on its texts, and
   one training run of the tiny preset (``unimoe.training.curriculum.train_joint``, the joint stage from
   random init, on the corpus's TRAIN split encoded with the model's codec; a raised learning rate so a
   few dozen CPU steps move the model). It checkpoints every ``--early-step`` steps: the last checkpoint
   is the "current" model, ``step-<early-step>`` is "an earlier checkpoint of the same training".
   The codec is the tiny preset's: the shipped demo codec (``unimoe/assets/codecs/demo-dac.safetensors``),
   so the token NLL is measured on real codes; the generated audio is still that of a barely trained
   language model.
2. Benchmark items: the demo benchmark set (``evaluation.sets.load_benchmark("demo", ws)``: the TEST split,
   voice prompts = other train utterances of the speaker), at most ``--max-items`` per task (en_tts,
   zh_tts, t2m). Voice-prompt codes are encoded once per item and cut to ``--prompt-seconds`` (the
   random codec makes long prompts the dominant generation cost on a CPU; scoring still uses the whole
   prompt recording as the speaker reference).
3. Per-item scores are produced ONCE per condition and generation seed: ``--seeds`` generation seeds
   (sampling, top-p 0.95, ``--max-seconds`` per clip) for each condition, generated exactly as
   ``CheckpointGenerator.generate`` does (seeded per batch, batches of ``--batch-size`` per task) and
   scored with the demo benchmark's scorers through ``evaluation.runner.score`` (its caches included):
   pocketsphinx WER + corpus WER (en), Resemblyzer SIM (en, zh), tempo/key adherence (t2m) and
   ``token_nll`` (the condition's checkpoint's teacher-forced NLL on each item's real recording:
   seed-independent, so identical on both sides of a null pair); the default profile adds DNSMOS, which
   ``--small`` leaves out because it costs seconds per clip on a loaded 2-core machine (``--scorers``).
   A scorer that cannot run is listed under ``setup.skipped_scorers`` and the study goes on without it.
   Conditions:
     - ``current``: the last checkpoint;
     - ``earlier_checkpoint``: ``step-<early-step>`` of the same training;
     - ``weight_noise`` at each ``--noise`` scale s: the current weights plus Gaussian noise of standard
       deviation s * RMS(tensor) on every parameter tensor (fixed RNG; saved as a checkpoint for token_nll);
     - ``codebook_zeroed``: the current model's generated codes with codebook ``--zero-codebook`` set to 0
       before decoding (same codes otherwise: the injected damage is only that codebook).
4. Pairs are formed by RESAMPLING SEEDS, not by generating again: a "run" is a condition with K of the S
   generation seeds (``--per-run``), relabelled 0..K-1 as a nightly run's seeds would be; its aggregate
   rows are computed with ``evaluation.aggregate.aggregate_items`` (as ``evaluation.runner.record`` does).
   Pair i draws two DISJOINT K-subsets A_i, B_i of the S seeds (fixed RNG; distinct ordered pairs):
     - null pair i:       baseline = current on A_i,  candidate = current on B_i
       (the same checkpoint, different generation randomness: a nightly must not fail on this);
     - injected pair i:   baseline = current on A_i,  candidate = <injected condition> on B_i
       (the same seed splits as the null pairs, so detection is measured against the same noise).
   The pairs reuse the S seeds, so they are NOT independent draws: with S seeds there are only
   C(S, K) * C(S - K, K) ordered splits, and the rates' uncertainty is larger than a binomial on the pair
   count suggests. Different seeds on the two sides is the stress case: the generation RNG is seeded per
   batch, so a seed's draw is shared by every item (and task) of a run, and the gate's item bootstrap,
   which treats seeds as fixed, does not see that seed-level variance. A nightly that keeps its seeds
   (0,1,2) shares those draws with its baseline, so the paired difference cancels them; here they do not
   cancel, which shows up as false alarms on metrics with a strong seed effect (DNSMOS: measured seed-level
   F ratios of about 3 and 0.95 correlation of seed means between en_tts and zh_tts).
   Each pair is decided by ``evaluation.regression.compare_frames`` -- the exact code the
   benchmark flow's ``compare_runs`` runs -- with the reviewed thresholds (configs/regression_thresholds.yaml).
   A pair "fails the gate" when ANY metric regresses (a missing or all-NaN metric included).
5. ``false_alarm_rate`` = failed null pairs / null pairs; ``detection_rate[kind]`` = failed injected pairs /
   pairs (per noise scale for ``weight_noise``). ``*_audio_metrics``: the same decisions counting only the
   metrics of the generated audio (token_nll left out), to show what the audio scorers alone catch. Also
   reported: how often each metric fired, the rules used, comparability flags, timings and the set-up.

``--small`` is the quick profile (minutes on 2 CPU cores); without it the defaults are larger (more items,
seeds, steps and longer clips; tens of minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("en_tts", "zh_tts", "t2m")
# The demo benchmark's scorers (evaluation.runner.DEFAULT_SCORERS["demo"]) and the tasks each applies to.
SCORER_TASKS = {"pocketsphinx_wer": ("en_tts",), "resemblyzer_sim": ("en_tts", "zh_tts"), "dnsmos": ("en_tts", "zh_tts"),
                "music_adherence": ("t2m",), "token_nll": TASKS}
PROFILES: dict[str, dict[str, Any]] = {
    # DNSMOS is left out of --small: it costs seconds per clip on a loaded 2-core machine (--scorers adds it)
    "small": dict(en_sentences=24, zh_sentences=24, music_scores=3, max_items=6, seeds=5, per_run=2, pairs=24,
                  max_steps=40, early_step=10, train_frames=150, lr=2e-3, batch_size=8, max_seconds=0.5,
                  prompt_seconds=1.0, noise="0.05,0.2,0.5", zero_codebook=0,
                  scorers="pocketsphinx_wer,resemblyzer_sim,music_adherence,token_nll"),
    "default": dict(en_sentences=60, zh_sentences=60, music_scores=8, max_items=20, seeds=8, per_run=3, pairs=40,
                    max_steps=200, early_step=50, train_frames=250, lr=2e-3, batch_size=8, max_seconds=1.5,
                    prompt_seconds=2.0, noise="0.02,0.05,0.1,0.2,0.5", zero_codebook=0,
                    scorers="pocketsphinx_wer,resemblyzer_sim,dnsmos,music_adherence,token_nll"),
}
TARGET_FALSE_ALARM, TARGET_DETECTION = 0.05, 0.90
MODEL_METRIC_PREFIX = "token_nll"  # metrics of the checkpoint itself, not of the generated audio


def log(msg: str) -> None:
    print(f"[regression_power] {msg}", file=sys.stderr, flush=True)


# ---- 1. workspace: corpus, tokenizer, one training run with an earlier checkpoint ---------------------------

@dataclasses.dataclass
class TrainItem:
    id: str
    task: str
    codes: Any
    text: str | None = None
    split: str | None = "train"


def build_workspace(ws: Path, a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from unimoe.common.audio import load_audio, to_mono
    from unimoe.codec import AudioCodec
    from unimoe.config import tiny_preset
    from unimoe.tokenizer import TextTokenizer
    from unimoe.training.curriculum import step_overrides, train_joint

    corpus = DemoCorpusConfig.small(n_en_sentences=a.en_sentences, n_zh_sentences=a.zh_sentences,
                                    n_music_scores=a.music_scores, n_video=0, test_fraction=0.5)
    meta = build_demo_corpus(ws / "corpus" / "demo", corpus, progress=False)
    rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
    cfg = tiny_preset()
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=[r["text"] for r in rows if r.get("text")] * 5)
    workdir = ws / "train" / "power"
    final = workdir / "final"
    if not (final / "state.json").is_file():
        codec = AudioCodec.from_model_config(cfg)
        items = []
        for r in rows:
            if r.get("split") != "train" or r["task"] not in TASKS:
                continue
            wav, sr = load_audio(meta.parent / r["audio"])
            codes = codec.encode([to_mono(wav)], sr)[0][:, : a.train_frames]
            items.append(TrainItem(id=r["id"], task=r["task"], codes=codes, text=r.get("text")))
        log(f"training the tiny preset for {a.max_steps} steps on {len(items)} train items "
            f"({dict(Counter(i.task for i in items))})")
        overrides = {**step_overrides(a.max_steps, a.batch_size), "checkpoint_every": a.early_step, "keep_last": 0,
                     "lr": a.lr, "max_frames": a.train_frames}
        torch.manual_seed(0)
        ckpt = train_joint(cfg, None, items, tok, workdir / "stage", subset_ids=[i.id for i in items],
                           run_id="power", variant="power-tiny", stage="joint", train_overrides=overrides)
        import shutil

        shutil.copytree(ckpt, final)
    early = workdir / "stage" / "checkpoints" / f"step-{a.early_step:06d}"
    if not (early / "state.json").is_file():
        raise FileNotFoundError(f"no earlier checkpoint {early}")
    return {"final": final, "early": early, "corpus_rows": len(rows)}


# ---- 2./3. generation and scoring of every condition ---------------------------------------------------------

def benchmark_items(ws: Path, max_items: int) -> list:
    from evaluation.sets import load_benchmark

    bset = load_benchmark("demo", ws)
    out, per = [], Counter()
    for it in sorted(bset.items, key=lambda it: (it.task, it.id)):
        if it.task in TASKS and per[it.task] < max_items:
            per[it.task] += 1
            out.append(it)
    return out


def perturbed_state(model, scale: float, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, p in model.state_dict().items():
        if p.is_floating_point():
            rms = p.float().pow(2).mean().sqrt()
            p = p + scale * rms * torch.randn(p.shape, generator=g, dtype=p.dtype)
        state[name] = p
    return state


def generate_all(gen, model, items, examples, seeds, a) -> dict[tuple[str, int], Any]:
    """(item id, seed) -> codes [K, T], generated as CheckpointGenerator.generate does."""
    import torch

    from unimoe.generation import generate

    out = {}
    for seed in seeds:
        cfg = _gen_config(gen, seed, a)
        for task in TASKS:
            todo = [it for it in items if it.task == task]
            for s in range(0, len(todo), a.batch_size):
                batch = todo[s:s + a.batch_size]
                torch.manual_seed(cfg.seed)
                codes = generate(model, gen.builder, [examples[it.id] for it in batch], cfg)
                for it, c in zip(batch, codes):
                    out[(it.id, seed)] = c
    return out


def _gen_config(gen, seed: int, a):
    from evaluation.runner import BenchConfig

    return BenchConfig(benchmark="demo", seeds=[seed], max_seconds=a.max_seconds).generation(
        seed, gen.frames_for(a.max_seconds))


def save_perturbed(gen, final: Path, out: Path) -> Path:
    """The generator's (perturbed) weights as a checkpoint (the model scorer token_nll reads checkpoints)."""
    from unimoe.checkpoint import read_state, save_checkpoint

    state = {k: v for k, v in read_state(final).items() if k not in ("format", "weights_sha256", "config_hash")}
    return save_checkpoint(out, gen.model, gen.cfg, state, tokenizer=gen.tokenizer)


def score_condition(name: str, gen, items, codes: dict, ws: Path, scorers: list[str], checkpoint: Path,
                    zero_codebook: int | None = None, skipped: dict | None = None):
    """Decode, write the clips, score them with the demo scorers (evaluation.runner.score, cached);
    ``checkpoint``: the condition's weights, for the model scorer token_nll."""
    import pandas as pd

    from evaluation import runner as RN
    from unimoe.common.audio import save_wav

    by_id = {it.id: it for it in items}
    keys = sorted(codes)
    decoded = []
    for k in keys:
        c = codes[k].clone()
        if zero_codebook is not None:
            c[zero_codebook] = 0
        decoded.append(c)
    wavs = gen.codec.decode(decoded)
    rows = []
    for (item_id, seed), wav in zip(keys, wavs):
        path = ws / "power" / name / str(seed) / f"{RN.safe_name(item_id)}.wav"
        save_wav(path, wav, gen.sample_rate)
        rows.append({"item": by_id[item_id].to_dict(), "seed": int(seed), "audio": str(path),
                     "audio_sha256": RN.file_hash(path)})
    index = ws / "power" / name / "outputs.jsonl"
    index.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    frames, meta = [], {}
    for scorer in scorers:
        tasks = [t for t in SCORER_TASKS[scorer] if t in TASKS]
        kw = {"checkpoint": str(checkpoint)} if scorer == "token_nll" else {}
        try:
            res = RN.score(str(index), scorer, tasks, str(RN.bench_dir(ws) / "cache"),
                           str(ws / "power" / name / "scored"), progress=False, **kw)
        except Exception as e:  # noqa: BLE001  (a scorer that breaks is reported, the others still count)
            res = {"status": "error", "reason": f"{type(e).__name__}: {e}"}
        if res["status"] != "ok":
            log(f"{name}: scorer {scorer} skipped: {res['reason']}")
            if skipped is not None:
                skipped.setdefault(scorer, res["reason"][:300])
            continue
        frames.append(pd.read_parquet(res["items"]))
        meta[scorer] = res["directions"]
    return pd.concat(frames, ignore_index=True), meta


# ---- 4. pairs by resampling seeds --------------------------------------------------------------------------

def pseudo_run(scores, seeds: tuple[int, ...], directions: dict[str, dict[str, bool]]):
    """The items and aggregate rows a run with these generation seeds (relabelled 0..K-1) would record."""
    import pandas as pd

    from evaluation import aggregate as A

    relabel = {s: i for i, s in enumerate(sorted(seeds))}
    items = scores[scores["seed"].isin(list(relabel))].copy()
    items["seed"] = items["seed"].map(relabel).astype(int)
    items["benchmark"] = "demo"
    agg = []
    for (scorer, task), sub in items.groupby(["scorer", "task"]):
        agg += A.aggregate_items(sub, directions[scorer], n_boot=200)
    agg = pd.DataFrame(agg)
    agg["benchmark"], agg["config_hash"], agg["kind"] = "demo", "power-study", "nightly"
    return agg, items


def seed_pairs(n_seeds: int, k: int, n_pairs: int, seed: int = 0) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    import numpy as np

    every = [(a, b) for a in itertools.combinations(range(n_seeds), k)
             for b in itertools.combinations(range(n_seeds), k) if not set(a) & set(b)]
    if len(every) < n_pairs:
        raise SystemExit(f"only {len(every)} disjoint ordered seed splits of {n_seeds} seeds into runs of {k}; "
                         f"ask for fewer --pairs or more --seeds")
    pick = np.random.default_rng(seed).choice(len(every), size=n_pairs, replace=False)
    return [every[i] for i in sorted(pick)]


_RUNS: dict[tuple[int, tuple[int, ...]], Any] = {}


def cached_run(scores, seeds: tuple[int, ...], directions):
    key = (id(scores), tuple(seeds))
    if key not in _RUNS:
        _RUNS[key] = (scores, pseudo_run(scores, seeds, directions))  # keeps ``scores`` alive: ids stay unique
    return _RUNS[key][1]


def decide_pairs(base_scores, cand_scores, pairs, directions, thresholds) -> dict[str, Any]:
    from evaluation.regression import compare_frames

    failed, failed_audio, fired, rules, reasons = 0, 0, Counter(), Counter(), Counter()
    for a_seeds, b_seeds in pairs:
        ba, bi = cached_run(base_scores, a_seeds, directions)
        ca, ci = cached_run(cand_scores, b_seeds, directions)
        rows, _ = compare_frames(ba, ca, bi, ci, thresholds=thresholds)
        bad = [r for r in rows if r["regressed"]]
        failed += bool(bad)
        failed_audio += any(not r["metric"].startswith(MODEL_METRIC_PREFIX) for r in bad)
        for r in rows:
            rules[r["rule"]] += 1
            if r["reason"]:
                reasons[r["reason"].split(" (")[0]] += 1
        for r in bad:
            fired[f"{r['task']}/{r['metric']}"] += 1
    n = len(pairs)
    return {"pairs": n, "failed": failed, "rate": failed / n if n else math.nan, "failed_audio_metrics": failed_audio,
            "rate_audio_metrics": failed_audio / n if n else math.nan,
            "fired_metrics": dict(fired.most_common()), "rules": dict(rules), "flags": dict(reasons.most_common(8))}


# ---- main ----------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the quick profile (minutes on 2 CPU cores)")
    ap.add_argument("--workspace", type=Path, help="reuse/keep this workspace (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    for key, val in PROFILES["small"].items():
        ap.add_argument("--" + key.replace("_", "-"), type=type(val), default=None)
    a = ap.parse_args()
    prof = PROFILES["small" if a.small else "default"]
    for key, val in prof.items():
        if getattr(a, key) is None:
            setattr(a, key, val)
    noise = [float(x) for x in str(a.noise).split(",") if x.strip()]
    scorers = [x.strip() for x in str(a.scorers).split(",") if x.strip()]
    unknown = sorted(set(scorers) - set(SCORER_TASKS))
    if unknown:
        raise SystemExit(f"unknown scorer(s) {unknown}; choose from {sorted(SCORER_TASKS)}")
    if a.early_step >= a.max_steps:
        raise SystemExit("--early-step must be smaller than --max-steps")

    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    tmp = None
    if a.workspace is None:
        if a.keep:
            a.workspace = Path(tempfile.mkdtemp(prefix="regression-power-"))
        else:
            tmp = tempfile.TemporaryDirectory(prefix="regression-power-")
            a.workspace = Path(tmp.name)
    ws = a.workspace.resolve()
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    ck = build_workspace(ws, a)
    timing["workspace_s"] = round(time.perf_counter() - t0, 1)

    from unimoe.checkpoint import load_checkpoint
    from unimoe.inference import CheckpointGenerator, GenerationRequest

    gen = CheckpointGenerator(ck["final"])
    items = benchmark_items(ws, a.max_items)
    t0 = time.perf_counter()
    prompt_frames = max(1, int(a.prompt_seconds * gen.codec.frame_rate))
    examples = {}
    for it in items:
        ex = gen.example(GenerationRequest(it.task, text=it.text or "", prompt_audio=it.prompt_audio,
                                           prompt_text=it.prompt_text))
        if ex.ref_codes is not None:
            ex = dataclasses.replace(ex, ref_codes=ex.ref_codes[:, :prompt_frames])
        examples[it.id] = ex
    timing["prompts_s"] = round(time.perf_counter() - t0, 1)
    seeds = list(range(a.seeds))
    log(f"{len(items)} items ({dict(Counter(it.task for it in items))}) x {len(seeds)} seeds per condition")

    current_state = {k: v.clone() for k, v in gen.model.state_dict().items()}
    early_model, _, _ = load_checkpoint(ck["early"])
    early_model.eval()
    conditions: list[tuple[str, Any]] = [("current", None), ("earlier_checkpoint", early_model)]
    conditions += [(f"weight_noise_{s:g}", s) for s in noise]
    scores, directions, skipped = {}, {}, {}
    codes_current = None
    for name, how in conditions:
        t0 = time.perf_counter()
        checkpoint = ck["final"]
        if isinstance(how, float):
            gen.model.load_state_dict(perturbed_state(gen.model, how, seed=1234))
            model = gen.model
            checkpoint = save_perturbed(gen, ck["final"], ws / "power" / "checkpoints" / name)
        elif how is None:
            model = gen.model
        else:
            model, checkpoint = how, ck["early"]
        with torch.no_grad():
            codes = generate_all(gen, model, items, examples, seeds, a)
        gen.model.load_state_dict(current_state)
        if name == "current":
            codes_current = codes
        t1 = time.perf_counter()
        scores[name], meta = score_condition(name, gen, items, codes, ws, scorers, checkpoint, skipped=skipped)
        directions.update(meta)
        timing[f"{name}_generate_s"] = round(t1 - t0, 1)
        timing[f"{name}_score_s"] = round(time.perf_counter() - t1, 1)
        log(f"{name}: generated in {t1 - t0:.0f} s, scored in {time.perf_counter() - t1:.0f} s")
    t0 = time.perf_counter()
    scores["codebook_zeroed"], _ = score_condition("codebook_zeroed", gen, items, codes_current, ws, scorers,
                                                   ck["final"], zero_codebook=a.zero_codebook, skipped=skipped)
    timing["codebook_zeroed_score_s"] = round(time.perf_counter() - t0, 1)

    from evaluation.regression import load_thresholds

    thresholds = load_thresholds()
    pairs = seed_pairs(len(seeds), a.per_run, a.pairs)
    t0 = time.perf_counter()
    null = decide_pairs(scores["current"], scores["current"], pairs, directions, thresholds)
    injected = {name: decide_pairs(scores["current"], scores[name], pairs, directions, thresholds)
                for name in scores if name != "current"}
    timing["decisions_s"] = round(time.perf_counter() - t0, 1)

    detection: dict[str, Any] = {"earlier_checkpoint": injected["earlier_checkpoint"]["rate"],
                                 "weight_noise": {f"{s:g}": injected[f"weight_noise_{s:g}"]["rate"] for s in noise},
                                 "codebook_zeroed": injected["codebook_zeroed"]["rate"]}
    doc = {
        "false_alarm_rate": null["rate"],
        "detection_rate": detection,
        # the same gate decisions counting only the metrics of the generated audio (not token_nll)
        "false_alarm_rate_audio_metrics": null["rate_audio_metrics"],
        "detection_rate_audio_metrics": {
            "earlier_checkpoint": injected["earlier_checkpoint"]["rate_audio_metrics"],
            "weight_noise": {f"{s:g}": injected[f"weight_noise_{s:g}"]["rate_audio_metrics"] for s in noise},
            "codebook_zeroed": injected["codebook_zeroed"]["rate_audio_metrics"]},
        "counts": {"null_pairs": null["pairs"], "false_alarms": null["failed"],
                   **{f"{k}_pairs": v["pairs"] for k, v in injected.items()},
                   **{f"{k}_detected": v["failed"] for k, v in injected.items()}},
        "targets": {"false_alarm_rate_max": TARGET_FALSE_ALARM, "earlier_checkpoint_detection_min": TARGET_DETECTION,
                    "false_alarm_met": null["rate"] <= TARGET_FALSE_ALARM and null["pairs"] >= 20,
                    "earlier_checkpoint_detection_met": detection["earlier_checkpoint"] >= TARGET_DETECTION},
        "null": {k: null[k] for k in ("fired_metrics", "rules", "flags")},
        "injected": {k: {f: v[f] for f in ("fired_metrics", "flags")} for k, v in injected.items()},
        "setup": {"profile": "small" if a.small else "default", "items_per_task": dict(Counter(it.task for it in items)),
                  "generation_seeds": len(seeds), "seeds_per_run": a.per_run, "pairs_per_kind": a.pairs,
                  "train_steps": a.max_steps, "earlier_step": a.early_step, "max_seconds": a.max_seconds,
                  "prompt_seconds": a.prompt_seconds, "zero_codebook": a.zero_codebook, "noise_scales": noise,
                  "codec": gen.codec.info().get("label"), "checkpoint": str(ck["final"]),
                  "earlier_checkpoint": str(ck["early"]), "scorers": scorers, "skipped_scorers": skipped,
                  "workspace": str(ws) if tmp is None or a.keep else None},
        "timing_s": timing,
    }
    print(json.dumps(doc, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
