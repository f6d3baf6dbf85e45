"""LibriSpeech and LibriTTS (English TTS).

Layouts (``root`` is the corpus folder holding the subsets, or one subset folder)::

    LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
                                            <speaker>-<chapter>.trans.txt    ("<utt-id> <TEXT>" per line)
    LibriTTS/<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<p>_<s>.wav
                                         <utt-id>.normalized.txt / <utt-id>.original.txt
                                         <speaker>_<chapter>.trans.tsv   (utt-id, original, normalized)

``subset`` is e.g. ``train-clean-100`` / ``dev-clean`` / ``test-clean``; the split is its prefix
(``train`` / ``dev`` / ``test``) and the subset name is kept in ``meta["subset"]``. Every audio
file and every transcript line is an input row: audio without a transcript is quarantined
``missing_text``, a transcript line without audio ``missing_file``, a ``.trans.txt`` line whose id is
not ``<speaker>-<chapter>-<n>`` of its folder ``bad_row`` and a second line for the same utterance
``duplicate_id``. Lines, ids and texts are parsed by :mod:`unimoe.corpora.librispeech`, the parser the
benchmark set ``librispeech-test-clean`` uses too.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import (
    Adapter,
    Item,
    QuarantineReason,
    find_audio_files,
    read_bytes,
    read_text_lines,
    rel,
)
from unimoe.corpora.librispeech import (
    AUDIO_SUFFIXES,
    TEXT_VARIANTS,
    TRANS_SUFFIX,
    folder_problem,
    parse_trans_line,
    parse_trans_tsv_line,
    speaker_of,
    split_of,
    text_file_name,
)


class LibriSpeechAdapter(Adapter):
    """Options: ``text_variant`` ("normalized" | "original", LibriTTS per-utterance files)."""

    name = "librispeech"
    source_corpus = "LibriSpeech"
    default_licence = "CC-BY-4.0"
    default_split = "train"

    def __init__(self, root, *, text_variant: str = "normalized", **common) -> None:
        super().__init__(root, **common)
        if text_variant not in TEXT_VARIANTS:
            raise ValueError(f"text_variant must be 'normalized' or 'original', got {text_variant!r}")
        self.text_variant = text_variant

    def _subset(self, chapter_dir: Path) -> tuple[str | None, str | None]:
        parts = Path(rel(chapter_dir, self.root)).parts
        candidates = list(parts) + [self.root.name]
        for part in candidates:
            split = split_of(part)
            if split:
                return split, part
        return None, None

    def _transcripts(
        self, chapter_dir: Path
    ) -> tuple[dict[str, tuple[str, str]], list[tuple[str, str, QuarantineReason]]]:
        """utt-id -> (text, source_ref) from the chapter's ``*.trans.txt`` / ``*.trans.tsv``, and
        (source_ref, id, reason) for each ``.trans.txt`` line that is refused."""
        out: dict[str, tuple[str, str]] = {}
        bad: list[tuple[str, str, QuarantineReason]] = []
        for tf in sorted(chapter_dir.glob(f"*{TRANS_SUFFIX}")):
            for i, line in read_text_lines(tf):
                row = parse_trans_line(line)
                if row is None:
                    continue
                ref = f"{rel(tf, self.root)}:{i}"
                why = folder_problem(row.utt, chapter_dir.parent.name, chapter_dir.name)
                if why is not None:
                    bad.append((ref, row.utt, QuarantineReason("bad_row", why)))
                elif row.utt in out:
                    bad.append((ref, row.utt, QuarantineReason(
                        "duplicate_id", f"utterance {row.utt!r} already listed at {out[row.utt][1]}")))
                else:
                    out[row.utt] = (row.text, ref)
        for tf in sorted(chapter_dir.glob("*.trans.tsv")):  # LibriTTS: utt \t original \t normalized
            for i, line in read_text_lines(tf):
                row = parse_trans_tsv_line(line, self.text_variant)
                if row is not None:
                    out.setdefault(row.utt, (row.text, f"{rel(tf, self.root)}:{i}"))
        return out, bad

    def items(self) -> Iterator[Item | ManifestRecord]:
        by_dir: dict[Path, list[Path]] = defaultdict(list)
        for p in find_audio_files(self.root, AUDIO_SUFFIXES):
            by_dir[p.parent].append(p)
        for tf in list(self.root.rglob(f"*{TRANS_SUFFIX}")) + list(self.root.rglob("*.trans.tsv")):
            by_dir.setdefault(tf.parent, [])
        for chapter_dir in sorted(by_dir):
            split, subset = self._subset(chapter_dir)
            transcripts, bad = self._transcripts(chapter_dir)
            for ref, utt, problem in bad:
                yield Item(
                    source_ref=ref,
                    id=utt or None,
                    audio=None,
                    task="en_tts",
                    language="en",
                    speaker=speaker_of(utt) if utt else None,
                    split=split,
                    meta={"subset": subset, "chapter": chapter_dir.name},
                    problem=problem,
                )
            seen: set[str] = set()
            for audio in by_dir[chapter_dir]:
                utt = audio.name[: -len(audio.suffix)]
                seen.add(utt)
                ref = rel(audio, self.root)
                text: str | bytes | None = None
                problem = None
                per_utt = audio.with_name(text_file_name(utt, self.text_variant))
                if per_utt.is_file():
                    text, problem = read_bytes(per_utt)
                    ref = rel(per_utt, self.root)
                elif utt in transcripts:
                    text, ref = transcripts[utt]
                yield Item(
                    source_ref=ref,
                    id=utt,
                    audio=audio,
                    task="en_tts",
                    language="en",
                    text=text,
                    require_text=True,
                    speaker=speaker_of(utt),
                    split=split,
                    meta={"subset": subset, "chapter": chapter_dir.name},
                    problem=problem,
                )
            for utt, (text, ref) in sorted(transcripts.items()):
                if utt in seen:
                    continue
                yield Item(
                    source_ref=ref,
                    id=utt,
                    audio=None,
                    missing_audio_hint=f"expected {rel(chapter_dir, self.root)}/{utt}.flac or .wav",
                    task="en_tts",
                    language="en",
                    text=text,
                    speaker=speaker_of(utt),
                    split=split,
                    meta={"subset": subset, "chapter": chapter_dir.name},
                )


class LibriTTSAdapter(LibriSpeechAdapter):
    name = "libritts"
    source_corpus = "LibriTTS"
