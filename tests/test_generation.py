import pytest
import torch

from conftest import random_codes, random_video
from unimoe import special_tokens
from unimoe.generation import GenerationConfig, generate
from unimoe.sequence import Example

PROMPTS = [Example("en_tts", text="hello world, this is a test"), Example("t2m", text="piano")]


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_cached_greedy_equals_uncached_recomputation(tiny_model, builder, guidance):
    gen = GenerationConfig(max_frames=24, guidance_scale=guidance)
    cached = generate(tiny_model, builder, PROMPTS, gen)
    gen.use_cache = False
    recomputed = generate(tiny_model, builder, PROMPTS, gen)
    assert [c.shape for c in cached] == [r.shape for r in recomputed]
    for c, r in zip(cached, recomputed):
        assert torch.equal(c, r)


def test_video_prompt_generation_cached_equals_uncached(tiny_model, builder):
    ex = [Example("v2m", text="piano", video=random_video(3))]
    gen = GenerationConfig(max_frames=12, guidance_scale=1.0)
    a = generate(tiny_model, builder, ex, gen)
    gen.use_cache = False
    assert torch.equal(a[0], generate(tiny_model, builder, ex, gen)[0])


def test_same_seed_same_output(tiny_model, builder):
    gen = GenerationConfig(max_frames=16, greedy=False, temperature=1.0, top_k=100, top_p=0.95, seed=3)
    a = generate(tiny_model, builder, PROMPTS, gen)
    b = generate(tiny_model, builder, PROMPTS, gen)
    gen.seed = 4
    c = generate(tiny_model, builder, PROMPTS, gen)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _force_eos(model, value):
    """Make codebook 0's EOS logit ``value`` everywhere (other logits untouched)."""
    original = model.audio_logits

    def patched(hidden):
        logits = original(hidden).clone()
        logits[..., 0, model.cfg.audio.eos_id] = value
        return logits

    model.audio_logits = patched


def test_eos_after_min_frames_then_exact_countdown(tiny_model, builder, tiny_cfg):
    _force_eos(tiny_model, 1e4)
    audio = tiny_cfg.audio
    codes, delayed = generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=30, min_frames=6),
                              return_delayed=True)
    for c, d in zip(codes, delayed):
        assert c.shape == (audio.num_codebooks, 6)
        assert d.shape[1] == 6 + max(audio.delay_pattern) + 1
        for cb, delay in enumerate(audio.delay_pattern):
            row = d[cb]
            assert (row[:delay] == audio.bos_id).all()
            assert (row[delay:delay + 6] < audio.codebook_size).all()
            assert row[delay + 6] == audio.eos_id
            assert (row[delay + 7:] == audio.pad_id).all()


def test_max_frames_forces_eos(tiny_model, builder, tiny_cfg):
    _force_eos(tiny_model, float("-inf"))
    # guidance off: with -inf on both rows, cond - uncond would be NaN (the default guides every task)
    codes = generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=9, guidance_scale=0.0))
    assert [c.shape[1] for c in codes] == [9, 9]


def test_cfg_runs_conditional_and_unconditional_rows_in_one_forward(tiny_model, builder):
    sizes = []
    original = tiny_model.forward

    def spy(batch, cache=None, embeds=None):
        sizes.append(batch.input_ids.shape[0])
        return original(batch, cache, embeds)

    tiny_model.forward = spy
    generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=5, guidance_scale=3.0))
    assert sizes and set(sizes) == {2 * len(PROMPTS)}


