"""LibriSpeech test-clean, cross-sentence voice cloning (the VALL-E / F5-TTS protocol).

Layout (``root`` = the ``LibriSpeech`` folder holding ``test-clean/``, or ``test-clean/`` itself)::

    LibriSpeech/test-clean/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   "<utt-id> <TEXT>" per line
    LibriSpeech/test-clean/<speaker>/<chapter>/<speaker>-<chapter>-<n>.flac

Protocol (deterministic; recorded in ``info["protocol"]``):
- usable pool: every transcript line whose ``.flac`` opens (header check);
- targets: pool utterances of ``min_duration`` <= duration <= ``max_duration`` (4-10 s, VALL-E and
  F5-TTS); the others go to ``info["excluded"]`` (``duration_out_of_range``);
- voice prompt: another utterance of the *same speaker* from the same 4-10 s pool, the whole
  utterance (not a 3 s crop), chosen by ranking the candidates with SHA-256 of
  ``(seed, target id, candidate id)`` and taking the first — stable however many other speakers or
  files exist. If the speaker has no other 4-10 s utterance, any other of their utterances is used
  (``meta["prompt_pool"] = "any_duration"``); if none, the target is rejected ``no_prompt``;
- ``pairs=<file>``: instead, use an explicit pair list in F5-TTS's format (tab-separated
  ``ref_utt ref_dur ref_txt gen_utt gen_dur gen_txt``, e.g. its
  ``librispeech_pc_test_clean_cross_sentence.lst``): targets, prompts and both texts come from the list.

Text is LibriSpeech's (upper case, no punctuation); the WER normaliser lower-cases it. Rejected:
unparsable or duplicate transcript lines, lines without audio (``missing_file``), audio without a
line (``missing_text``), unreadable audio, ids that do not match their chapter folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from evaluation.sets.base import (
    BenchmarkSet,
    Ledger,
    MissingBenchmarkError,
    Utterance,
    check_audio,
    finish,
    reject_unlisted,
    require_dir,
    require_file,
    targets_in_range,
    text_rows,
    voice_cloning_items,
)

LAYOUT = (
    "  <root>/test-clean/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt  ('<utt-id> <TEXT>' per line)\n"
    "  <root>/test-clean/<speaker>/<chapter>/<utt-id>.flac"
)
_UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _subset_dir(root: Path, subset: str) -> Path:
    root = require_dir(root, f"librispeech-{subset}", LAYOUT)
    if root.name == subset or (not (root / subset).is_dir() and any(root.glob("*/*/*.trans.txt"))):
        return root
    return require_dir(root / subset, f"librispeech-{subset}", LAYOUT)


def scan_subset(sub: Path, ledger: Ledger) -> dict[str, Utterance]:
    """All usable utterances of one LibriSpeech subset folder; every bad row goes to ``ledger``."""
    trans = sorted(sub.glob("*/*/*.trans.txt"))
    if not trans:
        raise MissingBenchmarkError(
            f"librispeech: no <speaker>/<chapter>/*.trans.txt under {sub}; expected layout:\n{LAYOUT}"
        )
    pool: dict[str, Utterance] = {}
    listed: set[Path] = set()
    for tf in trans:
        chapter_dir = tf.parent
        for ref, line in text_rows(tf, ledger, tf.relative_to(sub).as_posix()):
            utt, _, text = line.strip().partition(" ")
            text = text.strip()
            m = _UTT.match(utt)
            if not m or (m.group(1), m.group(2)) != (chapter_dir.parent.name, chapter_dir.name):
                where = f"{chapter_dir.parent.name}/{chapter_dir.name}"
                ledger.reject(ref, utt or None, "bad_row", f"id {utt!r} is not <speaker>-<chapter>-<n> of {where}")
                continue
            if utt in pool:
                ledger.reject(ref, utt, "duplicate_id", f"utterance {utt!r} already listed")
                continue
            audio = chapter_dir / f"{utt}.flac"
            if not audio.is_file() and (chapter_dir / f"{utt}.wav").is_file():
                audio = chapter_dir / f"{utt}.wav"
            listed.add(audio)
            if not text:
                ledger.reject(ref, utt, "empty_text", "empty transcript")
                continue
            chk = check_audio(audio)
            if not chk.ok:
                ledger.reject(ref, utt, chk.reason, chk.detail)
                continue
            pool[utt] = Utterance(utt, m.group(1), audio.resolve(), text, chk.duration, ref,
                                  {"chapter": m.group(2)})
    reject_unlisted([*sub.glob("*/*/*.flac"), *sub.glob("*/*/*.wav")], listed, sub, ledger,
                    "its chapter's .trans.txt")
    return pool


def _pairs(path: Path, pool: dict[str, Utterance], ledger: Ledger) -> tuple[list[Utterance], list[Utterance]]:
    """Targets and (per target, same order) prompts from an F5-TTS style pair list."""
    require_file(path, "librispeech pairs", "  tab-separated 'ref_utt ref_dur ref_txt gen_utt gen_dur gen_txt'")
    targets, prompts = [], []
    seen: set[str] = set()
    for ref, line in text_rows(path, ledger):
        cols = line.split("\t")
        if len(cols) != 6:
            ledger.reject(ref, None, "bad_row", f"expected 6 tab-separated fields, got {len(cols)}")
            continue
        ref_utt, _, ref_txt, gen_utt, _, gen_txt = (c.strip() for c in cols)
        if gen_utt in seen:
            ledger.reject(ref, gen_utt, "duplicate_id", f"target {gen_utt!r} already listed")
            continue
        missing = [u for u in (gen_utt, ref_utt) if u not in pool]
        if missing:
            ledger.reject(ref, gen_utt or None, "missing_file", f"utterance(s) {missing} not usable in test-clean")
            continue
        if not gen_txt or not ref_txt:
            ledger.reject(ref, gen_utt, "empty_text", "empty text in the pair list")
            continue
        t, p = pool[gen_utt], pool[ref_utt]
        if t.speaker != p.speaker:
            ledger.reject(ref, gen_utt, "bad_row", f"prompt {ref_utt} is a different speaker")
            continue
        seen.add(gen_utt)
        targets.append(Utterance(t.id, t.speaker, t.audio, gen_txt, t.duration, ref, t.meta))
        prompts.append(Utterance(p.id, p.speaker, p.audio, ref_txt, p.duration, ref, p.meta))
    return targets, prompts


def load_librispeech_test_clean(
    root: str | Path,
    *,
    subset: str = "test-clean",
    min_duration: float | None = 4.0,
    max_duration: float | None = 10.0,
    seed: int = 0,
    pairs: str | Path | None = None,
) -> BenchmarkSet:
    sub = _subset_dir(Path(root), subset)
    ledger = Ledger()
    pool = scan_subset(sub, ledger)
    protocol = {
        "benchmark": f"LibriSpeech {subset}, cross-sentence voice cloning",
        "text": "LibriSpeech transcripts as given (upper case, no punctuation)",
    }
    if pairs is not None:
        targets, prompts = _pairs(Path(pairs), pool, ledger)
        items = []
        for t, p in zip(targets, prompts):  # one fixed prompt per target: reuse the pairing helper
            items += voice_cloning_items([t], [p], task="en_tts", seed=seed, ledger=ledger)
        protocol.update(pairs=str(pairs), prompt="the prompt utterance named in the pair list (whole)")
    else:
        targets = targets_in_range(pool.values(), min_duration, max_duration, ledger)
        items = voice_cloning_items(targets, targets, task="en_tts", seed=seed, ledger=ledger,
                                    fallback=pool.values(), fallback_note="any_duration")
        protocol.update(
            target_duration=[min_duration, max_duration],
            prompt=("another same-speaker utterance from the target duration range (whole utterance), the "
                    "smallest sha256('unimoe-bench-prompt:<seed>:<target>:<candidate>'); else any other "
                    "same-speaker utterance ('any_duration')"),
            seed=seed,
        )
    return finish(f"librispeech-{subset}", items, ledger, root=str(sub), protocol=protocol)
