"""The offline demo benchmark: the held-out ("test" split) rows of the built-in demo corpus.

``root`` is either the demo corpus folder or a workspace holding it::

    <corpus>/metadata.jsonl                one row per line: id, task, language, audio, text, speaker,
                                           video, ..., split ("train" | "test"), paths relative to <corpus>
    <ws>/curate/corpus/demo/metadata.jsonl or <ws>/corpus/demo/metadata.jsonl   (root = <ws>)
    <ws>/curate/work/curated.parquet       optional curated manifest (also <ws>/curate/curated.parquet)

Items: every row with split "test" (there must be some: corpora built before the demo builder held
out a test split are refused with a clear error).
- en_tts / zh_tts: text = the sentence, reference_audio = the row's own recording, voice prompt =
  another *train*-split utterance of the same speaker and language task (whole utterance), the
  candidate with the smallest SHA-256 of ``(seed, target id, candidate id)``; only if the speaker has
  no usable train utterance, another test utterance of theirs (``meta["prompt_pool"] = "test"``); if
  none at all, the row is rejected ``no_prompt``.
- t2m: text = the caption the curation pipeline wrote for the clip (curated manifest row with the
  same id, or its first segment ``<id>__clip0000``) when a curated manifest is found, else the
  corpus row's text (``meta["caption_source"]`` says which); reference_audio = the clip.
- v2m: video = the row's video, reference_audio = its soundtrack, text = caption as for t2m.
``max_items_per_task`` keeps the first N usable test items of each task by id (the rest:
``info["excluded"]``).
Row fields (id, text, paths, speaker) are read by :mod:`unimoe.corpora.demo`, the reader the training
adapter ``data.sources.demo`` uses too.
Rejected: unparsable lines, rows without id/valid task, duplicate ids, test rows whose audio (or
video, v2m) is missing or unreadable, TTS test rows without text. Unusable train-split utterances of
a speaker who needs a prompt are listed in ``info["excluded"]`` (``unusable_prompt``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from evaluation.sets.base import (TTS_LANGUAGE, BenchItem, BenchmarkError, BenchmarkSet, Ledger,
                                  MissingBenchmarkError, Utterance, check_audio, finish, jsonl_rows,
                                  require_dir, resolve, voice_cloning_items)
from unimoe.config import TASKS
from unimoe.corpora.demo import row_id, row_path, row_speaker, row_text

LAYOUT = (
    "  <corpus>/metadata.jsonl  (demo corpus: id, task, audio, text, speaker, video, split, ...)\n"
    "  or a workspace <ws> with <ws>/curate/corpus/demo/ or <ws>/corpus/demo/; optional curated manifest\n"
    "  <ws>/curate/work/curated.parquet"
)
_CORPUS_UNDER_WS = (("curate", "corpus", "demo"), ("corpus", "demo"))
_CURATED_UNDER_WS = (("curate", "work", "curated.parquet"), ("curate", "curated.parquet"))
_META_KEYS = ("source", "tempo_bpm", "key", "instruments", "duration", "sample_rate")


def locate(root: Path) -> tuple[Path, list[Path]]:
    """(corpus folder, candidate workspaces) for a corpus folder or a workspace ``root``."""
    root = require_dir(root, "demo", LAYOUT)
    if (root / "metadata.jsonl").is_file():
        # <ws>/curate/corpus/<name> or <ws>/corpus/<name>; a corpus elsewhere has no workspace
        if root.parent.name != "corpus":
            return root, []
        up = root.parent.parent
        return root, [up.parent if up.name == "curate" else up]
    for parts in _CORPUS_UNDER_WS:
        cand = root.joinpath(*parts)
        if (cand / "metadata.jsonl").is_file():
            return cand, [root]
    searched = [str(root / "metadata.jsonl")]
    searched += [str(root.joinpath(*p, "metadata.jsonl")) for p in _CORPUS_UNDER_WS]
    raise MissingBenchmarkError(
        f"demo: no demo corpus metadata.jsonl found; searched {searched} (build the demo corpus first: "
        f"data.demo_corpus.build_demo_corpus or the curate flow); expected layout:\n{LAYOUT}"
    )


def _curated_captions(path: Path) -> dict[str, tuple[str, str | None]]:
    """id -> (caption, captioner backend) from a curated manifest; clips also under their parent id
    (the first clip, by offset)."""
    try:
        cols = set(pq.read_schema(path).names)
        need = [c for c in ("id", "parent_id", "text", "meta", "offset", "task") if c in cols]
        rows = pq.read_table(path, columns=need).to_pylist()
    except Exception as e:  # a corrupt parquet must say which file
        raise BenchmarkError(f"demo: cannot read the curated manifest {path}: {e}") from None
    if "id" not in cols or "text" not in cols:
        raise BenchmarkError(f"demo: curated manifest {path} has no id/text columns")
    out: dict[str, tuple[str, str | None]] = {}
    by_parent: dict[str, list[tuple[float, str, str | None]]] = {}
    for r in rows:
        text = r.get("text")
        if r.get("task") not in (None, "t2m", "v2m") or not (isinstance(text, str) and text.strip()):
            continue
        try:
            backend = (json.loads(r.get("meta") or "{}").get("caption") or {}).get("backend")
        except (ValueError, AttributeError):
            backend = None
        out[r["id"]] = (text.strip(), backend)
        if r.get("parent_id"):
            by_parent.setdefault(r["parent_id"], []).append((float(r.get("offset") or 0.0), text.strip(), backend))
    for parent, clips in by_parent.items():
        if parent not in out:
            _, text, backend = min(clips, key=lambda c: c[0])
            out[parent] = (text, backend)
    return out


def _find_curated(curated: str | Path | bool | None, workspaces: list[Path]) -> Path | None:
    if curated is False:
        return None
    if curated not in (None, True):
        p = Path(curated)  # type: ignore[arg-type]
        if not p.is_file():
            raise MissingBenchmarkError(f"demo: curated manifest {p} not found")
        return p
    for ws in workspaces:
        for parts in _CURATED_UNDER_WS:
            if ws.joinpath(*parts).is_file():
                return ws.joinpath(*parts)
    if curated is True:
        raise MissingBenchmarkError(
            f"demo: no curated manifest under {[str(w) for w in workspaces]} "
            f"(looked for {['/'.join(p) for p in _CURATED_UNDER_WS]})"
        )
    return None


def load_demo(
    root: str | Path,
    *,
    max_items_per_task: int | None = None,
    seed: int = 0,
    curated: str | Path | bool | None = None,
) -> BenchmarkSet:
    if max_items_per_task is not None and max_items_per_task < 1:
        raise ValueError(f"demo: max_items_per_task must be >= 1, got {max_items_per_task}")
    corpus, workspaces = locate(Path(root))
    meta_file = corpus / "metadata.jsonl"
    ledger = Ledger()
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    has_split = False
    for ref, row in jsonl_rows(meta_file, ledger):
        has_split = has_split or "split" in row
        rid = row_id(row)  # the training adapter's rule too (unimoe.corpora.demo)
        if rid is None:
            ledger.reject(ref, None, "missing_id", "row has no id")
            continue
        if row.get("task") not in TASKS:
            ledger.reject(ref, rid, "invalid_task", f"task {row.get('task')!r} is not one of {TASKS}")
            continue
        if rid in rows:
            ledger.reject(ref, rid, "duplicate_id", f"id {rid!r} already listed at {rows[rid][0]}")
            continue
        rows[rid] = (ref, row)
    if not has_split:
        raise BenchmarkError(
            f"demo: {meta_file} has no 'split' column (built before the demo corpus held out a test split); "
            "rebuild it with the current data.demo_corpus"
        )
    test = sorted(rid for rid, (_, r) in rows.items() if r.get("split") == "test")
    if not test:
        raise BenchmarkError(f"demo: {meta_file} has no rows with split 'test'; nothing to benchmark")

    def usable(rid: str, for_prompt: bool) -> Utterance | None:
        ref, r = rows[rid]
        report = ledger.exclude if for_prompt else ledger.reject
        why_prefix = "prompt candidate: " if for_prompt else ""
        text = row_text(r)
        if r["task"] in TTS_LANGUAGE and not text:
            report(ref, rid, "unusable_prompt" if for_prompt else "empty_text", f"{why_prefix}no transcript")
            return None
        audio = row_path(r, "audio")
        if audio is None:
            report(ref, rid, "unusable_prompt" if for_prompt else "missing_file", f"{why_prefix}no audio path")
            return None
        chk = check_audio(resolve(audio, corpus))
        if not chk.ok:
            report(ref, rid, "unusable_prompt" if for_prompt else chk.reason, f"{why_prefix}{chk.detail}")
            return None
        meta = {k: r[k] for k in _META_KEYS if r.get(k) is not None}
        return Utterance(rid, row_speaker(r) or "", resolve(audio, corpus).resolve(), text or "", chk.duration,
                         ref, meta)

    curated_path = _find_curated(curated, workspaces)
    captions = _curated_captions(curated_path) if curated_path else {}
    items: list[BenchItem] = []
    for task in TASKS:
        ids = [rid for rid in test if rows[rid][1]["task"] == task]
        if not ids:
            continue
        if task in TTS_LANGUAGE:
            targets = [u for u in (usable(rid, False) for rid in ids) if u is not None]
            speakers = {u.speaker for u in targets}
            train = [u for u in (
                usable(rid, True) for rid, (_, r) in sorted(rows.items())
                if r["task"] == task and r.get("split") == "train" and (row_speaker(r) or "") in speakers
            ) if u is not None]  # fmt: skip
            items += voice_cloning_items(targets, train, task=task, seed=seed, ledger=ledger,
                                         fallback=targets, primary_note="train", fallback_note="test")
            continue
        for rid in ids:
            u = usable(rid, False)
            if u is None:
                continue
            ref, r = rows[rid]
            video = None
            if task == "v2m":
                v = row_path(r, "video")
                vpath = resolve(v, corpus) if v is not None else None
                if vpath is None or not vpath.is_file() or vpath.stat().st_size == 0:
                    ledger.reject(ref, rid, "missing_video", f"video {v!r} not found (or empty) under {corpus}")
                    continue
                video = str(vpath.resolve())
            caption, backend = captions.get(rid, (None, None))
            source = "curated" if caption else "metadata"
            caption = caption or u.text or None
            if task == "t2m" and not caption:
                ledger.reject(ref, rid, "empty_text", "no caption in the curated manifest or the corpus row")
                continue
            meta = {**u.meta, "source_ref": ref, "caption_source": source}
            if backend:
                meta["captioner"] = backend
            items.append(BenchItem(id=rid, task=task, language="en" if caption else None, text=caption,
                                   reference_audio=str(u.audio), video=video, meta=meta))
    # max_items_per_task: the first N *usable* test items of each task by id
    if max_items_per_task is not None:
        kept: list[BenchItem] = []
        for task in TASKS:
            task_items = sorted((it for it in items if it.task == task), key=lambda it: it.id)
            kept += task_items[:max_items_per_task]
            for it in task_items[max_items_per_task:]:
                ledger.exclude(rows[it.id][0], it.id, "max_items_per_task",
                               f"more than {max_items_per_task} usable {task} test items")
        items = kept
    return finish(
        "demo",
        items,
        ledger,
        root=str(corpus),
        curated=str(curated_path) if curated_path else None,
        protocol={
            "benchmark": "UniMoE-Audio offline demo (demo corpus rows with split 'test')",
            "prompt": ("another train-split utterance of the same speaker (whole utterance), the smallest "
                       "sha256('unimoe-bench-prompt:<seed>:<target>:<candidate>'); else another test one"),
            "caption": "curated manifest caption when found, else the corpus row's text",
            "max_items_per_task": max_items_per_task,
            "seed": seed,
        },
    )
