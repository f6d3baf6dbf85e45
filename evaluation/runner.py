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
                 Decoding (``BenchConfig``): the paper's benchmarks default to greedy decoding and seeds
                 0, 1, 2 (the paper reports the mean of 3 seeds); the demo set to sampling (T = 1, top-p 0.95)
                 with seed 0 (``DECODING_DEFAULTS``). Greedy decoding draws no random numbers, so its seeds
                 give the same clip: it is generated once and recorded under every seed. Length cap: speech
                 from the target text (``BenchConfig.clip_seconds``), music a fixed clip length.
                 Voice prompts (``speech_prompts``): under ``"paper"`` (the default of the paper's sets) WER /
                 CER and MOS are measured on clips generated from ONE predefined voice prompt per speech task
                 (``audio/<seed>/fixed-prompt/<item>.wav``) and speaker similarity on clips generated from
                 each item's own prompt, so a speech item is generated twice where both kinds of scorer run
                 (each clip cached on its own conditioning); ``"item"`` scores everything on the
                 item-prompted clip (one generation, the demo's default).
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
                 ``n`` = items with a finite score, and what a comparison needs to be trusted: manifest and
                 reference-set hashes, decoding, voice prompt, scorer protocol, device, dtype, package
                 versions; ASR transcripts per item), once per run id, plus a markdown run report.
5. regression    ``evaluation.regression.compare_runs``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
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
# Speaker-similarity scorers compare a clip with the voice prompt it was generated from: under the paper's
# protocol they score the clips generated from each item's own prompt, every other speech scorer the clips
# generated from the predefined voice prompt (``BenchConfig.speech_prompts``).
PROMPT_SCORERS = frozenset({"wavlm_sim", "resemblyzer_sim"})
SPEECH_PROMPTS = ("paper", "item")
# Decoding defaults per benchmark (``BenchConfig``: None means "this benchmark's default"). The paper's
# benchmarks: greedy decoding, the mean over 3 seeds, WER/MOS from one predefined voice prompt. The demo set
# is a small offline smoke/regression set for a tiny CPU model: sampling, one seed and one generation per
# item keep a nightly run short; a nightly deployment states its own values (prefect.yaml).
# Guidance "official": the official inference's classifier-free guidance per task (10 for music, 1 for
# speech: unimoe.generation.GenerationConfig.guidance_scale=None); the demo runs without it (half the cost).
PAPER_DEFAULTS: dict[str, Any] = {"greedy": True, "seeds": [0, 1, 2], "speech_prompts": "paper",
                                  "guidance_scale": "official"}
DECODING_DEFAULTS: dict[str, dict[str, Any]] = {"demo": {"greedy": False, "seeds": [0], "speech_prompts": "item",
                                                         "guidance_scale": 0.0}}
OFFICIAL_GUIDANCE = "official"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def benchmark_defaults(benchmark: str) -> dict[str, Any]:
    """The decoding, seeds and voice-prompt protocol a benchmark runs with unless told otherwise."""
    return dict(DECODING_DEFAULTS.get(str(benchmark), PAPER_DEFAULTS))


@dataclass
class BenchConfig:
    """Everything that changes what a run generates or how it is scored (hashed into ``config_hash``).
    ``greedy``, ``seeds`` and ``speech_prompts`` left None take the benchmark's defaults
    (``benchmark_defaults``); the resolved values are what ``to_dict`` records."""

    benchmark: str = "demo"
    seeds: list[int] | None = None        # None: the benchmark's default (paper sets 0,1,2; demo 0)
    scorers: list[str] | None = None      # None: DEFAULT_SCORERS[benchmark]
    max_items: int | None = None          # per task, the first N items (ids sorted)
    # Generation length caps. Speech: from the target text, at a slow speaking rate in UTF-8 bytes per second
    # (a CJK character is 3 bytes, so one rate serves English and Mandarin: F5-TTS sizes its durations on
    # UTF-8 byte counts the same way), plus a pad; cap = pad + bytes / rate, rounded up to whole seconds so
    # items of similar length share a batch. About twice the length of ordinary speech (~14 bytes/s), so the
    # cap ends runaway clips without cutting a slow reading short. Music: a fixed clip length (MusicCaps'
    # clips are 10 s). ``max_seconds``: a ceiling on every clip (quick runs); None: the caps alone.
    max_seconds: float | None = None
    music_seconds: float = 10.0
    speech_bytes_per_second: float = 7.0
    speech_pad_seconds: float = 2.0
    batch_size: int = 4
    # Decoding: None = the benchmark's default (greedy for the paper's sets). Greedy draws no random numbers,
    # so every seed gives the same clip; the sampling settings apply only when greedy is False.
    greedy: bool | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    # a number, "official" (per task, as the official inference) or None (the benchmark's default)
    guidance_scale: float | str | None = None
    # "paper": WER/CER and MOS on clips from the benchmark's predefined voice prompt, SIM on clips from each
    # item's own prompt; "item": every speech metric on the item-prompted clip. None: the benchmark's default.
    speech_prompts: str | None = None
    # The predefined voice prompt (a file and its transcript) for every speech task; None: chosen from the
    # benchmark's own voice prompts (``predefined_voice_prompts``).
    voice_prompt_audio: str | None = None
    voice_prompt_text: str | None = None
    n_boot: int = A.N_BOOT
    set_n_boot: int = A.SET_N_BOOT
    # Also score the ground truth and its codec resynthesis (systems "ground_truth", "codec_resynth").
    toplines: bool = True

    def __post_init__(self) -> None:
        defaults = benchmark_defaults(self.benchmark)
        if self.greedy is None:
            self.greedy = bool(defaults["greedy"])
        if self.seeds is None:
            self.seeds = list(defaults["seeds"])
        if self.speech_prompts is None:
            self.speech_prompts = str(defaults["speech_prompts"])
        if self.guidance_scale is None:
            self.guidance_scale = defaults["guidance_scale"]
        if self.guidance_scale != OFFICIAL_GUIDANCE:
            self.guidance_scale = float(self.guidance_scale)
        self.seeds = [int(s) for s in self.seeds]
        self.greedy = bool(self.greedy)
        if not self.seeds:
            raise ValueError("BenchConfig: seeds needs at least one seed")
        if self.speech_prompts not in SPEECH_PROMPTS:
            raise ValueError(f"BenchConfig: speech_prompts must be one of {SPEECH_PROMPTS}, "
                             f"got {self.speech_prompts!r}")
        if (self.voice_prompt_audio is None) != (self.voice_prompt_text is None):
            raise ValueError("BenchConfig: voice_prompt_audio and voice_prompt_text go together")
        if self.speech_bytes_per_second <= 0 or self.music_seconds <= 0 or self.speech_pad_seconds < 0:
            raise ValueError("BenchConfig: the length caps must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        return cls(**d)

    def clip_seconds(self, task: str, text: str | None) -> float:
        """The generation cap of one clip (see the length-cap fields)."""
        if task in SPEECH:
            seconds = float(math.ceil(self.speech_pad_seconds
                                      + len((text or "").encode("utf-8")) / self.speech_bytes_per_second))
        else:
            seconds = float(self.music_seconds)
        return min(seconds, float(self.max_seconds)) if self.max_seconds is not None else seconds

    def decoding_label(self) -> str:
        """The decoding in words, as the result rows record it."""
        label = "greedy" if self.greedy else \
            f"sampling (temperature {self.temperature:g}, top-k {self.top_k}, top-p {self.top_p:g})"
        if self.guidance_scale == OFFICIAL_GUIDANCE:
            return label + ", guidance official (10 music, 1 speech)"
        return label + (f", guidance {self.guidance_scale:g}" if self.guidance_scale else "")

    def prompt_roles(self, task: str) -> dict[str, str]:
        """The generations a task needs: voice prompt (``item`` | ``fixed``) -> the scorers that score it
        (``all`` | ``similarity`` | ``content``). Music: one item-conditioned clip for every scorer."""
        if task not in SPEECH or self.speech_prompts == "item":
            return {"item": "all"}
        # model scorers (token NLL) judge the checkpoint on the ground truth, not a generated clip
        names = [n for n in self.scorers_for(task) if not _is_model_scorer(n)]
        roles = {}
        if any(n in PROMPT_SCORERS for n in names):
            roles["item"] = "similarity"
        if any(n not in PROMPT_SCORERS for n in names) or not roles:
            roles["fixed"] = "content"
        return roles

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

        guidance = None if self.guidance_scale == OFFICIAL_GUIDANCE else self.guidance_scale
        return GenerationConfig(max_frames=max_frames, guidance_scale=guidance, greedy=bool(self.greedy),
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=seed)


def _is_model_scorer(name: str) -> bool:
    from evaluation.scorers import is_model_scorer

    try:
        return is_model_scorer(name)
    except ImportError:
        return False


def scorer_role(scorer: str) -> str:
    """Which speech generation a scorer judges under the paper's protocol (``BenchConfig.prompt_roles``)."""
    return "similarity" if scorer in PROMPT_SCORERS else "content"


def scores_row(scorer: str, row: dict) -> bool:
    """Whether ``scorer`` judges this row of a scoring index (rows without a role serve every scorer)."""
    role = row.get("scored_by") or "all"
    return role == "all" or role == scorer_role(scorer)


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
    # chosen from the whole set, so that max_items does not change the voice the content metrics hear
    voice_prompts = predefined_voice_prompts(items, cfg) if cfg.speech_prompts == "paper" else {}
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
    voice_prompts = {t: v for t, v in voice_prompts.items() if any(it.task == t for it in items)}
    info = {**bset.info, "voice_prompts": voice_prompts} if voice_prompts else bset.info
    manifest = write_manifest(run_dir / "manifest.jsonl", BenchmarkSet(bset.name, items, info))
    rec = {"run_id": run_id, "run_dir": str(run_dir), "workspace": str(ws), "manifest": str(manifest),
           "benchmark": cfg.benchmark, "benchmark_root": str(root), "checkpoint": str(ckpt),
           "checkpoint_hash": str(state.get("weights_sha256") or "unknown"), "variant": variant, "kind": kind,
           "config": cfg.to_dict(), "config_hash": R.config_hash(cfg.to_dict()), "git_commit": R.git_commit(),
           "tasks": sorted({it.task for it in items}), "n_items": len(items),
           "voice_prompts": voice_prompts, "manifest_hash": manifest_hash(items, voice_prompts),
           "created": R.utc_now().isoformat()}
    atomic_write_json(run_json, rec)
    return rec


def predefined_voice_prompts(items: Iterable, cfg: BenchConfig) -> dict[str, dict[str, Any]]:
    """The predefined voice prompt of each speech task of ``items`` (``BenchItem``s): ``{"audio", "text",
    "sha256", "source"}``. ``cfg.voice_prompt_audio`` / ``voice_prompt_text`` when given (e.g. the voice
    prompt a paper's evaluation used), else one of the set's own voice prompts, the same whatever subset
    is run: the one whose sha256('unimoe-bench-voice-prompt:<task>:<file name>:<transcript>') is smallest
    (file NAME, not path, so the choice does not depend on where the set lives)."""
    items = list(items)
    out: dict[str, dict[str, Any]] = {}
    for task in sorted({it.task for it in items if it.task in SPEECH}):
        if cfg.voice_prompt_audio is not None:
            audio, text, source = str(cfg.voice_prompt_audio), str(cfg.voice_prompt_text), "config"
        else:
            cands = {}
            for it in items:
                if it.task == task and it.prompt_audio and it.prompt_text:
                    name = Path(it.prompt_audio).name
                    rank = hashlib.sha256(
                        f"unimoe-bench-voice-prompt:{task}:{name}:{it.prompt_text}".encode()).hexdigest()
                    cands.setdefault((rank, it.prompt_audio, it.prompt_text), it.id)
            if not cands:
                raise ValueError(f"benchmark {cfg.benchmark!r}: no {task} item has a voice prompt with a transcript "
                                 "to serve as the predefined prompt; give one (voice_prompt_audio / voice_prompt_text) "
                                 "or score on the items' own prompts (speech_prompts='item')")
            (_, audio, text), first = min(cands.items())
            source = f"the voice prompt of item {first}"
        out[task] = {"audio": audio, "text": text, "sha256": file_hash(audio), "source": source}
    return out


def manifest_hash(items: Iterable, voice_prompts: dict[str, dict[str, Any]] | None = None) -> str:
    """What was generated, independent of where the files live: every item's fields with each file path
    replaced by the file's SHA-256, and the predefined voice prompts (file SHA-256 + transcript)."""
    rows = []
    for it in items:
        d = it.to_dict() if hasattr(it, "to_dict") else dict(it)
        for k in ("prompt_audio", "reference_audio", "video"):
            d[k] = file_hash(d[k]) if d.get(k) else None
        rows.append(d)
    prompts = {t: [v["sha256"], v["text"]] for t, v in sorted((voice_prompts or {}).items())}
    return _hash({"items": rows, "voice_prompts": prompts})[:16]


# --------------------------------------------------------------------------------------------------
# 2. generate

def _conditioning(it, prompt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What one generation is conditioned on: the item's, with ``prompt`` (a predefined voice prompt:
    ``audio``, ``text``) in place of the item's own voice prompt when given."""
    return {"task": it.task, "text": it.text, "video": it.video,
            "prompt_audio": prompt["audio"] if prompt else it.prompt_audio,
            "prompt_text": prompt["text"] if prompt else it.prompt_text}


def _request(cond: dict[str, Any]):
    from unimoe.inference import GenerationRequest

    return GenerationRequest(cond["task"], text=cond["text"] or "", prompt_audio=cond["prompt_audio"],
                             prompt_text=cond["prompt_text"], video=cond["video"])


def _gen_key(rec: dict, cfg: BenchConfig, it, seed: int, prompt: dict[str, Any] | None = None) -> str:
    c = _conditioning(it, prompt)
    cond = {"task": c["task"], "text": c["text"], "prompt_text": c["prompt_text"],
            "prompt_audio": file_hash(c["prompt_audio"]) if c["prompt_audio"] else None,
            "video": file_hash(c["video"]) if c["video"] else None}
    names = ("batch_size", "greedy", "guidance_scale") + (() if cfg.greedy else ("temperature", "top_k", "top_p"))
    gen = {k: v for k, v in cfg.to_dict().items() if k in names}
    gen["clip_seconds"] = cfg.clip_seconds(it.task, it.text)
    # greedy decoding draws no random numbers: one clip serves every seed
    return _hash({"weights": rec["checkpoint_hash"], "gen": gen, "cond": cond, "seed": None if cfg.greedy else seed,
                  "code": generation_code_hash()})


def clip_path(run_dir: str | Path, row: dict) -> Path:
    """Where a generated clip of an index row is linked in the run folder: ``audio/<seed>/<item>.wav``, and
    ``audio/<seed>/fixed-prompt/<item>.wav`` for the clip generated from the predefined voice prompt."""
    folder = Path(run_dir) / "audio" / str(row["seed"])
    if row.get("voice_prompt") == "fixed":
        folder = folder / "fixed-prompt"
    return folder / f"{safe_name(row['item']['id'])}.wav"


def generate(rec: dict[str, Any], progress: bool = True) -> str:
    """Generate every (item, seed, voice prompt) of the run not already in the generation cache (the
    generations each task needs: ``BenchConfig.prompt_roles``); link them into the run folder; return the
    path of the content-addressed outputs index. Each model row says which voice prompt its clip was
    generated from (``voice_prompt``: ``item`` | ``fixed``; None for music), which scorers judge it
    (``scored_by``: ``all`` | ``similarity`` | ``content``) and what generated it (``device``, ``dtype``)."""
    from evaluation.sets import read_manifest

    cfg = BenchConfig.from_dict(rec["config"])
    ws, run_dir = Path(rec["workspace"]), Path(rec["run_dir"])
    cache = bench_dir(ws) / "cache" / "gen"
    items = read_manifest(rec["manifest"]).items
    voice = rec.get("voice_prompts") or {}
    roles = {task: cfg.prompt_roles(task) for task in sorted({it.task for it in items})}
    todo: dict[tuple[str, int, float], dict[Path, dict]] = {}
    plan = []
    for seed in cfg.seeds:
        for it in items:
            for vp, role in roles[it.task].items():
                prompt = voice.get(it.task) if vp == "fixed" else None
                if vp == "fixed" and prompt is None:
                    raise ValueError(f"run {rec['run_id']}: no predefined voice prompt for {it.task} in its run.json")
                key = _gen_key(rec, cfg, it, seed, prompt)
                wav = cache / key[:2] / f"{key}.wav"
                plan.append((it, seed, vp if it.task in SPEECH else None, role, wav))
                if not wav.is_file():
                    group = (it.task, 0 if cfg.greedy else int(seed), cfg.clip_seconds(it.task, it.text))
                    todo.setdefault(group, {})[wav] = _conditioning(it, prompt)
    if todo:
        _generate_missing(rec, cfg, todo, progress)
    rows = []
    for it, seed, vp, role, wav in plan:
        made = json.loads(wav.with_suffix(".json").read_text()) if wav.with_suffix(".json").is_file() else {}
        row = {"item": it.to_dict(), "seed": int(seed), "system": R.MODEL, "audio": str(wav),
               "audio_sha256": file_hash(wav), "voice_prompt": vp, "scored_by": role,
               "device": made.get("device"), "dtype": made.get("dtype")}
        _link(wav, clip_path(run_dir, row))
        rows.append(row)
    return _write_index(ws, "outputs", rows)


def _generator_meta(generator) -> dict[str, str]:
    """What generates the clips (recorded beside each cached clip and in the result rows)."""
    param = next(iter(generator.model.parameters()), None)
    if param is None:
        return {"device": "unknown", "dtype": "unknown"}
    return {"device": str(param.device), "dtype": str(param.dtype).removeprefix("torch.")}


def _generate_missing(rec: dict, cfg: BenchConfig, todo: dict, progress: bool) -> None:
    """Generate the clips of ``todo``: (task, seed, cap in seconds) -> {wav path: conditioning}, batched per
    group (one cap per batch: a clip's length never depends on its batch mates' caps)."""
    from tqdm.auto import tqdm

    from unimoe.audio_io import save_wav
    from unimoe.inference import CheckpointGenerator

    t0 = time.perf_counter()
    generator = CheckpointGenerator(rec["checkpoint"])
    meta = _generator_meta(generator)
    n = sum(len(v) for v in todo.values())
    log.info(f"generating {n} clips ({len(todo)} task/seed/length groups) from {rec['checkpoint']} "
             f"({cfg.decoding_label()}, {meta['device']} {meta['dtype']})")
    with tqdm(total=n, desc="generate", unit="clip", disable=not progress) as bar:
        for (task, seed, seconds), group in sorted(todo.items()):
            jobs = list(group.items())
            max_frames = generator.frames_for(seconds)
            for s in range(0, len(jobs), cfg.batch_size):
                batch = jobs[s:s + cfg.batch_size]
                outs = generator.generate([_request(cond) for _, cond in batch], cfg.generation(seed, max_frames))
                for (path, _), (wav, _codes) in zip(batch, outs):
                    atomic_write_json(path.with_suffix(".json"), meta)  # before the clip: a clip has its record
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

ITEM_COLUMNS = ["task", "item_id", "seed", "system", "metric", "value", "scorer", "scorer_version", "error",
                "voice_prompt", "transcript"]


def _audio_item(it: dict, audio: str, *, reference_from: str | None, ident: str | None = None, mono: bool = True):
    """The scorer's view of a clip. ``mono=False`` keeps the file's channels: set-level scorers follow their
    reference protocol themselves (OpenL3-FAD embeds a stereo clip as L||R, PaSST downmixes)."""
    from unimoe.audio_io import AudioItem, load_audio, to_mono

    wav, sr = load_audio(audio)
    ref = ref_sr = None
    ref_path = it.get(reference_from) if reference_from else None
    if ref_path:
        r, ref_sr = load_audio(ref_path)
        ref = to_mono(r)
    return AudioItem(id=ident or it["id"], wav=to_mono(wav) if mono else wav, sample_rate=sr, text=it.get("text"),
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
    (per-item parquet: ``ITEM_COLUMNS``), ``aggregates`` (JSON list of set-level aggregate rows),
    ``directions``, ``protocol`` (``scorer_protocol``) and ``failed``: one entry per (task, system) on
    which EVERY item failed (scorer, task, system, n_asked, item, reason). Speech clips are those the
    scorer judges under the run's voice-prompt protocol (``scores_row``).
    A model scorer (``token_nll``) is built with ``checkpoint`` and scores system ``model`` only, once per
    (item, seed)."""
    from evaluation.scorers import ScorerUnavailable, is_model_scorer, load_scorer
    from evaluation.scorers.base import ModelScorer, SetScorer

    base = {"scorer": scorer_name, "tasks": list(tasks), "items": None, "aggregates": None, "version": None,
            "directions": {}, "failed": [], "protocol": None}
    rows = [r for r in read_index(outputs_index) if r["item"]["task"] in tasks]
    try:
        model_scorer = is_model_scorer(scorer_name)
    except ImportError:
        model_scorer = False
    if model_scorer:
        # it scores the item's ground truth under the item's own conditioning, whichever clips were generated
        firsts: dict[tuple[str, int], dict] = {}
        for r in rows:
            if _system(r) == R.MODEL:
                firsts.setdefault((r["item"]["id"], int(r["seed"])), {**r, "voice_prompt": None})
        rows = list(firsts.values())
    else:
        rows = [r for r in rows if scores_row(scorer_name, r)]
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
    res = {**base, "status": "ok", "reason": "", "version": version, "directions": directions,
           "protocol": scorer_protocol(scorer)}
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


def scorer_protocol(scorer) -> str:
    """JSON of what a scorer's numbers depend on beyond its version: its ``info()`` (pooling, crop seed,
    windows, decoding, weights checksum, ...) plus the device and precision it ran at."""
    try:
        info = dict(scorer.info())
    except Exception as e:  # noqa: BLE001 - a scorer without a working info() still scores
        info = {"info_error": f"{type(e).__name__}: {e}"}
    model = getattr(scorer, "model", None)
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    if getattr(scorer, "device", None) is not None:
        info.setdefault("device", str(scorer.device))
    elif param is not None:
        info.setdefault("device", str(param.device))
    if param is not None:
        info.setdefault("dtype", str(param.dtype).removeprefix("torch."))
    fp16 = getattr(getattr(scorer, "options", None), "fp16", None)  # Whisper decodes in fp16 on CUDA
    if fp16 is not None:
        info.setdefault("fp16", bool(fp16))
    return json.dumps(info, sort_keys=True, default=str, ensure_ascii=False)


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


def _recognises(scorer) -> bool:
    """An ASR scorer (``evaluation.scorers.transcript.TranscriptScorer``): its transcripts are recorded."""
    return callable(getattr(scorer, "recognise_all", None))


@contextlib.contextmanager
def _recorded_transcripts(scorer):
    """While a batch is scored, what an ASR scorer's ``recognise_all`` returned per clip id (the raw
    transcript, before the error-rate normalisation; None where recognition failed)."""
    heard: dict[str, str | None] = {}
    inner = getattr(scorer, "recognise_all", None)
    if not callable(inner):
        yield heard
        return
    own = "recognise_all" in getattr(scorer, "__dict__", {})

    def recognise_all(items):
        hyps = inner(items)
        heard.update({str(it.id): h for it, h in zip(items, hyps)})
        return hyps

    scorer.recognise_all = recognise_all
    try:
        yield heard
    finally:
        if own:
            scorer.recognise_all = inner
        else:
            del scorer.recognise_all


def _transcript_path(score_path: Path) -> Path:
    return score_path.with_name(score_path.stem + ".transcript.json")


def _score_items(scorer, version: str, rows: list[dict], cache: Path, progress: bool) -> pd.DataFrame:
    """Per-item scores of every row (clip), from the cache or the scorer, scoring each distinct clip and
    conditioning once (under greedy decoding the seeds share their clips). A failed item (NaN with the
    scorer's reason, or an exception from its batch) is not cached. ASR scorers' transcripts are cached
    beside the scores (an entry without one is scored again)."""
    from tqdm.auto import tqdm

    hears = _recognises(scorer)
    keyed = []
    for r in rows:
        ref_field = _reference_field(r["item"]["task"])
        key = _score_key(scorer.name, version, r["audio_sha256"], r["item"], ref_field)
        keyed.append((r, ref_field, cache / key[:2] / f"{key}.json"))
    todo: dict[Path, tuple[dict, str, str]] = {}
    for r, ref_field, path in keyed:
        cached = path.is_file() and (not hears or _transcript_path(path).is_file())
        if path not in todo and not cached:
            ident = f"{r['item']['id']} [{_system(r)}, seed {r['seed']}]"  # unique in a batch (item_errors' keys)
            todo[path] = (r, ref_field, ident)
    fresh: dict[Path, tuple[dict, str | None, str | None]] = {}
    missing = list(todo.items())
    batch = 8
    with tqdm(total=len(missing), desc=f"score {scorer.name}", unit="clip", disable=not progress or not missing) as bar:
        for s in range(0, len(missing), batch):
            chunk = missing[s:s + batch]
            if hasattr(scorer, "clear_failures"):
                scorer.clear_failures()
            with _recorded_transcripts(scorer) as heard:
                try:
                    got = scorer.score([_audio_item(r["item"], r["audio"], reference_from=f, ident=i)
                                        for _, (r, f, i) in chunk])
                    errors = dict(getattr(scorer, "item_errors", {}) or {})
                except Exception as e:  # noqa: BLE001 - the batch's items fail (reported), the run goes on
                    log.warning(f"{scorer.name}: a batch of {len(chunk)} clips failed: {type(e).__name__}: {e}")
                    got = [{m: math.nan for m in scorer.metrics} for _ in chunk]
                    errors = {i: f"{type(e).__name__}: {e}" for _, (_, _, i) in chunk}
            for (path, (_, _, ident)), sc in zip(chunk, got):
                values = _cacheable(sc)
                text = heard.get(ident) if hears else None
                if ident in errors:
                    fresh[path] = (values, errors[ident], text)
                else:
                    if hears:  # before the scores: a cached score of an ASR scorer has its transcript
                        atomic_write_json(_transcript_path(path), {"transcript": text})
                    atomic_write_json(path, values)
            bar.update(len(chunk))
    out = []
    for r, _, path in keyed:
        if path in fresh:
            values, error, text = fresh[path]
        else:
            values, error = json.loads(path.read_text()), None
            text = json.loads(_transcript_path(path).read_text()).get("transcript") if hears else None
        for metric, v in values.items():
            out.append({"task": r["item"]["task"], "item_id": r["item"]["id"], "seed": int(r["seed"]),
                        "system": _system(r), "metric": metric, "value": math.nan if v is None else float(v),
                        "scorer": scorer.name, "scorer_version": version, "error": error,
                        "voice_prompt": r.get("voice_prompt"), "transcript": text})
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
                        "scorer_version": version, "error": error, "voice_prompt": None, "transcript": None})
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
            # one entry per item: a row (posteriors) or a [frames, D] array (OpenL3 frames)
            emb = list(scorer.embed([_audio_item(it, audio, reference_from=None, mono=False)
                                     for _, audio, it, _ in chunk]))
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
    generated = {s: A.item_rows([gen[f"{s}/{i}"] for i in item_ids]) for s in seeds}
    # Reference embeddings wherever an item has reference audio (a scorer that does not need one, PaSST's
    # IS, still uses it for its paired metric, KL); items without one get no entry (None / a NaN row).
    with_ref = [i for i in item_ids if items[i].get("reference_audio")]
    reference = None
    if with_ref:
        ref_entries = [(i, items[i]["reference_audio"], items[i], file_hash(items[i]["reference_audio"]))
                       for i in with_ref]
        ref = _embed_cached(scorer, version, ref_entries, cache, progress, f"embed {scorer.name} (reference)")
        reference = A.item_rows([ref.get(i) for i in item_ids])
    agg = A.aggregate_set(task, scorer.compare, directions, generated, reference, scorer=scorer.name,
                          scorer_version=version, n_boot=n_boot)
    agg = [{**r, "system": system, "n_asked": n_asked} for r in agg]
    embedded = any(A.any_finite(g) for g in generated.values())
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
    index = read_index(outputs_index)

    def audio_path(r: dict) -> str:
        return str(clip_path(run_dir, r)) if _system(r) == R.MODEL else str(r["audio"])

    audio_of = {(_system(r), r["item"]["id"], int(r["seed"]), r.get("voice_prompt")): audio_path(r) for r in index}
    any_audio = {}
    for (system, iid, seed, _), path in audio_of.items():
        any_audio.setdefault((system, iid, seed), path)
    ok = [s for s in scored if s["status"] == "ok"]
    item_frames = []
    for s in ok:
        if s.get("items"):
            df = pd.read_parquet(s["items"])
            for col, default in (("system", R.MODEL), ("voice_prompt", None), ("transcript", None)):
                if col not in df.columns:  # a score table cached by an older version
                    df[col] = default
            item_frames.append(df)
    items = pd.concat(item_frames, ignore_index=True) if item_frames else pd.DataFrame(columns=ITEM_COLUMNS)
    agg_rows: list[dict] = []
    for s in ok:
        trust = {"scorer_protocol": s.get("protocol")}
        if s.get("items"):
            df = items[items["scorer"] == s["scorer"]]
            for (system, task), sub in df.groupby(["system", "task"], sort=True):
                n_asked = int(sub["item_id"].nunique())
                prompts = sorted({str(v) for v in sub["voice_prompt"] if isinstance(v, str)})
                scores = sub.drop(columns=["system", "error", "voice_prompt", "transcript"], errors="ignore")
                agg_rows += [{**r, **trust, "system": system, "n_asked": n_asked,
                              "voice_prompt": ",".join(prompts) or None}
                             for r in A.aggregate_items(scores, s["directions"], n_boot=cfg.n_boot)]
        if s.get("aggregates"):
            rows = json.loads(Path(s["aggregates"]).read_text())
            for r in rows:
                judged = [x for x in index if x["item"]["task"] == r["task"]
                          and _system(x) == r.get("system", R.MODEL) and scores_row(s["scorer"], x)]
                prompts = sorted({str(x["voice_prompt"]) for x in judged if x.get("voice_prompt")})
                agg_rows.append({"system": R.MODEL, "n_asked": None, **r, **trust,
                                 "voice_prompt": ",".join(prompts) or None,
                                 "reference_hash": reference_set_hash(judged)})
    run_cols = {k: rec[k] for k in ("run_id", "kind", "checkpoint", "checkpoint_hash", "variant", "benchmark",
                                    "git_commit", "config_hash")}
    made: dict[tuple[str, str], set[str]] = {}
    for x in index:
        for k in ("device", "dtype"):
            if _system(x) == R.MODEL and x.get(k):
                made.setdefault((x["item"]["task"], k), set()).add(str(x[k]))

    def generated_by(task: str, key: str) -> str | None:
        return ",".join(sorted(made.get((task, key), ()))) or None

    agg_rows = [{**run_cols, "reference_hash": None, **r, "manifest_hash": rec.get("manifest_hash"),
                 "packages": R.package_versions(),
                 # decoding and the generating device describe the model's clips; the toplines were not generated
                 **({"decoding": cfg.decoding_label(), "device": generated_by(r["task"], "device"),
                     "dtype": generated_by(r["task"], "dtype")} if r.get("system", R.MODEL) == R.MODEL
                    else {"decoding": None, "device": None, "dtype": None})}
                for r in agg_rows]
    failed = [f for s in ok for f in s.get("failed") or []]
    written = {}
    if existing.empty:
        now = R.utc_now()
        item_rows = [{"run_id": rec["run_id"], "variant": rec["variant"], "benchmark": rec["benchmark"], "task": r.task,
                      "item_id": r.item_id, "seed": int(r.seed), "metric": r.metric, "value": float(r.value),
                      "scorer": r.scorer, "scorer_version": r.scorer_version, "system": r.system,
                      "audio_path": audio_of.get((r.system, r.item_id, int(r.seed), _text(r.voice_prompt)))
                      or any_audio.get((r.system, r.item_id, int(r.seed)), ""),
                      "voice_prompt": _text(r.voice_prompt), "transcript": _text(r.transcript)}
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


def _text(x: Any) -> str | None:
    """A string cell, None for a missing one (None or NaN after a concatenation)."""
    return x if isinstance(x, str) else None


def reference_set_hash(rows: Iterable[dict]) -> str | None:
    """The reference recordings a set-level metric compared with: the (item id, file SHA-256) of the
    ``reference_audio`` of the judged rows' items; None when none has one."""
    refs = sorted({(r["item"]["id"], file_hash(r["item"]["reference_audio"]))
                   for r in rows if r["item"].get("reference_audio")})
    return _hash(refs)[:16] if refs else None


def _fmt(x: float) -> str:
    return "nan" if x is None or not math.isfinite(float(x)) else f"{float(x):.4g}"


_SYSTEM_ORDER = {s: i for i, s in enumerate(R.SYSTEMS)}


def render_run_report(rec: dict, agg_rows: list[dict], skipped: list[dict], failed: list[dict] | None = None) -> str:
    failed = failed or []
    lines = [f"# Benchmark run `{rec['run_id']}`", "",
             f"- benchmark **{rec['benchmark']}** ({rec['n_items']} items; tasks {', '.join(rec['tasks'])}), "
             f"seeds {','.join(str(s) for s in rec['config']['seeds'])}",
             f"- checkpoint `{rec['checkpoint']}` (weights sha256 {rec['checkpoint_hash'][:12]}), variant `{rec['variant']}`",
             f"- kind {rec['kind']}, git {rec['git_commit']}, config hash {rec['config_hash']}"
             + (f", manifest hash {rec['manifest_hash']}" if rec.get("manifest_hash") else ""),
             f"- decoding: {BenchConfig.from_dict(rec['config']).decoding_label()}"]
    prompts = rec.get("voice_prompts") or {}
    if prompts:
        lines.append("- voice prompts: WER/CER and MOS on clips from the predefined voice prompt ("
                     + "; ".join(f"{t}: `{Path(v['audio']).name}`, {v['source']}" for t, v in sorted(prompts.items()))
                     + "), speaker similarity on clips from each item's own prompt")
    elif any(t in SPEECH for t in rec["tasks"]):
        lines.append("- voice prompts: every speech metric on clips from each item's own prompt")
    lines.append("")
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