def test_cfg_formula(tiny_model, builder, tiny_cfg):
    """With cond logits A and uncond logits B the choice is argmax(A + s (A - B))."""
    v, k = tiny_cfg.audio.vocab_size, tiny_cfg.audio.num_codebooks
    a = torch.zeros(k, v)
    b = torch.zeros(k, v)
    a[:, 10], a[:, 20] = 5.0, 4.0  # cond alone prefers 10
    b[:, 10], b[:, 20] = 5.0, 0.0  # uncond also likes 10; guidance should flip to 20

    def fixed(hidden):
        rows = hidden.shape[0]
        if rows == 1:  # guidance off: conditional row only
            return a[None]
        return torch.cat([a.expand(rows // 2, k, v), b.expand(rows // 2, k, v)])

    tiny_model.audio_logits = fixed
    ex = [Example("t2m", text="piano")]
    assert (generate(tiny_model, builder, ex, GenerationConfig(max_frames=3, guidance_scale=0.0))[0] == 10).all()
    assert (generate(tiny_model, builder, ex, GenerationConfig(max_frames=3, guidance_scale=1.0))[0] == 20).all()


def test_voice_cloning_prompt(tiny_model, builder, tiny_cfg):
    ex = [Example("en_tts", text="clone me", ref_text="reference words", ref_codes=random_codes(tiny_cfg.audio.num_codebooks, 10))]
    codes = generate(tiny_model, builder, ex, GenerationConfig(max_frames=5))
    assert codes[0].shape == (tiny_cfg.audio.num_codebooks, 5)


def test_invalid_generation_config():
    with pytest.raises(ValueError):
        GenerationConfig(max_frames=3, min_frames=5).validate()


# ---- official decoding defaults (issue 12, items 13 and 14) ---------------------------------------------


def _fixed_logits(model, b, cond, uncond):
    """Replace the model's logits for a batch of ``b`` examples: ``cond`` [K, V] on the conditional rows
    (the first ``b``), ``uncond`` on the unconditional ones (the next ``b``, when guidance is on)."""
    k, v = cond.shape

    def fixed(hidden):
        rows = hidden.shape[0]
        if rows == b:
            return cond.expand(b, k, v).clone()
        return torch.cat([cond.expand(b, k, v), uncond.expand(b, k, v)])

    model.audio_logits = fixed


def test_official_guidance_scale_per_task(tiny_model, builder, tiny_cfg):
    """Official cfg_scale: 10 for music, 1 for speech, in one batch that mixes the two."""
    assert GenerationConfig().guidance_for("t2m") == GenerationConfig().guidance_for("v2m") == 10.0
    assert GenerationConfig().guidance_for("en_tts") == GenerationConfig().guidance_for("zh_tts") == 1.0
    assert GenerationConfig(guidance_scale=0.0).guidance_for("t2m") == 0.0
    v, k = tiny_cfg.audio.vocab_size, tiny_cfg.audio.num_codebooks
    a, b = torch.zeros(k, v), torch.zeros(k, v)
    a[:, 10], a[:, 20] = 5.0, 4.0
    b[:, 10], b[:, 20] = 5.0, 3.5  # s = 1: 10 (5 vs 4.5); s = 10: 20 (5 vs 9)
    _fixed_logits(tiny_model, len(PROMPTS), a, b)
    speech, music = generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=3))
    assert (speech == 10).all() and (music == 20).all()


def test_sampling_ends_only_when_eos_is_the_top_logit(tiny_model, builder, tiny_cfg):
    """Official _sample_next_token: EOS may be drawn only where it is codebook 0's top logit. Here EOS is
    a close second (~48 % of the mass) at every step, so drawing it from the tail would end every clip
    within a few frames; instead each runs to max_frames."""
    audio = tiny_cfg.audio
    logits = torch.full((audio.num_codebooks, audio.vocab_size), -10.0)
    logits[:, 7] = 5.0
    logits[0, audio.eos_id] = 4.9
    _fixed_logits(tiny_model, len(PROMPTS), logits, logits)
    gen = GenerationConfig(max_frames=20, min_frames=1, greedy=False, guidance_scale=0.0, seed=0)
    assert [c.shape[1] for c in generate(tiny_model, builder, PROMPTS, gen)] == [20, 20]
    # ... while an EOS that is the top logit ends the clip (here at once, at the minimum length)
    logits[0, audio.eos_id] = 1e4
    gen.min_frames = 4
    assert [c.shape[1] for c in generate(tiny_model, builder, PROMPTS, gen)] == [4, 4]


def test_default_minimum_length_per_task(tiny_model, builder, tiny_cfg):
    """Official MIN_TOKENS: no EOS before 100 frames (2 s at 50 frames/s); speech here 1 s; never more
    than half of max_frames."""
    rate = tiny_cfg.codec.frame_rate
    assert rate == 50.0
    default = GenerationConfig()
    assert default.min_frames_for("t2m", 50.0) == default.min_frames_for("v2m", 50.0) == 100
    assert default.min_frames_for("en_tts", 50.0) == default.min_frames_for("zh_tts", 50.0) == 50
    assert GenerationConfig(max_frames=30).min_frames_for("t2m", 50.0) == 15
    assert GenerationConfig(min_frames=3).min_frames_for("t2m", 50.0) == 3
    assert GenerationConfig(max_frames=240).for_task("t2m", rate) == GenerationConfig(
        max_frames=240, min_frames=100, guidance_scale=10.0)
    _force_eos(tiny_model, 1e4)  # EOS is the top logit from the first frame on
    codes = generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=240, guidance_scale=0.0))
    assert [c.shape[1] for c in codes] == [50, 100]


def _prompt_rows(model):
    """Spy: the prompt batch of the first forward of the next generate call."""
    seen = []
    original = model.forward

    def spy(batch, cache=None, embeds=None):
        if not seen:
            seen.append(batch)
        return original(batch, cache, embeds)

    model.forward = spy
    return seen


def test_voice_cloning_unconditional_row_keeps_the_voice_prompt(tiny_model, builder, tiny_cfg):
    """Official text_to_speech: the negative prompt is the same prompt with empty words, so guidance
    pushes towards the words and not away from the speaker."""
    ref = random_codes(tiny_cfg.audio.num_codebooks, 10)
    ex = Example("en_tts", text="clone me", ref_text="reference words", ref_codes=ref)
    seen = _prompt_rows(tiny_model)
    generate(tiny_model, builder, [ex], GenerationConfig(max_frames=3))
    batch = seen[0]
    assert batch.input_ids.shape[0] == 2  # conditional + unconditional (speech guidance defaults to 1)
    empty_words = Example("en_tts", text="", ref_text="reference words", ref_codes=ref)
    want = builder.build(empty_words, with_target=False)
    n = len(want)
    assert batch.input_ids[1, -n:].tolist() == want.input_ids and not batch.attention_mask[1, :-n].any()
    assert int(batch.audio_mask[1].sum()) == int(batch.audio_mask[0].sum())  # the voice prompt's frames
    assert builder.ids[special_tokens.VOICE_PROMPT_START] in batch.input_ids[1].tolist()
    # the option drops it (the training condition-dropout prompt: output markers only)
    seen.clear()
    generate(tiny_model, builder, [ex], GenerationConfig(max_frames=3, uncond_voice_prompt=False))
    plain = builder.build(ex, with_target=False, conditional=False)
    assert seen[0].attention_mask[1].sum() == len(plain)
    assert builder.ids[special_tokens.VOICE_PROMPT_START] not in seen[0].input_ids[1].tolist()


def test_generation_runs_in_eval_mode(tiny_model, builder):
    """No router input jitter while generating, whatever mode the model is in; the mode is restored."""
    gen = GenerationConfig(max_frames=6)
    ref = generate(tiny_model.eval(), builder, PROMPTS, gen)
    got = generate(tiny_model.train(), builder, PROMPTS, gen)
    assert tiny_model.training
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
