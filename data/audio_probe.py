"""Cheap, defensive checks on raw corpus files before anything trusts them.

:func:`probe_audio` opens a file with soundfile (libsndfile) and returns either a
:class:`ProbeResult` (format, rate, channels, frames, SHA-256) or a :class:`QuarantineReason` — a
short stable ``code`` plus a human ``message``. It never raises on a bad file. What it catches:

===================== ==============================================================================
code                  meaning
===================== ==============================================================================
``path_escape``       the path (after resolving ``..`` and symlinks) lies outside the corpus root
``missing_file``      no such file (or a dangling symlink)
``not_a_file``        the path is a directory / device / fifo
``zero_length``       0 bytes, or a valid header with no samples
``not_audio``         bytes libsndfile does not recognise and no known audio magic number
``corrupt_audio``     a known audio container whose header or stream cannot be decoded
``truncated``         fewer bytes / frames than the header declares
``non_finite``        NaN or ±inf samples (float PCM)
``bad_sample_rate``   sample rate outside the allowed range (default 8 kHz – 192 kHz)
``too_many_channels`` more channels than allowed (default 2)
``too_long``          longer than ``max_duration`` (default 30 min; long-music adapters raise it)
``too_short``         shorter than ``min_duration`` (default: no minimum beyond "has samples")
===================== ==============================================================================

Text and video checks live here too (:func:`check_text`, :func:`probe_video`).
:class:`~unimoe.common.reasons.Reason` lists every code an adapter can emit.

The sample scan decodes the whole file in blocks (one block for small files, a stream of bounded
blocks for big ones), so memory stays flat however long the file is; it counts the frames actually
decodable (truncation) and, for float PCM, checks that every sample is finite.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from unimoe.common.reasons import Reason
from unimoe.common.text import has_surrogates, repair_text
from unimoe.io import sha256_file


@dataclass(frozen=True)
class QuarantineReason:
    """Why an input was quarantined: a :class:`~unimoe.common.reasons.Reason` (a code given as a string
    is looked up; an unknown one is a ValueError) and a human message."""

    code: Reason
    message: str
    path: str | None = None
    sha256: str | None = None  # provenance, when the file could be read at all

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", Reason(self.code))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class ProbeResult:
    path: Path  # absolute, symlinks resolved
    sample_rate: int
    channels: int
    frames: int
    duration: float  # seconds
    format: str
    subtype: str
    size_bytes: int
    sha256: str | None


@dataclass(frozen=True)
class ProbeLimits:
    """What a usable file looks like. Adapters take these as options (``max_duration`` per corpus)."""

    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    max_channels: int = 2
    max_duration: float | None = 1800.0  # seconds; None = no limit (long music to be segmented)
    min_duration: float = 0.0  # seconds; a file must also have at least one frame
    scan_samples: bool = True  # decode everything: truncation + NaN/inf checks
    block_frames: int = 1 << 18  # frames per block when streaming the scan
    hash_files: bool = True  # provenance SHA-256 of the source file

    def with_(self, **changes: Any) -> "ProbeLimits":
        return replace(self, **changes)


DEFAULT_LIMITS = ProbeLimits()


# --------------------------------------------------------------------------------------------
# paths


def resolve_in_root(path: str | os.PathLike, root: str | os.PathLike) -> Path | QuarantineReason:
    """``root / path`` with ``..`` and symlinks resolved, or ``path_escape`` if it leaves ``root``."""
    root_r = Path(root).resolve()
    p = Path(path)
    if not p.is_absolute():
        p = root_r / p
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError) as e:  # symlink loops
        return QuarantineReason(
            "missing_file", f"cannot resolve {repair_text(str(path))!r}: {e}", repair_text(str(path))
        )
    if resolved != root_r and not resolved.is_relative_to(root_r):
        return QuarantineReason(
            "path_escape",
            f"{repair_text(str(path))!r} resolves to {repair_text(str(resolved))}, outside the corpus root {root_r}",
            repair_text(str(path)),
        )
    return resolved


def _check_file(path: str | os.PathLike, root: str | os.PathLike) -> tuple[Path, int] | QuarantineReason:
    shown = repair_text(str(path))
    if has_surrogates(str(path)):
        return QuarantineReason("non_utf8_path", f"path {shown!r} is not valid UTF-8", shown)
    resolved = resolve_in_root(path, root)
    if isinstance(resolved, QuarantineReason):
        return resolved
    try:
        st = resolved.stat()
    except FileNotFoundError:
        return QuarantineReason("missing_file", f"{shown!r} does not exist (looked for {resolved})", shown)
    except OSError as e:
        return QuarantineReason("missing_file", f"{shown!r} cannot be accessed: {e}", shown)
    if not resolved.is_file():
        return QuarantineReason("not_a_file", f"{shown!r} is not a regular file", shown)
    if st.st_size == 0:
        return QuarantineReason("zero_length", f"{shown!r} is empty (0 bytes)", shown)
    return resolved, st.st_size


# --------------------------------------------------------------------------------------------
# audio

_AUDIO_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"BW64",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"FORM",
    b"caff",
    b".snd",
    b"NIST",
)


def _sniff_audio(head: bytes) -> bool:
    if head.startswith(_AUDIO_MAGIC) or head.startswith(b"riff\x2e\x91\xcf\x11"):
        return True
    return len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0  # MPEG audio frame sync


def _declared_chunk_shortfall(path: Path, size: int) -> str | None:
    """For RIFF/WAVE and AIFF: a message if the sample chunk claims more bytes than the file has.

    libsndfile silently shortens such files, so this is where a truncated WAV is caught.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12:
            return None
        if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
            order, data_id = ("little" if head[:4] == b"RIFF" else "big"), b"data"
        elif head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            order, data_id = "big", b"SSND"
        else:
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            if len(hdr) < 8:
                return None
            cid, csize = hdr[:4], int.from_bytes(hdr[4:], order)
            if cid == data_id:
                if csize in (0, 0xFFFFFFFF):  # streaming writers leave the size open
                    return None
                have = size - pos - 8
                if csize > have:
                    return f"header declares {csize} bytes of samples, the file holds {have}"
                return None
            pos += 8 + csize + (csize & 1)
    return None


