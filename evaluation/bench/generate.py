"""Steps 1 (prepare), 2 (generate) and 2b (toplines) of a benchmark run (see ``evaluation.bench``)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable

from evaluation import results as R
from evaluation.bench.cache import (_hash, _link, _write_index, bench_dir, benchmark_root, file_hash,
                                    find_checkpoint, generation_code_hash, new_run_id, read_index, safe_name)
from evaluation.bench.config import SPEECH, BenchConfig
from unimoe.common.files import atomic_write_json

log = logging.getLogger(__name__)


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

    from unimoe.common.audio import save_wav
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
    from unimoe.common.audio import save_wav

    key = codec_key(checkpoint_config(checkpoint))
    folder = bench_dir(ws) / "cache" / "resynth" / key[:16]
    paths = [folder / f"{file_hash(a)}.wav" for a in audio]
    missing = sorted({(str(a), p) for a, p in zip(audio, paths) if not p.is_file()}, key=lambda x: str(x[1]))
    for a, path in tqdm(missing, desc="codec resynthesis", unit="clip", disable=not progress or not missing):
        codec = checkpoint_codec(checkpoint)
        codes = encode_cached(codec, a, file_hash(a), codes_cache_dir(ws), key)
        save_wav(path, codec.decode([codes])[0], codec.sample_rate)  # atomic
    return [str(p) for p in paths]

