"""LAION-CLAP scorer built fully offline: random-weights CLAP checkpoints in LAION's release format
(DDP ``module.`` prefix, ``position_ids`` entry), a tiny roberta-compatible byte-level BPE tokenizer
and a small roberta text branch (CLAP's 768-wide interface, one layer), loaded through the registry.
The embeddings are checked against the package's own ``CLAP_Module`` methods and the score against
an independent cosine."""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.scorers import AudioItem, ScorerUnavailable, available_scorers, load_scorer
from unimoe.common.audio import resample
from unimoe.io import sha256_file

pytest.importorskip("laion_clap")
from evaluation.scorers import clap as C

TEXT_CFG = {
    "vocab_size": 320,
    "hidden_size": 768,  # fixed by CLAP's text projection
    "num_hidden_layers": 1,
    "num_attention_heads": 12,
    "intermediate_size": 256,
    "max_position_embeddings": 80,  # 77 tokens + roberta's padding offset
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
}
CAPTIONS = [
    "a calm piano melody in c major",
    "energetic rock with loud drums and distorted guitar",
    "ambient synth pads and soft rain",
    "a string quartet playing a slow waltz",
]
MUSIC = "music_audioset_epoch_15_esc_90.14"
FUSION = "630k-audioset-fusion-best"


class NotAWeight:  # a pickled class instance: weights_only=True must refuse it
    pass


def clip(seconds: float, seed: int, sr: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    return (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (220 + 60 * seed) * t)).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def tokenizer_dir(store) -> Path:
    """A roberta-style byte-level BPE (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4),
    saved both as ``tokenizer.json`` and as ``vocab.json`` + ``merges.txt`` (roberta-base ships both)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TEXT_CFG["vocab_size"],
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CAPTIONS * 10, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
    )
    folder = store / "roberta-tiny"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))
    return folder


def write_checkpoint(store: Path, name: str, seed: int) -> tuple[Path, str]:
    """A random CLAP of ``name``'s architecture saved as LAION releases it."""
    torch.manual_seed(seed)
    model, _ = C.build_clap_model(C.CHECKPOINTS[name], C._text_config(TEXT_CFG))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.text_branch.embeddings.position_ids"] = torch.arange(TEXT_CFG["max_position_embeddings"])[
        None
    ]
    path = store / "laion_clap" / f"{name}.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"epoch": 15, "name": name, "state_dict": state}, path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def music_ckpt(store) -> tuple[Path, str]:
    return write_checkpoint(store, MUSIC, seed=0)


@pytest.fixture(scope="module")
def scorer(music_ckpt, tokenizer_dir):
    path, digest = music_ckpt
    return load_scorer(
        "clap",
        weights_path=str(path),
        sha256=digest,
        tokenizer_path=str(tokenizer_dir),
        text_config=TEXT_CFG,
        batch_size=2,
    )


def package_view(s) -> SimpleNamespace:
    """What ``laion_clap.CLAP_Module``'s embedding methods read from ``self``."""
    return SimpleNamespace(
        model=s.model, model_cfg=s.model_cfg, enable_fusion=s.checkpoint.enable_fusion, tokenizer=None
    )


# ---- the checkpoint table ------------------------------------------------------------------------------


def test_checkpoint_architectures_and_default():
    assert C.DEFAULT_CHECKPOINT == "music_audioset_epoch_15_esc_90.14"  # audiocraft's MusicGen config
    assert {n: (c.amodel, c.enable_fusion) for n, c in C.CHECKPOINTS.items()} == {
        "630k-audioset-fusion-best": ("HTSAT-tiny", True),
        "music_audioset_epoch_15_esc_90.14": ("HTSAT-base", False),
        "music_speech_audioset_epoch_15_esc_89.98": ("HTSAT-base", False),
    }
    assert "clap" in available_scorers()
    with pytest.raises(ValueError, match="unknown CLAP checkpoint"):
        load_scorer("clap", checkpoint="630k-best")


# ---- the loaded (random-weights) scorer ----------------------------------------------------------------


