"""Seed-TTS-eval transcript normalisation."""

from __future__ import annotations

import string

import pytest

from evaluation.text import PUNCTUATION, ZH_PUNCTUATION, normalize, strip_punctuation, to_simplified


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


def test_mandarin_keeps_latin_words_digits_split():
    assert normalize("我用iPhone打电话", "zh") == "我 用 iphone 打 电 话"
    assert normalize("这是 OK 的, isn't it", "zh") == "这 是 ok 的 isn't it"
    assert normalize("2024年", "zh") == "2 0 2 4 年"


def test_bad_language():
    with pytest.raises(ValueError, match="unsupported language"):
        normalize("x", "fr")
