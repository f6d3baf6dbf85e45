"""Video-to-music pairs: a video and its soundtrack, matched by name.

Layout::

    root/videos/<name>.mp4      (.mkv/.webm/.mov/.avi; subfolders allowed, matched by relative path)
    root/audio/<name>.wav       (.flac/.mp3/.ogg)
    root/captions.jsonl         optional: {"id": "<name>", "caption": "..."} per line
      or root/captions.csv      optional: id,caption
      or root/captions/<name>.txt

Every name found in either folder is an input row: a video without audio is quarantined
``missing_file``, audio without a video ``missing_video``, a file that is not a video container
``not_video``. A second file for the same name (``x.mp4`` and ``x.mkv``) is ``duplicate_id``.
Captions are optional unless ``require_caption=True``; an empty caption that *is* given is
``empty_text``. Only the container is checked (no video decoding here: that is the vision stage).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterator

from data.manifest import ManifestRecord
from data.sources.base import (
    AUDIO_EXTENSIONS,
    LONG_MUSIC_MAX_DURATION,
    VIDEO_EXTENSIONS,
    Adapter,
    Item,
    MissingCorpusError,
    QuarantineReason,
    find_audio_files,
    id_from_relpath,
    iter_csv,
    iter_jsonl,
    read_bytes,
    rel,
)


class V2MAdapter(Adapter):
    """Options: ``video_dir`` ("videos"), ``audio_dir`` ("audio"), ``require_caption`` (False)."""

    name = "v2m"
    source_corpus = "v2m-pairs"
    default_max_duration = LONG_MUSIC_MAX_DURATION

    def __init__(
        self,
        root,
        *,
        video_dir: str = "videos",
        audio_dir: str = "audio",
        require_caption: bool = False,
        **common,
    ):
        super().__init__(root, **common)
        self.video_dir = self.root / video_dir
        self.audio_dir = self.root / audio_dir
        self.require_caption = require_caption
        for d in (self.video_dir, self.audio_dir):
            if not d.is_dir():
                raise MissingCorpusError(
                    f"v2m: folder {d} not found (expected {video_dir}/ and {audio_dir}/ under {self.root})"
                )

    def _captions(self) -> tuple[dict[str, tuple[str, str]], list[ManifestRecord]]:
        """name -> (caption, source_ref), plus quarantined records for unparsable caption rows."""
        out: dict[str, tuple[str, str]] = {}
        bad: list[ManifestRecord] = []
        jl, cs, folder = self.root / "captions.jsonl", self.root / "captions.csv", self.root / "captions"
        rows = []
        if jl.is_file():
            rows += [(f"captions.jsonl:{i}", r) for i, r in iter_jsonl(jl)]
        if cs.is_file():
            rows += [(f"captions.csv:{i}", r) for i, r in iter_csv(cs)]
        for ref, r in rows:
            if isinstance(r, QuarantineReason):
                bad.append(self.quarantine(ref, None, r.code, r.message, task="v2m"))
            elif r.get("id") is not None:
                out.setdefault(str(r["id"]), (r.get("caption") if r.get("caption") is not None else "", ref))
        if folder.is_dir():
            for p in sorted(folder.rglob("*.txt")):
                data, problem = read_bytes(p)
                if problem is not None:
                    bad.append(
                        self.quarantine(rel(p, self.root), None, "bad_row", problem.message, task="v2m")
                    )
                    continue
                out.setdefault(id_from_relpath(rel(p, folder)), (data, rel(p, self.root)))  # type: ignore[arg-type]
        return out, bad

    def items(self) -> Iterator[Item | ManifestRecord]:
        captions, bad = self._captions()
        yield from bad
        videos: dict[str, list[Path]] = defaultdict(list)
        audios: dict[str, list[Path]] = defaultdict(list)
        for p in find_audio_files(self.video_dir, VIDEO_EXTENSIONS):
            videos[id_from_relpath(rel(p, self.video_dir))].append(p)
        for p in find_audio_files(self.audio_dir, AUDIO_EXTENSIONS):
            audios[id_from_relpath(rel(p, self.audio_dir))].append(p)
        for name in sorted(set(videos) | set(audios)):
            vs, aus = videos.get(name, []), audios.get(name, [])
            caption, cref = captions.get(name, (None, None))
            n = max(len(vs), len(aus))
            for k in range(n):
                video = vs[k] if k < len(vs) else None
                audio = aus[k] if k < len(aus) else None
                ref = rel(video or audio, self.root)  # type: ignore[arg-type]
                problem = None
                if k > 0:
                    problem = QuarantineReason("duplicate_id", f"another file for pair {name!r} ({ref})")
                yield Item(
                    source_ref=ref,
                    id=name,
                    audio=audio,
                    missing_audio_hint=f"no audio named {name} in {rel(self.audio_dir, self.root)}/",
                    video=video,
                    require_video=True,
                    task="v2m",
                    language="en" if caption else None,
                    text=caption,
                    require_text=self.require_caption,
                    meta={"caption_ref": cref} if cref else {},
                    problem=problem,
                )