def test_embeddings_match_the_package_methods(scorer):
    from laion_clap.hook import CLAP_Module

    assert scorer.checkpoint.name == MUSIC and scorer.checkpoint.amodel == "HTSAT-base"
    view = package_view(scorer)
    wavs = np.stack([clip(3.0, 1, C.SAMPLE_RATE), clip(3.0, 2, C.SAMPLE_RATE)])  # <= 10 s: no random crop
    ours = scorer.embed_audio(list(wavs))
    ref = CLAP_Module.get_audio_embedding_from_data(view, wavs)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)

    def hf_tokenize(texts):  # CLAP_Module.tokenizer with our local tokenizer
        return scorer.tokenizer(
            texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
        )

    t_ours = scorer.embed_text(CAPTIONS[:3])
    t_ref = CLAP_Module.get_text_embedding(view, CAPTIONS[:3], tokenizer=hf_tokenize)
    np.testing.assert_allclose(t_ours, t_ref, atol=1e-5)
    assert t_ours.shape == (3, 512)
    assert not np.allclose(t_ours[0], t_ours[1])  # different captions, different embeddings


def test_score_is_the_cosine_of_the_embeddings(scorer):
    items = [
        AudioItem("a", clip(2.0, 3, 16_000), 16_000, text=CAPTIONS[0]),
        AudioItem("b", np.stack([clip(1.5, 4, 44_100), clip(1.5, 5, 44_100)]), 44_100, text=CAPTIONS[1]),
        AudioItem("c", clip(12.0, 6, 32_000), 32_000, text=CAPTIONS[2]),  # > 10 s: seeded crop
        AudioItem("no-text", clip(1.0, 7, 16_000), 16_000, text=None),
        AudioItem("empty", np.zeros(0, np.float32), 16_000, text=CAPTIONS[3]),
    ]
    rng_state = np.random.get_state()
    rows = scorer.score(items)
    assert np.random.get_state()[1].tolist() == rng_state[1].tolist()  # the global RNG is left alone
    assert all(set(r) == {"clap"} for r in rows)
    assert math.isnan(rows[3]["clap"]) and math.isnan(rows[4]["clap"])

    mono48 = [
        resample(items[0].wav, 16_000, 48_000),
        resample(items[1].wav.mean(axis=0), 44_100, 48_000),
        resample(items[2].wav, 32_000, 48_000),
    ]
    expected = cosine(scorer.embed_audio(mono48), scorer.embed_text(CAPTIONS[:3]))
    got = np.array([r["clap"] for r in rows[:3]])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.all(np.abs(got) <= 1.0)

    # deterministic, whatever the call, order or batch
    again = scorer.score([items[2], items[0]])
    assert again[0]["clap"] == pytest.approx(rows[2]["clap"], abs=1e-6)
    assert again[1]["clap"] == pytest.approx(rows[0]["clap"], abs=1e-6)


def test_version_records_the_checkpoint(scorer, music_ckpt):
    assert scorer.version == f"{MUSIC}+sha256:{music_ckpt[1][:12]}"
    info = scorer.info()
    assert info["checkpoint"] == MUSIC and info["amodel"] == "HTSAT-base" and info["enable_fusion"] is False
    assert info["weights_sha256"] == music_ckpt[1] and info["sample_rate"] == 48_000
    assert scorer.metrics == {"clap": "higher"}


def test_tokenizer_from_vocab_and_merges(tokenizer_dir, tmp_path):
    import shutil

    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / f, tmp_path / f)
    a = C.load_tokenizer(tokenizer_dir, vocab_size=TEXT_CFG["vocab_size"], pad_token_id=1)
    b = C.load_tokenizer(tmp_path, vocab_size=TEXT_CFG["vocab_size"], pad_token_id=1)
    enc_a = a(CAPTIONS, padding="max_length", truncation=True, max_length=77)["input_ids"]
    enc_b = b(CAPTIONS, padding="max_length", truncation=True, max_length=77)["input_ids"]
    assert enc_a == enc_b
    assert enc_a[0][0] == 0 and 2 in enc_a[0] and enc_a[0][-1] == 1  # <s> ... </s> <pad>...


