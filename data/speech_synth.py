"""Speech for the offline demo corpus: sentences from a registry package, spoken by Debian TTS voices.

Text: the music21 package ships two Project Gutenberg books as language-detection training data
(``music21/languageExcerpts/trainingData``): Jane Austen's *Lady Susan* (``en.txt``) and the Ming
anthology *Guose Tianxiang* (``cn.txt``, traditional characters). Both are public domain. Chinese
sentences are converted to simplified characters with OpenCC (``opencc-python-reimplemented``)
when it is installed.

Voices: Debian's ``festival`` with ``kal_diphone`` (festvox-kallpc16k) and ``espeak-ng`` English
variants; Mandarin by ``espeak-ng``'s ``cmn-latn-pinyin`` voice (the plain ``cmn`` voice of
espeak-ng 1.51 reads many dictionary entries' pinyin with English letter rules) with several
variants. A voice is a :class:`Voice`; ``resolve_voice`` accepts a built-in name (``"kal"``,
``"us-f2"``, ``"cmn-f2"``) or an ad-hoc ``"engine:voice[@key=value,...]"`` spec.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

FESTIVAL_KAL_LICENCE = (
    "festvox-kallpc16k licence (CMU/Edinburgh: free use, modification and redistribution with notice)"
)
ESPEAK_LICENCE = "GPL-3.0-or-later (espeak-ng-data)"
TEXT_SOURCES = {
    "en": (
        "music21:languageExcerpts/trainingData/en.txt",
        "public domain (Project Gutenberg: Jane Austen, Lady Susan; shipped in the music21 package)",
    ),
    "zh": (
        "music21:languageExcerpts/trainingData/cn.txt",
        "public domain (Project Gutenberg: Guose Tianxiang, Ming dynasty; shipped in the music21 package)",
    ),
}


@dataclass(frozen=True)
class Voice:
    name: str  # short speaker name used in ids and the ``speaker`` field
    engine: str  # "festival" | "espeak-ng"
    voice: str  # festival voice name or espeak-ng voice (+variant)
    language: str  # "en" | "zh"
    params: tuple[tuple[str, float], ...] = ()  # festival: f0, f0_std, stretch; espeak-ng: pitch, speed

    @property
    def source(self) -> str:
        return f"{self.engine}:{self.voice}"

    @property
    def licence(self) -> str:
        if self.engine == "festival":
            return (
                FESTIVAL_KAL_LICENCE
                if self.voice.startswith("kal")
                else f"festival voice {self.voice} (see its Debian package)"
            )
        return ESPEAK_LICENCE

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


def _v(name, engine, voice, lang, **params) -> Voice:
    return Voice(name, engine, voice, lang, tuple(sorted(params.items())))


BUILTIN_VOICES: dict[str, Voice] = {
    v.name: v
    for v in (
        _v("kal", "festival", "kal_diphone", "en"),
        _v("us-f2", "espeak-ng", "en-us+f2", "en", pitch=60, speed=165),
        _v("gb-m3", "espeak-ng", "en-gb+m3", "en", pitch=40, speed=160),
        _v("sc-f4", "espeak-ng", "en-gb-scotland+f4", "en", pitch=55, speed=150),
        _v("kal-hi", "festival", "kal_diphone", "en", f0=140, f0_std=22, stretch=0.92),
        _v("rp-m7", "espeak-ng", "en-gb-x-rp+m7", "en", pitch=35, speed=170),
        _v("us-f5", "espeak-ng", "en-us+f5", "en", pitch=70, speed=155),
        _v("cmn-m1", "espeak-ng", "cmn-latn-pinyin+m1", "zh", pitch=45, speed=150),
        _v("cmn-f2", "espeak-ng", "cmn-latn-pinyin+f2", "zh", pitch=65, speed=145),
        _v("cmn-m3", "espeak-ng", "cmn-latn-pinyin+m3", "zh", pitch=35, speed=160),
        _v("cmn-f4", "espeak-ng", "cmn-latn-pinyin+f4", "zh", pitch=75, speed=140),
        _v("cmn-m7", "espeak-ng", "cmn-latn-pinyin+m7", "zh", pitch=50, speed=155),
        _v("cmn-f5", "espeak-ng", "cmn-latn-pinyin+f5", "zh", pitch=60, speed=150),
    )
}
DEFAULT_EN_VOICES = ("kal", "us-f2", "gb-m3", "sc-f4", "kal-hi", "rp-m7", "us-f5")
DEFAULT_ZH_VOICES = ("cmn-f2", "cmn-m1", "cmn-f4", "cmn-m3", "cmn-f5", "cmn-m7")


def resolve_voice(spec: str, language: str) -> Voice:
    """A built-in voice name, or ``"festival:VOICE[@k=v,...]"`` / ``"espeak-ng:VOICE[@k=v,...]"``."""
    if spec in BUILTIN_VOICES:
        v = BUILTIN_VOICES[spec]
        if v.language != language:
            raise ValueError(f"voice {spec!r} is a {v.language} voice, not {language}")
        return v
    m = re.fullmatch(r"(festival|espeak-ng):([^@\s]+)(?:@(.*))?", spec)
    if not m:
        raise ValueError(
            f"unknown voice {spec!r}: not a built-in name ({', '.join(sorted(BUILTIN_VOICES))}) "
            "nor 'festival:VOICE' / 'espeak-ng:VOICE[@pitch=..,speed=..]'"
        )
    engine, voice, rest = m.groups()
    params = []
    for kv in filter(None, (rest or "").split(",")):
        k, _, val = kv.partition("=")
        params.append((k.strip(), float(val)))
    name = (
        re.sub(r"[^A-Za-z0-9]+", "-", f"{voice}-{'-'.join(f'{k}{v:g}' for k, v in params)}")
        .strip("-")
        .lower()
    )
    return Voice(name, engine, voice, language, tuple(sorted(params)))


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


def _training_text(lang_file: str) -> str:
    import music21

    p = Path(music21.__file__).resolve().parent / "languageExcerpts" / "trainingData" / lang_file
    return p.read_text(encoding="utf-8", errors="replace")


def _strip_gutenberg(text: str) -> str:
    lines = text.splitlines()
    if lines and lines[0].lstrip().startswith("***"):
        lines = lines[1:]
    out = []
    for ln in lines:
        if re.match(r"\s*(\*\*\*\s*)?end of (the|this) project gutenberg", ln, re.I):
            break
        out.append(ln)
    return "\n".join(out)


_ABBREV = {"Mr.": "Mister", "Mrs.": "Missus", "Dr.": "Doctor", "St.": "Saint", "Esq.": "Esquire"}


@lru_cache(maxsize=1)
def english_sentences(min_words: int = 5, max_words: int = 22) -> tuple[str, ...]:
    """Clean, speakable English sentences from *Lady Susan*, in book order, without repeats."""
    text = _strip_gutenberg(_training_text("en.txt"))
    for a, b in _ABBREV.items():
        text = text.replace(a, b)
    text = text.replace("--", ", ").replace('"', "").replace("_", "")
    text = re.sub(r"\s+", " ", text)
    out: list[str] = []
    seen = set()
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
        s = re.sub(r"\s+,", ",", s.strip())
        s = re.sub(r",\s*,", ",", s)
        if not re.fullmatch(r"[A-Z][A-Za-z ,;:'!?.\-]*[a-z][.!?]", s):
            continue
        words = s.split()
        if not (min_words <= len(words) <= max_words):
            continue
        if any(len(w) > 1 and w.strip(",;:.!?'").isupper() and w.strip(",;:.!?'") != "I" for w in words):
            continue  # headings and letter superscriptions
        if s not in seen:
            seen.add(s)
            out.append(s)
    return tuple(out)


_CJK = r"\u4e00-\u9fff"


@lru_cache(maxsize=1)
def mandarin_sentences(min_chars: int = 6, max_chars: int = 30) -> tuple[str, ...]:
    """Chinese sentences from *Guose Tianxiang*, simplified characters where OpenCC is installed."""
    text = _strip_gutenberg(_training_text("cn.txt"))
    text = re.sub(r"[\s\u3000]+", "", text)
    try:
        from opencc import OpenCC

        conv = OpenCC("t2s").convert
    except Exception:  # OpenCC is optional: espeak-ng reads traditional characters too
        conv = None
    out: list[str] = []
    seen = set()
    for s in re.findall(rf"[^。！？]*[。！？]", text):
        s = re.sub(rf"^[^{_CJK}]+", "", s)
        if not re.fullmatch(rf"[{_CJK}][{_CJK}，、]*[。！？]", s):
            continue
        n = len(re.findall(rf"[{_CJK}]", s))
        if not (min_chars <= n <= max_chars):
            continue
        if conv is not None:
            s = conv(s)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return tuple(out)


def espeak_reads_natively(text: str, voice: str = "cmn-latn-pinyin", timeout: float = 30.0) -> bool:
    """True when espeak-ng's phoneme output for ``text`` never switches language (``(en)``)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        return False
    r = subprocess.run(
        [exe, "-q", "-x", "-v", voice, "--", text],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode == 0 and bool(r.stdout.strip()) and "(" not in r.stdout


def select_sentences(language: str, n: int, seed: int) -> list[str]:
    """``n`` sentences for ``language`` ("en" | "zh"), a seeded sample of the book's sentences."""
    pool = list(english_sentences() if language == "en" else mandarin_sentences())
    random.Random(f"demo-text:{seed}:{language}").shuffle(pool)
    if language != "zh":
        return pool[:n]
    out = []
    for s in pool:
        if len(out) >= n:
            break
        if espeak_reads_natively(s):
            out.append(s)
    return out


# --------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------


class SynthesisError(RuntimeError):
    pass


@lru_cache(maxsize=None)
def check_voice(voice: Voice) -> str | None:
    """None when the voice can speak here, else the reason it cannot."""
    if voice.engine == "festival":
        if shutil.which("text2wave") is None:
            return "festival is not installed (Debian package festival)"
        name = voice.voice.removesuffix("_diphone")
        found = [p for p in Path("/usr/share/festival/voices").glob("*/*") if p.name in (voice.voice, name)]
        if not found:
            return f"festival voice {voice.voice} is not installed (/usr/share/festival/voices)"
    elif voice.engine == "espeak-ng":
        if shutil.which("espeak-ng") is None:
            return "espeak-ng is not installed (Debian package espeak-ng)"
    else:
        return f"unknown TTS engine {voice.engine!r}"
    try:
        y, _ = synthesize("Hello." if voice.language == "en" else "你好。", voice, timeout=60)
    except Exception as e:
        return f"{voice.source} cannot synthesize: {e}"
    if y.size == 0:
        return f"{voice.source} produced no audio"
    return None


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return y.mean(axis=1).astype(np.float32), int(sr)


def synthesize(text: str, voice: Voice, *, timeout: float = 120.0) -> tuple[np.ndarray, int]:
    """Speak ``text``; returns (mono float32 samples, native sample rate). Raises SynthesisError."""
    with tempfile.TemporaryDirectory(prefix="demo-tts-") as td:
        tdir = Path(td)
        txt = tdir / "text.txt"
        wav = tdir / "out.wav"
        if voice.engine == "festival":
            txt.write_text(text + "\n", encoding="latin-1", errors="replace")
            cmd = ["text2wave", "-o", str(wav), "-eval", f"(voice_{voice.voice})"]
            f0 = voice.param("f0")
            if f0 is not None:
                std = voice.param("f0_std", 20)
                cmd += [
                    "-eval",
                    f"(set! int_lr_params '((target_f0_mean {f0:g}) (target_f0_std {std:g}) "
                    f"(model_f0_mean 170) (model_f0_std 34)))",
                ]
            stretch = voice.param("stretch")
            if stretch is not None:
                cmd += ["-eval", f"(Parameter.set 'Duration_Stretch {stretch:g})"]
            cmd.append(str(txt))
        elif voice.engine == "espeak-ng":
            txt.write_text(text + "\n", encoding="utf-8")
            cmd = ["espeak-ng", "-v", voice.voice, "-w", str(wav)]
            if voice.param("pitch") is not None:
                cmd += ["-p", str(int(voice.param("pitch")))]
            if voice.param("speed") is not None:
                cmd += ["-s", str(int(voice.param("speed")))]
            cmd += ["-f", str(txt)]
        else:
            raise SynthesisError(f"unknown TTS engine {voice.engine!r}")
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SynthesisError(f"{voice.engine} timed out after {timeout:g} s") from None
        except FileNotFoundError as e:
            raise SynthesisError(f"{voice.engine} is not installed: {e}") from None
        msg = (r.stderr or r.stdout or "").strip()
        if r.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            raise SynthesisError(f"{voice.engine} failed (rc={r.returncode}): {msg[-300:] or 'no output'}")
        try:
            return _read_wav(wav)
        except Exception as e:
            raise SynthesisError(f"unreadable {voice.engine} output: {e}") from None
