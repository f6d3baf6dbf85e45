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
``missing_text``, a transcript line without audio ``missing_file``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import Adapter, Item, find_audio_files, read_bytes, read_text_lines, rel

_SUBSET = re.compile(r"^(train|dev|test)([-_].*)?$", re.IGNORECASE)


class LibriSpeechAdapter(Adapter):
    """Options: ``text_variant`` ("normalized" | "original", LibriTTS per-utterance files)."""

    name = "librispeech"
    source_corpus = "LibriSpeech"
    default_licence = "CC-BY-4.0"
    default_split = "train"

    def __init__(self, root, *, text_variant: str = "normalized", **common) -> None:
        super().__init__(root, **common)
        if text_variant not in ("normalized", "original"):
            raise ValueError(f"text_variant must be 'normalized' or 'original', got {text_variant!r}")
        self.text_variant = text_variant

    def _subset(self, chapter_dir: Path) -> tuple[str | None, str | None]:
        parts = Path(rel(chapter_dir, self.root)).parts
        candidates = list(parts) + [self.root.name]
        for part in candidates:
            m = _SUBSET.match(part)
            if m:
                return m.group(1).lower(), part
        return None, None

    def _transcripts(self, chapter_dir: Path) -> dict[str, tuple[str, str]]:
        """utt-id -> (text, source_ref) from the chapter's ``*.trans.txt`` / ``*.trans.tsv``."""
        out: dict[str, tuple[str, str]] = {}
        for tf in sorted(chapter_dir.glob("*.trans.txt")):
            for i, line in read_text_lines(tf):
                if not line.strip():
                    continue
                utt, _, text = line.strip().partition(" ")
                out.setdefault(utt, (text, f"{rel(tf, self.root)}:{i}"))
        for tf in sorted(chapter_dir.glob("*.trans.tsv")):  # LibriTTS: utt \t original \t normalized
            for i, line in read_text_lines(tf):
                cols = line.split("\t")
                if len(cols) >= 2 and cols[0].strip():
                    text = cols[2] if self.text_variant == "normalized" and len(cols) >= 3 else cols[1]
                    out.setdefault(cols[0].strip(), (text, f"{rel(tf, self.root)}:{i}"))
        return out

    def items(self) -> Iterator[Item | ManifestRecord]:
        by_dir: dict[Path, list[Path]] = defaultdict(list)
        for p in find_audio_files(self.root, (".flac", ".wav")):
            by_dir[p.parent].append(p)
        for tf in list(self.root.rglob("*.trans.txt")) + list(self.root.rglob("*.trans.tsv")):
            by_dir.setdefault(tf.parent, [])
        for chapter_dir in sorted(by_dir):
            split, subset = self._subset(chapter_dir)
            transcripts = self._transcripts(chapter_dir)
            seen: set[str] = set()
            for audio in by_dir[chapter_dir]:
                utt = audio.name[: -len(audio.suffix)]
                seen.add(utt)
                ref = rel(audio, self.root)
                text: str | bytes | None = None
                problem = None
                per_utt = audio.with_name(f"{utt}.{self.text_variant}.txt")
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
                    speaker=re.split(r"[-_]", utt)[0],
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
                    speaker=re.split(r"[-_]", utt)[0],
                    split=split,
                    meta={"subset": subset, "chapter": chapter_dir.name},
                )


class LibriTTSAdapter(LibriSpeechAdapter):
    name = "libritts"
    source_corpus = "LibriTTS"
