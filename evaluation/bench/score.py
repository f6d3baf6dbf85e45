"""Step 3 of a benchmark run: one scorer over the clips of the tasks it applies to, with per-item scores
and embeddings cached (see ``evaluation.bench``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation import aggregate as A
from evaluation import results as R
from evaluation.bench.cache import _hash, file_hash, generation_code_hash, read_index, safe_name
from evaluation.bench.config import SPEECH, is_model_scorer, scores_row
from unimoe.common.files import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

# Options the runner gives a scorer beyond its defaults: PocketSphinx decodes a batch on every usable
# core (worker processes; its transcripts do not depend on the process). The runner's entry points
# (the CLI, Prefect's engine, pytest) guard their main module, as spawned workers need.
RUNNER_SCORER_OPTIONS: dict[str, dict[str, Any]] = {
    "pocketsphinx_wer": {"processes": len(os.sched_getaffinity(0))},
}

ITEM_COLUMNS = ["task", "item_id", "seed", "system", "metric", "value", "scorer", "scorer_version", "error",
                "voice_prompt", "transcript"]


def _audio_item(it: dict, audio: str, *, reference_from: str | None, ident: str | None = None, mono: bool = True):
    """The scorer's view of a clip. ``mono=False`` keeps the file's channels: set-level scorers follow their
    reference protocol themselves (OpenL3-FAD embeds a stereo clip as L||R, PaSST downmixes)."""
    from evaluation.scorers.base import AudioItem
    from unimoe.common.audio import load_audio, to_mono

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
    from evaluation.scorers import ScorerUnavailable, load_scorer
    from evaluation.scorers.base import ModelScorer, SetScorer

    base = {"scorer": scorer_name, "tasks": list(tasks), "items": None, "aggregates": None, "version": None,
            "directions": {}, "failed": [], "protocol": None}
    rows = [r for r in read_index(outputs_index) if r["item"]["task"] in tasks]
    model_scorer = is_model_scorer(scorer_name)
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
        options = ({"checkpoint": checkpoint, "codes_cache": str(Path(cache_dir) / "codes")} if model_scorer
                   else dict(RUNNER_SCORER_OPTIONS.get(scorer_name, {})))
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

