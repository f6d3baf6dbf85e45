import pytest
import torch

from conftest import random_codes, random_video
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
    codes = generate(tiny_model, builder, PROMPTS, GenerationConfig(max_frames=9))
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
