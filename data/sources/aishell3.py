"""AISHELL-3 (Mandarin TTS).

Layout (``root`` holds ``train/`` and/or ``test/``, or is one of them)::

    AISHELL-3/train/content.txt          "SSB00050001.wav<TAB>广 guang3 州 zhou1 女 nv3 ..."
    AISHELL-3/train/wav/SSB0005/SSB00050001.wav
    AISHELL-3/spk-info.txt               (optional) "SSB0005<TAB>A<TAB>female<TAB>north"

``content.txt`` interleaves each character with its tone-numbered pinyin; the transcript is the
characters alone, Latin words such as "KTV" kept; the pinyin is kept in ``meta["pinyin"]``. Lines are
parsed by :mod:`unimoe.corpora.aishell3`, the parser the benchmark set ``aishell3-test`` uses too. Every
content line and every wav file is an input row (a wav without a line: ``missing_text``; a line
without a wav: ``missing_file``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data.audio_probe import has_surrogates
from data.manifest import ManifestRecord
from data.sources.base import (
    Adapter,
    Item,
    MissingCorpusError,
    QuarantineReason,
    find_audio_files,
    read_text_lines,
    rel,
)
from unimoe.corpora.aishell3 import parse_content_line, strip_pinyin

__all__ = ["AIShell3Adapter", "strip_pinyin"]


class AIShell3Adapter(Adapter):
    name = "aishell3"
    source_corpus = "AISHELL-3"
    default_licence = "Apache-2.0"

    def _split_dirs(self) -> list[Path]:
        if (self.root / "content.txt").is_file():
            return [self.root]
        dirs = [d for d in sorted(self.root.iterdir()) if d.is_dir() and (d / "content.txt").is_file()]
        if not dirs:
            raise MissingCorpusError(
                f"aishell3: no content.txt under {self.root} (expected train/content.txt and/or test/content.txt)"
            )
        return dirs

    def _speakers(self) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for cand in (self.root / "spk-info.txt", self.root.parent / "spk-info.txt"):
            if cand.is_file():
                for _, line in read_text_lines(cand):
                    if not line.strip() or line.startswith("#"):
                        continue
                    cols = line.split()
                    if len(cols) >= 4 and not has_surrogates(line):
                        out[cols[0]] = {"age_group": cols[1], "gender": cols[2], "accent": cols[3]}
                break
        return out

    def items(self) -> Iterator[Item | ManifestRecord]:
        speakers = self._speakers()
        for split_dir in self._split_dirs():
            split = split_dir.name if split_dir != self.root else None
            content = split_dir / "content.txt"
            listed: set[str] = set()
            used: set[Path] = set()
            for i, line in read_text_lines(content):
                if not line.strip():
                    continue
                ref = f"{rel(content, self.root)}:{i}"
                row = parse_content_line(line)  # TAB- or space-separated; ".wav" optional
                listed.add(row.utt)
                spk = row.speaker
                audio = split_dir / "wav" / spk / row.file
                used.add(audio)
                yield Item(
                    source_ref=ref,
                    id=row.utt,
                    audio=audio,  # a missing file is quarantined by the probe with the path it looked for
                    task="zh_tts",
                    language="zh",
                    text=row.text,
                    require_text=True,
                    speaker=spk,
                    split=split,
                    meta={"pinyin": row.pinyin, **speakers.get(spk, {})},
                )
            for audio in find_audio_files(split_dir / "wav", (".wav",)):
                if audio in used:
                    continue
                utt = audio.stem
                spk = audio.parent.name
                problem = None
                if utt in listed:
                    problem = QuarantineReason(
                        "duplicate_id",
                        f"{rel(audio, self.root)}: utterance {utt} is listed in content.txt for another path",
                    )
                yield Item(
                    source_ref=rel(audio, self.root),
                    id=utt,
                    audio=audio,
                    task="zh_tts",
                    language="zh",
                    text=None,  # not in content.txt: quarantined as missing_text
                    require_text=True,
                    speaker=spk,
                    split=split,
                    meta=dict(speakers.get(spk, {})),
                    problem=problem,
                )
