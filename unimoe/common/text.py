"""Text read with ``errors="surrogateescape"``: telling undecodable bytes apart, and showing them.

Corpus tables are read with ``surrogateescape`` so that bytes which are not UTF-8 survive as lone
surrogates (U+DC80..U+DCFF) instead of being replaced on the way in: a real U+FFFD in the text is
then text, and a row with broken bytes can be refused as ``non_utf8_text``. Such strings cannot be
written to Parquet or JSON; :func:`repair_text` makes them printable (U+FFFD for each bad byte).
"""

from __future__ import annotations


def has_surrogates(s: str) -> bool:
    """True when ``s`` cannot be encoded as UTF-8 (undecodable bytes smuggled in as surrogates)."""
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def repair_text(s: str) -> str:
    """A printable UTF-8 version of a string that may carry undecodable bytes (U+FFFD for them)."""
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate that no byte produced (e.g. "\ud800")
        return s.encode("utf-8", "replace").decode("utf-8")
