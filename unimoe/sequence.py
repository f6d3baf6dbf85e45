"""One sequence format for every task, and collation into a model ``Batch``.

    TTS          <|speech_prompt_start|> text <|speech_prompt_end|>
                 [<|voice_prompt_start|> ref transcript <|audio_start|> ref frames <|audio_end|> <|voice_prompt_end|>]
                 <|speech_start|> <|audio_start|> BOS target frames <|audio_end|> <|speech_end|> <|endoftext|>
    T2M          caption <|music_start|> <|audio_start|> BOS target frames <|audio_end|> <|music_end|> <|endoftext|>
    V2M          <|video_start|> <|video_pad|> x n <|video_end|> [caption] <|music_start|> ... as T2M

Audio frames (targets and voice prompts alike) use the delayed layout of unimoe.audio_tokens and follow
an all-BOS frame. The unconditional variant (classifier-free guidance, condition dropout) keeps only
the output markers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from unimoe import special_tokens as st
from unimoe.audio_tokens import bos_frame, build_delayed
from unimoe.config import TASKS, UniMoEConfig
from unimoe.model import Batch
from unimoe.tokenizer import TextTokenizer


@dataclass
class Example:
    """One training or generation example. ``codes`` is the target audio [K, T] (None when
    generating); ``video`` is frames [T, H, W, 3] uint8 for V2M."""

    task: str
    text: str | None = None            # TTS: the words to speak; T2M/V2M: the caption
    codes: Tensor | None = None
    ref_text: str | None = None        # voice cloning: reference transcript
    ref_codes: Tensor | None = None    # voice cloning: reference audio codes [K, T]
    video: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {TASKS}")
        if self.task == "v2m" and self.video is None:
            raise ValueError("a v2m example needs video frames")


@dataclass
class Sequence:
    input_ids: list[int] = field(default_factory=list)
    audio_frames: list[Tensor] = field(default_factory=list)  # one [K] frame per position
    audio_mask: list[bool] = field(default_factory=list)
    target_mask: list[bool] = field(default_factory=list)
    video_mask: list[bool] = field(default_factory=list)
    pixel_values: Tensor | None = None
    grid_thw: Tensor | None = None
    task_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


class SequenceBuilder:
    def __init__(self, cfg: UniMoEConfig, tokenizer: TextTokenizer):
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is {cfg.vocab_size}")
        self.cfg, self.tok = cfg, tokenizer
        self.ids = {t: tokenizer.token_id(t) for t in st.SPECIAL_TOKENS}
        self._pad_frame = torch.full((cfg.audio.num_codebooks,), cfg.audio.pad_id, dtype=torch.long)

    # ---- low-level appenders ---------------------------------------------------------------------
    def _text(self, seq: Sequence, ids: list[int]) -> None:
        n = len(ids)
        seq.input_ids += ids
        seq.audio_frames += [self._pad_frame] * n
        seq.audio_mask += [False] * n
        seq.target_mask += [False] * n
        seq.video_mask += [False] * n

    def _special(self, seq: Sequence, *tokens: str) -> None:
        self._text(seq, [self.ids[t] for t in tokens])

    def _frames(self, seq: Sequence, frames: Tensor, target: bool) -> None:
        """frames [K, N] appended as N audio positions."""
        n = frames.shape[1]
        seq.input_ids += [self.ids[st.AUDIO_PAD]] * n
        seq.audio_frames += list(frames.t().cpu())
        seq.audio_mask += [True] * n
        seq.target_mask += [target] * n
        seq.video_mask += [False] * n

    def _audio(self, seq: Sequence, codes: Tensor | None, target: bool) -> None:
        """AUDIO_START, the BOS frame, the delayed frames (if any), AUDIO_END when complete."""
        self._special(seq, st.AUDIO_START)
        self._frames(seq, bos_frame(self.cfg.audio)[:, None], target=False)
        if codes is not None:
            self._frames(seq, build_delayed(codes, self.cfg.audio), target=target)
            self._special(seq, st.AUDIO_END)

    def _video(self, seq: Sequence, frames: np.ndarray) -> None:
        from unimoe.vision import frames_to_patches, num_vision_tokens

        if self.cfg.vision is None:
            raise ValueError("this model has no vision tower; it cannot take video")
        pixel_values, grid_thw = frames_to_patches(frames, self.cfg.vision)
        n = num_vision_tokens(grid_thw, self.cfg.vision.spatial_merge_size)
        self._special(seq, st.VIDEO_START)
        seq.input_ids += [self.ids[st.VIDEO_PAD]] * n
        seq.audio_frames += [self._pad_frame] * n
        seq.audio_mask += [False] * n
        seq.target_mask += [False] * n
        seq.video_mask += [True] * n
        self._special(seq, st.VIDEO_END)
        seq.pixel_values, seq.grid_thw = pixel_values, grid_thw

    # ---- the format ------------------------------------------------------------------------------------
    def build(self, ex: Example, *, with_target: bool = True, conditional: bool = True) -> Sequence:
        """The sequence for ``ex``. Without target it ends with the BOS frame (a generation prompt)."""
        seq = Sequence(task_id=TASKS.index(ex.task))
        enc = lambda s: self.tok.encode(s, allow_special=False)  # noqa: E731  (untrusted text)
        speech = ex.task in ("zh_tts", "en_tts")
        if conditional:
            if speech:
                self._special(seq, st.SPEECH_PROMPT_START)
                self._text(seq, enc(ex.text or ""))
                self._special(seq, st.SPEECH_PROMPT_END)
                if ex.ref_codes is not None:
                    self._special(seq, st.VOICE_PROMPT_START)
                    self._text(seq, enc(ex.ref_text or ""))
                    self._audio(seq, ex.ref_codes, target=False)
                    self._special(seq, st.VOICE_PROMPT_END)
            else:
                if ex.task == "v2m":
                    self._video(seq, ex.video)
                if ex.text:
                    self._text(seq, enc(ex.text))
        start, end = (st.SPEECH_START, st.SPEECH_END) if speech else (st.MUSIC_START, st.MUSIC_END)
        self._special(seq, start)
        if with_target:
            if ex.codes is None:
                raise ValueError("example has no target codes")
            self._audio(seq, ex.codes, target=True)
            self._special(seq, end, st.EOT)
        else:
            self._audio(seq, None, target=False)
        return seq


def collate(seqs: list[Sequence], pad_id: int, audio_pad_id: int, *, left_pad: bool = False) -> Batch:
    """Pad sequences to one length (right padding for training, left padding for generation prompts
    so every row's last position is its BOS frame)."""
    length = max(len(s) for s in seqs)
    k = seqs[0].audio_frames[0].shape[0]
    b = len(seqs)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    codes = torch.full((b, length, k), audio_pad_id, dtype=torch.long)
    masks = {name: torch.zeros((b, length), dtype=torch.bool) for name in ("audio", "target", "video", "attention")}
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(length - n, length) if left_pad else slice(0, n)
        input_ids[i, sl] = torch.tensor(s.input_ids, dtype=torch.long)
        codes[i, sl] = torch.stack(s.audio_frames)
        masks["audio"][i, sl] = torch.tensor(s.audio_mask)
        masks["target"][i, sl] = torch.tensor(s.target_mask)
        masks["video"][i, sl] = torch.tensor(s.video_mask)
        masks["attention"][i, sl] = True
    videos = [s for s in seqs if s.pixel_values is not None]
    return Batch(
        input_ids=input_ids,
        audio_codes=codes,
        audio_mask=masks["audio"],
        target_mask=masks["target"],
        attention_mask=masks["attention"],
        task_ids=torch.tensor([s.task_id for s in seqs], dtype=torch.long),
        video_mask=masks["video"] if videos else None,
        pixel_values=torch.cat([s.pixel_values for s in videos]) if videos else None,
        grid_thw=torch.cat([s.grid_thw for s in videos]) if videos else None,
    )
