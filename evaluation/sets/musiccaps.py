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
``info["excluded"]``. Rejected: rows with the wrong number of fields, no ytid, an empty caption,
unparsable start/end, or a ytid already listed.
"""

from __future__ import annotations

import csv
from pathlib import Path

from evaluation.sets.base import (
    AUDIO_EXTENSIONS,
    BenchItem,
    BenchmarkError,
    BenchmarkSet,
    Ledger,
    check_audio,
    finish,
    require_dir,
    require_file,
    resolve,
)

LAYOUT = (
    "  <root>/musiccaps-public.csv  (ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
    "is_balanced_subset,is_audioset_eval)\n"
    "  <audio_dir>/<ytid>.wav or <ytid>_<start>.wav   (audio_dir defaults to <root>/audio)"
)
REQUIRED = ("ytid", "start_s", "end_s", "caption")
SUBSETS = {None: None, "balanced": "is_balanced_subset", "audioset_eval": "is_audioset_eval"}


def _flag(v: str | None) -> bool | None:
    if v is None or not str(v).strip():
        return None
    return str(v).strip().lower() in ("true", "1", "yes")


def _stems(ytid: str, start_raw: str, start: float) -> list[str]:
    stems = [ytid, f"{ytid}_{start_raw}"]
    if float(start).is_integer():
        stems.append(f"{ytid}_{int(start)}")
    return list(dict.fromkeys(stems))


def load_musiccaps(
    root: str | Path,
    *,
    csv_name: str = "musiccaps-public.csv",
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
    with open(table, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.lstrip("\ufeff").strip() for h in next(reader)]
        except StopIteration:
            raise BenchmarkError(f"musiccaps: {table} is empty; expected layout:\n{LAYOUT}") from None
        except csv.Error as e:
            raise BenchmarkError(f"musiccaps: cannot parse the header of {table}: {e}") from None
        absent = [c for c in REQUIRED if c not in header]
        if absent:
            raise BenchmarkError(f"musiccaps: {table} lacks column(s) {absent}; expected layout:\n{LAYOUT}")
        while True:
            line_before = reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                ledger.reject(f"{table.name}:{line_before + 1}", None, "bad_row", f"CSV error: {e}")
                continue
            ref = f"{table.name}:{reader.line_num}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                ledger.reject(ref, row[0].strip() or None, "bad_row",
                              f"{len(row)} fields, the header has {len(header)} (unquoted comma?)")
                continue
            r = dict(zip(header, row))
            ytid, caption = r["ytid"].strip(), r["caption"].strip()
            if not ytid:
                ledger.reject(ref, None, "missing_id", "empty ytid")
                continue
            if "\ufffd" in caption or "\ufffd" in ytid:
                ledger.reject(ref, ytid, "non_utf8_text", "row is not valid UTF-8")
                continue
            if ytid in seen:
                ledger.reject(ref, ytid, "duplicate_id", f"ytid {ytid!r} already listed")
                continue
            if not caption:
                ledger.reject(ref, ytid, "empty_text", "empty caption")
                continue
            try:
                start, end = float(r["start_s"]), float(r["end_s"])
                if not 0 <= start < end:
                    raise ValueError
            except ValueError:
                ledger.reject(ref, ytid, "bad_segment",
                              f"start_s={r['start_s']!r}, end_s={r['end_s']!r} is not a span")
                continue
            flags = {k: _flag(r.get(k)) for k in ("is_balanced_subset", "is_audioset_eval")}
            if SUBSETS[subset] and not flags[SUBSETS[subset]]:
                ledger.exclude(ref, ytid, "not_in_subset", f"{SUBSETS[subset]} is not true")
                continue
            seen.add(ytid)
            stems = _stems(ytid, r["start_s"].strip(), start)
            audio, meta_audio = None, {}
            if adir_note is not None:
                ledger.miss(ref, ytid, "missing_file", adir_note)
            else:
                for stem in stems:
                    for ext in AUDIO_EXTENSIONS:
                        if (adir / f"{stem}{ext}").is_file():
                            audio = adir / f"{stem}{ext}"
                            break
                    if audio is not None:
                        break
                if audio is None:
                    ledger.miss(ref, ytid, "missing_file",
                                f"none of {[s + '.wav' for s in stems]} (or .flac/.mp3/.ogg) in {adir}")
                else:
                    chk = check_audio(audio)
                    if chk.ok:
                        meta_audio = {"audio_duration": round(chk.duration, 6)}
                    else:
                        ledger.miss(ref, ytid, chk.reason, chk.detail)
                        audio = None
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
                        "aspect_list": r.get("aspect_list") or None,
                        "audioset_positive_labels": r.get("audioset_positive_labels") or None,
                        "author_id": r.get("author_id") or None,
                        **flags,
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
