"""Generation: one audio frame (all codebooks) per step with a KV cache, classifier-free
guidance with conditional and unconditional rows in one batched forward, greedy or sampled codes, EOS
only on codebook 0 followed by an exact countdown for the delayed codebooks, and the delay undone.

The delayed frame generated at step t is forced, per codebook c, to
  BOS  while t < d_c                  (the delay pattern's leading fill),
  EOS  at   t == s + d_c              (s = the step codebook 0 chose EOS, i.e. the clip length),
  PAD  for  t >  s + d_c,
and is otherwise a free choice among the real codes. Codebook 0 may choose EOS from its minimum length
on, and only while EOS is its most likely choice (so sampling never ends a clip on a draw from the
tail); it is forced to at ``max_frames``. Generation ends at step s + max(d).

Defaults follow the official UniMoE-Audio inference (UniMoE_Audio_model.py ``_sample_next_token`` and
``generate``; UniMoE_Audio_mod.py; examples/inference.py), per task:

* guidance scale ``GUIDANCE_SCALE``: 10 for music (T2M, V2M), 1 for speech;
* minimum length ``MIN_SECONDS`` (official: 100 frames, 2 s at 50 frames/s, for every task; speech here
  1 s so that a short sentence is not stretched to 2 s), at most half of ``max_frames`` so that a short
  cap still leaves the model room to choose the length;
* the unconditional row of voice cloning keeps the voice prompt and drops only the words to speak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from unimoe import special_tokens as st
from unimoe.audio_tokens import undo_delay
from unimoe.model import Batch, UniMoEAudio
from unimoe.sequence import Example, Sequence, SequenceBuilder, collate

SPEECH_TASKS = ("zh_tts", "en_tts")
# Official cfg_scale: text_to_music / video_text_to_music 10.0, text_to_speech 1.0.
GUIDANCE_SCALE = {"zh_tts": 1.0, "en_tts": 1.0, "t2m": 10.0, "v2m": 10.0}
# Shortest clip in seconds before EOS may be chosen (official MIN_TOKENS = 100 frames = 2 s at 50 Hz).
MIN_SECONDS = {"zh_tts": 1.0, "en_tts": 1.0, "t2m": 2.0, "v2m": 2.0}


@dataclass
class GenerationConfig:
    max_frames: int = 1500          # 30 s at 50 frames/s
    # EOS is allowed once this many frames exist; None: the per-task default (min_frames_for).
    min_frames: int | None = None
    # s in cond + s * (cond - uncond); 0 disables CFG; None: the official per-task scale (GUIDANCE_SCALE).
    guidance_scale: float | None = None
    # Voice cloning: the unconditional row keeps the voice prompt (as the official code) so guidance
    # pushes towards the words only; False drops it too (the training condition-dropout prompt).
    uncond_voice_prompt: bool = True
    greedy: bool = True             # the paper's setting
    temperature: float = 1.0
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0              # 1 = off
    seed: int = 0
    use_cache: bool = True          # False recomputes the whole sequence each step (test oracle)

    def validate(self) -> None:
        if self.max_frames < 1:
            raise ValueError("need max_frames >= 1")
        if self.min_frames is not None and not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("need 1 <= min_frames <= max_frames")
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def guidance_for(self, task: str) -> float:
        """The guidance scale used for ``task``: ``guidance_scale``, or the official per-task one."""
        return GUIDANCE_SCALE[task] if self.guidance_scale is None else float(self.guidance_scale)

    def min_frames_for(self, task: str, frame_rate: float) -> int:
        """The minimum clip length in frames for ``task``: ``min_frames``, or ``MIN_SECONDS[task]`` at
        ``frame_rate`` capped at ``max_frames // 2`` (and at least 1)."""
        if self.min_frames is not None:
            return int(self.min_frames)
        return max(1, min(round(MIN_SECONDS[task] * frame_rate), self.max_frames // 2))

    def for_task(self, task: str, frame_rate: float) -> "GenerationConfig":
        """This config with the per-task defaults resolved (what a ``task`` example is generated with)."""
        return dataclasses.replace(self, guidance_scale=self.guidance_for(task),
                                   min_frames=self.min_frames_for(task, frame_rate))


def unconditional_prompt(builder: SequenceBuilder, ex: Example, keep_voice_prompt: bool = True) -> Sequence:
    """The classifier-free-guidance row of ``ex``: the output markers alone (the prompt condition dropout
    trains), except voice cloning with ``keep_voice_prompt``, whose row is the full prompt with empty
    words, as the official text_to_speech builds its negative prompt (UniMoE_Audio_mod.py)."""
    if keep_voice_prompt and ex.task in SPEECH_TASKS and ex.ref_codes is not None:
        return builder.build(Example(ex.task, text="", ref_text=ex.ref_text, ref_codes=ex.ref_codes),
                             with_target=False)
    return builder.build(ex, with_target=False, conditional=False)


def _filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k then nucleus filtering on the last dimension."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the first one always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.no_grad()
def generate(model: UniMoEAudio, builder: SequenceBuilder, examples: list[Example],
             gen: GenerationConfig, progress=None, return_delayed: bool = False):
    """Generate codes [K, T_i] for each example (its ``codes`` are ignored). With
    ``return_delayed`` also return the raw delayed frames [K, steps] per example. The model runs in
    eval mode (no router input jitter) and is put back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        with model.routing_stats_disabled():
            return _generate(model, builder, examples, gen, progress, return_delayed)
    finally:
        model.train(was_training)


def _generate(model, builder, examples, gen, progress, return_delayed):
    gen.validate()
    audio = model.cfg.audio
    delays = torch.tensor(audio.delay_pattern)
    max_delay, k = int(delays.max()), audio.num_codebooks
    device = next(model.parameters()).device
    b = len(examples)
    # Per-example settings: a batch may mix tasks, each with its own guidance scale and minimum length.
    scale = torch.tensor([gen.guidance_for(ex.task) for ex in examples])[:, None, None]       # [b, 1, 1]
    min_frames = torch.tensor([gen.min_frames_for(ex.task, model.cfg.codec.frame_rate) for ex in examples])
    cfg_on = bool((scale != 0).any())

    seqs = [builder.build(ex, with_target=False) for ex in examples]
    if cfg_on:
        seqs += [unconditional_prompt(builder, ex, gen.uncond_voice_prompt) for ex in examples]
    prompt = collate(seqs, builder.tok.pad_id, audio.pad_id, left_pad=True).to(device)
    rows = prompt.input_ids.shape[0]
    max_steps = gen.max_frames + max_delay + 1
    generator = torch.Generator(device="cpu").manual_seed(gen.seed)

    prompt_len = prompt.input_ids.shape[1]
    cache = model.new_cache(rows, prompt_len + max_steps) if gen.use_cache else None
    hidden = model(prompt, cache).hidden[:, -1]
    history: Batch = prompt
    # Per-step inputs that never change, and the attention mask for every step, allocated once.
    attention = torch.cat([prompt.attention_mask, torch.ones(rows, max_steps, dtype=torch.bool, device=device)], 1)
    step_ids = torch.full((rows, 1), builder.ids[st.AUDIO_PAD], dtype=torch.long, device=device)
    step_audio_mask = torch.ones(rows, 1, dtype=torch.bool, device=device)
    step_target_mask = torch.zeros(rows, 1, dtype=torch.bool, device=device)

    frames: list[Tensor] = []                          # delayed frames, each [b, K]
    eos_step = torch.full((b,), -1, dtype=torch.long)  # step at which codebook 0 chose EOS
    for t in range(max_steps):
        guided = model.audio_logits(hidden).float().cpu()  # [rows, K, V]
        if cfg_on:
            cond, uncond = guided[:b], guided[b:]
            guided = cond + scale * (cond - uncond)
        # Only real codes are free choices; EOS is allowed on codebook 0 once the row's minimum length
        # is reached, and only while it is codebook 0's top logit (official _sample_next_token): a
        # sampled clip must not end on a draw from the tail. Greedy decoding is unchanged by the latter.
        logits = guided.clone()
        logits[..., audio.codebook_size:] = float("-inf")
        may_end = t >= min_frames
        logits[may_end, 0, audio.eos_id] = guided[may_end, 0, audio.eos_id]
        logits[logits[:, 0].argmax(-1) != audio.eos_id, 0, audio.eos_id] = float("-inf")
        if gen.greedy:
            frame = logits.argmax(-1)
        else:
            filtered = _filter_logits(logits / gen.temperature, gen.top_k, gen.top_p)
            frame = torch.multinomial(filtered.softmax(-1).view(b * k, -1), 1, generator=generator).view(b, k)

        # Forced values: EOS at max_frames, the countdown after EOS, the leading BOS fill.
        chose_eos = (eos_step < 0) & ((frame[:, 0] == audio.eos_id) | (t >= gen.max_frames))
        eos_step[chose_eos] = t
        finished = eos_step >= 0
        if bool(finished.any()):
            since = t - eos_step[:, None] - delays[None, :]          # [b, K]
            frame[finished[:, None] & (since == 0)] = audio.eos_id
            frame[finished[:, None] & (since > 0)] = audio.pad_id
        if t < max_delay:
            frame[:, delays > t] = audio.bos_id
        frames.append(frame)
        if progress is not None:
            progress(t + 1, max_steps)
        if bool(finished.all()) and t >= int(eos_step.max()) + max_delay:
            break

        step = Batch(input_ids=step_ids, audio_codes=(torch.cat([frame, frame]) if cfg_on else frame)[:, None].to(device),
                     audio_mask=step_audio_mask, target_mask=step_target_mask,
                     attention_mask=attention[:, :prompt_len + t + 1], task_ids=prompt.task_ids)
        if cache is not None:
            hidden = model(step, cache).hidden[:, -1]
        else:
            history = _append(history, step)
            hidden = model(history).hidden[:, -1]

    delayed = torch.stack(frames, dim=-1)  # [b, K, steps]
    rows_delayed = [delayed[i, :, :int(eos_step[i]) + max_delay + 1] for i in range(b)]
    codes = [undo_delay(d, audio) for d in rows_delayed]
    return (codes, rows_delayed) if return_delayed else codes


def _append(history: Batch, step: Batch) -> Batch:
    """The uncached oracle's growing batch: the prompt plus every generated frame."""
    cat = lambda a, c: torch.cat([a, c], dim=1)  # noqa: E731
    return Batch(
        input_ids=cat(history.input_ids, step.input_ids),
        audio_codes=cat(history.audio_codes, step.audio_codes),
        audio_mask=cat(history.audio_mask, step.audio_mask),
        target_mask=cat(history.target_mask, step.target_mask),
        attention_mask=step.attention_mask,
        task_ids=history.task_ids,
        video_mask=None if history.video_mask is None else cat(history.video_mask, torch.zeros_like(step.audio_mask)),
        pixel_values=history.pixel_values,
        grid_thw=history.grid_thw,
    )
