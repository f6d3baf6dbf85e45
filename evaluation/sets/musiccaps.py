"""MusicCaps (text-to-music): captions from ``musiccaps-public.csv``, reference clips from a local folder.

Layout::

    <root>/musiccaps-public.csv   ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,
                                  author_id,is_balanced_subset,is_audioset_eval
    <audio_dir>/<ytid>.wav        or <ytid>_<start>.wav (start as in the CSV, or as an integer: "30");
                                  .flac/.mp3/.ogg also accepted; audio_dir defaults to <root>/audio

The local file is taken to be the 10 s clip itself (what the usual download scripts write); its
duration is recorded in ``meta["audio_duration"]``. One item per CSV row (id = ytid, text = caption,
reference_audio = the clip). The audio is not needed to generate, only to compare (FAD, KL), so a row
whose clip is missing or unreadable stays an item with ``reference_audio=None`` and is listed in
``info["missing"]`` with the paths looked for — unless ``require_audio=True``, which leaves it out
(still listed there). ``subset``: ``None`` (all rows), ``"balanced"`` (``is_balanced_subset``, the
genre-balanced 1k) or ``"audioset_eval"`` (``is_audioset_eval``); rows outside it go to
``info["excluded"]``. Rows, captions and clip names are parsed by :mod:`unimoe.corpora.musiccaps`, the
parser the training adapter ``data.sources.musiccaps`` uses too, so training and reference captions
follow one rule. Rejected: rows with the wrong number of fields, then (first that applies) no ytid,
bytes that are not UTF-8, an empty caption, unparsable start/end; then a ytid already listed.
"""

from __future__ import annotations

from pathlib import Path

from evaluation.sets.base import (BenchItem, BenchmarkError, BenchmarkSet, Ledger, checked_reference, find_audio,
                                  finish, require_dir, require_file, resolve)
from unimoe.common.tables import BadCsvRow, CsvHeaderError, iter_csv_rows
from unimoe.corpora.musiccaps import AUDIO_SUFFIXES, CSV_NAME, FLAGS, REQUIRED, SUBSETS, parse_row, repaired

LAYOUT = (
    "  <root>/musiccaps-public.csv  (ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
    "is_balanced_subset,is_audioset_eval)\n"
    "  <audio_dir>/<ytid>.wav or <ytid>_<start>.wav   (audio_dir defaults to <root>/audio)"
)


def load_musiccaps(
    root: str | Path,
    *,
    csv_name: str = CSV_NAME,
    audio_dir: str | Path = "audio",
    subset: str | None = None,
    require_audio: bool = False,
) -> BenchmarkSet:
    if subset not in SUBSETS:
        raise ValueError(f"musiccaps: subset must be one of {list(SUBSETS)}, got {subset!r}")
    root = require_dir(Path(root), "musiccaps", LAYOUT)
    table = require_file(resolve(csv_name, root), "musiccaps", LAYOUT)
    adir = resolve(audio_dir, root)
    if not adir.is_dir():  # no clips at all is allowed (captions only), but say so
        adir_note = f"audio folder {adir} does not exist"
    else:
        adir_note = None
    ledger = Ledger()
    items: list[BenchItem] = []
    seen: set[str] = set()
    try:
        rows = list(iter_csv_rows(table, required=REQUIRED, allow_empty=False))
    except CsvHeaderError as e:
        raise BenchmarkError(f"musiccaps: {e}; expected layout:\n{LAYOUT}") from None
    for line, r in rows:
        ref = f"{table.name}:{line}"
        if isinstance(r, BadCsvRow):
            first = r.fields[0].strip() if r.fields else ""
            ledger.reject(ref, repaired(first) or None, "bad_row", str(r))
            continue
        parsed = parse_row(r)
        ytid, caption = parsed.ytid, parsed.caption
        if parsed.problem is not None:
            code, detail = parsed.problem
            ledger.reject(ref, repaired(ytid) or None, code, detail)
            continue
        if ytid in seen:
            ledger.reject(ref, ytid, "duplicate_id", f"ytid {ytid!r} already listed")
            continue
        start, end = parsed.start, parsed.end
        flags = {k: parsed.meta[k] for k in FLAGS}
        if SUBSETS[subset] and not flags[SUBSETS[subset]]:
            ledger.exclude(ref, ytid, "not_in_subset", f"{SUBSETS[subset]} is not true")
            continue
        seen.add(ytid)
        stems = parsed.stems
        audio, meta_audio = None, {}
        if adir_note is not None:
            ledger.miss(ref, ytid, "missing_file", adir_note)
        else:
            audio, duration = checked_reference(
                ledger, ref, ytid, find_audio(adir, stems, AUDIO_SUFFIXES),
                f"none of {[s + '.wav' for s in stems]} (or .flac/.mp3/.ogg) in {adir}")
            if audio is not None:
                meta_audio = {"audio_duration": round(duration, 6)}
        if audio is None and require_audio:
            continue
        items.append(
            BenchItem(
                id=ytid,
                task="t2m",
                language="en",
                text=caption,
                reference_audio=str(audio.resolve()) if audio is not None else None,
                meta={
                    "source_ref": ref,
                    "start_s": start,
                    "end_s": end,
                    **parsed.meta,  # aspect_list, audioset_positive_labels, author_id and the two flags
                    **meta_audio,
                },
            )
        )
    return finish(
        "musiccaps",
        items,
        ledger,
        root=str(root),
        source=str(table),
        audio_dir=str(adir),
        protocol={
            "benchmark": "MusicCaps" + (f" ({subset})" if subset else ""),
            "text": "caption column",
            "reference": "local clip <ytid>.<ext> or <ytid>_<start>.<ext>, used whole",
            "require_audio": require_audio,
        },
    )
