"""Generation from a checkpoint: load the model, its tokenizer and its codec once, turn requests (task,
text, optional voice prompt, optional video) into ``Example``s and return decoded waveforms.

The one implementation behind ``unimoe model generate`` and the benchmark runner
(``evaluation.runner``), so both condition the model in exactly the same way. A voice prompt is
encoded with the checkpoint's own codec (``ref_codes``) next to its transcript (``ref_text``).
Decoding settings left to their per-task defaults in ``GenerationConfig`` (guidance scale, minimum
length; see ``unimoe.generation``) are resolved per request; :meth:`CheckpointGenerator.resolved`
gives the values a request is generated with, for records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from unimoe.checkpoint import TOKENIZER, load_checkpoint
from unimoe.config import TASKS
from unimoe.generation import GenerationConfig, generate
from unimoe.sequence import Example, SequenceBuilder


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``text``: the words (TTS) or the caption (music); ``prompt_audio``: a voice
    prompt file (TTS voice cloning) with its transcript ``prompt_text``; ``video``: a video file (V2M)."""

    task: str
    text: str = ""
    prompt_audio: str | None = None
    prompt_text: str | None = None
    video: str | None = None

    def __post_init__(self) -> None:
        # Checked before any model is loaded, so a bad request fails fast (Example repeats these checks).
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {TASKS}")
        if self.task == "v2m" and not self.video:
            raise ValueError("a v2m request needs a video file")


class CheckpointGenerator:
    """A loaded checkpoint ready to generate (model in eval mode, tokenizer, sequence builder, codec)."""

    def __init__(self, checkpoint: str | Path, device: str | torch.device = "cpu"):
        from unimoe.codec import AudioCodec
        from unimoe.tokenizer import TextTokenizer

        self.checkpoint = Path(checkpoint)
        tok_path = self.checkpoint / TOKENIZER
        if not tok_path.is_file():
            raise FileNotFoundError(f"{self.checkpoint}: no {TOKENIZER}; generation needs the checkpoint's tokenizer")
        self.model, self.cfg, self.state = load_checkpoint(self.checkpoint, device=device)
        self.model.eval()
        self.tokenizer = TextTokenizer.load(tok_path)
        self.builder = SequenceBuilder(self.cfg, self.tokenizer)
        self.codec = AudioCodec.from_model_config(self.cfg, device=device)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    def frames_for(self, seconds: float) -> int:
        return max(1, int(seconds * self.codec.frame_rate))

    def resolved(self, task: str, gen: GenerationConfig) -> GenerationConfig:
        """``gen`` with its per-task defaults (guidance scale, minimum length in frames at this
        checkpoint's frame rate) filled in: what a ``task`` request is generated with."""
        return gen.for_task(task, self.cfg.codec.frame_rate)

    def info(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "stage": self.state.get("stage"),
                "weights_sha256": self.state.get("weights_sha256"), "codec": self.codec.info()}

    def example(self, req: GenerationRequest) -> Example:
        """The model input for ``req`` (raises ValueError for an invalid request, e.g. v2m without video)."""
        frames = ref_codes = None
        if req.video:
            from unimoe.vision import read_video_frames

            frames = read_video_frames(req.video)
        if req.prompt_audio and req.task in ("en_tts", "zh_tts"):
            from unimoe.common.audio import load_audio

            wav, sr = load_audio(req.prompt_audio)
            ref_codes = self.codec.encode([wav], sr)[0]
        return Example(req.task, text=req.text, video=frames, ref_codes=ref_codes,
                       ref_text=req.prompt_text if ref_codes is not None else None)

    def generate(self, requests: list[GenerationRequest], gen: GenerationConfig,
                 progress: Callable[[int, int], None] | None = None) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One batched generation: ``(waveform float32 [samples] at sample_rate, codes [K, T])`` per request."""
        examples = [self.example(r) for r in requests]
        torch.manual_seed(gen.seed)
        codes = generate(self.model, self.builder, examples, gen, progress=progress)
        wavs = self.codec.decode(codes)
        return [(np.asarray(w, dtype=np.float32).reshape(-1), c) for w, c in zip(wavs, codes)]
