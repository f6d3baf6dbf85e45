"""The benchmark runner: generate a benchmark's items from a checkpoint (N seeds), score them, and
record the result tables. Library code: ``flows.benchmark`` wires these steps into a Prefect flow,
and each step works (and is tested) without Prefect.

Steps (each takes and returns paths or small records):

1. ``prepare``   load the benchmark set, write ``<ws>/bench/<run_id>/manifest.jsonl`` and ``run.json``
                 (checkpoint + its weights hash, variant, kind, config + its hash, git commit).
2. ``generate``  batched generation per (task, seed) into ``<ws>/bench/<run_id>/audio/<seed>/<item>.wav``.
                 Resumable: every clip is first looked up in a generation cache
                 (``<ws>/bench/cache/gen/``) keyed on (checkpoint weights SHA-256, generation settings,
                 the item's conditioning incl. prompt/video file hashes, seed, batch size, library code);
                 the model is loaded only when some clip is missing. Run folders get hard links (or copies).
                 Returns a content-addressed outputs index (``<ws>/bench/cache/outputs/<sha>.jsonl``): the
                 same inputs give the same index path, so downstream scoring steps are cacheable across runs.
2b. ``toplines`` the scoring index: the generated clips (system ``model``) plus, per item with reference
                 audio, the GROUND TRUTH recording (``ground_truth``) and its CODEC RESYNTHESIS (encode +
                 decode with the checkpoint's own codec, ``codec_resynth``), so every scorer also measures
                 the ceiling and the codec's share of the gap. Resyntheses are cached once per (codec hash,
                 audio file hash) under ``<ws>/bench/cache/resynth/``, and their scores (keyed on the audio
                 hash like any clip's) once per (set, codec); topline rows carry the run's first seed (they
                 do not depend on it). ``BenchConfig.toplines = False`` leaves them out.
3. ``score``     one scorer over the tasks it applies to. Per-item scores and set-level embeddings are
                 cached under ``<ws>/bench/cache/{scores,embed}/`` keyed on (audio file hash, scorer name,
                 scorer version, and the conditioning the score depends on: text, language, reference
                 file hash). Reference-set embeddings (FAD/KL reference statistics) are cached the same way.
                 Model scorers (``token_nll``: held-out token NLL of the checkpoint on each item's ground
                 truth) score system ``model`` only, once per item (seed-independent), cached per
                 (checkpoint weights, item conditioning). A failed item (NaN, with the scorer's reason, or
                 an exception) is never cached, so it is retried on the next run.
                 A scorer whose weights or packages are missing is SKIPPED: the step returns
                 ``status="skipped"`` with the reason, which the run report lists (never silent).
                 A scorer that failed on EVERY item of a (task, system) is a FAILURE (``failed`` in the
                 step's record, with the first failing item's reason): the run report lists it as an
                 ERROR and the benchmark flow / ``unimoe bench`` fails unless failed scorers are allowed.
4. ``record``    aggregate (``evaluation.aggregate``) and append the ``items`` and ``aggregate`` tables
                 (``evaluation.results``; ``system`` per row, ``n_asked`` = items given to the scorer beside
                 ``n`` = items with a finite score), once per run id, plus a markdown run report.
5. regression    ``evaluation.regression.compare_runs``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from evaluation import aggregate as A
from evaluation import results as R
from unimoe.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

SPEECH, MUSIC = ("en_tts", "zh_tts"), ("t2m", "v2m")

# Default scorers per benchmark and task. Demo scorers ship their real weights in registry packages;
# paper scorers need the local weights store and are skipped (with the reason) when it lacks them.
# token_nll (the checkpoint's held-out token NLL on the items' ground truth) runs on the demo set, whose
# items all have ground-truth audio; name it in ``scorers`` to run it on another set.
DEFAULT_SCORERS: dict[str, dict[str, list[str]]] = {
    "demo": {"en_tts": ["pocketsphinx_wer", "resemblyzer_sim", "dnsmos", "token_nll"],
             "zh_tts": ["resemblyzer_sim", "dnsmos", "token_nll"],
             "t2m": ["music_adherence", "token_nll"], "v2m": ["music_adherence", "token_nll"]},
    "seedtts-en": {"en_tts": ["whisper_wer", "wavlm_sim", "utmos22_strong"]},
    "seedtts-zh": {"zh_tts": ["paraformer_cer", "wavlm_sim", "utmos22_strong"]},
    "librispeech-test-clean": {"en_tts": ["whisper_wer", "wavlm_sim", "utmos22_strong"]},
    "aishell3-test": {"zh_tts": ["paraformer_cer", "wavlm_sim", "utmos22_strong"]},
    "musiccaps": {"t2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"]},
    "v2m-bench": {"t2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"],
                  "v2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"]},
}
# Which tasks a scorer can judge (an explicit ``scorers`` list is applied where it makes sense).
SCORER_TASKS: dict[str, tuple[str, ...]] = {
    "whisper_wer": ("en_tts",), "pocketsphinx_wer": ("en_tts",), "paraformer_cer": ("zh_tts",),
    "wavlm_sim": SPEECH, "resemblyzer_sim": SPEECH, "utmos22_strong": SPEECH, "dnsmos": SPEECH,
    "audiobox_aesthetics": SPEECH + MUSIC, "clap": MUSIC, "openl3_fad": MUSIC, "passt": MUSIC, "clamp3": MUSIC,
    "music_adherence": MUSIC, "token_nll": SPEECH + MUSIC,
}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BenchConfig:
    """Everything that changes what a run generates or how it is scored (hashed into ``config_hash``)."""

    benchmark: str = "demo"
    seeds: list[int] = field(default_factory=lambda: [0])
    scorers: list[str] | None = None      # None: DEFAULT_SCORERS[benchmark]
    max_items: int | None = None          # per task, the first N items (ids sorted)
    max_seconds: float = 10.0             # generation cap per clip
    batch_size: int = 4
    # Seeds only matter when sampling; greedy (the paper's decoding) makes every seed identical.
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    guidance_scale: float = 0.0
    n_boot: int = A.N_BOOT
    set_n_boot: int = A.SET_N_BOOT
    # Also score the ground truth and its codec resynthesis (systems "ground_truth", "codec_resynth").
    toplines: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        return cls(**d)

    @property
    def topline_seed(self) -> int:
        """The seed topline rows are recorded under (they do not depend on the seed): the first one."""
        return int(self.seeds[0]) if self.seeds else 0

    def scorers_for(self, task: str) -> list[str]:
        if self.scorers is None:
            return list(DEFAULT_SCORERS.get(self.benchmark, {}).get(task, []))
        return [s for s in self.scorers if task in SCORER_TASKS.get(s, SPEECH + MUSIC)]

    def generation(self, seed: int, max_frames: int):
        from unimoe.generation import GenerationConfig

        return GenerationConfig(max_frames=max_frames, guidance_scale=self.guidance_scale, greedy=self.greedy,
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=seed)


# --------------------------------------------------------------------------------------------------
# helpers

def safe_name(s: str) -> str:
    return _SAFE.sub("_", str(s)).strip("_") or "item"


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_hash(path: str | Path | None) -> str | None:
    """SHA-256 of a file (memoised on path, size and mtime within the process)."""
    if not path:
        return None
    st = os.stat(path)
    return _file_sha(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def generation_code_hash() -> str:
    """The model/generation library code (unimoe/, not training): part of the generation cache key."""
    root = Path(__file__).resolve().parents[1] / "unimoe"
    h = hashlib.sha256()
    for py in sorted(root.glob("*.py")):
        h.update(py.name.encode() + py.read_bytes())
    return h.hexdigest()[:16]


def _link(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link where possible, else a copy."""
    if dst.exists() and dst.stat().st_ino == src.stat().st_ino:
        return
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def bench_dir(ws: str | Path) -> Path:
    return Path(ws) / "bench"


