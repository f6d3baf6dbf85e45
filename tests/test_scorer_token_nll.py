"""token_nll: teacher-forced held-out token NLL of a checkpoint on an item's ground truth.

Checked against a hand computation from the model's own logits (log-softmax, gathered at the target
codes, PAD/BOS ignored, mean per codebook, mean over codebooks) for a text-to-music item and a voice-
cloning TTS item, and shown to fall after a few optimisation steps on the item."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation.scorers import ScorerUnavailable, available_scorers, is_model_scorer, load_scorer
from evaluation.scorers.token_nll import METRIC, TokenNLL, codebook_metric

SR = 16000
TEXTS = ["a calm piano melody in c major", "the quick brown fox jumps over the lazy dog",
         "hello world this is a speech test", "energetic string quartet at a fast tempo"]


def _tone(path, seconds: float, freq: float, seed: int):
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
    sf.write(str(path), wav.astype(np.float32), SR)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from unimoe.checkpoint import save_checkpoint
    from unimoe.config import tiny_preset
    from unimoe.model import UniMoEAudio
    from unimoe.tokenizer import TextTokenizer

    root = tmp_path_factory.mktemp("nll")
    cfg = tiny_preset()
    tok = TextTokenizer.from_config(cfg.tokenizer, corpus_texts=TEXTS * 5)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "init", UniMoEAudio(cfg), cfg, {"stage": "init"}, tokenizer=tok)
    items = {
        "music": {"id": "m1", "task": "t2m", "language": "en", "text": TEXTS[0],
                  "reference_audio": _tone(root / "m1.wav", 0.32, 440.0, 0)},
        "speech": {"id": "s1", "task": "en_tts", "language": "en", "text": TEXTS[1],
                   "reference_audio": _tone(root / "s1.wav", 0.24, 220.0, 1),
                   "prompt_audio": _tone(root / "p1.wav", 0.16, 330.0, 2), "prompt_text": TEXTS[2]},
    }
    return root, ckpt, cfg, tok, items


def _by_hand(ckpt, item) -> dict[str, float]:
    """NLL from the model's logits, computed here without the trainer's loss code."""
    from unimoe.common.audio import load_audio
    from unimoe.checkpoint import load_checkpoint
    from unimoe.codec import AudioCodec
    from unimoe.sequence import Example, SequenceBuilder, collate
    from unimoe.tokenizer import TextTokenizer

    model, cfg, _ = load_checkpoint(ckpt)
    model.eval()
    tok = TextTokenizer.load(ckpt / "tokenizer.json")
    codec = AudioCodec.from_model_config(cfg)
    codes = codec.encode([load_audio(item["reference_audio"])[0]], SR)[0]
    ref_codes = codec.encode([load_audio(item["prompt_audio"])[0]], SR)[0] if item.get("prompt_audio") else None
    ex = Example(item["task"], text=item["text"], codes=codes, ref_codes=ref_codes,
                 ref_text=item.get("prompt_text") if ref_codes is not None else None)
    batch = collate([SequenceBuilder(cfg, tok).build(ex)], tok.pad_id, cfg.audio.pad_id)
    with torch.no_grad():
        logp = torch.log_softmax(model.audio_logits(model(batch).hidden[0]).double(), dim=-1)  # [L, K, V]
    a = cfg.audio
    out = {}
    for k in range(a.num_codebooks):
        terms = [-float(logp[i, k, int(batch.audio_codes[0, i + 1, k])]) for i in range(batch.input_ids.shape[1] - 1)
                 if bool(batch.target_mask[0, i + 1]) and int(batch.audio_codes[0, i + 1, k]) not in (a.pad_id, a.bos_id)]
        assert len(terms) == codes.shape[1] + 1  # every frame and the EOS
        out[codebook_metric(k)] = sum(terms) / len(terms)
    out[METRIC] = float(np.mean([out[codebook_metric(k)] for k in range(a.num_codebooks)]))
    return out


def test_registered_as_a_model_scorer(setup):
    _, ckpt, cfg, _, _ = setup
    assert "token_nll" in available_scorers() and is_model_scorer("token_nll") and not is_model_scorer("dnsmos")
    with pytest.raises(ScorerUnavailable, match="checkpoint"):
        load_scorer("token_nll")
    s = load_scorer("token_nll", checkpoint=str(ckpt))
    assert isinstance(s, TokenNLL)
    assert s.metrics == {METRIC: "lower", **{codebook_metric(k): "lower" for k in range(cfg.audio.num_codebooks)}}
    sha = (ckpt / "state.json").read_text().split('"weights_sha256": "')[1][:12]
    assert sha in s.version and s.max_frames == 1500  # no train_config in state.json: the trainer's default
    assert load_scorer("token_nll", checkpoint=str(ckpt), max_frames=7).cache_key != s.cache_key


@pytest.mark.parametrize("kind", ["music", "speech"])
def test_equals_a_hand_computation_from_the_logits(setup, kind):
    _, ckpt, _, _, items = setup
    s = load_scorer("token_nll", checkpoint=str(ckpt))
    got = s.score_items([items[kind]])[0]
    want = _by_hand(ckpt, items[kind])
    assert set(got) == set(want)
    for m, v in want.items():
        assert got[m] == pytest.approx(v, abs=2e-5), m
    assert s.item_errors == {}
    # near-uniform at init: about ln(vocab) nats
    assert abs(got[METRIC] - math.log(1027)) < 0.5


def test_voice_prompt_conditions_the_nll(setup):
    _, ckpt, _, _, items = setup
    s = load_scorer("token_nll", checkpoint=str(ckpt))
    with_prompt = s.score_items([items["speech"]])[0][METRIC]
    without = s.score_items([{k: v for k, v in items["speech"].items() if k not in ("prompt_audio", "prompt_text")}])[0]
    assert with_prompt != pytest.approx(without[METRIC], abs=1e-7)
    assert without[METRIC] == pytest.approx(_by_hand(ckpt, {**items["speech"], "prompt_audio": None})[METRIC], abs=2e-5)


def test_lower_after_training_on_the_item(setup):
    """A few optimiser steps on the item's own training batch (the trainer's BatchMaker and the model's
    loss) lower its NLL well below the init checkpoint's."""
    from unimoe.checkpoint import load_checkpoint, save_checkpoint
    from unimoe.training.config import TrainConfig
    from unimoe.training.data import BatchMaker

    root, ckpt, _, tok, items = setup
    item = items["music"]
    s0 = load_scorer("token_nll", checkpoint=str(ckpt))
    before = s0.score_items([item])[0]
    tf = s0.teacher_forced_item(item)
    model, cfg, _ = load_checkpoint(ckpt)
    batch = BatchMaker(cfg, TrainConfig(max_frames=s0.max_frames, cond_dropout=0.0), s0.generator.builder).batch([tf], [(0, 0)])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(8):
        loss = model.loss(batch)["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = save_checkpoint(root / "trained", model, cfg, {"stage": "test"}, tokenizer=tok)
    s1 = load_scorer("token_nll", checkpoint=str(trained))
    assert s1.cache_key != s0.cache_key
    after = s1.score_items([item])[0]
    assert after[METRIC] < before[METRIC] - 1.0, (before[METRIC], after[METRIC])
    assert all(after[codebook_metric(k)] < before[codebook_metric(k)] for k in range(cfg.audio.num_codebooks))


def test_an_item_without_ground_truth_is_nan_with_its_reason(setup):
    _, ckpt, _, _, items = setup
    s = load_scorer("token_nll", checkpoint=str(ckpt))
    s.clear_failures()
    bad = {k: v for k, v in items["music"].items() if k != "reference_audio"}
    out = s.score_items([bad, items["music"]])
    assert all(math.isnan(v) for v in out[0].values()) and math.isfinite(out[1][METRIC])
    assert list(s.item_errors) == ["m1"] and "no ground-truth audio" in s.item_errors["m1"]


def test_codes_cache_is_shared_per_codec_and_audio(setup, tmp_path):
    """With ``codes_cache`` the ground truth's codes are stored per (codec hash, audio hash) and read back
    (the benchmark's codec-resynthesis topline writes the same files), giving the same NLL."""
    from evaluation.codes_cache import codec_key, codes_path, encode_cached
    from unimoe.io import sha256_file

    _, ckpt, cfg, _, items = setup
    item = items["music"]
    plain = load_scorer("token_nll", checkpoint=str(ckpt)).score_items([item])[0]
    s = load_scorer("token_nll", checkpoint=str(ckpt), codes_cache=str(tmp_path))
    codec = s.generator.codec
    key = codec_key(cfg)
    path = codes_path(tmp_path, key, sha256_file(item["reference_audio"]))
    assert s.score_items([item])[0] == pytest.approx(plain) and path.is_file()
    s2 = load_scorer("token_nll", checkpoint=str(ckpt), codes_cache=str(tmp_path))
    s2.generator.codec.encode = lambda *a, **k: (_ for _ in ()).throw(AssertionError("encoded again"))
    assert s2.score_items([item])[0] == pytest.approx(plain) and s2.item_errors == {}
    cached = encode_cached(codec, item["reference_audio"], sha256_file(item["reference_audio"]), tmp_path, key)
    assert torch.equal(cached, codec.encode([sf.read(item["reference_audio"])[0].astype(np.float32)], SR)[0])


def test_codec_key_names_the_codec_config():
    from evaluation.codes_cache import codec_key
    from unimoe.config import tiny_preset

    cfg = tiny_preset()
    assert codec_key(cfg) == codec_key(tiny_preset())
    assert codec_key(cfg.replace(codec=cfg.codec.replace(random_seed=1))) != codec_key(cfg)
    assert codec_key(cfg.replace(codec=cfg.codec.replace(weights_path="elsewhere.pth"))) == codec_key(cfg)
