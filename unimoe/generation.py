"""Generation (DESIGN §2.5): one audio frame (all codebooks) per step with a KV cache, classifier-free
guidance with conditional and unconditional rows in one batched forward, greedy or sampled codes, EOS
only on codebook 0 followed by an exact countdown for the delayed codebooks, and the delay undone.

The delayed frame generated at step t is forced, per codebook c, to
  BOS  while t < d_c                  (the delay pattern's leading fill),
  EOS  at   t == s + d_c              (s = the step codebook 0 chose EOS, i.e. the clip length),
  PAD  for  t >  s + d_c,
and is otherwise a free choice among the real codes. Codebook 0 may choose EOS from ``min_frames``
on and is forced to at ``max_frames``. Generation ends at step s + max(d).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from unimoe import special_tokens as st
from unimoe.audio_tokens import undo_delay
from unimoe.model import Batch, UniMoEAudio
from unimoe.sequence import Example, SequenceBuilder, collate


@dataclass
class GenerationConfig:
    max_frames: int = 1500          # 30 s at 50 frames/s
    min_frames: int = 1
    guidance_scale: float = 0.0     # s in cond + s * (cond - uncond); 0 disables CFG
    greedy: bool = True             # the paper's setting
    temperature: float = 1.0
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0              # 1 = off
    seed: int = 0
    use_cache: bool = True          # False recomputes the whole sequence each step (test oracle)

    def validate(self) -> None:
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("need 1 <= min_frames <= max_frames")
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("temperature must be > 0 when sampling")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


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
    ``return_delayed`` also return the raw delayed frames [K, steps] per example."""
    with model.routing_stats_disabled():
        return _generate(model, builder, examples, gen, progress, return_delayed)


def _generate(model, builder, examples, gen, progress, return_delayed):
    gen.validate()
    audio = model.cfg.audio
    delays = torch.tensor(audio.delay_pattern)
    max_delay, k = int(delays.max()), audio.num_codebooks
    device = next(model.parameters()).device
    b = len(examples)
    cfg_on = gen.guidance_scale != 0.0

    seqs = [builder.build(ex, with_target=False) for ex in examples]
    if cfg_on:
        seqs += [builder.build(ex, with_target=False, conditional=False) for ex in examples]
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
            guided = cond + gen.guidance_scale * (cond - uncond)
        # Only real codes are free choices; EOS is allowed on codebook 0 once min_frames is reached.
        logits = guided.clone()
        logits[..., audio.codebook_size:] = float("-inf")
        if t >= gen.min_frames:
            logits[:, 0, audio.eos_id] = guided[:, 0, audio.eos_id]
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
