"""AISHELL-3 ``content.txt``: one parser for training (``data.sources.aishell3``) and evaluation
(``evaluation.sets.aishell3``).

Layout of a line (openslr.org/93, ``train/content.txt`` and ``test/content.txt``)::

    SSB00050002.wav<TAB>尊 zhun1 重 zhong4 科 ke1 学 xue2 规 gui1 律 lv4 的 de5 要 yao1 求 qiu2

the file name, then each character followed by its pinyin. A pinyin syllable is lower-case letters
(``ü`` written ``v``, as in "lv4", or ``ü``/``u:``) ending in a tone digit 1-5 (5 = neutral tone, as in
"de5"). A Latin word in the sentence ("OK", "KTV") stands where a character stands and carries no tone
digit: it is part of the text and is kept. A token is therefore pinyin exactly when it matches
:data:`PINYIN`; everything else, in order, is the transcript.

The speaker is the first 7 characters of the utterance id (``SSB0005``), which is also the wav folder:
``<split>/wav/SSB0005/SSB00050002.wav``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: One tone-numbered pinyin syllable: lower-case letters (ü as v, ü or u:), then the tone 1-5.
PINYIN = re.compile(r"^[a-zü:]+[1-5]$")
SPEAKER_ID_LENGTH = 7


def is_pinyin(token: str) -> bool:
    return bool(PINYIN.match(token))


def strip_pinyin(tokens: list[str]) -> tuple[str, str]:
    """``(text, pinyin)`` from the interleaved tokens of a line: ``['广', 'guang3', '州', 'zhou1']`` ->
    ``("广州", "guang3 zhou1")``; ``['唱', 'chang4', 'KTV']`` -> ``("唱KTV", "chang4")``."""
    return "".join(t for t in tokens if not is_pinyin(t)), " ".join(t for t in tokens if is_pinyin(t))


def speaker_of(utt: str) -> str:
    """``SSB00050002`` -> ``SSB0005`` (the speaker id and its wav folder)."""
    return utt[:SPEAKER_ID_LENGTH]


@dataclass(frozen=True)
class ContentLine:
    file: str    # the wav's file name, "SSB00050002.wav" (".wav" added when the line leaves it out)
    utt: str     # the utterance id, "SSB00050002"
    text: str    # the characters (and Latin words), pinyin removed; "" when the line has none
    pinyin: str  # the pinyin syllables, space-separated

    @property
    def speaker(self) -> str:
        return speaker_of(self.utt)


def parse_content_line(line: str) -> ContentLine | None:
    """One ``content.txt`` line (file name, then TAB or spaces, then the tokens); None for a blank line."""
    fields = line.split()
    if not fields:
        return None
    name, tokens = fields[0], fields[1:]
    file = name if name.lower().endswith(".wav") else f"{name}.wav"
    text, pinyin = strip_pinyin(tokens)
    return ContentLine(file=file, utt=file[:-4], text=text, pinyin=pinyin)