def results_root(ws: str | Path) -> Path:
    return Path(ws) / "results"


def find_checkpoint(ws: str | Path) -> Path:
    """The newest complete checkpoint (a folder with state.json, not a hidden temporary) under <ws>/train."""
    root = Path(ws) / "train"
    found = [p.parent for p in root.rglob("state.json")
             if not any(part.startswith(".") for part in p.relative_to(root).parts)] if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"no checkpoint under {root}: train one first (unimoe train) or pass --checkpoint")
    return max(found, key=lambda p: (p / "state.json").stat().st_mtime_ns)


def benchmark_root(ws: str | Path, name: str) -> Path:
    """Where benchmark ``name``'s data lives: for ``demo`` the workspace itself (the demo loader finds
    the corpus under it, and the curated captions); for the others <ws>/benchmarks/<name>."""
    return Path(ws) if name == "demo" else Path(ws) / "benchmarks" / name


def new_run_id(benchmark: str, variant: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{safe_name(benchmark)}-{safe_name(variant)}-{stamp}-{os.urandom(3).hex()}"


# --------------------------------------------------------------------------------------------------
# 1. prepare

def prepare(ws: str | Path, checkpoint: str | Path | None, cfg: BenchConfig, *, run_id: str | None = None,
            variant: str | None = None, kind: str = "adhoc", bench_root: str | Path | None = None) -> dict[str, Any]:
    """Resolve the checkpoint, load the benchmark set and write the run folder's manifest + run.json.
    Re-preparing an existing run id keeps its original record (a resumed run stays the same run)."""
    from evaluation.sets import load_benchmark, write_manifest
    from evaluation.sets.base import BenchmarkSet
    from unimoe.checkpoint import read_state

    if kind not in R.KINDS:
        raise ValueError(f"kind must be one of {R.KINDS}, got {kind!r}")
    ws = Path(ws)
    ckpt = Path(checkpoint) if checkpoint else find_checkpoint(ws)
    state = read_state(ckpt)
    variant = variant or str(state.get("variant") or ckpt.name)
    run_id = run_id or new_run_id(cfg.benchmark, variant)
    run_dir = bench_dir(ws) / safe_name(run_id)
    run_json = run_dir / "run.json"
    if run_json.is_file():
        rec = json.loads(run_json.read_text())
        if rec["config"] != cfg.to_dict() or rec["checkpoint_hash"] != state.get("weights_sha256"):
            raise ValueError(f"run {run_id!r} exists with another config or checkpoint; pick a new run id")
        return rec
    root = Path(bench_root) if bench_root else benchmark_root(ws, cfg.benchmark)
    bset = load_benchmark(cfg.benchmark, root)
    items = sorted(bset.items, key=lambda it: (it.task, it.id))
    if cfg.max_items is not None:
        per_task: dict[str, int] = {}
        kept = []
        for it in items:
            per_task[it.task] = per_task.get(it.task, 0) + 1
            if per_task[it.task] <= cfg.max_items:
                kept.append(it)
        items = kept
    if not items:
        raise ValueError(f"benchmark {cfg.benchmark!r} at {root} has no items")
    manifest = write_manifest(run_dir / "manifest.jsonl", BenchmarkSet(bset.name, items, bset.info))
    rec = {"run_id": run_id, "run_dir": str(run_dir), "workspace": str(ws), "manifest": str(manifest),
           "benchmark": cfg.benchmark, "benchmark_root": str(root), "checkpoint": str(ckpt),
           "checkpoint_hash": str(state.get("weights_sha256") or "unknown"), "variant": variant, "kind": kind,
           "config": cfg.to_dict(), "config_hash": R.config_hash(cfg.to_dict()), "git_commit": R.git_commit(),
           "tasks": sorted({it.task for it in items}), "n_items": len(items),
           "created": R.utc_now().isoformat()}
    atomic_write_json(run_json, rec)
    return rec


# --------------------------------------------------------------------------------------------------
# 2. generate

def _request(it):
    from unimoe.inference import GenerationRequest

    return GenerationRequest(it.task, text=it.text or "", prompt_audio=it.prompt_audio, prompt_text=it.prompt_text,
                             video=it.video)


def _gen_key(rec: dict, cfg: BenchConfig, it, seed: int) -> str:
    cond = {"task": it.task, "text": it.text, "prompt_text": it.prompt_text,
            "prompt_audio": file_hash(it.prompt_audio) if it.prompt_audio else None,
            "video": file_hash(it.video) if it.video else None}
    gen = {k: v for k, v in cfg.to_dict().items() if k in ("max_seconds", "batch_size", "greedy", "temperature",
                                                            "top_k", "top_p", "guidance_scale")}
    return _hash({"weights": rec["checkpoint_hash"], "gen": gen, "cond": cond, "seed": seed,
                  "code": generation_code_hash()})


def generate(rec: dict[str, Any], progress: bool = True) -> str:
    """Generate every (item, seed) of the run not already in the generation cache; link them into the
    run folder; return the path of the content-addressed outputs index."""
    from evaluation.sets import read_manifest

    cfg = BenchConfig.from_dict(rec["config"])
    ws, run_dir = Path(rec["workspace"]), Path(rec["run_dir"])
    cache = bench_dir(ws) / "cache" / "gen"
    items = read_manifest(rec["manifest"]).items
    todo: dict[tuple[str, int], list] = {}
    plan = []
    for seed in cfg.seeds:
        for it in items:
            key = _gen_key(rec, cfg, it, seed)
            wav = cache / key[:2] / f"{key}.wav"
            plan.append((it, seed, wav))
            if not wav.is_file():
                todo.setdefault((it.task, seed), []).append((it, wav))
    if todo:
        _generate_missing(rec, cfg, todo, progress)
    rows = []
    for it, seed, wav in plan:
        _link(wav, run_dir / "audio" / str(seed) / f"{safe_name(it.id)}.wav")
        rows.append({"item": it.to_dict(), "seed": int(seed), "system": R.MODEL, "audio": str(wav),
                     "audio_sha256": file_hash(wav)})
    return _write_index(ws, "outputs", rows)


def _generate_missing(rec: dict, cfg: BenchConfig, todo: dict, progress: bool) -> None:
    from tqdm.auto import tqdm

    from unimoe.audio_io import save_wav
    from unimoe.inference import CheckpointGenerator

    t0 = time.perf_counter()
    generator = CheckpointGenerator(rec["checkpoint"])
    max_frames = generator.frames_for(cfg.max_seconds)
    n = sum(len(v) for v in todo.values())
    log.info(f"generating {n} clips ({len(todo)} task/seed groups) from {rec['checkpoint']}")
    with tqdm(total=n, desc="generate", unit="clip", disable=not progress) as bar:
        for (task, seed), jobs in sorted(todo.items()):
            for s in range(0, len(jobs), cfg.batch_size):
                batch = jobs[s:s + cfg.batch_size]
                outs = generator.generate([_request(it) for it, _ in batch], cfg.generation(seed, max_frames))
                for (it, path), (wav, _codes) in zip(batch, outs):
                    save_wav(path, wav, generator.sample_rate)
                bar.update(len(batch))
    log.info(f"generated {n} clips in {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------------------------------
# 2b. toplines

@functools.lru_cache(maxsize=4)
def _checkpoint_codec(checkpoint: str, config_sha: str):
    from unimoe.codec import AudioCodec

    return AudioCodec.from_model_config(checkpoint_config(checkpoint))


def checkpoint_codec(checkpoint: str | Path):
    """The checkpoint's own codec (``AudioCodec.from_model_config``), built once per process."""
    from unimoe.checkpoint import CONFIG

    return _checkpoint_codec(str(checkpoint), file_hash(Path(checkpoint) / CONFIG))


def checkpoint_config(checkpoint: str | Path):
    from unimoe.checkpoint import CONFIG
    from unimoe.config import UniMoEConfig

    return UniMoEConfig.load(Path(checkpoint) / CONFIG)


def codes_cache_dir(ws: str | Path) -> Path:
    """Where ground-truth codes are cached per (codec, audio) (``evaluation.codes_cache``)."""
    return bench_dir(ws) / "cache" / "codes"


def toplines(rec: dict[str, Any], outputs_index: str, progress: bool = True) -> str:
    """The run's scoring index (see the module docstring, step 2b): the generated clips plus, unless the
    run's config turns them off, a ``ground_truth`` and a ``codec_resynth`` row per item with reference
    audio. Returns the path of the content-addressed index."""
    from evaluation.sets import read_manifest

    cfg = BenchConfig.from_dict(rec["config"])
    ws = Path(rec["workspace"])
    rows = [{**r, "system": r.get("system") or R.MODEL} for r in read_index(outputs_index)]
    if cfg.toplines:
        items = [it for it in read_manifest(rec["manifest"]).items if it.reference_audio]
        rows += [{"item": it.to_dict(), "seed": cfg.topline_seed, "system": R.GROUND_TRUTH,
                  "audio": str(it.reference_audio), "audio_sha256": file_hash(it.reference_audio)} for it in items]
        resynth = resynthesise(ws, rec["checkpoint"], [it.reference_audio for it in items], progress)
        rows += [{"item": it.to_dict(), "seed": cfg.topline_seed, "system": R.CODEC_RESYNTH, "audio": path,
                  "audio_sha256": file_hash(path)} for it, path in zip(items, resynth)]
    return _write_index(ws, "scoring", rows)


def resynthesise(ws: str | Path, checkpoint: str | Path, audio: list[str], progress: bool = True) -> list[str]:
    """Each file encoded and decoded by the checkpoint's codec, at the codec's rate, cached per (codec
    key, audio file hash) under ``<ws>/bench/cache/resynth/`` (``evaluation.codes_cache.codec_key``: the
    codec is built only when a file is missing); the codes are cached too (``codes_cache_dir``:
    ``token_nll`` reads the same ground-truth codes)."""
    from tqdm.auto import tqdm

    from evaluation.codes_cache import codec_key, encode_cached
    from unimoe.audio_io import save_wav

    key = codec_key(checkpoint_config(checkpoint))
    folder = bench_dir(ws) / "cache" / "resynth" / key[:16]
    paths = [folder / f"{file_hash(a)}.wav" for a in audio]
    missing = sorted({(str(a), p) for a, p in zip(audio, paths) if not p.is_file()}, key=lambda x: str(x[1]))
    for a, path in tqdm(missing, desc="codec resynthesis", unit="clip", disable=not progress or not missing):
        codec = checkpoint_codec(checkpoint)
        codes = encode_cached(codec, a, file_hash(a), codes_cache_dir(ws), key)
        save_wav(path, codec.decode([codes])[0], codec.sample_rate)  # atomic
    return [str(p) for p in paths]


def _write_index(ws: Path, kind: str, rows: list[dict]) -> str:
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    path = bench_dir(ws) / "cache" / kind / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.jsonl"
    if not path.is_file():
        atomic_write_text(path, text)
    return str(path)


def read_index(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# 3. score

ITEM_COLUMNS = ["task", "item_id", "seed", "system", "metric", "value", "scorer", "scorer_version", "error"]


def _audio_item(it: dict, audio: str, *, reference_from: str | None, ident: str | None = None):
    from unimoe.audio_io import AudioItem, load_audio, to_mono

    wav, sr = load_audio(audio)
    ref = ref_sr = None
    ref_path = it.get(reference_from) if reference_from else None
    if ref_path:
        r, ref_sr = load_audio(ref_path)
        ref = to_mono(r)
    return AudioItem(id=ident or it["id"], wav=to_mono(wav), sample_rate=sr, text=it.get("text"),
                     language=it.get("language"), reference=ref, reference_sample_rate=ref_sr,
                     meta={**(it.get("meta") or {}), "task": it["task"]})


def _reference_field(task: str) -> str:
    # speech similarity is measured against the voice prompt (for the ground truth too); music against the real clip
    return "prompt_audio" if task in SPEECH else "reference_audio"


def _system(r: dict) -> str:
    return r.get("system") or R.MODEL


def _score_key(scorer: str, version: str, audio_sha: str, it: dict, ref_field: str | None) -> str:
    ref = it.get(ref_field) if ref_field else None
    return _hash({"scorer": scorer, "version": version, "audio": audio_sha, "text": it.get("text"),
                  "language": it.get("language"), "meta": it.get("meta"), "ref": file_hash(ref) if ref else None})


def _model_score_key(scorer, version: str, it: dict) -> str:
    """A model scorer's per-item key: the checkpoint and settings (``scorer.cache_key``), the library code
    and everything of the item the score depends on (its conditioning and ground truth, by file hash)."""
    files = {k: file_hash(it[k]) if it.get(k) else None for k in ("reference_audio", "prompt_audio", "video")}
    return _hash({"scorer": scorer.name, "version": version, "checkpoint": scorer.cache_key,
                  "code": generation_code_hash(), "task": it["task"], "text": it.get("text"),
                  "prompt_text": it.get("prompt_text"), "files": files})


def score(outputs_index: str, scorer_name: str, tasks: list[str], cache_dir: str, out_dir: str,
          n_boot: int = A.SET_N_BOOT, progress: bool = True, checkpoint: str | None = None) -> dict[str, Any]:
    """Score the clips of ``tasks`` in the (scoring) index with one scorer, for every system in it.
    Returns a record: ``status`` ("ok" | "skipped"), ``reason``, ``scorer``, ``version``, ``items``
    (per-item parquet: task, item_id, seed, system, metric, value, scorer, scorer_version, error),
    ``aggregates`` (JSON list of set-level aggregate rows), ``directions`` and ``failed``: one entry per
    (task, system) on which EVERY item failed (scorer, task, system, n_asked, item, reason).
    A model scorer (``token_nll``) is built with ``checkpoint`` and scores system ``model`` only."""
    from evaluation.scorers import ScorerUnavailable, is_model_scorer, load_scorer
    from evaluation.scorers.base import ModelScorer, SetScorer

    base = {"scorer": scorer_name, "tasks": list(tasks), "items": None, "aggregates": None, "version": None,
            "directions": {}, "failed": []}
    rows = [r for r in read_index(outputs_index) if r["item"]["task"] in tasks]
    try:
        model_scorer = is_model_scorer(scorer_name)
    except ImportError:
        model_scorer = False
    if model_scorer:
        rows = [r for r in rows if _system(r) == R.MODEL]
    if not rows:
        return {**base, "status": "skipped", "reason": "no items of its tasks in this run"}
    try:
        options = {"checkpoint": checkpoint, "codes_cache": str(Path(cache_dir) / "codes")} if model_scorer else {}
        scorer = load_scorer(scorer_name, **options)
    except (ScorerUnavailable, KeyError, ImportError) as e:
        log.warning(f"scorer {scorer_name} SKIPPED: {e}")
        return {**base, "status": "skipped", "reason": f"{type(e).__name__}: {e}"}
    version = str(scorer.version)
    directions = {m: d == "higher" for m, d in scorer.metrics.items()}
    out_dir = Path(out_dir)
    tag = hashlib.sha256(f"{outputs_index}:{scorer_name}:{version}:{sorted(tasks)}".encode()).hexdigest()[:16]
    res = {**base, "status": "ok", "reason": "", "version": version, "directions": directions}
    if isinstance(scorer, SetScorer):
        agg, failed = [], []
        for system, task in sorted({(_system(r), r["item"]["task"]) for r in rows}):
            sub = [r for r in rows if r["item"]["task"] == task and _system(r) == system]
            got, fail = _score_set(scorer, version, sub, task, system, directions,
                                   Path(cache_dir) / "embed" / safe_name(scorer_name), n_boot, progress)
            agg += got
            failed += fail
        path = out_dir / f"{safe_name(scorer_name)}-{tag}.json"
        atomic_write_json(path, agg)
        res.update(aggregates=str(path), failed=failed)
        if not agg and not failed:
            res.update(status="skipped", reason="no items with the reference audio this set-level metric needs")
        return res
    cache = Path(cache_dir) / "scores" / safe_name(scorer_name)
    if isinstance(scorer, ModelScorer):
        table = _score_model(scorer, version, rows, cache, progress)
    else:
        table = _score_items(scorer, version, rows, cache, progress)
    path = out_dir / f"{safe_name(scorer_name)}-{tag}.parquet"
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    res.update(items=str(path), failed=all_failed(table, scorer_name, directions))
    return res


def all_failed(table: pd.DataFrame, scorer: str, directions: dict[str, bool]) -> list[dict[str, Any]]:
    """The (task, system) groups of a per-item score table in which no item has a finite value of any
    of the scorer's metrics, with how many items were asked and the first failing item's reason."""
    out = []
    if table.empty:
        return out
    for (task, system), g in table.groupby(["task", "system"], sort=True):
        scored = g[g["metric"].isin(list(directions)) & np.isfinite(g["value"].astype(float))]
        if not scored.empty:
            continue
        g = g.sort_values(["item_id", "seed"])
        errs = g[g["error"].notna() & (g["error"].astype(str) != "")]
        first = errs.iloc[0] if not errs.empty else g.iloc[0]
        reason = str(first["error"]) if not errs.empty else "every score is NaN (the scorer gave no reason)"
        out.append({"scorer": scorer, "task": str(task), "system": str(system), "n_asked": int(g["item_id"].nunique()),
                    "item": str(first["item_id"]), "reason": reason})
    return out


def _cacheable(values: dict[str, Any]) -> dict[str, float | None]:
    return {k: (None if v is None or not math.isfinite(float(v)) else float(v)) for k, v in values.items()}


def _score_items(scorer, version: str, rows: list[dict], cache: Path, progress: bool) -> pd.DataFrame:
    """Per-item scores of every row (clip), from the cache or the scorer. A failed item (NaN with the
    scorer's reason, or an exception from its batch) is not cached."""
    from tqdm.auto import tqdm

    keyed = []
    for r in rows:
        ref_field = _reference_field(r["item"]["task"])
        key = _score_key(scorer.name, version, r["audio_sha256"], r["item"], ref_field)
        ident = f"{r['item']['id']} [{_system(r)}, seed {r['seed']}]"  # unique in a batch (item_errors' keys)
        keyed.append((r, ref_field, ident, cache / key[:2] / f"{key}.json"))
    scores: dict[str, tuple[dict, str | None]] = {}
    missing = [k for k in keyed if not k[3].is_file()]
    batch = 8
    with tqdm(total=len(missing), desc=f"score {scorer.name}", unit="clip", disable=not progress or not missing) as bar:
        for s in range(0, len(missing), batch):
            chunk = missing[s:s + batch]
            if hasattr(scorer, "clear_failures"):
                scorer.clear_failures()
            try:
                got = scorer.score([_audio_item(r["item"], r["audio"], reference_from=f, ident=i)
                                    for r, f, i, _ in chunk])
                errors = dict(getattr(scorer, "item_errors", {}) or {})
            except Exception as e:  # noqa: BLE001 - the batch's items fail (reported), the run goes on
                log.warning(f"{scorer.name}: a batch of {len(chunk)} clips failed: {type(e).__name__}: {e}")
                got = [{m: math.nan for m in scorer.metrics} for _ in chunk]
                errors = {i: f"{type(e).__name__}: {e}" for _, _, i, _ in chunk}
            for (_, _, ident, path), sc in zip(chunk, got):
                values = _cacheable(sc)
                if ident in errors:
                    scores[ident] = (values, errors[ident])
                else:
                    atomic_write_json(path, values)
            bar.update(len(chunk))
    out = []
    for r, _, ident, path in keyed:
        values, error = scores[ident] if ident in scores else (json.loads(path.read_text()), None)
        for metric, v in values.items():
            out.append({"task": r["item"]["task"], "item_id": r["item"]["id"], "seed": int(r["seed"]),
                        "system": _system(r), "metric": metric, "value": math.nan if v is None else float(v),
                        "scorer": scorer.name, "scorer_version": version, "error": error})
    return pd.DataFrame(out, columns=ITEM_COLUMNS)


def _score_model(scorer, version: str, rows: list[dict], cache: Path, progress: bool) -> pd.DataFrame:
    """A model scorer's per-item scores: computed once per item (they do not depend on the seed or on
    the generated clip), cached per (checkpoint, item), and repeated for each of the item's seeds."""
    from tqdm.auto import tqdm

    items = {r["item"]["id"]: r["item"] for r in rows}
    paths = {}
    for iid, it in items.items():
        key = _model_score_key(scorer, version, it)
        paths[iid] = cache / key[:2] / f"{key}.json"
    scores: dict[str, tuple[dict, str | None]] = {}
    missing = sorted(iid for iid, p in paths.items() if not p.is_file())
    batch = 8
    with tqdm(total=len(missing), desc=f"score {scorer.name}", unit="item", disable=not progress or not missing) as bar:
        for s in range(0, len(missing), batch):
            chunk = missing[s:s + batch]
            scorer.clear_failures()
            try:
                got = scorer.score_items([items[i] for i in chunk])
                errors = dict(scorer.item_errors)
            except Exception as e:  # noqa: BLE001 - the batch's items fail (reported), the run goes on
                log.warning(f"{scorer.name}: a batch of {len(chunk)} items failed: {type(e).__name__}: {e}")
                got = [{m: math.nan for m in scorer.metrics} for _ in chunk]
                errors = {i: f"{type(e).__name__}: {e}" for i in chunk}
            for iid, sc in zip(chunk, got):
                values = _cacheable(sc)
                if iid in errors:
                    scores[iid] = (values, errors[iid])
                else:
                    atomic_write_json(paths[iid], values)
            bar.update(len(chunk))
    out = []
    for r in rows:
        iid = r["item"]["id"]
        values, error = scores[iid] if iid in scores else (json.loads(paths[iid].read_text()), None)
        for metric, v in values.items():
            out.append({"task": r["item"]["task"], "item_id": iid, "seed": int(r["seed"]), "system": R.MODEL,
                        "metric": metric, "value": math.nan if v is None else float(v), "scorer": scorer.name,
                        "scorer_version": version, "error": error})
    return pd.DataFrame(out, columns=ITEM_COLUMNS)


def _embed_cached(scorer, version: str, entries: list[tuple[str, str, dict, str]], cache: Path, progress: bool,
                  desc: str) -> dict[str, np.ndarray]:
    """Embeddings keyed by audio file hash: entries are (id, audio path, item dict, sha)."""
    from tqdm.auto import tqdm

    out, missing = {}, []
    for ident, audio, it, sha in entries:
        path = cache / f"{_hash({'v': version, 'audio': sha})[:32]}.npy"
        if path.is_file():
            out[ident] = np.load(path)
        else:
            missing.append((ident, audio, it, path))
    with tqdm(total=len(missing), desc=desc, unit="clip", disable=not progress or not missing) as bar:
        for s in range(0, len(missing), 8):
            chunk = missing[s:s + 8]
            emb = np.asarray(scorer.embed([_audio_item(it, audio, reference_from=None) for _, audio, it, _ in chunk]))
            for (ident, _, _, path), e in zip(chunk, emb):
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, e)
                out[ident] = e
            bar.update(len(chunk))
    return out


def _score_set(scorer, version: str, rows: list[dict], task: str, system: str, directions: dict, cache: Path,
               n_boot: int, progress: bool) -> tuple[list[dict], list[dict]]:
    """(aggregate rows, failures) of a set-level scorer on one task of one system. Failure: every
    item's embedding of every seed is entirely non-finite (the scorer could embed none of them)."""
    n_asked = len({r["item"]["id"] for r in rows})
    if scorer.needs_reference:
        rows = [r for r in rows if r["item"].get("reference_audio")]
        if not rows:
            log.warning(f"{scorer.name}: no {task} item has reference audio; set-level metric not computed")
            return [], []
    item_ids = sorted({r["item"]["id"] for r in rows})
    items = {r["item"]["id"]: r["item"] for r in rows}
    gen_entries = [(f"{r['seed']}/{r['item']['id']}", r["audio"], r["item"], r["audio_sha256"]) for r in rows]
    gen = _embed_cached(scorer, version, gen_entries, cache, progress, f"embed {scorer.name}")
    seeds = sorted({int(r["seed"]) for r in rows})
    generated = {s: np.stack([gen[f"{s}/{i}"] for i in item_ids]) for s in seeds}
    reference = None
    if scorer.needs_reference:
        ref_entries = [(i, items[i]["reference_audio"], items[i], file_hash(items[i]["reference_audio"])) for i in item_ids]
        ref = _embed_cached(scorer, version, ref_entries, cache, progress, f"embed {scorer.name} (reference)")
        reference = np.stack([ref[i] for i in item_ids])
    agg = A.aggregate_set(task, scorer.compare, directions, generated, reference, scorer=scorer.name,
                          scorer_version=version, n_boot=n_boot)
    agg = [{**r, "system": system, "n_asked": n_asked} for r in agg]
    embedded = any(bool(np.isfinite(np.asarray(g, dtype=np.float64)).any()) for g in generated.values())
    failed = []
    if not embedded:
        failed.append({"scorer": scorer.name, "task": task, "system": system, "n_asked": n_asked, "item": item_ids[0],
                       "reason": "no clip could be embedded (every embedding is NaN; see the log)"})
    return agg, failed


# --------------------------------------------------------------------------------------------------
# 4. record

class ScorersFailed(RuntimeError):
    """A scorer failed on every item of a task (and system) of a benchmark run (the message names them)."""


def failure_lines(failed: Iterable[dict]) -> list[str]:
    return [f"scorer `{f['scorer']}` failed on all {f['n_asked']} items of task {f['task']} (system {f['system']}); "
            f"first failure (item `{f['item']}`): {f['reason']}" for f in failed]


def failure_message(run_id: str, failed: list[dict]) -> str:
    """The error of a run in which some scorer failed on every item (see ``ScorersFailed``)."""
    return (f"benchmark run {run_id}: {len(failed)} scorer/task result(s) FAILED on every item:\n"
            + "\n".join(f"- {line}" for line in failure_lines(failed))
            + "\nThe results are recorded (the aggregate rows read NaN with n = 0). Fix the scorer, or pass "
              "--allow-failed-scorers (flow parameter allow_failed_scorers=True) to accept the run.")


def record(rec: dict[str, Any], outputs_index: str, scored: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate and append this run's rows to the items and aggregate tables (once per run id: a
    re-run of a recorded run writes nothing new) and write the run report. Returns a summary
    (``failed``: the scorers that failed on every item of a task and system)."""
    cfg = BenchConfig.from_dict(rec["config"])
    root = results_root(rec["workspace"])
    run_dir = Path(rec["run_dir"])
    existing = R.read_table(root, "aggregate", run_id=rec["run_id"])

    def audio_path(r: dict) -> str:
        if _system(r) == R.MODEL:
            return str(run_dir / "audio" / str(r["seed"]) / f"{safe_name(r['item']['id'])}.wav")
        return str(r["audio"])

    audio_of = {(_system(r), r["item"]["id"], int(r["seed"])): audio_path(r) for r in read_index(outputs_index)}
    ok = [s for s in scored if s["status"] == "ok"]
    item_frames = []
    for s in ok:
        if s.get("items"):
            df = pd.read_parquet(s["items"])
            if "system" not in df.columns:
                df["system"] = R.MODEL
            item_frames.append(df)
    items = pd.concat(item_frames, ignore_index=True) if item_frames else pd.DataFrame(columns=ITEM_COLUMNS)
    agg_rows: list[dict] = []
    for s in ok:
        if s.get("items"):
            df = items[items["scorer"] == s["scorer"]]
            for (system, task), sub in df.groupby(["system", "task"], sort=True):
                n_asked = int(sub["item_id"].nunique())
                agg_rows += [{**r, "system": system, "n_asked": n_asked}
                             for r in A.aggregate_items(sub.drop(columns=["system", "error"], errors="ignore"),
                                                        s["directions"], n_boot=cfg.n_boot)]
        if s.get("aggregates"):
            rows = json.loads(Path(s["aggregates"]).read_text())
            agg_rows += [{"system": R.MODEL, "n_asked": None, **r} for r in rows]
    run_cols = {k: rec[k] for k in ("run_id", "kind", "checkpoint", "checkpoint_hash", "variant", "benchmark",
                                    "git_commit", "config_hash")}
    agg_rows = [{**run_cols, **r} for r in agg_rows]
    failed = [f for s in ok for f in s.get("failed") or []]
    written = {}
    if existing.empty:
        now = R.utc_now()
        item_rows = [{"run_id": rec["run_id"], "variant": rec["variant"], "benchmark": rec["benchmark"], "task": r.task,
                      "item_id": r.item_id, "seed": int(r.seed), "metric": r.metric, "value": float(r.value),
                      "scorer": r.scorer, "scorer_version": r.scorer_version, "system": r.system,
                      "audio_path": audio_of.get((r.system, r.item_id, int(r.seed)), "")}
                     for r in items.itertuples(index=False)]
        written["items"] = str(R.write_rows(root, "items", item_rows, run_id=rec["run_id"], when=now))
        written["aggregate"] = str(R.write_rows(root, "aggregate", agg_rows, run_id=rec["run_id"], when=now))
    else:
        log.info(f"run {rec['run_id']} already recorded ({len(existing)} aggregate rows); nothing appended")
    skipped = [{"scorer": s["scorer"], "tasks": s["tasks"], "reason": s["reason"]} for s in scored if s["status"] != "ok"]
    report = render_run_report(rec, agg_rows, skipped, failed)
    atomic_write_text(run_dir / "report.md", report)
    summary = {"run_id": rec["run_id"], "results": str(root), "aggregate_rows": len(agg_rows), "item_rows": len(items),
               "skipped": skipped, "failed": failed, "written": written, "report": str(run_dir / "report.md"),
               "aggregate": [{k: r[k] for k in ("system", "task", "metric", "value", "ci_low", "ci_high", "n",
                                                "n_asked", "scorer")} for r in agg_rows]}
    atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.4g}"


_SYSTEM_ORDER = {s: i for i, s in enumerate(R.SYSTEMS)}


def render_run_report(rec: dict, agg_rows: list[dict], skipped: list[dict], failed: list[dict] | None = None) -> str:
    failed = failed or []
    lines = [f"# Benchmark run `{rec['run_id']}`", "",
             f"- benchmark **{rec['benchmark']}** ({rec['n_items']} items; tasks {', '.join(rec['tasks'])}), "
             f"seeds {','.join(str(s) for s in rec['config']['seeds'])}",
             f"- checkpoint `{rec['checkpoint']}` (weights sha256 {rec['checkpoint_hash'][:12]}), variant `{rec['variant']}`",
             f"- kind {rec['kind']}, git {rec['git_commit']}, config hash {rec['config_hash']}", ""]
    if failed:
        lines += ["## ERRORS: scorers that failed on every item", ""]
        lines += [f"- **ERROR** {line}" for line in failure_lines(failed)]
        lines += [""]
    bad = {(f["scorer"], f["task"], f["system"]) for f in failed}
    lines += ["Systems: `model` = the checkpoint's generations (and metrics of the checkpoint itself, e.g. "
              "token NLL); toplines `ground_truth` = the real recordings, `codec_resynth` = them encoded and "
              "decoded by the checkpoint's codec.", "",
              "| task | metric | system | better | value | 95% CI | n / asked | scorer |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(agg_rows, key=lambda r: (r["task"], r["metric"], _SYSTEM_ORDER.get(r.get("system"), 9))):
        err = " **ERROR**" if (r["scorer"], r["task"], r.get("system", R.MODEL)) in bad else ""
        asked = "" if r.get("n_asked") is None else f" / {r['n_asked']}"
        lines.append(f"| {r['task']} | {r['metric']} | {r.get('system', R.MODEL)} | "
                     f"{'higher' if r['higher_is_better'] else 'lower'} | {_fmt(r['value'])}{err} | "
                     f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | {r['n']}{asked} | "
                     f"{r['scorer']} {r['scorer_version']} |")
    if skipped:
        lines += ["", "## Skipped scorers", ""]
        lines += [f"- `{s['scorer']}` ({', '.join(s['tasks'])}): {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def score_plan(rec: dict[str, Any]) -> dict[str, list[str]]:
    """Scorer name -> the run's tasks it scores."""
    cfg = BenchConfig.from_dict(rec["config"])
    plan: dict[str, list[str]] = {}
    for task in rec["tasks"]:
        for s in cfg.scorers_for(task):
            plan.setdefault(s, []).append(task)
    return plan


def run_benchmark(ws: str | Path, checkpoint: str | Path | None, cfg: BenchConfig, *, run_id: str | None = None,
                  variant: str | None = None, kind: str = "adhoc", baseline: str | None = None,
                  bench_root: str | Path | None = None, progress: bool = True,
                  allow_failed_scorers: bool = False) -> dict[str, Any]:
    """All steps without Prefect (the flow runs the same steps as cached tasks). Raises ScorersFailed
    (after recording the run and checking it for regressions) when a scorer failed on every item of a
    task, unless ``allow_failed_scorers``."""
    from evaluation.regression import compare_runs

    rec = prepare(ws, checkpoint, cfg, run_id=run_id, variant=variant, kind=kind, bench_root=bench_root)
    index = toplines(rec, generate(rec, progress=progress), progress=progress)
    cache = str(bench_dir(ws) / "cache")
    scored = [score(index, name, tasks, cache, str(bench_dir(ws) / "cache" / "scored"), cfg.set_n_boot, progress,
                    checkpoint=rec["checkpoint"])
              for name, tasks in score_plan(rec).items()]
    summary = record(rec, index, scored)
    summary["regression"] = compare_runs(results_root(ws), rec["run_id"], baseline).to_dict()
    if summary["failed"] and not allow_failed_scorers:
        raise ScorersFailed(failure_message(rec["run_id"], summary["failed"]))
    return summary


def iter_skipped(scored: Iterable[dict]) -> list[str]:
    return [f"{s['scorer']}: {s['reason']}" for s in scored if s["status"] != "ok"]
