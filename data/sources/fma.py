"""FMA, the Free Music Archive (text-to-music; captions come later from the captioner).

Layout (``root`` holds both folders)::

    fma_metadata/tracks.csv     three header rows (section, field, "track_id") then one row per track
    fma_small/000/000002.mp3    fma_<subset>/<first 3 digits>/<track id, 6 digits>.mp3

``subset`` picks the audio folder and the tracks: FMA's subsets are nested (small ⊂ medium ⊂
large), so ``subset="medium"`` takes the tracks whose ``set.subset`` is small or medium;
``"large"``/``"full"`` take all. Tracks outside the chosen subset are not input rows of this scan.
Every in-subset track row and every audio file in the folder is an input row: a row without audio
is quarantined ``missing_file``, audio without a row ``missing_metadata``.

Licence is per track (``track.license``); the split comes from ``set.split``
(training/validation/test -> train/dev/test). MP3 is decoded by libsndfile (>= 1.1); where an old
libsndfile cannot read MP3, point ``extensions`` at converted wav/flac/ogg files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import (
    LONG_MUSIC_MAX_DURATION, Adapter, Item, MissingCorpusError, QuarantineReason, find_audio_files, iter_csv, rel,
)  # fmt: skip

_NESTED = {"small": ("small",), "medium": ("small", "medium"), "large": ("small", "medium", "large")}


def fma_audio_relpath(track_id: int, ext: str = ".mp3") -> str:
    tid = f"{track_id:06d}"
    return f"{tid[:3]}/{tid}{ext}"


class FMAAdapter(Adapter):
    """Options: ``subset`` ("small" | "medium" | "large" | "full"), ``audio_dir`` (default
    ``fma_<subset>``), ``metadata`` (default ``fma_metadata/tracks.csv``), ``extensions``."""

    name = "fma"
    source_corpus = "FMA"
    default_licence = "see FMA tracks.csv (per-track Creative Commons)"
    default_max_duration = LONG_MUSIC_MAX_DURATION

    def __init__(
        self,
        root,
        *,
        subset: str = "small",
        audio_dir: str | None = None,
        metadata: str = "fma_metadata/tracks.csv",
        extensions: tuple[str, ...] = (".mp3", ".wav", ".flac", ".ogg"),
        **common,
    ) -> None:
        super().__init__(root, **common)
        if subset not in ("small", "medium", "large", "full"):
            raise ValueError(f"subset must be small, medium, large or full, got {subset!r}")
        self.subset = subset
        self.audio_dir = self.root / (audio_dir or f"fma_{subset}")
        self.metadata = self.required_file(metadata, "metadata file", " (expected fma_metadata/tracks.csv)")
        self.extensions = tuple(extensions)
        if not self.audio_dir.is_dir():
            raise MissingCorpusError(f"fma: audio folder {self.audio_dir} not found")

    def _find_audio(self, track_id: int) -> Path | None:
        for ext in self.extensions:
            p = self.audio_dir / fma_audio_relpath(track_id, ext)
            if p.exists() or p.is_symlink():
                return p
        return None

    def items(self) -> Iterator[Item | ManifestRecord]:
        listed: set[int] = set()
        used: set[Path] = set()
        wanted = _NESTED.get(self.subset)

        def row_item(ref: str, row: dict) -> Item | ManifestRecord | None:
            raw_id = (row.get("track_id") or "").strip()
            try:
                tid = int(raw_id)
            except ValueError:
                return self.quarantine(ref, None, "bad_row", f"track_id {raw_id!r} is not an integer", task="t2m")
            subset = (row.get("set.subset") or "").strip()
            if wanted is not None and subset and subset not in wanted:
                return None  # not part of this subset: not an input row of this scan
            listed.add(tid)
            audio = self._find_audio(tid)
            if audio is not None:
                used.add(audio)
            meta = {
                "track_id": tid,
                "title": row.get("track.title") or None,
                "artist": row.get("artist.name") or None,
                "album": row.get("album.title") or None,
                "genre_top": row.get("track.genre_top") or None,
                "genres": row.get("track.genres") or None,
                "fma_subset": subset or None,
                "track_duration": row.get("track.duration") or None,
            }
            return Item(
                source_ref=ref,
                id=f"fma-{tid:06d}",
                audio=audio,
                missing_audio_hint=f"expected {rel(self.audio_dir, self.root)}/{fma_audio_relpath(tid)}",
                task="t2m",
                split=(row.get("set.split") or "").strip() or None,
                licence=(row.get("track.license") or "").strip() or None,
                meta=meta,
            )

        yield from self.table_items(self.metadata, iter_csv(self.metadata, header_rows=3), row_item, task="t2m")
        mref = rel(self.metadata, self.root)
        for audio in find_audio_files(self.audio_dir, self.extensions):
            try:
                tid = int(audio.stem)
            except ValueError:
                tid = None
            if audio in used:
                continue
            if tid is not None and tid in listed:
                problem = QuarantineReason(
                    "duplicate_id", f"{rel(audio, self.root)}: another file of track {tid} was already used"
                )
            else:
                problem = QuarantineReason(
                    "missing_metadata",
                    f"{rel(audio, self.root)} has no row in {mref} for subset {self.subset!r}",
                )
            yield Item(
                source_ref=rel(audio, self.root),
                id=f"fma-{tid:06d}" if tid is not None else f"fma-{audio.stem}",
                audio=audio,
                task="t2m",
                problem=problem,
            )