def _ogg_missing_eos(path: Path, size: int) -> bool:
    """True when the last Ogg page in the file lacks the end-of-stream flag (a cut-off stream)."""
    with open(path, "rb") as f:
        f.seek(max(0, size - (1 << 16)))
        tail = f.read()
    pos = tail.rfind(b"OggS")
    if pos < 0 or pos + 6 > len(tail):
        return True
    if tail[pos + 4] != 0:  # stream structure version must be 0: a spurious "OggS" in packet data
        return False
    header_type = tail[pos + 5]
    if not header_type & 0x04:
        return True
    # the last page itself must be complete: 27-byte header + segment table + its segments
    if pos + 27 > len(tail):
        return True
    nseg = tail[pos + 26]
    if pos + 27 + nseg > len(tail):
        return True
    body = sum(tail[pos + 27 : pos + 27 + nseg])
    return pos + 27 + nseg + body > len(tail)


def probe_audio(
    path: str | os.PathLike, root: str | os.PathLike, limits: ProbeLimits = DEFAULT_LIMITS
) -> ProbeResult | QuarantineReason:
    """Check one audio file under ``root``. Never raises for a bad file."""
    checked = _check_file(path, root)
    if isinstance(checked, QuarantineReason):
        return checked
    resolved, size = checked
    shown = repair_text(str(path))

    def q(code: str, message: str, sha: str | None = None) -> QuarantineReason:
        return QuarantineReason(code, f"{shown!r}: {message}", shown, sha)

    try:
        with open(resolved, "rb") as f:
            head = f.read(16)
        sha = sha256_file(resolved) if limits.hash_files else None
    except OSError as e:
        return q("corrupt_audio", f"cannot read the file: {e}")
    try:
        info = sf.info(str(resolved))
    except Exception as e:  # libsndfile: "Format not recognised", "Unspecified internal error", ...
        msg = str(e).split(": ", 1)[-1] if ": " in str(e) else str(e)
        if _sniff_audio(head):
            return q("corrupt_audio", f"looks like audio but libsndfile cannot open it ({msg})", sha)
        return q("not_audio", f"not a recognised audio format (first bytes {head[:8]!r}; {msg})", sha)

    sr, ch, frames = int(info.samplerate), int(info.channels), int(info.frames)
    if not (limits.min_sample_rate <= sr <= limits.max_sample_rate):
        return q(
            "bad_sample_rate",
            f"sample rate {sr} Hz is outside the allowed {limits.min_sample_rate}-{limits.max_sample_rate} Hz",
            sha,
        )
    if ch < 1 or ch > limits.max_channels:
        return q(
            "too_many_channels" if ch > 1 else "corrupt_audio",
            f"{ch} channels (at most {limits.max_channels} allowed)",
            sha,
        )
    lossy = info.format in ("MP3", "OGG", "MPEG")
    if info.format == "OGG":
        # Ogg learns its length from the last page: a cut-off stream has no end-of-stream page
        # (and libsndfile then reports 0 frames, which is not the same as an empty file).
        try:
            if _ogg_missing_eos(resolved, size):
                return q("truncated", "the Ogg stream has no end-of-stream page; the file is cut off", sha)
        except OSError as e:
            return q("corrupt_audio", f"cannot read the file: {e}", sha)
    if frames <= 0:
        return q("zero_length", "the header is valid but holds no samples", sha)
    duration = frames / sr
    if limits.max_duration is not None and duration > limits.max_duration:
        return q("too_long", f"{duration:.1f} s is longer than the allowed {limits.max_duration:g} s", sha)
    if duration < limits.min_duration:
        return q("too_short", f"{duration:.3f} s is shorter than the allowed {limits.min_duration:g} s", sha)
    try:
        shortfall = _declared_chunk_shortfall(resolved, size)
    except OSError as e:
        return q("corrupt_audio", f"cannot read the file: {e}", sha)
    if shortfall:
        return q("truncated", shortfall, sha)

    if limits.scan_samples:
        float_pcm = info.subtype in ("FLOAT", "DOUBLE")
        dtype = {"FLOAT": "float32", "DOUBLE": "float64"}.get(info.subtype, "int16")
        got = 0
        try:
            with sf.SoundFile(str(resolved)) as f:
                while True:
                    block = f.read(limits.block_frames, dtype=dtype, always_2d=True)
                    if block.shape[0] == 0:
                        break
                    got += block.shape[0]
                    if float_pcm and not np.isfinite(block).all():
                        bad = int((~np.isfinite(block)).sum())
                        return q(
                            "non_finite",
                            f"{bad} NaN/inf sample(s) in the block ending at {got / sr:.2f} s",
                            sha,
                        )
        except Exception as e:
            return q("truncated", f"decoding failed after {got / sr:.2f} of {duration:.2f} s ({e})", sha)
        # Lossy decoders may differ from the header's count by encoder padding: allow 1% / two MPEG frames.
        tolerance = max(int(0.01 * frames), 2304) if lossy else 0
        if got + tolerance < frames:
            return q(
                "truncated", f"only {got} of the {frames} frames the header declares can be decoded", sha
            )
        if lossy and got > 0:
            frames, duration = got, got / sr

    return ProbeResult(
        path=resolved,
        sample_rate=sr,
        channels=ch,
        frames=frames,
        duration=duration,
        format=info.format,
        subtype=info.subtype,
        size_bytes=size,
        sha256=sha,
    )


