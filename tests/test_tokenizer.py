"""TextTokenizer: trained byte-level BPE, local tokenizer.json loading, specials, caching."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from unimoe.config import TokenizerConfig
from unimoe.special_tokens import (AUDIO_START, EOT, PAD, SPECIAL_TOKENS, SPEECH_END, SPEECH_START, VIDEO_PAD)
from unimoe.tokenizer import MIN_TRAINED_VOCAB, TextTokenizer, tokenizer_fingerprint, train_or_load_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A calm piano melody with soft strings and a slow tempo.",
    "Upbeat electronic dance music with a heavy bass line and bright synths.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "今天天气很好，我们一起去公园散步吧。",
    "这是一段轻快的钢琴曲，节奏明快，适合早晨听。",
    "人工智能正在改变我们的生活方式。",
    "语音合成系统需要清晰自然的发音。",
] * 5
VOCAB = 400
ROUND_TRIP = [
    "Hello, world! This is a test of the tokenizer.",
    "今天天气很好，我们一起去公园散步吧。",
    "Mixed 中文 and English, numbers 12345 and punctuation?!",
    "  leading and trailing spaces  \n\ttabs and newlines\n",
    "Unseen scripts: Ελληνικά, العربية, हिन्दी, emoji 🎵🎹, accents: café naïve",
    "",
]


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer.train(CORPUS, VOCAB)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_no_unknowns_and_merges_learned(tok):
    # Byte-level: unseen characters become byte tokens, never an <unk>; seen text compresses.
    text = "人工智能 🎵"
    assert tok.decode(tok.encode(text)) == text
    seen = CORPUS[0]
    assert len(tok.encode(seen)) < 0.75 * len(seen.encode("utf-8"))


def test_specials_are_single_ids_and_never_split(tok):
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for t in SPECIAL_TOKENS:
        assert tok.encode(t) == [tok.token_id(t)]
    text = f"{SPEECH_START}Hello 你好{SPEECH_END}{PAD}{PAD}"
    ids = tok.encode(text)
    assert ids[0] == tok.token_id(SPEECH_START) and ids[-3:] == [tok.token_id(SPEECH_END), tok.pad_id, tok.pad_id]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "Hello 你好"
    # nothing is added automatically
    assert tok.eot_id not in tok.encode("plain text")
    # untrusted text: markers are plain characters, decoded back verbatim
    plain = tok.encode(text, allow_special=False)
    assert not set(plain) & set(tok.special_ids.values())
    assert tok.decode(plain) == text
    assert tok.encode(text) == ids  # the switch does not stick


def test_token_id_errors_and_ids(tok):
    assert tok.pad_id == tok.token_id(PAD) and tok.eot_id == tok.token_id(EOT)
    with pytest.raises(KeyError, match="not a special token"):
        tok.token_id("<|nope|>")
    with pytest.raises(KeyError):
        tok.token_id("the")  # ordinary tokens are not specials
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.decode([tok.vocab_size + 5])


def test_vocab_size_bound(tok):
    assert MIN_TRAINED_VOCAB <= tok.vocab_size <= VOCAB
    assert len(tok) == tok.vocab_size
    small = TextTokenizer.train(CORPUS, MIN_TRAINED_VOCAB)
    assert small.vocab_size == MIN_TRAINED_VOCAB
    with pytest.raises(ValueError, match="too small"):
        TextTokenizer.train(CORPUS, MIN_TRAINED_VOCAB - 1)


def test_training_is_deterministic(tok, tmp_path):
    again = TextTokenizer.train(iter(CORPUS), VOCAB)  # any iterable
    assert again.backend.to_str() == tok.backend.to_str()
    # also across processes (Rust hash maps are seeded per process)
    script = (
        "import hashlib, json, sys; from unimoe.tokenizer import TextTokenizer; "
        "corpus, vocab = json.load(sys.stdin); "
        "print(hashlib.sha256(TextTokenizer.train(corpus, vocab).backend.to_str().encode()).hexdigest())"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, input=json.dumps([CORPUS, VOCAB]),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashlib.sha256(tok.backend.to_str().encode()).hexdigest()


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path / "sub" / "tokenizer.json")
    assert not list(path.parent.glob(".*.tmp"))
    loaded = TextTokenizer.load(path)
    assert loaded.vocab_size == tok.vocab_size and loaded.special_ids == tok.special_ids
    for text in ROUND_TRIP:
        assert loaded.encode(text) == tok.encode(text)


def _qwen_style_json(path: Path) -> Tokenizer:
    """A tiny tokenizer.json in Qwen2.5's layout (NFC, regex split + byte-level BPE) that declares
    some of its own specials but none of our markers except <|endoftext|> and <|video_pad|>."""
    qwen_regex = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=350, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    t.add_special_tokens([AddedToken(s, special=True, normalized=False)
                          for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", VIDEO_PAD]])
    path.write_text(t.to_str())
    return t


def test_loading_a_qwen_style_file_adds_missing_markers(tmp_path):
    raw = _qwen_style_json(tmp_path / "tokenizer.json")
    assert raw.token_to_id(AUDIO_START) is None
    tok = TextTokenizer.load(tmp_path / "tokenizer.json")
    # existing specials keep their ids; the missing markers are appended as special tokens
    assert tok.eot_id == raw.token_to_id(EOT) and tok.token_id(VIDEO_PAD) == raw.token_to_id(VIDEO_PAD)
    assert tok.token_id("<|im_start|>") == raw.token_to_id("<|im_start|>")
    n_missing = len(SPECIAL_TOKENS) - 2
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True) + n_missing
    added = sorted(tok.token_id(t) for t in SPECIAL_TOKENS if t not in (EOT, VIDEO_PAD))
    assert added == list(range(raw.get_vocab_size(with_added_tokens=True), tok.vocab_size))
    for t in SPECIAL_TOKENS:
        assert tok.encode(t) == [tok.token_id(t)]
    for text in ROUND_TRIP:
        assert tok.encode(text) == raw.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    text = f"{AUDIO_START}café{SPEECH_END}"
    assert tok.decode(tok.encode(text)) == text
    # the file on disk is left alone
    assert AUDIO_START not in (tmp_path / "tokenizer.json").read_text()


def test_missing_path_errors(tmp_path):
    missing = tmp_path / "nowhere" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.json"):
        TextTokenizer.load(missing)
    with pytest.raises(FileNotFoundError, match="nowhere/tokenizer.json"):
        TextTokenizer.from_config(TokenizerConfig(path=str(missing)), corpus_texts=CORPUS)


def test_from_config_uses_path_when_set(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer.json")
    got = TextTokenizer.from_config(TokenizerConfig(path=str(path), trained_vocab_size=999))
    assert got.backend.to_str() == tok.backend.to_str()


def test_from_config_trains_and_caches(tok, tmp_path):
    cfg = TokenizerConfig(trained_vocab_size=VOCAB)
    cache = tmp_path / "cache" / "tokenizer.json"
    with pytest.raises(ValueError, match="pass corpus_texts"):
        TextTokenizer.from_config(cfg, cache_path=cache)
    trained = TextTokenizer.from_config(cfg, corpus_texts=iter(CORPUS), cache_path=cache)
    assert cache.is_file() and trained.backend.to_str() == tok.backend.to_str()
    meta = json.loads((cache.parent / "tokenizer.json.meta.json").read_text())
    assert meta["trained_vocab_size"] == VOCAB
    # cache hit without a corpus, and with the same corpus
    assert TextTokenizer.from_config(cfg, cache_path=cache).backend.to_str() == tok.backend.to_str()
    mtime = cache.stat().st_mtime_ns
    TextTokenizer.from_config(cfg, corpus_texts=CORPUS, cache_path=cache)
    assert cache.stat().st_mtime_ns == mtime
    # a stale cache is never silently reused
    smaller = TokenizerConfig(trained_vocab_size=300)
    with pytest.raises(ValueError, match="stale.*vocab size 400"):
        TextTokenizer.from_config(smaller, cache_path=cache)
    retrained = TextTokenizer.from_config(smaller, corpus_texts=CORPUS, cache_path=cache)
    assert retrained.vocab_size <= 300
    other = TextTokenizer.from_config(smaller, corpus_texts=CORPUS[:8], cache_path=cache)
    assert json.loads((cache.parent / "tokenizer.json.meta.json").read_text())["corpus_sha256"] != meta["corpus_sha256"]
    assert other.backend.to_str() == TextTokenizer.train(CORPUS[:8], 300).backend.to_str()
    # without a cache path it just trains
    assert TextTokenizer.from_config(cfg, corpus_texts=CORPUS).backend.to_str() == tok.backend.to_str()


def test_train_or_load_fits_on_kept_rows_sorted_by_id_and_reuses_the_cache(tmp_path):
    """Fitting on manifest-like rows: only ``kept`` rows with text count, in id order, so the cache (keyed
    by the corpus hash) is reused untouched when the same rows come in another order; the fingerprint
    is the SHA-256 of the saved tokenizer.json."""
    from types import SimpleNamespace as Row

    rows = [Row(id=f"r{i:02d}", status="kept", text=t) for i, t in enumerate(CORPUS)]
    noise = [Row(id="a-filtered", status="filtered", text="zzzz qqqq " * 50),
             Row(id="b-empty", status="kept", text=None)]
    cfg, cache = TokenizerConfig(trained_vocab_size=VOCAB), tmp_path / "tokenizer.json"
    tok = train_or_load_tokenizer(cfg, list(reversed(rows)) + noise, cache)
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(TextTokenizer.train(CORPUS, VOCAB))
    assert tokenizer_fingerprint(tok) == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert tokenizer_fingerprint("abc") == "abc"
    mtime = cache.stat().st_mtime_ns
    again = train_or_load_tokenizer(cfg, rows, cache)
    assert cache.stat().st_mtime_ns == mtime and tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
