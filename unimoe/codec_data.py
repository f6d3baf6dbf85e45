"""Training audio for the codec trainer: the source list and the sampler of fixed-length crops."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from unimoe.common.audio import load_span, resample, to_mono

if TYPE_CHECKING:
    from unimoe.codec_train import CodecTrainConfig


@dataclass
class AudioSource:
    """One training file (or a span of one): path, optional offset/duration, and a group (the task)
    used to balance sampling between speech and music."""

    path: str
    group: str = "audio"
    offset: float | None = None
    duration: float | None = None


class SegmentSampler:
    """Random fixed-length crops from a pool of audio, groups sampled equally, loudness-normalised.

    All audio is decoded once into memory at the codec rate (the demo corpus is a few hundred MB);
    the crop order comes from a numpy Generator whose state is checkpointed, so a resumed run draws
    exactly the crops an uninterrupted one would.
    """

    def __init__(self, sources: Sequence[AudioSource], cfg: CodecTrainConfig, *,
                 progress: Callable[[int, int], None] | None = None):
        self.cfg = cfg
        self.groups: dict[str, list[np.ndarray]] = {}
        self.skipped: list[tuple[str, str]] = []
        for n, s in enumerate(sources):
            try:
                wav, sr = load_span(s.path, s.offset, s.duration)
            except Exception as e:  # noqa: BLE001 - a bad file is reported, never fatal
                self.skipped.append((s.path, f"{type(e).__name__}: {e}"))
                continue
            mono = resample(to_mono(wav), sr, cfg.sample_rate).astype(np.float32)
            if len(mono) >= cfg.segment_samples:
                self.groups.setdefault(s.group, []).append(mono)
            else:
                self.skipped.append((s.path, f"shorter than one segment ({len(mono)} < {cfg.segment_samples} samples)"))
            if progress:
                progress(n + 1, len(sources))
        if not self.groups:
            raise ValueError(f"no usable training audio among {len(sources)} sources "
                             f"(first problems: {self.skipped[:3]})")
        self.group_names = sorted(self.groups)
        self.rng = np.random.default_rng(cfg.seed)

    @property
    def num_clips(self) -> int:
        return sum(len(v) for v in self.groups.values())

    @property
    def seconds(self) -> float:
        return sum(len(w) for v in self.groups.values() for w in v) / self.cfg.sample_rate

    def _crop(self) -> np.ndarray:
        n = self.cfg.segment_samples
        floor = 10 ** (self.cfg.min_segment_rms_db / 20)
        for _ in range(20):
            clips = self.groups[self.group_names[self.rng.integers(len(self.group_names))]]
            wav = clips[self.rng.integers(len(clips))]
            start = int(self.rng.integers(len(wav) - n + 1))
            seg = wav[start:start + n]
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
            if rms > floor:
                break
        seg = seg * (10 ** (self.cfg.loudness_db / 20) / max(rms, 1e-8))
        peak = float(np.abs(seg).max())
        if peak > 1.0:  # DAC's RescaleAudio: never clip
            seg = seg / peak
        return seg.astype(np.float32)

    def batch(self) -> torch.Tensor:
        """``[batch, 1, segment_samples]``."""
        return torch.from_numpy(np.stack([self._crop() for _ in range(self.cfg.batch_size)]))[:, None, :]

    def state_dict(self) -> dict:
        return {"bit_generator": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = json.loads(state["bit_generator"])
