"""Reading, writing, down-mixing and resampling audio.

Arrays are float32 numpy; multi-channel audio is ``[channels, samples]`` (the transpose of
soundfile's layout). Files are read with ``soundfile`` (``torchaudio.load`` / torchcodec need native
libraries that CPU machines of this project do not have). Resampling uses
``torchaudio.functional.resample`` (pure PyTorch, the same windowed-sinc filter as the
``torchaudio.transforms.Resample`` that the released UniMoE-Audio code applies before DAC), so codes
computed here match that pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from unimoe.io import atomic_path

# Container formats soundfile can write, by destination suffix. The temporary file that
# ``atomic_path`` hands out ends in ".tmp", so the format must be named explicitly.
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
# More channels than this in the first axis of a 2-D array looks like [samples, channels].
_MAX_CHANNELS = 16


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file: ``(float32 array [channels, samples], sample_rate)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(sr)


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
