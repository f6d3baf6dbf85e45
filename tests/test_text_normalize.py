"""Seed-TTS-eval transcript normalisation."""

from __future__ import annotations

import string

import pytest

from evaluation.text import (
    DEFAULT_ZH_RULE,
    PUNCTUATION,
    ZH_PUNCTUATION,
    normalize,
    normalize_pair,
    strip_punctuation,
    to_simplified,
)


def test_english_lowercase_punctuation_apostrophe():
    assert normalize("Hello, World! It's  a TEST.", "en") == "hello world it's a test"
    # hyphens and other ASCII punctuation are removed (joined), as in the reference
    assert normalize("A well-known (big) fact; 3.5% off?", "en") == "a wellknown big fact 35 off"
    assert normalize("  spaced \t out \n text  ", "en") == "spaced out text"
    assert normalize("", "en") == "" and normalize("?!...", "en") == ""


def test_typographic_quotes_removed_like_reference():
    # U+2019 is in zhon's punctuation, so the reference removes it; only the ASCII apostrophe stays
    assert normalize("Don\u2019t \u201cquote\u201d me", "en") == "dont quote me"


def test_every_ascii_punctuation_but_apostrophe_is_stripped():
    for ch in string.punctuation:
        expect = "a'b" if ch == "'" else "ab"
        assert strip_punctuation(f"a{ch}b") == expect, ch
    assert "'" not in PUNCTUATION


def test_mandarin_characters_split_and_punctuation():
    assert normalize("你好，世界！", "zh") == "你 好 世 界"
    assert normalize("「今天」天气：很好。", "zh") == "今 天 天 气 很 好"
    # ideographic space and fullwidth punctuation
    assert normalize("你好\u3000世界；（测试）", "zh") == "你 好 世 界 测 试"
    for ch in ZH_PUNCTUATION:
        assert normalize(f"好{ch}的", "zh") == "好 的", hex(ord(ch))


def test_mandarin_traditional_to_simplified():
    assert to_simplified("語音識別") == "语音识别"
    assert normalize("語音識別，測試。", "zh") == "语 音 识 别 测 试"


def test_mandarin_default_is_seed_tts_eval_every_character_a_token():
    # seed-tts-eval run_wer.py: " ".join(chars) after punctuation removal, no lower-casing, so Latin
    # letters are single tokens with their case, like digits and hanzi
    assert DEFAULT_ZH_RULE == "seed-tts-eval"
    assert normalize("我在NBA打球。", "zh") == "我 在 N B A 打 球"
    assert normalize("我用iPhone打电话", "zh") == "我 用 i P h o n e 打 电 话"
    assert normalize("这是 OK 的, isn't it", "zh") == "这 是 O K 的 i s n ' t i t"
    assert normalize("2024年", "zh") == "2 0 2 4 年"


def test_mandarin_pair_converts_the_hypothesis_only():
    # seed-tts-eval converts the Paraformer output with zhconv(zh-cn) and scores the reference as written
    assert normalize_pair("我們在NBA打球。", "我們在nba打球", "zh") == ("我 們 在 N B A 打 球", "我 们 在 n b a 打 球")
    # English is unaffected by the Mandarin rule
    assert normalize_pair("It's OK.", "its ok", "en") == ("it's ok", "its ok")


def test_mandarin_latin_words_rule_is_an_option():
    # the earlier rule: both sides t2s, a Latin run is one lower-cased word
    rule = "t2s-both-latin-words"
    assert normalize("我用iPhone打电话", "zh", zh_rule=rule) == "我 用 iphone 打 电 话"
    assert normalize("这是 OK 的, isn't it", "zh", zh_rule=rule) == "这 是 ok 的 isn't it"
    assert normalize("2024年", "zh", zh_rule=rule) == "2 0 2 4 年"
    assert normalize_pair("我們在NBA打球。", "我們在nba打球", "zh", zh_rule=rule) == ("我 们 在 nba 打 球",) * 2
    with pytest.raises(ValueError, match="unknown Mandarin CER rule"):
        normalize("x", "zh", zh_rule="words")


def test_bad_language():
    with pytest.raises(ValueError, match="unsupported language"):
        normalize("x", "fr")
