"""AudioCodec (random-init DAC and the real-weights loading path) and the audio I/O helpers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from unimoe.codec import DAC_RELEASE_URLS, AudioCodec, CodecLoadError, load_dac_weights
from unimoe.common.audio import SPAN_REASONS, AudioSpanError, load_audio, load_span, resample, save_wav, to_mono
from unimoe.config import CodecConfig, tiny_random_preset
from unimoe.io import ChecksumError, MissingWeightsError, sha256_file

SR = 16_000
HOP = 320
K = 4


def noise(n: int, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Noise plus a chirp: spreads the codes of a random-init codec over many code values."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    return (0.2 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def cfg() -> CodecConfig:
    return tiny_random_preset().codec


@pytest.fixture(scope="module")
def codec(cfg) -> AudioCodec:
    return AudioCodec.from_config(cfg, num_codebooks=K)


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path / "weights"))
    return tmp_path / "weights"


# ---- the shipped demo codec (what the tiny preset and the demo profile tokenise with) ----------------


def test_demo_codec_is_pinned_and_documented():
    import json

    from unimoe.config import DEMO_CODEC_SHA256, tiny_preset
    from unimoe.io import builtin_asset

    path = builtin_asset("codecs/demo-dac.safetensors")
    assert path.stat().st_size <= 10 * 2 ** 20
    assert sha256_file(path) == DEMO_CODEC_SHA256 == tiny_preset().codec.weights_sha256
    prov = json.loads(path.with_suffix(".json").read_text())
    assert prov["sha256"] == DEMO_CODEC_SHA256 and prov["command"].startswith("unimoe codec train")
    assert prov["corpus_hash"] and prov["steps"] > 0 and "quality_report" in prov


def test_demo_codec_spreads_codes_and_reconstructs(codec):
    from scipy.signal import stft

    from unimoe.codec_train import code_perplexity
    from unimoe.config import tiny_preset

    demo = AudioCodec.from_model_config(tiny_preset())
    assert not demo.is_random_init and demo.label.startswith("DAC demo")
    # a voiced, speech-like signal: 9 harmonics of a gliding 150 Hz f0, amplitude-modulated
    t = np.arange(SR * 4) / SR
    phase = 2 * np.pi * np.cumsum(150 + 30 * np.sin(2 * np.pi * 0.5 * t)) / SR
    wav = (sum(0.3 / k * np.sin(k * phase) for k in range(1, 10)) * (0.5 + 0.5 * np.sin(4 * np.pi * t) ** 2))
    wav = wav.astype(np.float32)
    # trained codebooks spread this over more codes than random ones (the random-init DAC used ~8 of 1024
    # on demo audio). Measured on this 200-frame tone: 2,134-step demo codec 18.5 / 34.6 / 36.3 / 67.4
    # (mean 39.2), random-init 20.9 / 17.4 / 15.9 / 16.9 (17.8): codebook 0 alone needs few codes for a
    # steady harmonic tone, so the mean is compared (every codebook's perplexity on real held-out audio,
    # >= 128, is the codec report's target).
    def mean_perplexity(c: AudioCodec) -> float:
        codes = c.encode([wav], SR)[0]
        return float(np.mean([code_perplexity(codes[i], 1024) for i in range(K)]))

    assert mean_perplexity(demo) > 30 and mean_perplexity(demo) > 1.5 * mean_perplexity(codec)

    def log_spec_error(c: AudioCodec) -> tuple[float, float]:
        out = c.decode(c.encode([wav], SR))[0]
        n = min(len(out), len(wav))
        a, b = (np.log(np.abs(stft(x[:n], SR, nperseg=1024)[2]) + 1e-3) for x in (wav, out))
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), float(np.abs(a - b).mean())

    (corr, err), (corr_random, err_random) = log_spec_error(demo), log_spec_error(codec)
    # measured: demo 0.44 / 0.24 (1,050 steps: 0.48 / 0.26), random-init -0.07 / 0.63
    assert corr > 0.3 and corr_random < 0.15 and err < 0.6 * err_random


# ---- random-init codec ------------------------------------------------------------------------------


def test_random_init_is_labelled(codec):
    assert codec.is_random_init is True
    assert "random-init" in codec.label and "NOT a real codec" in codec.label
    assert (codec.sample_rate, codec.hop_length, codec.frame_rate) == (SR, HOP, 50.0)
    assert (codec.num_codebooks, codec.codebook_size) == (K, 1024)
    info = codec.info()
    assert info["is_random_init"] is True and info["label"] == codec.label and info["weights_sha256"] is None


def test_frame_counts_are_ceil_of_samples_over_hop(codec):
    lengths = [1, HOP - 1, HOP, HOP + 1, 4000]
    codes = codec.encode([noise(n, seed=n) for n in lengths], SR)
    for n, c in zip(lengths, codes):
        assert c.dtype == torch.long and c.shape == (K, -(-n // HOP)) == (K, codec.num_frames(n))
        assert int(c.min()) >= 0 and int(c.max()) < 1024
    wavs = codec.decode(codes)
    for c, w in zip(codes, wavs):
        assert w.dtype == np.float32 and w.ndim == 1 and len(w) == c.shape[1] * HOP
        assert np.isfinite(w).all()


def test_empty_audio(codec):
    (c,) = codec.encode([np.zeros(0, np.float32)], SR)
    assert c.shape == (K, 0)
    (w,) = codec.decode([c])
    assert w.shape == (0,)


def test_random_init_is_not_degenerate(codec):
    # Many distinct codes, and zeros appended as real audio change the last frames: padding effects
    # are not hidden by an all-zero-bias network, so the batching test below has teeth.
    x = noise(6400, seed=1)
    (a,) = codec.encode([x], SR)
    (b,) = codec.encode([np.concatenate([x, np.zeros(3200, np.float32)])], SR)
    assert all(len(torch.unique(a[k])) >= 5 for k in range(K))
    assert not torch.equal(a, b[:, : a.shape[1]])
    assert torch.equal(a[:, :10], b[:, :10])


def test_batched_equals_one_at_a_time(codec):
    wavs = [noise(n, seed=i) for i, n in enumerate([8000, 2500, 5123, 640])]
    single = [codec.encode([w], SR)[0] for w in wavs]
    batched = codec.encode(wavs, SR, batch_size=4)
    mixed = codec.encode(wavs, SR, batch_size=3)
    for s, b, m in zip(single, batched, mixed):
        assert torch.equal(s, b) and torch.equal(s, m)
    dec_single = [codec.decode([s])[0] for s in single]
    dec_batched = codec.decode(single, batch_size=4)
    stacked = codec.decode(torch.stack([s[:, :2] for s in single]))  # [B, K, T] input
    for s, b in zip(dec_single, dec_batched):
        np.testing.assert_allclose(b, s, atol=1e-5)
    assert len(stacked) == len(single) and all(len(w) == 2 * HOP for w in stacked)


def test_inference_snake_is_dacs_snake_bit_for_bit(codec):
    from dac.nn.layers import Snake1d, snake

    from unimoe.codec import use_inference_snake

    fast = [m for m in codec.model.modules() if isinstance(m, Snake1d)]
    assert fast and all(type(m).__name__ == "InferenceSnake1d" for m in fast)  # the codec uses it everywhere
    torch.manual_seed(0)
    x = torch.randn(3, 16, 999) * 3
    m = use_inference_snake(torch.nn.Sequential(Snake1d(16)))[0]
    assert type(m).__name__ == "InferenceSnake1d"
    m.alpha.data = torch.rand(1, 16, 1) * 2 + 0.05
    with torch.inference_mode():
        assert torch.equal(m(x), snake(x, m.alpha))
    # with gradients it is DAC's own function (in-place ops would break autograd)
    xg = x.clone().requires_grad_()
    y = m(xg)
    y.sum().backward()
    assert torch.equal(y.detach(), snake(x, m.alpha).detach()) and xg.grad is not None
    # whole encoder: identical codes with DAC's Snake and with the in-place one
    wavs = [noise(n, seed=i) for i, n in enumerate([8000, 2500, 5123])]
    codes_fast = codec.encode(wavs, SR, batch_size=3)
    for mod in fast:
        mod.__class__ = Snake1d
    try:
        codes_dac = codec.encode(wavs, SR, batch_size=3)
    finally:
        use_inference_snake(codec.model)
    assert all(torch.equal(a, b) for a, b in zip(codes_fast, codes_dac))


def test_stereo_is_downmixed_to_the_mean(codec):
    left, right = noise(4000, seed=2), noise(4000, seed=3)
    (st,) = codec.encode([np.stack([left, right])], SR)
    (mono,) = codec.encode([(left + right) / 2], SR)
    assert torch.equal(st, mono)
    (t,) = codec.encode([torch.from_numpy(np.stack([left, right]))], SR)  # tensors work too
    assert torch.equal(t, mono)
    with pytest.raises(ValueError, match="samples, channels"):
        codec.encode([np.stack([left, right]).T], SR)
    with pytest.raises(ValueError, match="list of waveforms"):
        codec.encode(np.stack([left, right]), SR)
    (one,) = codec.encode(left, SR)  # a bare 1-D waveform is one item
    assert torch.equal(one, codec.encode([left], SR)[0])


def test_resampling_44k1_to_16k(codec):
    x44 = noise(44_100, seed=4, sr=44_100)
    assert resample(x44, 44_100, SR).shape == (SR,)
    (c,) = codec.encode([x44], 44_100)
    assert c.shape == (K, 50)
    (ref,) = codec.encode([resample(x44, 44_100, SR)], SR)
    assert torch.equal(c, ref)
    # per-item rates
    a, b = codec.encode([x44, noise(8000, seed=5)], [44_100, SR])
    assert torch.equal(a, c) and b.shape == (K, 25)


def test_chunked_equals_unchunked(cfg, codec):
    chunked = AudioCodec.from_config(cfg.replace(chunk_seconds=0.2), num_codebooks=K)
    assert chunked._chunk_frames() == 10
    wavs = [noise(16_000 + 123, seed=6), noise(3000, seed=7)]
    full = codec.encode(wavs, SR)
    parts = chunked.encode(wavs, SR)
    for f, p in zip(full, parts):
        assert f.shape == p.shape and torch.equal(f, p)
    for f, p in zip(codec.decode(full), chunked.decode(full)):
        assert f.shape == p.shape
        np.testing.assert_allclose(p, f, atol=1e-5)


def test_deterministic_by_seed(cfg, codec):
    x = noise(4000, seed=8)
    again = AudioCodec.from_config(cfg, num_codebooks=K)
    other = AudioCodec.from_config(cfg.replace(random_seed=cfg.random_seed + 1), num_codebooks=K)
    assert torch.equal(codec.encode([x], SR)[0], again.encode([x], SR)[0])
    assert not torch.equal(codec.encode([x], SR)[0], other.encode([x], SR)[0])
    # building a codec leaves the global RNG alone
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    AudioCodec.from_config(cfg, num_codebooks=K)
    assert torch.equal(torch.rand(3), expected)


def test_decode_validates_codes(codec):
    with pytest.raises(ValueError, match="strip EOS/PAD/BOS"):
        codec.decode([torch.full((K, 3), 1024)])
    with pytest.raises(ValueError, match=r"expected \[4, T\]"):
        codec.decode([torch.zeros(K + 1, 3, dtype=torch.long)])


# ---- real-weights loading path -------------------------------------------------------------------------


def _saved(codec: AudioCodec, store: Path, name: str = "dac/weights_16khz.pth") -> tuple[str, str]:
    path = codec.save(store / name)
    assert not list(path.parent.glob(".*.tmp"))
    return name, sha256_file(path)


def test_dac_file_round_trip_with_checksum(cfg, codec, store):
    name, sha = _saved(codec, store)
    real_cfg = cfg.replace(random_init=False, weights_path=name, weights_sha256=sha)
    loaded = AudioCodec.from_config(real_cfg, num_codebooks=K)
    assert loaded.is_random_init is False and "weights_16khz.pth" in loaded.label and sha[:12] in loaded.label
    assert loaded.weights_path == store / name and loaded.info()["weights_sha256"] == sha
    ref = codec.model.state_dict()
    got = loaded.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    x = noise(4000, seed=9)
    assert torch.equal(loaded.encode([x], SR)[0], codec.encode([x], SR)[0])


def test_rvq_truncation(cfg, codec, store):
    name, sha = _saved(codec, store)
    two = AudioCodec.from_config(cfg.replace(random_init=False, weights_path=name, weights_sha256=sha),
                                 num_codebooks=2)
    x = noise(4000, seed=10)
    (c4,) = codec.encode([x], SR)
    (c2,) = two.encode([x], SR)
    assert c2.shape == (2, c4.shape[1]) and torch.equal(c2, c4[:2])
    assert len(two.decode([c2])[0]) == c2.shape[1] * HOP
    with pytest.raises(CodecLoadError, match="4 codebooks"):
        AudioCodec.from_config(cfg.replace(random_init=False, weights_path=name), num_codebooks=5)


def test_missing_weights_names_file_and_origin(cfg, store):
    real_cfg = cfg.replace(random_init=False, weights_path="dac/weights_16khz.pth")
    with pytest.raises(MissingWeightsError) as e:
        AudioCodec.from_config(real_cfg, num_codebooks=K)
    msg = str(e.value)
    assert str(store / "dac/weights_16khz.pth") in msg
    assert DAC_RELEASE_URLS["16khz"] in msg and "0.0.5/weights_16khz.pth" in msg
    with pytest.raises(CodecLoadError, match="weights_path is not set"):
        AudioCodec.from_config(cfg.replace(random_init=False), num_codebooks=K)


def test_checksum_mismatch(cfg, codec, store):
    name, sha = _saved(codec, store)
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=sha):
        AudioCodec.from_config(cfg.replace(random_init=False, weights_path=name, weights_sha256=wrong),
                               num_codebooks=K)


def test_config_mismatch_is_refused(cfg, codec, store):
    name, _ = _saved(codec, store)
    other_rate = cfg.replace(random_init=False, weights_path=name, sample_rate=24_000, frame_rate=75.0)
    with pytest.raises(CodecLoadError, match="sample rate 16000"):
        AudioCodec.from_config(other_rate, num_codebooks=K)
    with pytest.raises(CodecLoadError, match="codebook size"):
        AudioCodec.from_config(cfg.replace(random_init=False, weights_path=name), num_codebooks=K,
                               codebook_size=512)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(_Evil.marker),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unsafe_pickles_are_never_executed(tmp_path):
    _Evil.marker = str(tmp_path / "pwned")
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {}, "metadata": {"kwargs": {}}, "x": _Evil()}, bad)
    with pytest.raises(CodecLoadError, match="weights_only=True"):
        load_dac_weights(bad)
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "plain.pth"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(CodecLoadError, match="not a DAC weights file"):
        load_dac_weights(plain)
    with open(tmp_path / "pickle.pth", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(CodecLoadError):
        load_dac_weights(tmp_path / "pickle.pth")


# ---- audio I/O ------------------------------------------------------------------------------------------


def test_save_and_load_wav(tmp_path):
    stereo = np.stack([noise(1000, seed=11), noise(1000, seed=12)]) * 0.5
    p = save_wav(tmp_path / "out" / "a.wav", stereo, 22_050)
    assert not list(p.parent.glob(".*.tmp"))
    data, sr = load_audio(p)
    assert sr == 22_050 and data.shape == (2, 1000) and data.dtype == np.float32
    np.testing.assert_allclose(data, stereo, atol=1 / 32_000)
    assert sf.info(str(p)).subtype == "PCM_16"
    exact = save_wav(tmp_path / "b.flac", stereo[0], 16_000, subtype="PCM_24")
    data, sr = load_audio(exact)
    assert sr == 16_000 and data.shape == (1, 1000)
    f32 = save_wav(tmp_path / "c.wav", stereo[0], 16_000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(f32)[0][0], stereo[0].astype(np.float32))
    with pytest.raises(ValueError, match="unsupported audio suffix"):
        save_wav(tmp_path / "d.mp3", stereo, 16_000)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(tmp_path / "nope.wav")


def test_to_mono_and_resample_shapes():
    x = np.stack([np.ones(10), 3 * np.ones(10)]).astype(np.float32)
    np.testing.assert_array_equal(to_mono(x), 2 * np.ones(10, np.float32))
    assert to_mono(np.ones(5)).dtype == np.float32
    assert resample(np.zeros((2, 44_100), np.float32), 44_100, 16_000).shape == (2, 16_000)
    assert resample(np.zeros(0, np.float32), 44_100, 16_000).shape == (0,)
    y = noise(1000)
    np.testing.assert_array_equal(resample(y, SR, SR), y)


# ---- load_span: one span of a file ----------------------------------------------------------------------

SPAN_SR = 8_000  # 10 ms tolerance = 80 samples


@pytest.fixture()
def stereo_file(tmp_path) -> tuple[Path, np.ndarray]:
    """1 s of float32 stereo at 8 kHz (FLOAT subtype: samples round-trip exactly)."""
    data = np.stack([noise(SPAN_SR, seed=21, sr=SPAN_SR), noise(SPAN_SR, seed=22, sr=SPAN_SR)]) * 0.5
    return save_wav(tmp_path / "stereo.wav", data, SPAN_SR, subtype="FLOAT"), data.astype(np.float32)


def _span_error(*args, **kwargs) -> AudioSpanError:
    with pytest.raises(AudioSpanError) as ei:
        load_span(*args, **kwargs)
    e = ei.value
    assert isinstance(e, ValueError) and e.reason in SPAN_REASONS and e.detail
    assert str(e) == f"{e.reason}: {e.detail}"
    return e


def test_load_span_stereo_is_exactly_a_slice_of_the_full_read(stereo_file, monkeypatch):
    p, data = stereo_file
    full, sr = load_audio(p)
    assert sr == SPAN_SR
    np.testing.assert_array_equal(full, data)
    whole, sr = load_span(p)
    assert sr == SPAN_SR and whole.dtype == np.float32 and whole.flags.c_contiguous
    np.testing.assert_array_equal(whole, full)
    np.testing.assert_array_equal(load_span(p, None, None)[0], full)
    # only the span is read from disk: one seek to its start, one read of its length
    calls = []
    seek, read = sf.SoundFile.seek, sf.SoundFile.read

    def spy(name, fn):
        def wrapped(self, frames, *a, **k):
            calls.append((name, frames))
            return fn(self, frames, *a, **k)
        return wrapped

    monkeypatch.setattr(sf.SoundFile, "seek", spy("seek", seek))
    monkeypatch.setattr(sf.SoundFile, "read", spy("read", read))
    span, sr = load_span(p, 0.25, 0.5)
    assert calls[0] == ("seek", 2_000) and [c for c in calls if c[0] == "read"] == [("read", 4_000)]
    assert span.shape == (2, 4_000) and span.dtype == np.float32 and span.flags.c_contiguous
    np.testing.assert_array_equal(span, full[:, 2_000:6_000])
    np.testing.assert_array_equal(load_span(p, 0.75)[0], full[:, 6_000:])  # duration None: to the end


def test_load_span_missing_corrupt_and_zero_length(tmp_path):
    e = _span_error(tmp_path / "nope.wav")
    assert e.reason == "missing_file" and "not found" in e.detail and "nope.wav" in e.detail
    for empty in (None, ""):
        assert _span_error(empty).reason == "missing_file"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    assert _span_error(bad).reason == "corrupt_audio"
    junk = tmp_path / "noise.flac"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    assert _span_error(junk).reason == "corrupt_audio"
    empty_wav = tmp_path / "empty.wav"
    sf.write(str(empty_wav), np.zeros((0, 1), np.float32), SPAN_SR)
    assert _span_error(empty_wav).reason == "zero_length"


def test_load_span_bounds(stereo_file):
    p, _ = stereo_file
    e = _span_error(p, 1.0)  # the first frame past the end
    assert e.reason == "bad_segment" and "past the end" in e.detail
    assert _span_error(p, 60.0, 1.0).reason == "bad_segment"
    for offset, duration in ((-0.1, None), (float("nan"), None), (float("inf"), 1.0),
                             (0.0, 0.0), (0.0, -1.0), (0.0, float("nan")), (0.0, float("inf")),
                             ("soon", None), (0.0, "long")):
        assert _span_error(p, offset, duration).reason == "bad_segment", (offset, duration)


def test_load_span_truncation_tolerance(stereo_file):
    p, data = stereo_file
    # up to max(2 samples, 10 ms) short of the span is accepted and returned as read
    span, _ = load_span(p, 0.5, 0.509)  # asks 4072 frames, the file has 4000 from there (72 short)
    np.testing.assert_array_equal(span, data[:, 4_000:])
    span, _ = load_span(p, 0.0, 1.01)  # exactly 80 short
    assert span.shape == (2, SPAN_SR)
    e = _span_error(p, 0.5, 0.511)  # 88 short
    assert e.reason == "truncated" and "4088" in e.detail and "4000" in e.detail
    assert _span_error(p, 0.0, 2.0).reason == "truncated"


def test_load_span_non_finite_samples_only_inside_the_span(tmp_path):
    y = np.zeros((2, SPAN_SR), np.float32)
    y[1, 6_000] = np.nan
    y[0, 7_000] = np.inf
    p = save_wav(tmp_path / "nan.wav", y, SPAN_SR, subtype="FLOAT")
    e = _span_error(p)
    assert e.reason == "non_finite"
    assert _span_error(p, 0.7, 0.1).reason == "non_finite"
    span, _ = load_span(p, 0.0, 0.5)  # the bad samples lie outside this span
    assert span.shape == (2, 4_000) and np.isfinite(span).all()


def test_audio_span_error_pickles():
    e = AudioSpanError("truncated", "x.wav: short")
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is AudioSpanError
    assert (back.reason, back.detail, str(back)) == (e.reason, e.detail, str(e))


def test_pipeline_modules_share_the_span_reader(stereo_file, tmp_path):
    """Tokenisation, quality filtering and captioning all read spans with unimoe.common.audio.load_span."""
    import data.captioning as captioning
    import data.tokenize.encode as tokenize
    from data.quality import UnreadableAudio
    from data.quality import load_span as quality_span

    assert captioning.AudioSpanError is AudioSpanError and captioning.load_span is load_span
    assert tokenize.load_span is load_span
    assert set(SPAN_REASONS) <= set(tokenize.REASONS)
    p, data = stereo_file
    mono, sr = quality_span(p, 0.25, 0.5)
    np.testing.assert_array_equal(mono, to_mono(data[:, 2_000:6_000]))
    with pytest.raises(UnreadableAudio, match=r"^truncated: "):
        quality_span(p, 0.5, 1.0)
