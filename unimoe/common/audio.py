"""Reading, writing, down-mixing and resampling audio.

Arrays are float32 numpy; multi-channel audio is ``[channels, samples]`` (the transpose of
soundfile's layout). Files are read with ``soundfile`` (``torchaudio.load`` / torchcodec need native
libraries that CPU machines of this project do not have). Resampling uses
``torchaudio.functional.resample`` (pure PyTorch, the same windowed-sinc filter as the
``torchaudio.transforms.Resample`` that the released UniMoE-Audio code applies before DAC), so codes
computed here match that pipeline.

:func:`load_span` is the one reader of "a span of a file" for the data pipeline (tokenisation,
quality filtering, captioning): it decodes only the span's frames and reports every kind of bad
input as an :class:`AudioSpanError` with a :class:`~unimoe.common.reasons.Reason`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from unimoe.common.files import atomic_path
from unimoe.common.reasons import Reason

# Container formats soundfile can write, by destination suffix. The temporary file that
# ``atomic_path`` hands out ends in ".tmp", so the format must be named explicitly.
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# More channels than this in the first axis of a 2-D array looks like [samples, channels].
_MAX_CHANNELS = 16
# How far a read may fall short of the requested span and still count as whole (10 ms, at least 2
# samples): metadata durations are rounded, and a span that ends a few samples past the file's last
# frame is not a truncated file.
_SHORT_TOLERANCE_S = 0.010
_SHORT_TOLERANCE_MIN = 2

# The reasons :func:`load_span` raises (callers record them in manifests).
SPAN_REASONS = frozenset({Reason.MISSING_FILE, Reason.CORRUPT_AUDIO, Reason.BAD_SEGMENT, Reason.ZERO_LENGTH,
                          Reason.TRUNCATED, Reason.NON_FINITE})


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file: ``(float32 array [channels, samples], sample_rate)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


class AudioSpanError(ValueError):
    """A span of an audio file cannot be read. ``reason``: a :class:`~unimoe.common.reasons.Reason`
    from :data:`SPAN_REASONS`; ``detail``: a human message (names the file). ``str(e)`` is
    ``"<reason>: <detail>"``."""

    def __init__(self, reason: Reason | str, detail: str):
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")

    def __reduce__(self):  # picklable across processes despite the two-argument constructor
        return type(self), (self.reason, self.detail)


def _seconds(value: float | None, default: float | None) -> float | None:
    """``value`` as a float (``default`` for None); NaN for what is not a number (caught as bad_segment)."""
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _span_frames(offset: float | None, duration: float | None, sr: int, total: int) -> tuple[int, int]:
    """``(first frame, frames wanted)`` of a span in a file of ``total`` frames at ``sr``."""
    off = _seconds(offset, 0.0)
    if not math.isfinite(off) or off < 0:
        raise AudioSpanError(Reason.BAD_SEGMENT, f"offset {offset!r} is not a finite number >= 0")
    start = int(round(off * sr))
    if start >= total:
        raise AudioSpanError(Reason.BAD_SEGMENT,
                             f"offset {off:.3f} s is at or past the end of the file ({total / sr:.3f} s)")
    if duration is None:
        return start, total - start
    d = _seconds(duration, None)
    if not math.isfinite(d) or d <= 0:
        raise AudioSpanError(Reason.BAD_SEGMENT, f"duration {duration!r} is not a finite number > 0")
    return start, int(round(d * sr))


def load_span(path: str | Path | None, offset: float | None = 0.0, duration: float | None = None,
              ) -> tuple[np.ndarray, int]:
    """Read ``duration`` seconds from ``offset`` seconds (the rest of the file when ``duration`` is
    None): ``(float32 [channels, samples], sample_rate)``. Only the span is read from disk (seek +
    read), at the file's own rate and channel count.

    Rules (every failure raises :class:`AudioSpanError` with the ``reason`` in brackets):

    - no path, or no such file [``missing_file``]; a file soundfile cannot open or decode, or a
      sample rate <= 0 [``corrupt_audio``]; a file with no frames [``zero_length``];
    - ``offset`` None means 0; it must be a finite number >= 0 with ``round(offset * sr)`` inside the
      file (an offset at or past the end is an error, not an empty span); ``duration`` must be None or
      a finite number > 0 [``bad_segment``];
    - the span is ``round(duration * sr)`` frames from ``round(offset * sr)``. A read that falls short
      of it by at most ``max(2 samples, 10 ms)`` is accepted and returned as read (shorter); a larger
      shortfall [``truncated``]; nothing read at all [``zero_length``];
    - any NaN or infinite sample in the span [``non_finite``].
    """
    if not path:
        raise AudioSpanError(Reason.MISSING_FILE, "no audio path")
    p = Path(path)
    if not p.is_file():
        raise AudioSpanError(Reason.MISSING_FILE, f"audio file not found: {p}")
    try:
        with sf.SoundFile(str(p)) as f:
            sr, total = int(f.samplerate), int(f.frames)
            if sr <= 0:
                raise AudioSpanError(Reason.CORRUPT_AUDIO, f"{p}: sample rate {sr}")
            if total <= 0:
                raise AudioSpanError(Reason.ZERO_LENGTH, f"{p}: file has no samples")
            start, n = _span_frames(offset, duration, sr, total)
            f.seek(start)
            data = f.read(n, dtype="float32", always_2d=True)
    except AudioSpanError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as e:
        raise AudioSpanError(Reason.CORRUPT_AUDIO, f"{p}: {type(e).__name__}: {e}") from None
    got = data.shape[0]
    if got == 0:
        raise AudioSpanError(Reason.ZERO_LENGTH, f"{p}: no samples at offset {start / sr:.3f} s")
    if got < n - max(_SHORT_TOLERANCE_MIN, int(_SHORT_TOLERANCE_S * sr)):
        raise AudioSpanError(Reason.TRUNCATED, f"{p}: span asks for {n} samples from {start}, "
                                          f"the file gives {got} ({got / sr:.3f} of {n / sr:.3f} s)")
    if not np.isfinite(data).all():
        raise AudioSpanError(Reason.NON_FINITE, f"{p}: NaN or infinite samples in the span")
    return np.ascontiguousarray(data.T), sr


def as_channels_first(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    """A float32 ``[channels, samples]`` array from a 1-D ``[samples]`` or 2-D ``[channels, samples]`` input."""
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim == 1:
        return wav[None, :]
    if wav.ndim != 2:
        raise ValueError(f"audio must be 1-D [samples] or 2-D [channels, samples], got shape {wav.shape}")
    if wav.shape[0] > _MAX_CHANNELS and wav.shape[1] <= _MAX_CHANNELS:
        raise ValueError(
            f"audio of shape {wav.shape} looks like [samples, channels]; pass [channels, samples] (transpose it)"
        )
    return wav


def to_mono(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    """Mono float32 ``[samples]``: the mean of the channels (a 1-D input is returned as float32)."""
    wav = as_channels_first(wav)
    return wav[0].copy() if wav.shape[0] == 1 else wav.mean(axis=0, dtype=np.float32)


def resample(wav: np.ndarray | torch.Tensor, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along the last axis (1-D or ``[channels, samples]``); float32 numpy out.

    Output length is ``ceil(n * sr_out / sr_in)`` (torchaudio's convention).
    """
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if sr_in == sr_out:
        return wav.copy()
    if wav.shape[-1] == 0:
        return np.zeros(wav.shape, dtype=np.float32)
    import torchaudio.functional as AF  # lazy: torchaudio is slow to import

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), int(sr_in), int(sr_out))
    return out.numpy().astype(np.float32, copy=False)


def save_wav(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int, *, subtype: str = "PCM_16") -> Path:
    """Write audio atomically (temporary file + rename). ``wav``: 1-D or ``[channels, samples]``.

    The container follows the suffix (.wav or .flac); float input is clipped to [-1, 1] for
    integer subtypes.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported audio suffix {path.suffix!r}; use one of {sorted(_FORMATS)}")
    data = as_channels_first(wav)
    if not subtype.upper().startswith(("FLOAT", "DOUBLE")):
        data = np.clip(data, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data.T, int(sample_rate), subtype=subtype, format=fmt)
    return path
