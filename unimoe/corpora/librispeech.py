"""LibriSpeech (and LibriTTS, derived from it): one parser for training (``data.sources.librispeech``) and
evaluation (``evaluation.sets.librispeech``).

LibriSpeech layout (openslr.org/12, the corpus' README.TXT)::

    <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utterance>.flac

A transcript line is the utterance id, a space, then the transcript, upper case with no punctuation
other than the apostrophe::

    1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS AND BRUISED POTATOES ...

The utterance id is ``<speaker>-<chapter>-<utterance>`` of the folder the file lies in, so a line whose
id names another speaker or chapter (or is no such id at all) is not a line of this chapter: it is
refused (:func:`folder_problem`). The transcript is kept as given (only the surrounding whitespace is
removed); lower-casing for WER belongs to the scorer, not to the corpus. The audio of an utterance is
``<id>.flac`` (``<id>.wav`` accepted for a converted copy; the FLAC wins when both exist).

``subset`` is ``train-clean-100``, ``train-clean-360``, ``train-other-500``, ``dev-clean``, ``dev-other``,
``test-clean`` or ``test-other``; the split is its prefix.

LibriTTS (openslr.org/60) keeps the folders but names utterances
``<speaker>_<chapter>_<paragraph>_<sentence>``, with a ``.wav`` per utterance, its text in
``<id>.normalized.txt`` / ``<id>.original.txt`` and per chapter ``<speaker>_<chapter>.trans.tsv``
(``id<TAB>original<TAB>normalized``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: A subset folder name: its split (train / dev / test) and what follows, e.g. "test-clean".
SUBSET = re.compile(r"^(train|dev|test)([-_].*)?$", re.IGNORECASE)
#: A LibriSpeech utterance id: speaker, chapter, utterance number.
UTT = re.compile(r"^(\d+)-(\d+)-(\d+)$")
#: A LibriTTS utterance id: speaker, chapter, paragraph, sentence.
LIBRITTS_UTT = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)$")
#: Audio suffixes of an utterance, preferred first (LibriSpeech ships FLAC).
AUDIO_SUFFIXES = (".flac", ".wav")
TRANS_SUFFIX = ".trans.txt"
#: LibriTTS's two text variants (per-utterance files and the trans.tsv columns).
TEXT_VARIANTS = ("normalized", "original")


def split_of(folder: str) -> str | None:
    """``"test-clean"`` -> ``"test"``; None when the folder name is not a subset name."""
    m = SUBSET.match(folder)
    return m.group(1).lower() if m else None


def speaker_of(utt: str) -> str:
    """``1089-134686-0000`` / ``1089_134686_000001_000001`` -> ``1089``."""
    return re.split(r"[-_]", utt)[0]


def audio_names(utt: str) -> list[str]:
    """The file names an utterance's audio may have, in order of preference."""
    return [f"{utt}{ext}" for ext in AUDIO_SUFFIXES]


@dataclass(frozen=True)
class TransLine:
    utt: str   # the utterance id ("" when the line has only whitespace before its first space)
    text: str  # the transcript as given, surrounding whitespace removed; "" when the line has none

    @property
    def speaker(self) -> str:
        return speaker_of(self.utt)


def parse_trans_line(line: str) -> TransLine | None:
    """One ``*.trans.txt`` line: the id up to the first space, then the transcript; None for a blank line."""
    if not line.strip():
        return None
    utt, _, text = line.strip().partition(" ")
    return TransLine(utt=utt, text=text.strip())


def folder_problem(utt: str, speaker_folder: str, chapter_folder: str) -> str | None:
    """Why ``utt`` cannot be a line of the chapter folder ``<speaker_folder>/<chapter_folder>``, or None."""
    m = UTT.match(utt)
    if m and (m.group(1), m.group(2)) == (speaker_folder, chapter_folder):
        return None
    return f"id {utt!r} is not <speaker>-<chapter>-<n> of {speaker_folder}/{chapter_folder}"


def text_file_name(utt: str, variant: str) -> str:
    """LibriTTS's per-utterance text file: ``<id>.normalized.txt`` or ``<id>.original.txt``."""
    if variant not in TEXT_VARIANTS:
        raise ValueError(f"text_variant must be one of {TEXT_VARIANTS}, got {variant!r}")
    return f"{utt}.{variant}.txt"


def parse_trans_tsv_line(line: str, variant: str = "normalized") -> TransLine | None:
    """One LibriTTS ``*.trans.tsv`` line (``id<TAB>original<TAB>normalized``): the chosen variant's text
    (the original when the normalized column is absent); None for a line without an id and a text."""
    cols = line.split("\t")
    if len(cols) < 2 or not cols[0].strip():
        return None
    text = cols[2] if variant == "normalized" and len(cols) >= 3 else cols[1]
    return TransLine(utt=cols[0].strip(), text=text.strip())
