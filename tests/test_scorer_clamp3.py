"""CLaMP 3 scorer, offline, with random tiny-config weights in the released formats: a MERT folder
(MERT-style ``config.json`` + ``pytorch_model.bin`` with old weight-norm names), a CLaMP 3 checkpoint
(``{"model": ..., "epoch": ...}`` including symbolic-branch tensors and constant buffers) and a tiny
XLM-R-style unigram tokenizer. MERT features are checked against transformers' own
``Wav2Vec2FeatureExtractor`` + ``HubertModel``; the CLaMP 3 segmentation against a direct transcription
of ``extract_clamp3.py``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from unimoe.common.audio import resample
from unimoe.io import sha256_file

transformers = pytest.importorskip("transformers")
from evaluation.scorers import clamp3 as C

CAPTIONS = ["a calm piano melody in c major", "energetic rock with loud drums", "ambient synth pads and soft rain"]
H = 32  # MERT width = CLaMP 3 audio-encoder width (768 in the release)
MERT_CFG = dict(
    hidden_size=H, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
    conv_bias=False, feat_extract_norm="group", feat_proj_layer_norm=True, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, do_stable_layer_norm=False,
)
AUDIO_CFG = dict(vocab_size=1, hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)
PROJ = 16


def tone(seconds: float, sr: int, f0: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * f0 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def tokenizer_dir(store):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CAPTIONS * 20, trainer)
    tok.add_special_tokens(["<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    folder = store / "xlmr-tiny"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def text_cfg(tokenizer_dir):
    n = len(C.load_tokenizer(tokenizer_dir))
    return dict(vocab_size=n, hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=130, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)


@pytest.fixture(scope="module")
def mert(store):
    """A random HuBERT saved as MERT is published: MERT config keys, weight-norm ``weight_g/_v`` names."""
    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(**MERT_CFG)).eval()
    folder = store / "MERT-v1-95M"
    folder.mkdir()
    cfg = {**MERT_CFG, "architectures": ["MERTModel"], "model_type": "mert_model", "sample_rate": 24000,
           "auto_map": {"AutoModel": "modeling_MERT.MERTModel"}, "feature_extractor_cqt": False,
           "feature_extractor_cqt_bins": 336, "deepnorm": False, "attention_relax": -1.0}
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
          for k, v in model.state_dict().items()}
    assert any(k.endswith("weight_g") for k in sd)
    torch.save(sd, folder / "pytorch_model.bin")
    return model, folder, sha256_file(folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def ckpt(store, text_cfg):
    torch.manual_seed(1)
    model = C.ClaMP3TextAudio(transformers.XLMRobertaConfig(**text_cfg), transformers.BertConfig(**AUDIO_CFG), PROJ)
    sd = dict(model.state_dict())
    sd["symbolic_model.patch_embedding.weight"] = torch.zeros(4, 4)  # unused M3 branch
    sd["text_model.embeddings.position_ids"] = torch.arange(130)[None]  # saved by older transformers
    path = store / "clamp3" / C.CLAMP3_FILE
    path.parent.mkdir()
    torch.save({"model": sd, "epoch": 3, "min_eval_loss": 0.25}, path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def scorer(ckpt, mert, tokenizer_dir, text_cfg):
    return load_scorer("clamp3", weights_path=str(ckpt[0]), sha256=ckpt[1], mert_path=str(mert[1]),
                       mert_sha256=mert[2], tokenizer_path=str(tokenizer_dir), text_config=text_cfg,
                       audio_config=AUDIO_CFG, hidden_size=PROJ)


# ---- loading -------------------------------------------------------------------------------------------


def test_registry_version_info(scorer, ckpt, mert):
    assert "clamp3" in available_scorers() and scorer.metrics == {"clamp3": "higher"}
    assert f"clamp3-saas+sha256:{ckpt[1][:12]}+mert-v1-95m+sha256:{mert[2][:12]}" in scorer.version
    assert scorer.info()["checkpoint"] == {"epoch": 3, "min_eval_loss": 0.25}


def test_mert_is_loaded_exactly(scorer, mert):
    x = torch.from_numpy(tone(1.2, 24_000, 300.0))[None]
    with torch.inference_mode():
        a = scorer.mert(x, output_hidden_states=True).hidden_states
        b = mert[0](x, output_hidden_states=True).hidden_states
    assert len(a) == MERT_CFG["num_hidden_layers"] + 1
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)


# ---- audio path ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds,n_windows", [(12.0, 3), (10.5, 2), (1.2, 1), (5.0, 1)])
def test_mert_features_match_reference_pipeline(scorer, seconds, n_windows):
    sr = 44_100
    wav = tone(seconds, sr, 220.0, seed=2)
    ours = scorer.mert_features(wav, sr)
    # reference: torchaudio-resampled mono, HF processor normalisation, 5 s windows, drop < 1 s
    x = resample(wav, sr, 24_000)
    proc = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=24_000, padding_value=0.0,
                                                 return_attention_mask=True, do_normalize=True)
    x = proc(torch.from_numpy(x)[None], return_tensors="pt", sampling_rate=24_000, padding=True).input_values[0]
    wins = [x[:, i : i + 120_000] for i in range(0, x.shape[-1], 120_000)]
    if wins[-1].shape[-1] < 24_000:
        wins = wins[:-1]
    feats = []
    with torch.inference_mode():
        for w in wins:
            hs = scorer.mert(w.float(), output_hidden_states=True).hidden_states
            feats.append(torch.stack(hs).mean(-2))  # [L, 1, H]
    ref = torch.cat(feats, dim=1).mean(dim=0).numpy()  # --mean_features: mean over layers
    assert ours.shape == (n_windows, H)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_segment_weights():
    assert C.segment_weights(5, 128) == [(0, 5, 5)]
    assert C.segment_weights(128, 128) == [(0, 128, 128)]
    assert C.segment_weights(302, 128) == [(0, 128, 128), (128, 256, 128), (174, 302, 46)]


def reference_global(x: torch.Tensor, max_len: int, pad_value, encode) -> torch.Tensor:
    """``extract_clamp3.extract_feature(get_global=True)`` transcribed."""
    segs = [x[i : i + max_len] for i in range(0, len(x), max_len)]
    segs[-1] = x[-max_len:]
    outs = []
    for s in segs:
        mask = torch.cat([torch.ones(s.size(0)), torch.zeros(max_len - s.size(0))])
        padv = torch.full((max_len - s.size(0), *s.shape[1:]), pad_value, dtype=s.dtype)
        outs.append(encode(torch.cat([s, padv])[None], mask[None]))
    full, rem = divmod(len(x), max_len)
    w = torch.tensor([max_len] * full + ([rem] if rem else []), dtype=torch.float32).view(-1, 1)
    return (torch.cat(outs) * w).sum(0) / w.sum()


def test_audio_and_text_embeddings_follow_the_reference(scorer):
    feats = np.random.default_rng(3).standard_normal((300, H)).astype(np.float32)  # > 128: three segments
    zero = torch.zeros(1, H)
    x = torch.cat([zero, torch.from_numpy(feats), zero])
    with torch.inference_mode():
        ref = reference_global(x, 128, 0.0, scorer.clamp.audio_global)
        ours = scorer.audio_embedding(feats)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
        text = CAPTIONS[0] + "\n" + CAPTIONS[1] + "\n" + CAPTIONS[0]  # repeated line: used once
        ids = scorer.tokenizer(CAPTIONS[0] + "</s>" + CAPTIONS[1], return_tensors="pt")["input_ids"][0]
        tref = reference_global(ids, 128, scorer.tokenizer.pad_token_id, scorer.clamp.text_global)
        torch.testing.assert_close(scorer.text_embedding(text), tref, rtol=1e-4, atol=1e-5)
    assert ours.shape == (PROJ,)


def test_score_is_cosine_and_failures_are_nan(scorer):
    sr = 32_000
    items = [
        AudioItem("a", tone(6.0, sr, 330.0, seed=4), sr, text=CAPTIONS[0]),
        AudioItem("b", np.stack([tone(2.0, sr, 500.0, 5), tone(2.0, sr, 700.0, 6)]), sr, text=CAPTIONS[1]),
        AudioItem("no-text", tone(2.0, sr, 330.0), sr, text=None),
        AudioItem("short", tone(0.5, sr, 330.0), sr, text=CAPTIONS[2]),
        AudioItem("empty", np.zeros(0, np.float32), sr, text=CAPTIONS[2]),
    ]
    rows = scorer.score(items)
    a = scorer.audio_embedding(scorer.mert_features(items[0].wav, sr))
    t = scorer.text_embedding(CAPTIONS[0])
    assert rows[0]["clamp3"] == pytest.approx(float(torch.nn.functional.cosine_similarity(a, t, dim=0)), abs=1e-6)
    assert -1.0 <= rows[1]["clamp3"] <= 1.0
    assert all(math.isnan(r["clamp3"]) for r in rows[2:])
    assert set(scorer.last_failures) == {"no-text", "short", "empty"}
    assert "1 s" in scorer.last_failures["short"]


# ---- failures at load time -----------------------------------------------------------------------------


def test_missing_files_name_path_and_origin(tmp_path, monkeypatch, ckpt, mert):
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer("clamp3")
    assert str(tmp_path / "clamp3" / C.CLAMP3_FILE) in str(e.value) and "huggingface.co/sander-wood/clamp3" in str(e.value)
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer("clamp3", weights_path=str(ckpt[0]))
    assert str(tmp_path / "clamp3" / "MERT-v1-95M" / "config.json") in str(e.value)
    assert "huggingface.co/m-a-p/MERT-v1-95M" in str(e.value)
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer("clamp3", weights_path=str(ckpt[0]), mert_path=str(mert[1]))
    assert "sentencepiece.bpe.model" in str(e.value) and "FacebookAI/xlm-roberta-base" in str(e.value)


def test_mert_options_outside_hubert_are_refused(tmp_path):
    with pytest.raises(ScorerUnavailable, match="feature_extractor_cqt"):
        C.mert_config({**MERT_CFG, "feature_extractor_cqt": True})
    with pytest.raises(ScorerUnavailable, match="deepnorm"):
        C.mert_config({**MERT_CFG, "deepnorm": True})


def test_checkpoint_must_fit(store, mert, tokenizer_dir, text_cfg, tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"model": {"text_proj.weight": torch.zeros(PROJ, H)}, "epoch": 1}, path)
    with pytest.raises(ScorerUnavailable, match="does not fit"):
        load_scorer("clamp3", weights_path=str(path), mert_path=str(mert[1]), tokenizer_path=str(tokenizer_dir),
                    text_config=text_cfg, audio_config=AUDIO_CFG, hidden_size=PROJ)
