"""Transcript normalisation before WER/CER (the Seed-TTS-eval rules).

Reference: ``BytedanceSpeech/seed-tts-eval`` ``run_wer.py`` (``process_one``), which

1. removes every character of ``zhon.hanzi.punctuation + string.punctuation`` except the ASCII
   apostrophe ``'`` from both reference and hypothesis;
2. replaces double spaces by single ones;
3. English: lowercases; Mandarin: ``" ".join(chars)`` (one token per character); the Paraformer
   hypothesis was first converted to simplified characters (``zhconv.convert(text, "zh-cn")``).

Here, for ``lang="zh"``:

- traditional -> simplified with OpenCC ``t2s`` (``opencc-python-reimplemented``) on BOTH sides (the
  reference converts only the hypothesis; the Seed-TTS references are already simplified, so this
  changes nothing there and makes traditional references usable);
- runs of Latin letters (with apostrophes) are kept as one lowercased word instead of being split
  into letters (the reference splits them; with this rule an English word in a Mandarin sentence is
  one token, as a human would count it). Everything else, digits included, is one token per
  character, as in the reference.

Whitespace (any run, including the ideographic space, which is in zhon's punctuation) becomes one
ASCII space and the result is stripped; ``jiwer`` splits on whitespace, so this does not change any
error count relative to the reference's single ``replace("  ", " ")``.

The typographic apostrophe ``’`` (U+2019) is in zhon's punctuation and is therefore removed, exactly
as the reference does ("don’t" -> "dont", while "don't" stays).
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

# zhon.hanzi.punctuation (tsroten/zhon, src/zhon/hanzi.py): non_stops + stops.
_ZHON_NON_STOPS = (
    "\uff02\uff03\uff04\uff05\uff06\uff07\uff08\uff09\uff0a\uff0b\uff0c\uff0d"  # fullwidth ASCII variants
    "\uff0f\uff1a\uff1b\uff1c\uff1d\uff1e\uff20\uff3b\uff3c\uff3d\uff3e\uff3f"
    "\uff40\uff5b\uff5c\uff5d\uff5e\uff5f\uff60"
    "\uff62\uff63\uff64"  # halfwidth CJK punctuation
    "\u3000\u3001\u3003"  # CJK symbols and punctuation (incl. the ideographic space)
    "\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010\u3011"  # angle and corner brackets
    "\u3014\u3015\u3016\u3017\u3018\u3019\u301a\u301b\u301c\u301d\u301e\u301f"
    "\u3030"
    "\u303e\u303f"
    "\u2013\u2014"  # dashes
    "\u2018\u2019\u201b\u201c\u201d\u201e\u201f"  # quotation marks
    "\u2026\u2027"  # ellipsis, hyphenation point
    "\ufe4f"
    "\ufe51\ufe54"
    "\u00b7"  # middle dot
)
_ZHON_STOPS = "\uff0e\uff01\uff1f\uff61\u3002"
ZH_PUNCTUATION = _ZHON_NON_STOPS + _ZHON_STOPS
#: Everything removed by :func:`normalize` (the apostrophe is kept).
PUNCTUATION = "".join(sorted(set(ZH_PUNCTUATION + string.punctuation) - {"'"}))

_STRIP_TABLE = str.maketrans("", "", PUNCTUATION)
_SPACES = re.compile(r"\s+")
# zh tokens: a run of ASCII letters/apostrophes is a word; any other non-space character is a token.
_ZH_TOKENS = re.compile(r"[A-Za-z']*[A-Za-z][A-Za-z']*|\S")

LANGUAGES = ("en", "zh")


@lru_cache(maxsize=1)
def _t2s():
    import opencc  # opencc-python-reimplemented

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese (OpenCC ``t2s``); other characters pass through."""
    return _t2s().convert(text)


def strip_punctuation(text: str) -> str:
    """Remove ASCII and Chinese/fullwidth punctuation (zhon's set) except the apostrophe."""
    return text.translate(_STRIP_TABLE)


def normalize(text: str, lang: str) -> str:
    """Normalise a transcript for WER (``lang="en"``) or CER (``lang="zh"``); see the module doc."""
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    if text is None:
        return ""
    if lang == "zh":
        text = to_simplified(text)
    text = _SPACES.sub(" ", strip_punctuation(text)).strip()
    if lang == "en":
        return text.lower()
    return " ".join(tok.lower() for tok in _ZH_TOKENS.findall(text))