# --------------------------------------------------------------------------------------------
# video (container sniffing only: decoding is the vision stage's job)


@dataclass(frozen=True)
class VideoProbe:
    path: Path
    container: str
    size_bytes: int
    sha256: str | None


def _sniff_video(head: bytes) -> str | None:
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4/mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska/webm"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg"
    if head[:1] == b"\x47":
        return "mpeg-ts"
    return None


def probe_video(
    path: str | os.PathLike, root: str | os.PathLike, *, hash_files: bool = True
) -> VideoProbe | QuarantineReason:
    """Check that a video file exists inside ``root``, is non-empty and is a known container."""
    checked = _check_file(path, root)
    if isinstance(checked, QuarantineReason):
        if checked.code == "missing_file":
            return replace(checked, code="missing_video")
        return checked
    resolved, size = checked
    shown = repair_text(str(path))
    try:
        with open(resolved, "rb") as f:
            head = f.read(16)
        sha = sha256_file(resolved) if hash_files else None
    except OSError as e:
        return QuarantineReason("not_video", f"{shown!r}: cannot read the file: {e}", shown)
    container = _sniff_video(head)
    if container is None:
        return QuarantineReason(
            "not_video", f"{shown!r}: not a recognised video container (first bytes {head[:8]!r})", shown, sha
        )
    return VideoProbe(resolved, container, size, sha)


# --------------------------------------------------------------------------------------------
# text


def check_text(
    value: str | bytes | None, *, required: bool = True, what: str = "text"
) -> str | None | QuarantineReason:
    """Decode/validate a transcript or caption.

    Returns the stripped text (``None`` when absent and not required) or a ``non_utf8_text`` /
    ``empty_text`` / ``missing_text`` reason. Strings read with ``errors="surrogateescape"`` carry
    undecodable bytes as lone surrogates; those count as non-UTF-8.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' empty cell
        return QuarantineReason("missing_text", f"no {what}") if required else None
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return QuarantineReason("non_utf8_text", f"{what} is not valid UTF-8 ({e})")
    if not isinstance(value, str):
        value = str(value)
    if has_surrogates(value):
        return QuarantineReason("non_utf8_text", f"{what} is not valid UTF-8: {repair_text(value)[:80]!r}")
    value = value.replace("\ufeff", "").strip()
    if not value:
        if required:
            return QuarantineReason("empty_text", f"{what} is empty")
        return None
    return value
