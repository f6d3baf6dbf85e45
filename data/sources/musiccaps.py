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
from data.sources.base import AUDIO_EXTENSIONS, LONG_MUSIC_MAX_DURATION, Adapter, Item, iter_csv, rel
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
        self.csv = self.find_table(csv, (CSV_NAME,), (".csv",), "csv")
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
        used: set[Path] = set()

        def row_item(ref: str, row: dict) -> Item | ManifestRecord:
            parsed = parse_row(row)
            ytid = parsed.ytid
            meta = {"ytid": ytid, "start_s": parsed.start, "end_s": parsed.end, **parsed.meta}
            try:
                stems = self._stems(row, parsed) if ytid else []
            except (KeyError, IndexError, ValueError) as e:
                why = f"filename template failed: {e}"
                return self.quarantine(ref, ytid or None, "bad_row", why, task="t2m")
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
                return self.quarantine(ref, ytid or None, code, message, task="t2m", meta=meta)
            names = stems[0] if len(stems) == 1 else "{" + ",".join(stems) + "}"
            exts = ",".join(self.extensions)
            return Item(
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

        yield from self.table_items(self.csv, iter_csv(self.csv), row_item, task="t2m")
        extensions = tuple(set(self.extensions) | set(AUDIO_EXTENSIONS))
        yield from self.unlisted_audio(self.audio_dir, extensions, used, self.csv, "musiccaps-unlisted-",
                                       task="t2m")