def test_fusion_checkpoint(store, tokenizer_dir):
    """The fusion model (HTSAT-tiny): a clip longer than 10 s takes the fusion path (global view +
    three random chunks); the chunks come from the seeded RNG, so the package's method with numpy
    seeded the same way gives the same embedding."""
    from laion_clap.hook import CLAP_Module

    path, digest = write_checkpoint(store, FUSION, seed=1)
    s = load_scorer(
        "clap",
        checkpoint=FUSION,
        weights_path=str(path),
        sha256=digest,
        tokenizer_path=str(tokenizer_dir),
        text_config=TEXT_CFG,
    )
    assert s.checkpoint.enable_fusion and s.checkpoint.amodel == "HTSAT-tiny"
    long48 = clip(11.0, 8, C.SAMPLE_RATE)
    short48 = clip(2.0, 9, C.SAMPLE_RATE)
    ours = s.embed_audio([short48, long48])
    state = np.random.get_state()
    try:
        np.random.seed(s.crop_seed)
        ref_long = CLAP_Module.get_audio_embedding_from_data(package_view(s), long48[None])
        ref_short = CLAP_Module.get_audio_embedding_from_data(package_view(s), short48[None])
    finally:
        np.random.set_state(state)
    np.testing.assert_allclose(ours[1], ref_long[0], atol=1e-5)
    np.testing.assert_allclose(ours[0], ref_short[0], atol=1e-5)
    rows = s.score(
        [AudioItem("l", long48, 48_000, text=CAPTIONS[0]), AudioItem("s", short48, 48_000, text=CAPTIONS[1])]
    )
    assert all(np.isfinite(r["clap"]) for r in rows)
    assert s.score([AudioItem("l", long48, 48_000, text=CAPTIONS[0])])[0]["clap"] == pytest.approx(
        rows[0]["clap"], abs=1e-6
    )


# ---- failures ------------------------------------------------------------------------------------------


def test_missing_tokenizer_names_file_and_origin(music_ckpt, tmp_path):
    with pytest.raises(ScorerUnavailable) as e:
        load_scorer(
            "clap",
            weights_path=str(music_ckpt[0]),
            tokenizer_path=str(tmp_path / "roberta-base"),
            text_config=TEXT_CFG,
        )
    msg = str(e.value)
    assert str(tmp_path / "roberta-base" / "vocab.json") in msg and "tokenizer.json" in msg
    assert "https://huggingface.co/FacebookAI/roberta-base" in msg


def test_wrong_architecture_is_refused(store, tokenizer_dir, music_ckpt):
    # HTSAT-base weights under the name of the HTSAT-tiny fusion checkpoint
    with pytest.raises(ScorerUnavailable, match="does not fit"):
        load_scorer(
            "clap",
            checkpoint=FUSION,
            weights_path=str(music_ckpt[0]),
            tokenizer_path=str(tokenizer_dir),
            text_config=TEXT_CFG,
        )


def test_arbitrary_pickles_are_not_loaded(tmp_path, tokenizer_dir):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": NotAWeight()}, path)
    with pytest.raises(ScorerUnavailable, match="weights_only"):
        load_scorer("clap", weights_path=str(path), tokenizer_path=str(tokenizer_dir), text_config=TEXT_CFG)


def test_importing_laion_clap_keeps_the_numba_cache_setting(tmp_path):
    """laion_clap sets NUMBA_CACHE_DIR=/tmp/ when imported; the loader must not let that leak, nor let
    librosa's kernels be compiled into /tmp meanwhile (processes sharing one numba cache have crashed)."""
    import subprocess
    import sys

    cache = tmp_path / "numba-cache"
    code = ("import os\n"
            "from evaluation.scorers import clap as C\n"
            "C._import_laion_clap()\n"
            "import sys; assert 'laion_clap' in sys.modules\n"
            "print(os.environ.get('NUMBA_CACHE_DIR'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1], env={**{k: v for k, v in os.environ.items() if k != "UNIMOE_NUMBA_CACHE"},
                              "NUMBA_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(cache)
    # librosa's beat-tracking kernels were compiled into (and cached in) the caller's folder
    assert any(p.name.startswith("beat.__beat_track_dp") for p in cache.rglob("*.nbi"))
