"""The codec trainer: k-means init, dead-code restarts, exact resume, and an exported DAC that
AudioCodec loads like a released one. A tiny DAC on synthetic tones keeps each test to seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from unimoe.codec_train import (AudioSource, CodecTrainConfig, CodecTrainer, CodeUsage, SegmentSampler,
                                build_generator, code_perplexity, kmeans_init_codebooks, restart_dead_codes,
                                spherical_kmeans, train_codec)


def tiny_cfg(**kw) -> CodecTrainConfig:
    base = dict(encoder_dim=4, decoder_dim=16, n_codebooks=2, codebook_size=32, batch_size=2, segment_seconds=0.1,
                steps=4, kmeans_batches=2, kmeans_iters=5, disc_fft_sizes=[256, 128], log_every=1, save_every=2,
                mel_window_lengths=[64, 256], mel_n_mels=[10, 40], dead_code_every=2)
    base.update(kw)
    return CodecTrainConfig(**base)


@pytest.fixture
def sources(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        t = np.arange(16000) / 16000
        wav = 0.3 * np.sin(2 * np.pi * (150 + 70 * i) * t) + 0.02 * rng.standard_normal(len(t))
        p = tmp_path / f"clip{i}.wav"
        sf.write(p, wav.astype(np.float32), 16000)
        out.append(AudioSource(str(p), group="speech" if i < 2 else "music"))
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    out.append(AudioSource(str(bad)))
    return out


def test_spherical_kmeans_finds_directions():
    gen = torch.Generator().manual_seed(0)
    dirs = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    x = torch.cat([d * torch.rand(50, 1, generator=gen) + 0.01 * torch.randn(50, 3, generator=gen) for d in dirs])
    c = torch.nn.functional.normalize(spherical_kmeans(x, 3, 10, gen), dim=-1)
    # every true direction has a centroid within 10 degrees
    assert (c @ dirs.T).max(dim=0).values.min() > 0.98


def test_kmeans_init_spreads_codes_over_the_codebook(sources):
    cfg = tiny_cfg()
    sampler = SegmentSampler(sources, cfg)
    torch.manual_seed(0)
    model = build_generator(cfg).eval()
    batches = [sampler.batch() for _ in range(8)]
    every = torch.cat(batches)
    with torch.no_grad():
        out = model(every)
        before, err_before = code_perplexity(out["codes"][:, 0], cfg.codebook_size), float(out["vq/commitment_loss"])
        ppl = kmeans_init_codebooks(model, batches, iters=5, seed=0)
        out = model(every)
        after, err_after = code_perplexity(out["codes"][:, 0], cfg.codebook_size), float(out["vq/commitment_loss"])
    assert len(ppl) == cfg.n_codebooks and min(ppl) > 8
    assert after > before
    assert err_after < 0.5 * err_before  # the codebooks now sit on the latents they quantise


def test_dead_codes_are_restarted_from_batch_latents():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_generator(cfg)
    usage = CodeUsage(cfg.n_codebooks, cfg.codebook_size, decay=0.5, uniform=0.4)
    usage.ema[0, :5] = 0.05          # five dead codes in codebook 0 (below 0.25 x uniform)
    usage.ema[0, 5:8] = 0.2          # rarely used, not dead
    latents = torch.randn(2, cfg.n_codebooks * cfg.codebook_dim, 7)
    old = model.quantizer.quantizers[0].codebook.weight.detach().clone()
    n = restart_dead_codes(model, usage, latents, threshold=0.25, generator=torch.Generator().manual_seed(0))
    assert n == [5, 0]
    new = model.quantizer.quantizers[0].codebook.weight.detach()
    assert not torch.equal(new[:5], old[:5]) and torch.equal(new[5:], old[5:])
    pool = latents[:, :cfg.codebook_dim].permute(0, 2, 1).reshape(-1, cfg.codebook_dim)
    for row in new[:5]:  # each restarted code is one of this batch's projected latents
        assert torch.isclose(pool, row).all(dim=1).any()
    assert (usage.ema[0, :5] == 0.4).all()


def test_training_reports_bad_files_and_resumes_bit_identically(sources, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(steps=4)
    straight = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "a", log=lambda m: None)
    assert [p for p, _ in straight.sampler.skipped] == [sources[-1].path]   # reported, not fatal
    straight.fit()
    halves = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "b", log=lambda m: None)
    halves.fit(2)
    resumed = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "b", log=lambda m: None)
    resumed.fit()
    assert resumed.step == straight.step == 4
    for (k, a), b in zip(straight.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(straight.discriminator.state_dict().values(), resumed.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    log_a = [r["loss"] for r in map(json.loads, (tmp_path / "a" / "train_log.jsonl").read_text().splitlines())]
    log_b = [r["loss"] for r in map(json.loads, (tmp_path / "b" / "train_log.jsonl").read_text().splitlines())]
    assert log_a == log_b
    assert straight.kmeans_perplexity is not None


def test_resume_refuses_another_config(sources, tmp_path):
    cfg = tiny_cfg(steps=1)
    CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path, log=lambda m: None).fit()
    other = tiny_cfg(steps=1, lr=1e-3)
    with pytest.raises(ValueError, match="different codec config"):
        CodecTrainer(other, SegmentSampler(sources, other), tmp_path, log=lambda m: None).fit()


def test_exported_codec_loads_through_the_weights_store(sources, tmp_path, monkeypatch):
    from unimoe.codec import AudioCodec
    from unimoe.config import CodecConfig

    cfg = tiny_cfg(steps=2)
    res = train_codec(sources, "corpus-hash", cfg, tmp_path / "run", command="unimoe codec train --test",
                      progress=False, log=lambda m: None)
    prov = json.loads((tmp_path / "run" / "codec.json").read_text())
    assert prov["command"] == "unimoe codec train --test" and prov["corpus_hash"] == "corpus-hash"
    assert prov["steps"] == 2 and prov["sha256"] == res["sha256"]
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    codec_cfg = CodecConfig(variant="trained", weights_path="run/codec.safetensors", weights_sha256=res["sha256"])
    codec = AudioCodec.from_config(codec_cfg, num_codebooks=2, codebook_size=32)
    assert not codec.is_random_init
    wav = np.sin(np.arange(3200) / 5).astype(np.float32)
    codes = codec.encode([wav], 16000)[0]
    assert codes.shape == (2, 10)
    assert codec.decode([codes])[0].shape == (3200,)
    # the same weights through DAC's own module: the exported state dict is the generator's
    trainer = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "run", log=lambda m: None)
    trainer.load()
    for a, b in zip(trainer.generator.state_dict().values(), codec.model.state_dict().values()):
        assert torch.equal(a, b)
    # a wrong checksum is refused with a clear error
    bad = CodecConfig(variant="trained", weights_path="run/codec.safetensors", weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="SHA-256"):
        AudioCodec.from_config(bad, num_codebooks=2, codebook_size=32)


def test_warm_start_continues_an_exported_codec(sources, tmp_path):
    cfg = tiny_cfg(steps=2)
    first = train_codec(sources, "corpus-hash", cfg, tmp_path / "one", progress=False, log=lambda m: None)
    parent = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "one", log=lambda m: None)
    parent.load()
    more = tiny_cfg(steps=3)
    res = train_codec(sources, "corpus-hash", more, tmp_path / "two", progress=False, log=lambda m: None,
                      init_from=first["export"])
    assert res["steps"] == 3 and res["warm_start_from"]["sha256"] == first["sha256"]
    assert res["warm_start_from"]["steps"] == 2 and res["train_seconds"] >= first["train_seconds"]
    child = CodecTrainer(more, SegmentSampler(sources, more), tmp_path / "two", log=lambda m: None)
    child.load()
    assert child.parent["sha256"] == first["sha256"]
    # one step on from the parent's weights, not from a fresh init: close to the parent, not equal
    fresh = build_generator(more).state_dict()
    w = "quantizer.quantizers.0.codebook.weight"
    assert not torch.equal(child.generator.state_dict()[w], parent.generator.state_dict()[w])
    d_parent = (child.generator.state_dict()[w] - parent.generator.state_dict()[w]).norm()
    assert d_parent < (child.generator.state_dict()[w] - fresh[w]).norm()
    # a codec of another shape is refused with the differing fields named
    with pytest.raises(ValueError, match="decoder_dim"):
        CodecTrainer(tiny_cfg(decoder_dim=32), SegmentSampler(sources, cfg), tmp_path / "three",
                     log=lambda m: None).fit(init_from=first["export"])


def test_time_box_stops_saves_exports_and_resumes(sources, tmp_path):
    """``max_minutes``: training stops at the deadline with a checkpoint at the step reached and an
    export of that step; the next call resumes from it to ``cfg.steps``."""
    cfg = tiny_cfg(steps=40, save_every=1000)
    boxed = train_codec(sources, "corpus-hash", cfg, tmp_path / "run", progress=False, log=lambda m: None,
                        max_minutes=1e-6)
    assert boxed["steps"] < 40
    saved = CodecTrainer(cfg, SegmentSampler(sources, cfg), tmp_path / "run", log=lambda m: None)
    assert saved.load() and saved.step == boxed["steps"]
    short = tiny_cfg(steps=boxed["steps"] + 1, save_every=1000)
    done = train_codec(sources, "corpus-hash", short, tmp_path / "run", progress=False, log=lambda m: None)
    assert done["steps"] == boxed["steps"] + 1 and done["sha256"] != boxed["sha256"]
