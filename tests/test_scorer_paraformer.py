"""Paraformer-zh CER: a tiny random-weight SeACo-Paraformer of the same architecture, written as a
ModelScope-layout folder and loaded offline through FunASR's own model classes and decoding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("funasr")
yaml = pytest.importorskip("yaml")

from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from evaluation.scorers.paraformer_cer import DEFAULT_MODEL_DIR, METRIC, MODEL_ID, ParaformerCER
from unimoe.io import ChecksumError, sha256_file

TOKENS = ["<blank>", "<s>", "</s>"] + list("今天气很好我爱北京的是了不在有人这中大为上个国") + ["<unk>"]


def _config(vocab: int) -> dict:
    """speech_seaco_paraformer_large's config.yaml structure with tiny sizes (file paths left out:
    the loader points them at the folder, as the ModelScope downloader does)."""
    dec = {"attention_heads": 2, "linear_units": 32, "dropout_rate": 0.0, "positional_dropout_rate": 0.0,
           "self_attention_dropout_rate": 0.0, "src_attention_dropout_rate": 0.0, "sanm_shfit": 0}
    return {
        "model": "SeacoParaformer",
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True, "predictor_weight": 1.0,
                       "predictor_bias": 1, "sampling_ratio": 0.75, "inner_dim": 16, "bias_encoder_type": "lstm",
                       "bias_encoder_bid": False, "seaco_lsm_weight": 0.1, "seaco_length_normal": True,
                       "train_decoder": True, "NO_BIAS": vocab - 1},
        "encoder": "SANMEncoder",
        "encoder_conf": {"output_size": 16, "attention_heads": 2, "linear_units": 32, "num_blocks": 2,
                         "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
                         "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
                         "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {**dec, "num_blocks": 2, "att_layer_num": 2, "kernel_size": 11},
        "seaco_decoder": "ParaformerSANMDecoder",
        "seaco_decoder_conf": {**dec, "num_blocks": 1, "kernel_size": 21, "use_output_layer": False, "wo_input_layer": True},
        "predictor": "CifPredictorV3",
        "predictor_conf": {"idim": 16, "threshold": 1.0, "l_order": 1, "r_order": 1, "tail_threshold": 0.45,
                           "smooth_factor2": 0.25, "noise_threshold2": 0.01, "upsample_times": 3,
                           "use_cif1_cnn": False, "upsample_type": "cnn_blstm"},
        "frontend": "WavFrontend",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25, "frame_shift": 10,
                          "lfr_m": 7, "lfr_n": 6},
        "specaug": None,
        "normalize": None,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>"},
        "input_size": 560,
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from funasr.register import tables

    d = tmp_path_factory.mktemp("paraformer") / "seaco_tiny"
    d.mkdir()
    (d / "tokens.json").write_text(json.dumps(TOKENS, ensure_ascii=False), encoding="utf-8")
    (d / "config.yaml").write_text(yaml.safe_dump(_config(len(TOKENS)), allow_unicode=True), encoding="utf-8")
    shift, scale = " ".join(["-8.0"] * 560), " ".join(["0.25"] * 560)
    (d / "am.mvn").write_text(
        f"<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> 560 560\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n"
    )
    # the random-weight model, from FunASR's own registered class and the same config
    cfg = _config(len(TOKENS))
    torch.manual_seed(0)
    cls = tables.model_classes["SeacoParaformer"]
    model = cls(**{**cfg["model_conf"], **cfg, "vocab_size": len(TOKENS)})
    torch.save(model.state_dict(), d / "model.pt")
    return d, sha256_file(d / "model.pt"), model.state_dict()


@pytest.fixture(scope="module")
def scorer(model_dir):
    d, sha, _ = model_dir
    return load_scorer("paraformer_cer", model_dir=str(d), sha256=sha, device="cpu")


def _noise(n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def test_registered_version_and_weights(scorer, model_dir):
    from importlib.metadata import version

    assert "paraformer_cer" in available_scorers()
    assert isinstance(scorer, ParaformerCER) and scorer.metrics == {METRIC: "lower"}
    assert scorer.version == (f"funasr {version('funasr')} SeacoParaformer (model.pt sha256:{model_dir[1][:12]}) "
                              "cer-rule=seed-tts-eval")
    loaded = scorer.am.model.state_dict()
    for k, v in model_dir[2].items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)


def test_scores_end_to_end(scorer):
    items = [
        AudioItem("a", _noise(32000), 16000, text="今天天氣很好。", language="zh"),
        AudioItem("b", _noise(24000, 1), 24000, text="我爱北京"),
    ]
    out = scorer.score(items)
    for r, n in zip(out, (6, 4)):
        assert r[f"{METRIC}_ref_len"] == n
        assert math.isfinite(r[METRIC]) and r[METRIC] == pytest.approx(r[f"{METRIC}_errors"] / n)
    assert scorer.score(items) == out  # deterministic
    hyp = scorer.transcribe([_noise(32000)])[0]
    assert set(hyp.replace(" ", "")) <= set(TOKENS[3:-1])  # decoded through the real token list
    assert ParaformerCER.score_transcript("今天天氣很好。", hyp) == out[0]


def test_cer_math_with_fixed_hypothesis():
    # traditional hypothesis is simplified; spaces and punctuation do not count
    assert ParaformerCER.score_transcript("今天天气很好。", "今 天 天 氣 不 好") == {
        METRIC: 1 / 6, f"{METRIC}_errors": 1.0, f"{METRIC}_ref_len": 6.0
    }


def test_cer_follows_seed_tts_eval_on_mixed_script():
    """seed-tts-eval (run_wer.py) splits Latin letters like hanzi and keeps their case, and converts only
    the hypothesis to simplified characters: "NBA" vs "nba" is 3 substitutions in 7 characters."""
    assert ParaformerCER.score_transcript("我在NBA打球。", "我在nba打球") == {
        METRIC: 3 / 7, f"{METRIC}_errors": 3.0, f"{METRIC}_ref_len": 7.0
    }
    # a traditional character in the REFERENCE is scored as written (the hypothesis is simplified)
    assert ParaformerCER.score_transcript("我們", "我們")[METRIC] == 1 / 2


def test_cer_latin_words_rule_is_an_option_recorded_in_version(scorer, model_dir):
    rule = "t2s-both-latin-words"
    assert ParaformerCER.score_transcript("我在NBA打球。", "我在nba打球", zh_rule=rule) == {
        METRIC: 0.0, f"{METRIC}_errors": 0.0, f"{METRIC}_ref_len": 5.0
    }
    other = load_scorer("paraformer_cer", model_dir=str(model_dir[0]), sha256=model_dir[1], device="cpu", zh_rule=rule)
    assert other.version.endswith("cer-rule=t2s-both-latin-words") and other.version != scorer.version
    items = [AudioItem("a", _noise(16000), 16000, text="今天NBA好", language="zh")]
    hyp = other.transcribe([items[0].wav])[0]
    assert other.score(items)[0] == ParaformerCER.score_transcript("今天NBA好", hyp, zh_rule=rule)
    assert scorer.score(items)[0] == ParaformerCER.score_transcript("今天NBA好", hyp)
    with pytest.raises(ValueError, match="unknown Mandarin CER rule"):
        load_scorer("paraformer_cer", model_dir=str(model_dir[0]), zh_rule="words")


def test_bad_items_are_nan(scorer):
    out = scorer.score(
        [
            AudioItem("notext", _noise(16000), 16000),
            AudioItem("en", _noise(16000), 16000, text="hello", language="en"),
            AudioItem("empty", np.zeros(0, np.float32), 16000, text="你好"),
            AudioItem("punct", _noise(16000), 16000, text="。！"),
            AudioItem("ok", _noise(16000), 16000, text="你好"),
        ]
    )
    for r in out[:4]:
        assert all(math.isnan(v) for v in r.values())
    assert math.isfinite(out[4][METRIC])


def test_missing_files_name_file_and_origin(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIMOE_WEIGHTS", str(tmp_path))
    with pytest.raises(ScorerUnavailable) as ei:
        load_scorer("paraformer_cer")
    msg = str(ei.value)
    assert str(tmp_path / DEFAULT_MODEL_DIR) in msg and f"https://modelscope.cn/models/{MODEL_ID}" in msg
    # a folder without model.pt names model.pt
    d = tmp_path / "partial"
    d.mkdir()
    for name in ("config.yaml", "tokens.json", "am.mvn"):
        (d / name).write_bytes((model_dir[0] / name).read_bytes())
    with pytest.raises(ScorerUnavailable, match="model.pt"):
        load_scorer("paraformer_cer", model_dir=str(d))


def test_checksum_error(model_dir):
    with pytest.raises(ChecksumError):
        load_scorer("paraformer_cer", model_dir=str(model_dir[0]), sha256="1" * 64)
