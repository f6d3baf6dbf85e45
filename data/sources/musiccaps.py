"""MusicCaps-style caption CSV with a local audio folder (text-to-music; also a benchmark set).

Layout::

    root/musiccaps-public.csv   ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,
                                is_balanced_subset,is_audioset_eval
    root/audio/<ytid>.wav       (or .flac/.mp3/.ogg; ``filename`` is a template over the row's columns)

``audio_is_clip=True`` (default): the local file already is the 10 s clip, used whole.
``audio_is_clip=False``: the file is the full recording and the row is the span
``[start_s, end_s)`` of it (``offset``/``duration``); a span outside the file is ``bad_segment``.

One CSV row is one input row: a row whose audio is missing is quarantined ``missing_file``, an
empty caption ``empty_text``, unparsable bounds ``bad_segment``. Audio files no row refers to
are reported as ``missing_metadata``. MusicCaps is an evaluation set, so the default split is
``test``; ``is_balanced_subset``/``is_audioset_eval`` and the aspect list go into ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import (
    AUDIO_EXTENSIONS,
    LONG_MUSIC_MAX_DURATION,
    Adapter,
    Item,
    MissingCorpusError,
    QuarantineReason,
    find_audio_files,
    iter_csv,
    rel,
)


def _flag(v: str | None) -> bool | None:
    if v is None or not str(v).strip():
        return None
    return str(v).strip().lower() in ("true", "1", "yes")


class MusicCapsAdapter(Adapter):
    """Options: ``csv`` (default: ``musiccaps-public.csv`` or the only CSV in root), ``audio_dir``
    (default ``audio``), ``filename`` (default ``"{ytid}"``), ``audio_is_clip``, ``extensions``."""

    name = "musiccaps"
    source_corpus = "MusicCaps"
    default_licence = "CC-BY-SA-4.0 (captions); audio: YouTube, per-video terms"
    default_split = "test"
    default_max_duration = LONG_MUSIC_MAX_DURATION

    def __init__(
        self,
        root,
        *,
        csv: str | None = None,
        audio_dir: str = "audio",
        filename: str = "{ytid}",
        audio_is_clip: bool = True,
        extensions: tuple[str, ...] = (".wav", ".flac", ".mp3", ".ogg"),
        **common,
    ) -> None:
        super().__init__(root, **common)
        if csv is None:
            default = self.root / "musiccaps-public.csv"
            found = [default] if default.is_file() else sorted(self.root.glob("*.csv"))
            if len(found) != 1:
                raise MissingCorpusError(
                    f"musiccaps: expected musiccaps-public.csv or exactly one CSV in {self.root}, found "
                    f"{[p.name for p in found]}; pass csv=..."
                )
            self.csv = found[0]
        else:
            self.csv = self.root / csv
            if not self.csv.is_file():
                raise MissingCorpusError(f"musiccaps: caption CSV {self.csv} not found")
        self.audio_dir = self.root / audio_dir
        self.filename = filename
        self.audio_is_clip = audio_is_clip
        self.extensions = tuple(extensions)

    def items(self) -> Iterator[Item | ManifestRecord]:
        cref = rel(self.csv, self.root)
        used: set[Path] = set()
        for line, row in iter_csv(self.csv):
            ref = f"{cref}:{line}"
            if isinstance(row, QuarantineReason):
                yield self.quarantine(ref, None, row.code, row.message, task="t2m")
                continue
            ytid = (row.get("ytid") or "").strip()
            try:
                start, end = float(row.get("start_s", "")), float(row.get("end_s", ""))
                ok = 0 <= start < end
            except ValueError:
                ok, start, end = False, None, None
            meta = {
                "ytid": ytid,
                "start_s": start,
                "end_s": end,
                "aspect_list": row.get("aspect_list") or None,
                "audioset_positive_labels": row.get("audioset_positive_labels") or None,
                "author_id": row.get("author_id") or None,
                "is_balanced_subset": _flag(row.get("is_balanced_subset")),
                "is_audioset_eval": _flag(row.get("is_audioset_eval")),
            }
            if not ok:
                yield self.quarantine(
                    ref, ytid or None, "bad_segment",
                    f"start_s={row.get('start_s')!r}, end_s={row.get('end_s')!r} is not a valid span",
                    task="t2m", meta=meta,
                )  # fmt: skip
                continue
            try:
                stem = self.filename.format(**row)
            except (KeyError, IndexError, ValueError) as e:
                yield self.quarantine(
                    ref, ytid or None, "bad_row", f"filename template failed: {e}", task="t2m"
                )
                continue
            audio = None
            for ext in self.extensions:
                cand = self.audio_dir / f"{stem}{ext}"
                if cand.exists() or cand.is_symlink():
                    audio = cand
                    used.add(cand)
                    break
            yield Item(
                source_ref=ref,
                id=ytid or None,
                audio=audio,
                missing_audio_hint=f"expected {rel(self.audio_dir, self.root)}/{stem}{{{','.join(self.extensions)}}}",
                task="t2m",
                language="en",
                text=row.get("caption"),
                require_text=True,
                segment=None if self.audio_is_clip else (start, end),
                meta=meta,
            )
        for audio in find_audio_files(self.audio_dir, tuple(set(self.extensions) | set(AUDIO_EXTENSIONS))):
            if audio in used:
                continue
            yield Item(
                source_ref=rel(audio, self.root),
                id=f"musiccaps-unlisted-{audio.stem}",
                audio=audio,
                task="t2m",
                problem=QuarantineReason("missing_metadata", f"{rel(audio, self.root)} has no row in {cref}"),
            )
