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

Text is LibriSpeech's (upper case, no punctuation); the WER normaliser lower-cases it. Lines, ids and
texts are parsed by :mod:`unimoe.corpora.librispeech`, the parser the training adapter
``data.sources.librispeech`` uses too, so training and reference texts follow one rule. Rejected:
unparsable or duplicate transcript lines, lines without audio (``missing_file``), audio without a
line (``missing_text``), unreadable audio, ids that do not match their chapter folder.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.sets.base import (BenchmarkSet, Ledger, MissingBenchmarkError, Utterance, check_audio, finish,
                                  reject_unlisted, require_dir, require_file, targets_in_range, text_rows,
                                  voice_cloning_items)
from unimoe.corpora.librispeech import (AUDIO_SUFFIXES, TRANS_SUFFIX, audio_names, folder_problem,
                                        parse_trans_line)

LAYOUT = (
    "  <root>/test-clean/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt  ('<utt-id> <TEXT>' per line)\n"
    "  <root>/test-clean/<speaker>/<chapter>/<utt-id>.flac"
)


def _subset_dir(root: Path, subset: str) -> Path:
    root = require_dir(root, f"librispeech-{subset}", LAYOUT)
    if root.name == subset or (not (root / subset).is_dir() and any(root.glob(f"*/*/*{TRANS_SUFFIX}"))):
        return root
    return require_dir(root / subset, f"librispeech-{subset}", LAYOUT)


def scan_subset(sub: Path, ledger: Ledger) -> dict[str, Utterance]:
    """All usable utterances of one LibriSpeech subset folder; every bad row goes to ``ledger``."""
    trans = sorted(sub.glob(f"*/*/*{TRANS_SUFFIX}"))
    if not trans:
        raise MissingBenchmarkError(
            f"librispeech: no <speaker>/<chapter>/*.trans.txt under {sub}; expected layout:\n{LAYOUT}"
        )
    pool: dict[str, Utterance] = {}
    seen: set[str] = set()  # every id a line has claimed, usable or not
    listed: set[Path] = set()
    for tf in trans:
        chapter_dir = tf.parent
        speaker, chapter = chapter_dir.parent.name, chapter_dir.name
        for ref, line in text_rows(tf, ledger, tf.relative_to(sub).as_posix()):
            row = parse_trans_line(line)  # text_rows skips blank lines: never None here
            utt, text = row.utt, row.text
            why = folder_problem(utt, speaker, chapter)
            if why is not None:
                ledger.reject(ref, utt or None, "bad_row", why)
                continue
            if utt in seen:  # the first line of an utterance is its line, usable or not (as in training)
                ledger.reject(ref, utt, "duplicate_id", f"utterance {utt!r} already listed")
                continue
            seen.add(utt)
            names = audio_names(utt)  # the FLAC unless only the .wav exists
            found = [chapter_dir / n for n in names if (chapter_dir / n).is_file()]
            audio = found[0] if found else chapter_dir / names[0]
            listed.add(audio)
            if not text:
                ledger.reject(ref, utt, "empty_text", "empty transcript")
                continue
            chk = check_audio(audio)
            if not chk.ok:
                ledger.reject(ref, utt, chk.reason, chk.detail)
                continue
            pool[utt] = Utterance(utt, speaker, audio.resolve(), text, chk.duration, ref,
                                  {"chapter": chapter})
    reject_unlisted([p for ext in AUDIO_SUFFIXES for p in sub.glob(f"*/*/*{ext}")], listed, sub, ledger,
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
