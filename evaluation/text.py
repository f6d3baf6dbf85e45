"""Transcript normalisation before WER/CER (the Seed-TTS-eval rules).

Reference: ``BytedanceSpeech/seed-tts-eval`` ``run_wer.py``. For Mandarin it first converts the
Paraformer HYPOTHESIS (only) to simplified characters (``zhconv.convert(text, "zh-cn")``); then
``process_one``, on both sides,

1. removes every character of ``zhon.hanzi.punctuation + string.punctuation`` except the ASCII
   apostrophe ``'``;
2. replaces double spaces by single ones;
3. English: lowercases; Mandarin: ``" ".join(chars)`` — one token per character, Latin letters and
   digits included, case kept (so "NBA" against "nba" is three substitutions).

Mandarin rules (``zh_rule``; the scorer records the one it used in its version string):

- ``"seed-tts-eval"`` (:data:`DEFAULT_ZH_RULE`): the reference rule above. The reference text is scored
  as written; only the hypothesis is converted to simplified characters (:func:`normalize_pair`), with
  zhconv's ``zh-cn`` table as the reference does. "我在NBA打球。" against "我在nba打球" is 3 errors in 7
  characters.
- ``"t2s-both-latin-words"``: this project's earlier rule, kept as an option. Both sides are converted
  with OpenCC ``t2s`` (so traditional references are usable) and a run of Latin letters (with
  apostrophes) is one lower-cased word instead of one token per letter (an English word in a Mandarin
  sentence counts as one token, as a human would count it). "我在NBA打球。" against "我在nba打球" is
  0 errors in 5 tokens. It lowers CER on mixed-script lines, so it is not comparable with published
  Seed-TTS-eval numbers.

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
# zh tokens under "t2s-both-latin-words": a run of ASCII letters/apostrophes is a word; any other
# non-space character is a token.
_ZH_TOKENS = re.compile(r"[A-Za-z']*[A-Za-z][A-Za-z']*|\S")

LANGUAGES = ("en", "zh")
#: Mandarin CER rules (see the module doc); the first is the default.
ZH_RULES = ("seed-tts-eval", "t2s-both-latin-words")
DEFAULT_ZH_RULE = ZH_RULES[0]


@lru_cache(maxsize=1)
def _t2s():
    import opencc  # opencc-python-reimplemented

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese (OpenCC ``t2s``, the ``"t2s-both-latin-words"`` rule); other
    characters pass through."""
    return _t2s().convert(text)


def to_zh_cn(text: str) -> str:
    """``zhconv.convert(text, "zh-cn")``: what seed-tts-eval applies to the Mandarin hypothesis."""
    import zhconv

    return zhconv.convert(text, "zh-cn")


def strip_punctuation(text: str) -> str:
    """Remove ASCII and Chinese/fullwidth punctuation (zhon's set) except the apostrophe."""
    return text.translate(_STRIP_TABLE)


def check_zh_rule(zh_rule: str) -> str:
    if zh_rule not in ZH_RULES:
        raise ValueError(f"unknown Mandarin CER rule {zh_rule!r}; expected one of {ZH_RULES}")
    return zh_rule


def normalize(text: str, lang: str, *, zh_rule: str = DEFAULT_ZH_RULE, simplify: bool = True) -> str:
    """Normalise ONE transcript for WER (``lang="en"``) or CER (``lang="zh"``); see the module doc.

    ``simplify`` (Mandarin, ``"seed-tts-eval"`` rule): convert traditional -> simplified first, what the
    reference does to the hypothesis only; :func:`normalize_pair` passes False for the reference text.
    The ``"t2s-both-latin-words"`` rule always converts."""
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}; expected one of {LANGUAGES}")
    check_zh_rule(zh_rule)
    if text is None:
        return ""
    words = lang == "zh" and zh_rule == "t2s-both-latin-words"
    if lang == "zh" and words:
        text = to_simplified(text)
    elif lang == "zh" and simplify:
        text = to_zh_cn(text)
    text = _SPACES.sub(" ", strip_punctuation(text)).strip()
    if lang == "en":
        return text.lower()
    if words:
        return " ".join(tok.lower() for tok in _ZH_TOKENS.findall(text))
    return " ".join(text.replace(" ", ""))  # every character one token, case kept (seed-tts-eval)


def normalize_pair(ref: str | None, hyp: str | None, lang: str, *,
                   zh_rule: str = DEFAULT_ZH_RULE) -> tuple[str, str]:
    """``(reference, hypothesis)`` normalised for scoring. Under the ``"seed-tts-eval"`` rule only the
    hypothesis is converted to simplified characters, as the reference tool converts the ASR output."""
    return (normalize(ref or "", lang, zh_rule=zh_rule, simplify=False),
            normalize(hyp or "", lang, zh_rule=zh_rule, simplify=True))
