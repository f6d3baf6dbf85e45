"""AISHELL-3 test split, Mandarin voice cloning.

Layout (``root`` = the ``AISHELL-3`` folder holding ``test/``, or ``test/`` itself)::

    AISHELL-3/test/content.txt                 "SSB00050001.wav<TAB>广 guang3 州 zhou1 ..." per line
    AISHELL-3/test/wav/<speaker>/<file>.wav    e.g. wav/SSB0005/SSB00050001.wav

``content.txt`` interleaves each character with its tone-numbered pinyin; the target text is the
characters alone, Latin words such as "KTV" kept (pinyin kept in ``meta["pinyin"]``). Lines are parsed by
:mod:`unimoe.corpora.aishell3`, the parser the training adapter ``data.sources.aishell3`` uses too, so
training and reference texts follow one rule. The speaker is the wav's folder name.

Protocol (deterministic): every usable utterance is a target (optionally limited to
``min_duration``..``max_duration``; out-of-range ones go to ``info["excluded"]``); its voice prompt
is another utterance of the same speaker from the same pool (whole utterance), the candidate with
the smallest SHA-256 of ``(seed, target id, candidate id)``; a speaker with no other utterance
rejects the target ``no_prompt``. Rejected: unparsable/duplicate lines, lines whose wav is missing
or unreadable, wavs without a line (``missing_text``).
"""

from __future__ import annotations

from pathlib import Path

from evaluation.sets.base import (BenchmarkSet, Ledger, Utterance, check_audio, finish, reject_unlisted,
                                  require_dir, require_file, targets_in_range, text_rows, voice_cloning_items)
from unimoe.corpora.aishell3 import parse_content_line, speaker_of, strip_pinyin

__all__ = ["load_aishell3_test", "strip_pinyin"]

LAYOUT = (
    "  <root>/test/content.txt   '<file>.wav<TAB>广 guang3 州 zhou1 ...' per line\n"
    "  <root>/test/wav/<speaker>/<file>.wav"
)


def _split_dir(root: Path, split: str) -> Path:
    root = require_dir(root, f"aishell3-{split}", LAYOUT)
    if (root / split / "content.txt").is_file() or not (root / "content.txt").is_file():
        root = root / split
    require_file(root / "content.txt", f"aishell3-{split}", LAYOUT)
    return root


def load_aishell3_test(
    root: str | Path,
    *,
    split: str = "test",
    min_duration: float | None = None,
    max_duration: float | None = None,
    seed: int = 0,
) -> BenchmarkSet:
    sdir = _split_dir(Path(root), split)
    content = sdir / "content.txt"
    ledger = Ledger()
    wavs: dict[str, list[Path]] = {}
    for p in sorted((sdir / "wav").glob("*/*.wav")):
        wavs.setdefault(p.name, []).append(p)
    used: set[Path] = set()
    pool: dict[str, Utterance] = {}
    for ref, line in text_rows(content, ledger):
        row = parse_content_line(line)
        fname, utt = row.file, row.utt
        found = wavs.get(fname, [])
        used.update(found)
        if utt in pool:
            ledger.reject(ref, utt, "duplicate_id", f"utterance {utt!r} already listed")
            continue
        chars, pinyin = row.text, row.pinyin
        if not chars:
            ledger.reject(ref, utt, "empty_text", "no characters after stripping pinyin")
            continue
        if not found:
            ledger.reject(ref, utt, "missing_file", f"expected wav/{speaker_of(utt)}/{fname} under {sdir}")
            continue
        if len(found) > 1:
            ledger.reject(ref, utt, "duplicate_id",
                          f"{fname} exists in several speaker folders: {[p.parent.name for p in found]}")
            continue
        chk = check_audio(found[0])
        if not chk.ok:
            ledger.reject(ref, utt, chk.reason, chk.detail)
            continue
        pool[utt] = Utterance(utt, found[0].parent.name, found[0].resolve(), chars, chk.duration, ref,
                              {"pinyin": pinyin})
    reject_unlisted((p for paths in wavs.values() for p in paths), used, sdir, ledger, "content.txt")
    targets = targets_in_range(pool.values(), min_duration, max_duration, ledger)
    items = voice_cloning_items(targets, targets, task="zh_tts", seed=seed, ledger=ledger)
    return finish(
        f"aishell3-{split}",
        items,
        ledger,
        root=str(sdir),
        protocol={
            "benchmark": f"AISHELL-3 {split}, voice cloning",
            "text": "content.txt characters with the pinyin removed",
            "target_duration": [min_duration, max_duration],
            "prompt": ("another same-speaker utterance of the target pool (whole utterance), the smallest "
                       "sha256('unimoe-bench-prompt:<seed>:<target>:<candidate>')"),
            "seed": seed,
        },
    )
