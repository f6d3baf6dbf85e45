"""Seed-TTS eval test sets (BytedanceSpeech/seed-tts-eval): test-en and test-zh, zero-shot voice cloning.

Layout (``root`` = the ``seedtts_testset`` folder, or its ``en/`` / ``zh/`` folder itself)::

    seedtts_testset/en/meta.lst          utt|prompt_text|prompt_wav|target_text[|target_wav]
    seedtts_testset/en/prompt-wavs/*.wav  voice prompts (paths in meta.lst are relative to its folder)
    seedtts_testset/en/wavs/<utt>.wav     ground truth, optional
    seedtts_testset/zh/meta.lst           same format (also zh/hardcase.lst: ``list_name="hardcase.lst"``)

Each line gives: the utterance id, the prompt's transcript, the prompt wav, the text to synthesise
and (5-field variant) the ground-truth wav. For 4-field lines the ground truth is looked up at
``wavs/<utt>.wav`` (the convention of F5-TTS's eval tools); when it is absent the item is kept with
``reference_audio=None`` (WER and SIM do not need it) and listed in ``info["missing"]``. Items keep
meta.lst order. A line with the wrong number of fields, an empty id/text, a duplicate id or a
missing/unreadable prompt wav is rejected (``info["rejected"]``, with its line number).
"""

from __future__ import annotations

from pathlib import Path

from evaluation.sets.base import (BenchItem, BenchmarkSet, Ledger, check_audio, finish, require_dir,
                                  require_file, resolve, text_rows)

LAYOUT = (
    "  <root>/<lang>/meta.lst   lines 'utt|prompt_text|prompt_wav|target_text[|target_wav]'\n"
    "  <root>/<lang>/prompt-wavs/*.wav, optional <root>/<lang>/wavs/<utt>.wav   (lang: en or zh)"
)


def _list_path(root: Path, lang: str, list_name: str) -> Path:
    root = require_dir(Path(root), f"seedtts-{lang}", LAYOUT)
    # root may be seedtts_testset/ or seedtts_testset/<lang>/ itself (but not the other language's folder)
    own_folder = root.name == lang or root.name not in ("en", "zh")
    if own_folder and not (root / lang / list_name).is_file() and (root / list_name).is_file():
        return root / list_name
    return require_file(root / lang / list_name, f"seedtts-{lang}", LAYOUT)


def load_seedtts(root: str | Path, lang: str, *, list_name: str = "meta.lst") -> BenchmarkSet:
    if lang not in ("en", "zh"):
        raise ValueError(f"seedtts: lang must be 'en' or 'zh', got {lang!r}")
    lst = _list_path(Path(root), lang, list_name)
    base = lst.parent
    task = f"{lang}_tts"
    ledger = Ledger()
    items: list[BenchItem] = []
    seen: set[str] = set()
    fields_seen: dict[int, int] = {}
    for ref, line in text_rows(lst, ledger):
        parts = [p.strip() for p in line.strip().split("|")]
        if len(parts) not in (4, 5):
            ledger.reject(ref, parts[0] or None, "bad_row",
                          f"expected 4 or 5 '|'-separated fields, got {len(parts)}")
            continue
        fields_seen[len(parts)] = fields_seen.get(len(parts), 0) + 1
        utt, prompt_text, prompt_wav, target_text = parts[:4]
        if not utt:
            ledger.reject(ref, None, "missing_id", "empty utterance id")
            continue
        if utt in seen:
            ledger.reject(ref, utt, "duplicate_id", f"utterance {utt!r} already listed earlier")
            continue
        if not target_text:
            ledger.reject(ref, utt, "empty_text", "empty target text")
            continue
        if not prompt_text:
            ledger.reject(ref, utt, "empty_text", "empty prompt transcript")
            continue
        if not prompt_wav:
            ledger.reject(ref, utt, "missing_file", "no prompt wav given")
            continue
        prompt_path = resolve(prompt_wav, base)
        chk = check_audio(prompt_path)
        if not chk.ok:
            ledger.reject(ref, utt, chk.reason, f"prompt wav: {chk.detail}")
            continue
        gt = resolve(parts[4], base) if len(parts) == 5 and parts[4] else base / "wavs" / f"{utt}.wav"
        gt_chk = check_audio(gt)
        if not gt_chk.ok:
            ledger.miss(ref, utt, gt_chk.reason, f"ground-truth wav: {gt_chk.detail}")
        seen.add(utt)
        items.append(
            BenchItem(
                id=utt,
                task=task,
                language=lang,
                text=target_text,
                prompt_audio=str(prompt_path),
                prompt_text=prompt_text,
                reference_audio=str(gt) if gt_chk.ok else None,
                meta={"source_ref": ref, "prompt_duration": round(chk.duration, 6)},
            )
        )
    return finish(
        f"seedtts-{lang}",
        items,
        ledger,
        root=str(base),
        source=str(lst),
        protocol={
            "benchmark": f"Seed-TTS eval test-{lang} ({list_name})",
            "line_fields": {str(k): v for k, v in sorted(fields_seen.items())},
            "prompt": "the prompt wav given on each meta.lst line",
            "reference": "5th field, else wavs/<utt>.wav when present",
        },
    )


def load_seedtts_en(root: str | Path, *, list_name: str = "meta.lst") -> BenchmarkSet:
    return load_seedtts(root, "en", list_name=list_name)


def load_seedtts_zh(root: str | Path, *, list_name: str = "meta.lst") -> BenchmarkSet:
    return load_seedtts(root, "zh", list_name=list_name)
