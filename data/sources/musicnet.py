"""MusicNet (classical recordings with aligned note labels; text-to-music after captioning).

Layout::

    musicnet/musicnet_metadata.csv   id,composer,composition,movement,ensemble,source,transcriber,catalog_name,seconds
    musicnet/train_data/1727.wav     train_labels/1727.csv (start_time,end_time,instrument,note,...)
    musicnet/test_data/2303.wav      test_labels/2303.csv

Every metadata row and every wav is an input row: a row without audio is quarantined
``missing_file``, audio without a row ``missing_metadata``; ``seconds`` is checked against the
file (``duration_mismatch``). Recordings run to ~20 minutes, so the adapter accepts long files;
:mod:`data.segment` cuts them into clips. Composer, composition, ensemble, the labels file and
the set of instrument (MIDI program) numbers go into ``meta``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import LONG_MUSIC_MAX_DURATION, Adapter, Item, iter_csv

_META_FIELDS = ("composer", "composition", "movement", "ensemble", "source", "transcriber", "catalog_name")


class MusicNetAdapter(Adapter):
    """Options: ``metadata`` (default ``musicnet_metadata.csv``), ``splits`` (default train, test)."""

    name = "musicnet"
    source_corpus = "MusicNet"
    default_licence = "CC-BY-4.0"
    default_max_duration = LONG_MUSIC_MAX_DURATION

    def __init__(
        self,
        root,
        *,
        metadata: str = "musicnet_metadata.csv",
        splits: tuple[str, ...] = ("train", "test"),
        **common,
    ):
        super().__init__(root, **common)
        self.metadata = self.required_file(metadata, "metadata file")
        self.splits = tuple(splits)

    def _instruments(self, labels: Path) -> list[int] | None:
        found: set[int] = set()
        for _, row in iter_csv(labels):
            if isinstance(row, dict):
                try:
                    found.add(int(row.get("instrument", "")))
                except ValueError:
                    pass
        return sorted(found)

    def items(self) -> Iterator[Item | ManifestRecord]:
        used: set[Path] = set()

        def row_item(ref: str, row: dict) -> Item | ManifestRecord:
            rid = (row.get("id") or "").strip()
            audio, split = None, None
            for s in self.splits:
                cand = self.root / f"{s}_data" / f"{rid}.wav"
                if rid and (cand.exists() or cand.is_symlink()):
                    audio, split = cand, s
                    break
            meta: dict = {k: (row.get(k) or None) for k in _META_FIELDS}
            if audio is not None:
                used.add(audio)
                labels = self.root / f"{split}_labels" / f"{rid}.csv"
                if labels.is_file():
                    meta["labels_path"] = str(labels)
                    meta["instruments"] = self._instruments(labels)
            try:
                declared = float(row["seconds"]) if (row.get("seconds") or "").strip() else None
            except ValueError:
                return self.quarantine(
                    ref, rid, "bad_row", f"seconds {row.get('seconds')!r} is not a number", task="t2m"
                )
            return Item(
                source_ref=ref,
                id=f"musicnet-{rid}" if rid else None,
                audio=audio,
                missing_audio_hint=f"expected {' or '.join(f'{s}_data/{rid}.wav' for s in self.splits)}",
                task="t2m",
                split=split,
                declared_duration=declared,
                meta=meta,
            )

        yield from self.table_items(self.metadata, iter_csv(self.metadata), row_item, task="t2m")
        for s in self.splits:
            yield from self.unlisted_audio(self.root / f"{s}_data", (".wav",), used, self.metadata, "musicnet-",
                                           task="t2m", split=s)
