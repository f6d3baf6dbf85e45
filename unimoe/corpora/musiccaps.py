"""MusicCaps ``musiccaps-public.csv``: one parser for training (``data.sources.musiccaps``) and evaluation
(``evaluation.sets.musiccaps``).

The published file (kaggle.com/datasets/googleai/musiccaps, mirrored as huggingface.co/datasets/google/
MusicCaps; Agostinelli et al. 2023, arXiv 2301.11325) is a CSV with a header row::

    ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,
        is_audioset_eval
    -0Gj8-vB1q4,30,40,"/m/0140xf,/m/04rlf","['low quality', ...]","The low quality recording ...",4,False,
        True

(each shown on two lines here, one line in the file)
one row per 10 s clip ``[start_s, end_s)`` of the YouTube video ``ytid``, captioned by musicians in
English (the caption may span several sentences and hold commas, so it is quoted). The flags are
written ``True`` / ``False``; ``is_balanced_subset`` marks the genre-balanced 1k subset,
``is_audioset_eval`` the clips from AudioSet's eval split.

MusicCaps ships no audio. The dataset card's download recipe (yt-dlp over ``ytid`` and the span) names
each clip ``<ytid>.wav``; other download scripts add the start second, ``<ytid>_<start_s>.wav`` (as
written in the CSV, or as an integer: ``_30``). A clip is looked for under each of these names
(:func:`clip_stems`), in that order, with the extensions of :data:`AUDIO_SUFFIXES`.

Caption rule: the caption column with surrounding whitespace (and any stray byte-order mark) removed,
nothing else changed. A row is refused, first reason first: no ``ytid`` (``missing_id``), bytes that
are not UTF-8 in the id or caption (``non_utf8_text``; read the file with ``errors="surrogateescape"``
so they show as lone surrogates; a real U+FFFD character in the text is text, not an error), an empty
caption (``empty_text``), a span that is not ``0 <= start_s < end_s`` (``bad_segment``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from unimoe.common.text import has_surrogates, repair_text

# evaluation.sets.musiccaps imports the repair under this name
repaired = repair_text

CSV_NAME = "musiccaps-public.csv"
COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
           "is_balanced_subset", "is_audioset_eval")
REQUIRED = ("ytid", "start_s", "end_s", "caption")
FLAGS = ("is_balanced_subset", "is_audioset_eval")
#: Subset name -> the flag column that selects it (None: every row).
SUBSETS: dict[str | None, str | None] = {None: None, "balanced": "is_balanced_subset",
                                         "audioset_eval": "is_audioset_eval"}
#: Clip file extensions, preferred first.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
_OPTIONAL_TEXT = ("aspect_list", "audioset_positive_labels", "author_id")


def flag(value: Any) -> bool | None:
    """A ``True`` / ``False`` column (also 1/0, yes/no); None when empty."""
    if value is None or not str(value).strip():
        return None
    return str(value).strip().lower() in ("true", "1", "yes")


def parse_span(start_raw: Any, end_raw: Any) -> tuple[float, float] | None:
    """``(start_s, end_s)`` in seconds, or None unless ``0 <= start < end``."""
    try:
        start, end = float(start_raw), float(end_raw)
    except (TypeError, ValueError):
        return None
    return (start, end) if 0 <= start < end else None


def clean_caption(value: Any) -> str:
    """The caption as written: surrounding whitespace and byte-order marks removed, nothing else."""
    return "" if value is None else str(value).replace("\ufeff", "").strip()


def clip_stems(ytid: str, start_raw: str, start: float | None) -> list[str]:
    """The file stems a clip may have, in order: ``<ytid>``, ``<ytid>_<start as written>``,
    ``<ytid>_<start as an integer>``."""
    stems = [ytid, f"{ytid}_{start_raw}"]
    if start is not None and float(start).is_integer():
        stems.append(f"{ytid}_{int(start)}")
    return list(dict.fromkeys(stems))


@dataclass(frozen=True)
class CaptionRow:
    ytid: str
    caption: str                 # :func:`clean_caption` of the caption column
    start_raw: str               # start_s as written (for clip file names)
    start: float | None          # the span, None when it is not valid
    end: float | None
    meta: dict[str, Any] = field(default_factory=dict)  # aspect_list, labels, author_id, the two flags
    problem: tuple[str, str] | None = None  # (reason code, detail) of the first reason to refuse the row

    @property
    def stems(self) -> list[str]:
        return clip_stems(self.ytid, self.start_raw, self.start)


def parse_row(row: Mapping[str, Any]) -> CaptionRow:
    """One CSV row (header name -> cell) into its fields and, if it cannot be used, why not."""
    ytid = str(row.get("ytid") or "").strip()
    raw_caption = "" if row.get("caption") is None else str(row.get("caption"))
    caption = clean_caption(raw_caption)
    start_raw, end_raw = str(row.get("start_s") or "").strip(), str(row.get("end_s") or "").strip()
    span = parse_span(start_raw, end_raw)
    meta: dict[str, Any] = {k: (repair_text(str(row[k])) if row.get(k) else None) for k in _OPTIONAL_TEXT}
    meta.update({k: flag(row.get(k)) for k in FLAGS})
    problem = None
    if not ytid:
        problem = ("missing_id", "empty ytid")
    elif has_surrogates(ytid) or has_surrogates(raw_caption):
        problem = ("non_utf8_text", "row is not valid UTF-8")
    elif not caption:
        problem = ("empty_text", "empty caption")
    elif span is None:
        problem = ("bad_segment",
                   f"start_s={row.get('start_s')!r}, end_s={row.get('end_s')!r} is not a valid span")
    return CaptionRow(ytid=ytid, caption=caption, start_raw=start_raw, start=span[0] if span else None,
                      end=span[1] if span else None, meta=meta, problem=problem)
