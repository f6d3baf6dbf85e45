"""Piano-roll videos for the demo corpus's video-to-music pairs.

Each frame shows a scrolling piano roll of the clip's notes (time runs right-to-left past a fixed
playhead, pitch bottom-to-top, one colour per part, notes brighten while they sound) and a
progress bar along the bottom, so the video carries the music's pitches, rhythm, part layout and
timing, synchronised with the clip audio. Frames are drawn with numpy and piped to ffmpeg as raw
RGB; the output is a video-only H.264 MP4 (MPEG-4 Part 2 if libx264 is missing) lasting exactly
``round(duration * fps)`` frames, bit-exact for the same input on the same ffmpeg.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

# One colour per part (RGB); active notes are blended towards white.
PART_COLOURS = np.array(
    [
        (230, 88, 76),
        (76, 160, 230),
        (110, 200, 90),
        (240, 190, 60),
        (180, 110, 220),
        (60, 200, 190),
        (240, 130, 180),
        (170, 170, 80),
        (120, 120, 240),
        (220, 140, 90),
        (100, 220, 140),
        (200, 200, 200),
    ],
    dtype=np.float32,
)
BACKGROUND = np.array((18, 18, 28), dtype=np.uint8)


def piano_roll_frames(
    parts: Sequence[Sequence[tuple[float, float, int, int]]],
    duration: float,
    *,
    fps: int = 10,
    size: int = 128,
    window: float = 4.0,
):
    """Yield ``round(duration*fps)`` RGB frames (size x size x 3, uint8) of a scrolling piano roll.

    ``parts`` is one note list per part: (start s, end s, MIDI pitch, velocity), times relative to
    the clip start.
    """
    n_frames = max(1, int(round(duration * fps)))
    pitches = [n[2] for ns in parts for n in ns]
    lo, hi = (min(pitches), max(pitches)) if pitches else (48, 72)
    span = max(hi - lo + 1, 24)
    mid = (lo + hi) / 2.0
    lo = int(np.floor(mid - span / 2)) - 1
    span += 2
    bar_h = max(2, size // 32)
    roll_h = size - bar_h - 1
    row_h = roll_h / span
    px_per_s = size / window
    play_x = size // 4
    # Precompute rectangles per note: (part, start, end, y0, y1, velocity)
    notes = []
    for pi, ns in enumerate(parts):
        for a, b, p, v in ns:
            y1 = int(round(roll_h - (p - lo) * row_h))
            y0 = max(0, int(round(y1 - max(row_h, 1.0))))
            notes.append((pi, a, b, y0, max(y0 + 1, y1), v))
    background = np.empty((size, size, 3), dtype=np.uint8)
    background[:] = BACKGROUND
    # Faint lines at every C, so the pitch axis is readable.
    for p in range(lo, lo + span):
        if p % 12 == 0:
            y = int(round(roll_h - (p - lo) * row_h))
            if 0 <= y < roll_h:
                background[y, :, :] = (40, 40, 56)
    for i in range(n_frames):
        now = i / fps
        f = background.copy()
        for pi, a, b, y0, y1, v in notes:
            x0 = int(round(play_x + (a - now) * px_per_s))
            x1 = int(round(play_x + (b - now) * px_per_s))
            if x1 <= 0 or x0 >= size:
                continue
            x0c, x1c = max(0, x0), min(size, max(x1, x0 + 1))
            col = PART_COLOURS[pi % len(PART_COLOURS)] * (0.55 + 0.45 * v / 127.0)
            if a <= now < b:
                col = col * 0.4 + 255 * 0.6
            f[y0:y1, x0c:x1c] = np.clip(col, 0, 255).astype(np.uint8)
        f[:roll_h, play_x] = (235, 235, 235)
        done = int(round(size * (i + 1) / n_frames))
        f[size - bar_h :, :done] = (200, 200, 210)
        f[size - bar_h :, done:] = (50, 50, 64)
        yield f


@lru_cache(maxsize=1)
def _encoders() -> set[str]:
    exe = shutil.which("ffmpeg")
    if exe is None:
        return set()
    r = subprocess.run(
        [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    return {ln.split()[1] for ln in r.stdout.splitlines() if len(ln.split()) > 1 and ln.startswith(" V")}


def encode_frames(
    frames, out_path: Path, *, fps: int, size: int, codec: str = "libx264", timeout: float = 300.0
) -> str:
    """Encode RGB frames to a video-only MP4 at ``out_path``; returns the codec used."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise FileNotFoundError(
            "ffmpeg is not installed (Debian package ffmpeg; scripts/setup.sh installs it)"
        )
    if codec == "libx264" and "libx264" not in _encoders():
        codec = "mpeg4"
    if codec == "libx264":
        vopts = [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            "-g",
            str(2 * fps),
        ]
    else:
        vopts = ["-c:v", codec, "-q:v", "4", "-pix_fmt", "yuv420p", "-threads", "1", "-g", str(2 * fps)]
    cmd = [
        exe,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{size}x{size}",
        "-r",
        str(fps),
        "-i",
        "pipe:0",
        "-an",
        *vopts,
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        "-f",
        "mp4",
        str(out_path),
    ]
    data = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
    r = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    if r.returncode != 0 or not out_path.is_file() or out_path.stat().st_size == 0:
        raise RuntimeError(
            f"ffmpeg failed (rc={r.returncode}): {r.stderr.decode('utf-8', 'replace').strip()[-400:]}"
        )
    return codec


def ffprobe_video(path: Path) -> dict:
    """Duration (s), frame count, size and codec of the first video stream, via ffprobe."""
    exe = shutil.which("ffprobe")
    if exe is None:
        raise FileNotFoundError("ffprobe is not installed (Debian package ffmpeg)")
    r = subprocess.run(
        [
            exe,
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames,avg_frame_rate:format=duration",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise RuntimeError(f"ffprobe failed: {r.stderr.strip()[-300:]}")
    info = json.loads(r.stdout)
    st = (info.get("streams") or [{}])[0]
    return {
        "duration": float(info.get("format", {}).get("duration", "nan")),
        "frames": int(st.get("nb_read_frames", 0) or 0),
        "width": int(st.get("width", 0) or 0),
        "height": int(st.get("height", 0) or 0),
        "codec": st.get("codec_name"),
    }
