"""MusicCaps-style caption CSV with a local audio folder (text-to-music; also a benchmark set).

Layout::

    root/musiccaps-public.csv   ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,
                                is_balanced_subset,is_audioset_eval
    root/audio/<ytid>.wav       or <ytid>_<start>.wav (start as in the CSV, or as an integer: "30");
                                .flac/.mp3/.ogg also accepted

``audio_is_clip=True`` (default): the local file already is the 10 s clip, used whole, looked for under
the clip names above. ``audio_is_clip=False``: the file ``<ytid>.<ext>`` is the full recording and the
row is the span ``[start_s, end_s)`` of it (``offset``/``duration``); a span outside the file is
``bad_segment``. ``filename`` (a template over the row's columns, e.g. ``"{ytid}"``) replaces the
default names with one name.

Rows and captions are parsed by :mod:`unimoe.corpora.musiccaps`, the parser the benchmark set
``musiccaps`` uses too. One CSV row is one input row: a row without ytid is quarantined ``missing_id``,
one with bytes that are not UTF-8 ``non_utf8_text``, an empty caption ``empty_text``, unparsable
bounds ``bad_segment`` (the first that applies), a row whose audio is missing ``missing_file``. Audio
files no row refers to are reported as ``missing_metadata``. MusicCaps is an evaluation set, so the
default split is ``test``; ``is_balanced_subset``/``is_audioset_eval`` and the aspect list go into
``meta``.
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
from unimoe.corpora.musiccaps import AUDIO_SUFFIXES, CSV_NAME, CaptionRow, parse_row


class MusicCapsAdapter(Adapter):
    """Options: ``csv`` (default: ``musiccaps-public.csv`` or the only CSV in root), ``audio_dir``
    (default ``audio``), ``filename`` (default: the layout's names, see the module doc), ``audio_is_clip``,
    ``extensions``."""

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
        filename: str | None = None,
        audio_is_clip: bool = True,
        extensions: tuple[str, ...] = AUDIO_SUFFIXES,
        **common,
    ) -> None:
        super().__init__(root, **common)
        if csv is None:
            default = self.root / CSV_NAME
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

    def _stems(self, row: dict, parsed: CaptionRow) -> list[str]:
        if self.filename is not None:
            return [self.filename.format(**row)]
        # a full recording is the video's whole soundtrack: only <ytid>; a clip may carry its start
        return parsed.stems if self.audio_is_clip else [parsed.ytid]

    def items(self) -> Iterator[Item | ManifestRecord]:
        cref = rel(self.csv, self.root)
        used: set[Path] = set()
        for line, row in iter_csv(self.csv):
            ref = f"{cref}:{line}"
            if isinstance(row, QuarantineReason):
                yield self.quarantine(ref, None, row.code, row.message, task="t2m")
                continue
            parsed = parse_row(row)
            ytid = parsed.ytid
            meta = {"ytid": ytid, "start_s": parsed.start, "end_s": parsed.end, **parsed.meta}
            try:
                stems = self._stems(row, parsed) if ytid else []
            except (KeyError, IndexError, ValueError) as e:
                yield self.quarantine(
                    ref, ytid or None, "bad_row", f"filename template failed: {e}", task="t2m"
                )
                continue
            audio = None
            for stem in stems:
                for ext in self.extensions:
                    cand = self.audio_dir / f"{stem}{ext}"
                    if cand.exists() or cand.is_symlink():
                        audio = cand
                        break
                if audio is not None:
                    used.add(audio)  # named by a row, even one refused below: not an unlisted file
                    break
            if parsed.problem is not None:
                code, message = parsed.problem
                yield self.quarantine(ref, ytid or None, code, message, task="t2m", meta=meta)
                continue
            names = stems[0] if len(stems) == 1 else "{" + ",".join(stems) + "}"
            exts = ",".join(self.extensions)
            yield Item(
                source_ref=ref,
                id=ytid,
                audio=audio,
                missing_audio_hint=f"expected {rel(self.audio_dir, self.root)}/{names}{{{exts}}}",
                task="t2m",
                language="en",
                text=parsed.caption,
                require_text=True,
                segment=None if self.audio_is_clip else (parsed.start, parsed.end),
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
