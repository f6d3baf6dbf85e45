"""V2M-bench (video-to-music): a folder of 10 s video clips, optional captions, optional reference audio.

Layout::

    <root>/videos/<id>.mp4        the clips (.mkv/.webm/.mov also accepted); id = file stem
    <root>/metadata.csv           optional: columns id (or video/name/file) and caption (or text/description)
      or <root>/metadata.jsonl    optional: one {"id": ..., "caption": ...} per line
      or <root>/metadata.json     optional: a list of such objects, or {"<id>": {...} | "<caption>"}
    <root>/audio/<id>.wav         optional reference soundtrack (.flac/.mp3/.ogg also accepted)

Each clip's container duration is read with ``ffprobe`` (installed with ffmpeg); a clip whose
duration is not ``clip_seconds`` +- ``tolerance`` (10 +- 0.5 s), that has no video stream or that
ffprobe cannot read is rejected with the measured value. A metadata row naming no existing clip, an
unparsable row or a duplicate row is rejected; a clip without metadata is still an item (no caption).
A missing or unreadable reference audio keeps the item (``reference_audio=None``) and is listed in
``info["missing"]``.

Two tasks, as in the paper's Table 4 (a T2M block and a V2M block on V2M-bench):
- ``v2m``: one item per usable clip, id = the clip id, video = the clip, text = its caption if any;
- ``t2m`` (``t2m=True``, the default): one more item per usable clip *with a caption*: id ``t2m/<id>``
  (ids stay unique within the set), text = the caption, no video, reference audio = the same clip's
  (so FAD/KL compare against the same reference set as V2M); ``meta["clip_id"]`` names the clip.
The v2m items come first, sorted by id, then the t2m items in the same order.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from evaluation.sets.base import (BenchItem, BenchmarkError, BenchmarkSet, Ledger, checked_reference, find_audio,
                                  finish, jsonl_rows, require_dir, resolve)

LAYOUT = (
    "  <root>/videos/<id>.mp4                     10 s clips\n"
    "  <root>/metadata.csv|.jsonl|.json           optional: id, caption\n"
    "  <root>/audio/<id>.wav                      optional reference audio"
)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov")
_ID_KEYS = ("id", "video", "video_id", "name", "file", "filename")
_TEXT_KEYS = ("caption", "text", "description", "prompt")


def probe_duration(path: Path, timeout: float = 60.0) -> tuple[float | None, str | None]:
    """(container duration in s, None) or (None, why not) via ffprobe."""
    exe = shutil.which("ffprobe")
    if exe is None:  # checked by the loader first; kept for direct callers
        raise BenchmarkError("v2m-bench: ffprobe is not installed (Debian package ffmpeg)")
    try:
        r = subprocess.run(
            [exe, "-v", "error", "-show_entries", "format=duration:stream=codec_type", "-of", "json", str(path)],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"ffprobe timed out after {timeout:g} s"
    if r.returncode != 0:
        return None, f"ffprobe cannot read it: {r.stderr.strip()[-300:]}"
    try:
        info = json.loads(r.stdout or "{}")
        if not any(s.get("codec_type") == "video" for s in info.get("streams", [])):
            return None, "no video stream"
        return float(info["format"]["duration"]), None
    except (ValueError, KeyError, TypeError):
        return None, "ffprobe reported no duration"


def _id_of(row: dict[str, Any]) -> str | None:
    for k in _ID_KEYS:
        v = row.get(k)
        if v not in (None, ""):
            v = str(v).strip()
            stem = Path(v).stem if Path(v).suffix.lower() in VIDEO_EXTENSIONS else v
            return stem or None
    return None


def _text_of(row: dict[str, Any]) -> str | None:
    for k in _TEXT_KEYS:
        v = row.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _metadata_rows(path: Path, ledger: Ledger) -> list[tuple[str, dict[str, Any]]]:
    """(ref, row) for each metadata row; unparsable rows go to the ledger."""
    out: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".jsonl":
        out.extend(jsonl_rows(path, ledger))
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BenchmarkError(f"v2m-bench: {path} is not valid JSON ({e})") from None
        if isinstance(data, dict):  # {"id": {...}} or {"id": "caption"}
            data = [{"id": k, **v} if isinstance(v, dict) else {"id": k, "caption": v} for k, v in data.items()]
        if not isinstance(data, list):
            raise BenchmarkError(f"v2m-bench: {path} must hold a list or an object, got {type(data).__name__}")
        for i, obj in enumerate(data):
            ref = f"{path.name}[{i}]"
            if isinstance(obj, dict):
                out.append((ref, obj))
            else:
                ledger.reject(ref, None, "bad_row", f"expected an object, got {type(obj).__name__}")
    else:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                ref = f"{path.name}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    ledger.reject(ref, None, "bad_row", "field count differs from the header")
                    continue
                out.append((ref, {k.lstrip("\ufeff").strip(): v for k, v in row.items()}))
    return out


def load_v2m_bench(
    root: str | Path,
    *,
    video_dir: str = "videos",
    audio_dir: str = "audio",
    metadata: str | Path | None = None,
    clip_seconds: float = 10.0,
    tolerance: float = 0.5,
    check_duration: bool = True,
    t2m: bool = True,
) -> BenchmarkSet:
    root = require_dir(Path(root), "v2m-bench", LAYOUT)
    vdir = require_dir(resolve(video_dir, root), "v2m-bench", LAYOUT)
    adir = resolve(audio_dir, root)
    if check_duration and shutil.which("ffprobe") is None:
        raise BenchmarkError("v2m-bench: ffprobe (Debian package ffmpeg) is needed to check clip durations; "
                             "install it or pass check_duration=False")
    ledger = Ledger()
    videos: dict[str, list[Path]] = {}
    for p in sorted(vdir.iterdir()):
        if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
            videos.setdefault(p.stem, []).append(p)

    if metadata is None:
        found = [root / n for n in ("metadata.csv", "metadata.jsonl", "metadata.json") if (root / n).is_file()]
        if len(found) > 1:
            raise BenchmarkError(f"v2m-bench: several metadata files {[p.name for p in found]}; pass metadata=...")
        meta_path = found[0] if found else None
    else:
        meta_path = resolve(metadata, root)
        if not meta_path.is_file():
            raise BenchmarkError(f"v2m-bench: metadata file {meta_path} not found")
    captions: dict[str, tuple[str | None, str, dict[str, Any]]] = {}
    if meta_path is not None:
        for ref, row in _metadata_rows(meta_path, ledger):
            vid = _id_of(row)
            if vid is None:
                ledger.reject(ref, None, "missing_id", f"no id column (one of {list(_ID_KEYS)})")
            elif vid in captions:
                ledger.reject(ref, vid, "duplicate_id", f"{vid!r} already has a metadata row")
            elif vid not in videos:
                exts = "|".join(e[1:] for e in VIDEO_EXTENSIONS)
                ledger.reject(ref, vid, "missing_video", f"no clip {vid}.<{exts}> in {vdir}")
            else:
                extra = {k: v for k, v in row.items()
                         if k not in _ID_KEYS + _TEXT_KEYS and isinstance(v, (str, int, float, bool))}
                captions[vid] = (_text_of(row), ref, extra)

    items: list[BenchItem] = []
    t2m_items: list[BenchItem] = []
    for vid, paths in sorted(videos.items()):
        for dup in paths[1:]:
            ledger.reject(dup.relative_to(root).as_posix(), vid, "duplicate_id",
                          f"another clip for id {vid!r}: {paths[0].name}")
        video = paths[0]
        vref = video.relative_to(root).as_posix()
        duration = None
        if check_duration:
            duration, why = probe_duration(video)
            if duration is None:
                ledger.reject(vref, vid, "not_video", why)
                continue
            if abs(duration - clip_seconds) > tolerance:
                ledger.reject(vref, vid, "bad_duration",
                              f"{duration:.3f} s, expected {clip_seconds:g} +- {tolerance:g} s", duration=duration)
                continue
        caption, cref, extra = captions.get(vid, (None, None, {}))
        meta: dict[str, Any] = {"video_duration": duration, **extra}
        if cref:
            meta["metadata_ref"] = cref
        audio, audio_duration = checked_reference(ledger, vref, vid, find_audio(adir, [vid]) if adir.is_dir() else None,
                                                  f"no reference audio {vid}.wav (or .flac/.mp3/.ogg) in {adir}")
        if audio is not None:
            meta["audio_duration"] = round(audio_duration, 6)
        items.append(
            BenchItem(
                id=vid,
                task="v2m",
                language="en" if caption else None,
                text=caption,
                reference_audio=str(audio.resolve()) if audio is not None else None,
                video=str(video.resolve()),
                meta=meta,
            )
        )
        if t2m and caption:
            t2m_items.append(
                BenchItem(
                    id=f"t2m/{vid}",
                    task="t2m",
                    language="en",
                    text=caption,
                    reference_audio=items[-1].reference_audio,
                    meta={**meta, "clip_id": vid},
                )
            )
    items += t2m_items
    return finish(
        "v2m-bench",
        items,
        ledger,
        root=str(root),
        metadata=str(meta_path) if meta_path else None,
        protocol={
            "benchmark": "V2M-bench",
            "clip_seconds": clip_seconds,
            "tolerance": tolerance,
            "duration_checked": check_duration,
            "t2m": ("each captioned clip's caption as a text-to-music prompt, id 't2m/<id>', reference audio "
                    "the same clip's" if t2m else None),
        },
    )
