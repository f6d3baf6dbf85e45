"""Offline demo corpus builder: a small, real corpus for all four tasks, made without network.

Kept whole (~600 lines): the config, item builders and caching loop share one config and code fingerprint.

- **Music** (``t2m``): scores from music21's bundled corpus, reduced to notes at a seeded tempo with
  seeded General MIDI programs, written to MIDI and rendered with Debian's ``fluidsynth`` and the
  ``fluid-soundfont-gm`` soundfont, then cut into fixed ``clip_seconds`` clips.
- **Video-to-music** (``v2m``): a seeded subset of the clips also gets a piano-roll video of its
  notes, synchronised with the clip audio (video-only MP4, same duration as the clip).
- **Speech** (``en_tts``, ``zh_tts``): sentences from two public-domain Project Gutenberg books
  shipped inside the music21 package, spoken by ``festival`` (kal_diphone) and ``espeak-ng``
  voices (English) and ``espeak-ng`` Mandarin voices; utterance ``i`` is spoken by voice
  ``i % n_voices``.

Layout of ``out_dir``::

    metadata.jsonl          one row per clip/utterance, sorted by id (fields: see ROW_FIELDS)
    failures.jsonl          one {"id", "task", "source", "stage", "reason"} per thing that failed
    skipped.jsonl           things left out on purpose (short tails, silent clips, truncated scores)
    summary.json            counts and hours per task
    music/scores/<slug>.mid the whole score's MIDI (what was rendered)
    music/audio/<id>.wav    clip audio (PCM 16-bit)
    music/midi/<id>.mid     the clip's notes as MIDI, times relative to the clip start
    video/<id>.mp4          piano-roll video of a v2m clip
    speech/{en,zh}/<id>.wav utterances at the voice's native sample rate (or ``speech_sample_rate``)
    .state/                 per-item records that make a re-run skip finished work

Every file is written atomically (temporary file + rename). Each item (a score, an utterance, a
video) records its outputs in ``.state/`` after they are complete, so a killed build started again
redoes only unfinished or damaged items (a missing or resized file) and ends with the same bytes:
everything is deterministic given the config (seeded choices, no timestamps in outputs). Bad inputs
never stop the build; they get a failures.jsonl record with a reason.

Run: ``python -m data.demo_corpus OUT_DIR [--small] [--seed N]``. This module never imports Prefect.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from data import general_midi, midi_synth, resumable_build
from data import music_render as mr
from data import speech_synth as ss
from data import video_render as vr
from data.resumable_build import (
    ItemState, Progress, build_lock, clean_stale_temps, prune_unowned, run_items, write_bytes, write_if_changed,
    write_text,
)  # fmt: skip
from unimoe.common.files import atomic_path


def _code_fingerprint() -> str:
    """Hash of the builder's own source, so a changed builder never reuses items made by an old one."""
    h = hashlib.sha256()
    for f in (mr.__file__, general_midi.__file__, midi_synth.__file__, ss.__file__, vr.__file__,
              resumable_build.__file__, __file__):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


_CODE = _code_fingerprint()

ROW_FIELDS = ("id", "task", "language", "audio", "text", "speaker", "video", "licence", "source", "midi",
              "instruments", "tempo_bpm", "key", "sample_rate", "duration", "split")
FAILURE_FIELDS = ("id", "task", "source", "stage", "reason")
SKIPPED_FIELDS = ("id", "source", "kind", "reason", "seconds")
# the builder's own folders: stale temporary files are cleaned there, files no item owns pruned
_OUTPUT_DIRS = ("music", "speech", "video", ".state")
_PRUNED_DIRS = ("music", "speech", "video", ".state/music", ".state/speech", ".state/video", ".state/texts")

# Short, public-domain pieces from music21's corpus that parse in about a second or less.
DEFAULT_SCORE_POOL: tuple[str, ...] = (
    "bach/bwv66.6", "bach/bwv1.6", "bach/bwv10.7", "bach/bwv26.6", "bach/bwv40.8", "bach/bwv86.6",
    "bach/bwv153.1", "bach/bwv244.10",
    "beethoven/opus18no1/movement3.mxl",
    "chopin/mazurka06-2",
    "cpebach/h186",
    "handel/rinaldo/Lascia_chio_pianga",
    "haydn/opus1no1/movement2", "haydn/opus1no1/movement4",
    "johnson_j_r/lift_every_voice",
    "joplin/maple_leaf_rag",
    "leadSheet/fosterBrownHair",
    "liliuokalani/aloha_oe",
    "lusitano/allor_che_ignuda",
    "mozart/k155/movement2", "mozart/k156/movement4", "mozart/k80/movement3", "mozart/k545/movement1_exposition",
    "palestrina/Agnus_00",
    "schubert/Lindenbaum",
    "schumann_clara/polonaise_op1n1",
    "schumann_robert/opus41no1/movement2",
    "verdi/laDonnaEMobile",
)

MUSIC_LICENCE = ("composition in the public domain; score encoding from the music21 corpus (freely distributable, "
                 "music21 BSD-3-Clause); rendered with fluid-soundfont-gm (MIT)")


@dataclass(frozen=True)
class DemoCorpusConfig:
    """Sizes and settings of the demo corpus. ``small()`` is for tests, ``default()`` for the demo."""

    n_music_scores: int = 24
    clip_seconds: float = 20.0
    max_score_seconds: float | None = 180.0  # longer scores are cut here (recorded in skipped.jsonl)
    tail_policy: str = "pad"  # tails >= min_tail_fraction of a clip: "pad" (to a full clip), "keep" (short), "drop"
    min_tail_fraction: float = 0.5  # shorter tails are always dropped (recorded in skipped.jsonl)
    n_video: int = 32
    n_en_sentences: int = 300
    n_zh_sentences: int = 300
    voices_per_language: int = 4
    en_voices: tuple[str, ...] = ss.DEFAULT_EN_VOICES  # built-in names or "engine:voice[@k=v]" specs
    zh_voices: tuple[str, ...] = ss.DEFAULT_ZH_VOICES
    seed: int = 0
    test_fraction: float = 0.1  # per task, a seeded share of items held out as split "test" (benchmark, NLL)
    music_sample_rate: int = 44100
    music_channels: int = 1  # 1: downmix fluidsynth's stereo; 2: keep it
    speech_sample_rate: int | None = None  # None: each voice's native rate (festival 16 kHz, espeak-ng 22.05 kHz)
    tempo_range: tuple[int, int] = (60, 150)  # quarter-note bpm, one seeded tempo per score
    music_scores: tuple[str, ...] | None = None  # explicit music21 corpus names; None: seeded pick from score_pool
    score_pool: tuple[str, ...] = DEFAULT_SCORE_POOL
    silence_dbfs: float = -50.0  # clips/utterances whose RMS is below this are not kept
    video_fps: int = 10
    video_size: int = 128
    video_window_seconds: float = 4.0
    video_codec: str = "libx264"
    soundfont: str | None = None  # None: Debian's FluidR3_GM.sf2
    workers: int = 2
    timeout_s: float = 300.0  # per external command

    @classmethod
    def default(cls, **overrides: Any) -> "DemoCorpusConfig":
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "DemoCorpusConfig":
        base = dict(n_music_scores=2, clip_seconds=10.0, max_score_seconds=30.0, n_video=2, n_en_sentences=4,
                    n_zh_sentences=4, voices_per_language=2)
        base.update(overrides)
        return cls(**base)

    def validate(self) -> None:
        if not (self.clip_seconds > 0 and math.isfinite(self.clip_seconds)):
            raise ValueError(f"clip_seconds must be positive, got {self.clip_seconds}")
        if self.tail_policy not in ("pad", "keep", "drop"):
            raise ValueError(f"tail_policy must be pad, keep or drop, got {self.tail_policy!r}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not 0 <= self.min_tail_fraction <= 1:
            raise ValueError("min_tail_fraction must be in [0, 1]")
        if self.music_channels not in (1, 2):
            raise ValueError("music_channels must be 1 or 2")
        if self.video_size % 2 or self.video_size < 16:
            raise ValueError("video_size must be even and >= 16")
        for n in ("n_music_scores", "n_video", "n_en_sentences", "n_zh_sentences", "voices_per_language", "workers"):
            if getattr(self, n) < 0:
                raise ValueError(f"{n} must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _key(*parts: Any) -> str:
    payload = [_CODE, *parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _jsonl(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows)


def _write_wav(path: Path, y: np.ndarray, sr: int) -> None:
    import soundfile as sf

    y = np.clip(np.nan_to_num(y, nan=0.0), -1.0, 1.0)
    pcm = np.round(y * 32767.0).astype("<i2")
    with atomic_path(path) as tmp:
        sf.write(str(tmp), pcm, sr, format="WAV", subtype="PCM_16")


def _rms_dbfs(y: np.ndarray) -> float:
    if y.size == 0:
        return -math.inf
    r = float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))
    return 20 * math.log10(r) if r > 0 else -math.inf


def score_slug(name: str) -> str:
    base, num = mr.split_name(name)
    if os.path.isabs(base):  # a score file outside the corpus: name it by its file name
        base = Path(base).name
    base = re.sub(r"\.(mxl|xml|musicxml|krn|abc|mid|midi)$", "", base, flags=re.I)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base.replace("/", "_")).strip("-")
    return f"{slug}-p{(num or 0):03d}"


def select_scores(cfg: DemoCorpusConfig) -> list[str]:
    """The scores to render: ``music_scores`` as given, else a seeded pick that spreads composers."""
    if cfg.music_scores is not None:
        return list(dict.fromkeys(cfg.music_scores))
    groups: dict[str, list[str]] = {}
    for n in sorted(set(cfg.score_pool)):
        groups.setdefault(n.split("/")[0], []).append(n)
    return _spread_pick(groups, cfg.n_music_scores, random.Random(f"demo-scores:{cfg.seed}"))


def _spread_pick(groups: dict[str, list[str]], n: int, rng: random.Random) -> list[str]:
    """Up to ``n`` items, round-robin over the groups in a seeded order, each group seeded-shuffled."""
    order = sorted(groups)
    rng.shuffle(order)
    pools = {g: sorted(groups[g]) for g in order}
    for g in order:
        rng.shuffle(pools[g])
    picked: list[str] = []
    while len(picked) < n and any(pools.values()):
        for g in order:
            if pools[g] and len(picked) < n:
                picked.append(pools[g].pop(0))
    return picked


def select_video_clips(clip_ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded pick of ``n`` clips for v2m that spreads over scores (round-robin in seeded order)."""
    groups: dict[str, list[str]] = {}
    for cid in sorted(clip_ids):
        groups.setdefault(cid.rsplit("-c", 1)[0], []).append(cid)
    return sorted(_spread_pick(groups, n, random.Random(f"demo-v2m:{seed}")))


def _failure(id_: str | None, task: str | None, source: str, stage: str, reason: str) -> dict:
    return {"id": id_, "task": task, "source": source, "stage": stage, "reason": reason}


# --------------------------------------------------------------------------------------------
# Music
# --------------------------------------------------------------------------------------------


def _music_key(cfg: DemoCorpusConfig, name: str, soundfont: Path) -> str:
    return _key("music", name, cfg.seed, cfg.clip_seconds, cfg.max_score_seconds, cfg.tail_policy,
                cfg.min_tail_fraction, cfg.music_sample_rate, cfg.music_channels, list(cfg.tempo_range),
                str(soundfont), cfg.silence_dbfs)


def _parts_json(parts: list[mr.Part]) -> list[dict]:
    return [{"name": p.name, "program": p.program, "channel": p.channel, "notes": [list(n) for n in p.notes]}
            for p in parts]


def build_score(out: Path, cfg: DemoCorpusConfig, name: str, soundfont: Path) -> dict:
    """Render one score into clips. Returns the item record (rows, clips' notes, failures, skipped)."""
    source = f"music21:{name}"
    slug = score_slug(name)
    try:
        sn = mr.score_to_notes(name, seed=cfg.seed, tempo_range=cfg.tempo_range, max_seconds=cfg.max_score_seconds)
    except mr.ScoreError as e:
        return {"failures": [_failure(f"music-{slug}", "t2m", source, "convert", str(e))]}
    except Exception as e:  # music21 can fail in many ways on odd files
        return {"failures": [_failure(f"music-{slug}", "t2m", source, "convert", f"{type(e).__name__}: {e}")]}

    files: list[str] = []
    skipped: list[dict] = []
    if sn.truncated_from is not None:
        skipped.append({"id": f"music-{slug}", "source": source, "kind": "truncated",
                        "reason": f"score lasts {sn.truncated_from:.1f} s; only the first {cfg.max_score_seconds:g} s used",
                        "seconds": round(sn.truncated_from - sn.duration, 3)})
    score_midi = f"music/scores/{slug}.mid"
    write_bytes(out / score_midi, mr.midi_bytes(sn.parts, sn.bpm, tail_seconds=2.0, title=sn.title))
    files.append(score_midi)

    import soundfile as sf

    sr = cfg.music_sample_rate
    with tempfile.TemporaryDirectory(prefix="demo-render-") as td:
        wav = Path(td) / "full.wav"
        try:
            mr.render_midi(out / score_midi, wav, sample_rate=sr, soundfont=soundfont, timeout=cfg.timeout_s)
            y, got_sr = sf.read(str(wav), dtype="float32", always_2d=True)
        except Exception as e:
            return {"failures": [_failure(f"music-{slug}", "t2m", source, "render", f"{type(e).__name__}: {e}")],
                    "files": files}
    if got_sr != sr:
        return {"failures": [_failure(f"music-{slug}", "t2m", source, "render", f"fluidsynth wrote {got_sr} Hz, not {sr}")],
                "files": files}
    y = y.mean(axis=1, keepdims=True) if cfg.music_channels == 1 else (y if y.shape[1] == 2 else np.repeat(y, 2, 1))
    y = mr.peak_normalise(y, -1.0)

    clip_n = int(round(cfg.clip_seconds * sr))
    n_full = int(math.floor(sn.duration / cfg.clip_seconds + 1e-9))
    tail = sn.duration - n_full * cfg.clip_seconds
    windows = [(k * cfg.clip_seconds, clip_n) for k in range(n_full)]
    if tail > 1e-3:
        if tail + 1e-9 < cfg.min_tail_fraction * cfg.clip_seconds or cfg.tail_policy == "drop":
            skipped.append({"id": f"music-{slug}-c{n_full:02d}", "source": source, "kind": "short_tail",
                            "reason": f"tail of {tail:.2f} s after {n_full} full clip(s) of {cfg.clip_seconds:g} s "
                                      f"(policy {cfg.tail_policy}, minimum {cfg.min_tail_fraction:g} of a clip)",
                            "seconds": round(tail, 3)})
        else:
            keep_n = clip_n if cfg.tail_policy == "pad" else int(round(tail * sr))
            windows.append((n_full * cfg.clip_seconds, keep_n))

    rows: list[dict] = []
    clips: dict[str, dict] = {}
    failures: list[dict] = []
    for k, (t0, n) in enumerate(windows):
        cid = f"music-{slug}-c{k:02d}"
        i0 = int(round(t0 * sr))
        seg = y[i0:i0 + n]
        if len(seg) < n:
            seg = np.concatenate([seg, np.zeros((n - len(seg), seg.shape[1]), np.float32)])
        dur = n / sr
        level = _rms_dbfs(seg)
        if level < cfg.silence_dbfs:
            skipped.append({"id": cid, "source": source, "kind": "silent",
                            "reason": f"clip RMS {level:.1f} dBFS is below {cfg.silence_dbfs:g} dBFS", "seconds": round(dur, 3)})
            continue
        cparts = mr.clip_parts(sn.parts, t0, t0 + dur)
        instruments = mr.instrument_names(cparts)
        sharps = sn.sharps_at(t0)
        key = mr.estimate_key(cparts, sharps) or mr.estimate_key(sn.parts, sharps)
        try:
            audio_rel, midi_rel = f"music/audio/{cid}.wav", f"music/midi/{cid}.mid"
            _write_wav(out / audio_rel, seg if seg.shape[1] > 1 else seg[:, 0], sr)
            write_bytes(out / midi_rel, mr.midi_bytes(cparts, sn.bpm, title=f"{sn.title} {t0:g}-{t0 + dur:g} s"))
        except Exception as e:
            failures.append(_failure(cid, "t2m", source, "write", f"{type(e).__name__}: {e}"))
            continue
        files += [audio_rel, midi_rel]
        text = (f"{sn.composer}: {sn.title} (excerpt {t0:g}-{t0 + dur:g} s). "
                f"Instruments: {', '.join(instruments) or 'none'}. Tempo: {sn.bpm:g} bpm. Key: {key}.")
        licence = MUSIC_LICENCE + (f"; score metadata copyright: {sn.copyright}" if sn.copyright else "")
        rows.append({
            "id": cid, "task": "t2m", "language": None, "audio": audio_rel, "text": text, "speaker": None,
            "video": None, "licence": licence, "source": source, "midi": midi_rel, "instruments": instruments,
            "tempo_bpm": float(sn.bpm), "key": key, "sample_rate": sr, "duration": round(dur, 6),
        })
        clips[cid] = {"duration": dur, "parts": [[list(nn) for nn in p.notes] for p in cparts]}
    return {"rows": rows, "clips": clips, "failures": failures, "skipped": skipped, "files": files,
            "score": {"composer": sn.composer, "title": sn.title, "bpm": sn.bpm, "ensemble": sn.ensemble,
                      "programs": sn.programs, "duration": sn.duration}}


# --------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------


def build_video(out: Path, cfg: DemoCorpusConfig, clip_id: str, clip: dict) -> dict:
    rel = f"video/{clip_id}.mp4"
    frames = vr.piano_roll_frames([[tuple(n) for n in p] for p in clip["parts"]], clip["duration"], fps=cfg.video_fps,
                                  size=cfg.video_size, window=cfg.video_window_seconds)
    try:
        with atomic_path(out / rel) as tmp:
            vr.encode_frames(frames, tmp, fps=cfg.video_fps, size=cfg.video_size, codec=cfg.video_codec,
                             timeout=cfg.timeout_s)
            info = vr.ffprobe_video(tmp)
            want = round(clip["duration"] * cfg.video_fps) / cfg.video_fps
            if not abs(info["duration"] - want) <= 1.0 / cfg.video_fps + 1e-3:
                raise RuntimeError(f"video lasts {info['duration']:.3f} s, expected {want:.3f} s")
    except Exception as e:
        return {"failures": [_failure(clip_id, "v2m", f"video:{clip_id}", "video", f"{type(e).__name__}: {e}")]}
    return {"video": rel, "files": [rel], "failures": []}


# --------------------------------------------------------------------------------------------
# Speech
# --------------------------------------------------------------------------------------------


def build_utterance(out: Path, cfg: DemoCorpusConfig, uid: str, lang: str, text: str, voice: ss.Voice) -> dict:
    task = f"{lang}_tts"
    try:
        y, sr = ss.synthesize(text, voice, timeout=cfg.timeout_s)
    except Exception as e:
        return {"failures": [_failure(uid, task, voice.source, "synthesize", f"{type(e).__name__}: {e}")]}
    if cfg.speech_sample_rate and sr != cfg.speech_sample_rate:
        import soxr

        y = soxr.resample(y, sr, cfg.speech_sample_rate).astype(np.float32)
        sr = cfg.speech_sample_rate
    dur = len(y) / sr
    level = _rms_dbfs(y)
    if dur < 0.3 or level < cfg.silence_dbfs:
        return {"failures": [_failure(uid, task, voice.source, "synthesize",
                                      f"output too short or silent ({dur:.2f} s, {level:.1f} dBFS)")]}
    rel = f"speech/{lang}/{uid}.wav"
    try:
        _write_wav(out / rel, y, sr)
    except Exception as e:
        return {"failures": [_failure(uid, task, voice.source, "write", f"{type(e).__name__}: {e}")]}
    row = {
        "id": uid, "task": task, "language": lang, "audio": rel, "text": text, "speaker": voice.name, "video": None,
        "licence": f"text: {ss.TEXT_SOURCES[lang][1]}; voice: {voice.licence}", "source": voice.source, "midi": None,
        "instruments": None, "tempo_bpm": None, "key": None, "sample_rate": sr, "duration": round(dur, 6),
    }
    return {"rows": [row], "files": [rel], "failures": []}


def build_demo_corpus(out_dir: str | os.PathLike, cfg: DemoCorpusConfig | None = None, progress: bool = True, *,
                      retry_failed: bool = False, prune: bool = True) -> Path:
    """Build (or finish building) the demo corpus in ``out_dir``; returns ``out_dir/metadata.jsonl``.

    Items whose outputs already exist and are complete are skipped; items that failed before are
    not retried unless ``retry_failed``. With ``prune``, files in the builder's own folders that no
    item of this config owns (left by an earlier build with another config) are removed.
    """
    cfg = cfg or DemoCorpusConfig.default()
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pr = Progress(progress, "demo-corpus")
    state = ItemState(out)
    with build_lock(out, "demo corpus"):
        clean_stale_temps(out, _OUTPUT_DIRS)
        rows: list[dict] = []
        failures: list[dict] = []
        skipped: list[dict] = []
        stats = {"built": 0, "reused": 0}

        keep: set[Path] = set()  # every file this config's items own; the rest is pruned at the end

        def cached(kind: str, item: str, key: str, make: Callable[[], dict]) -> dict:
            rec = state.load(kind, item, key)
            if rec is None or (retry_failed and rec.get("failures")):
                stats["built"] += 1
                rec = state.save(kind, item, key, make())
            else:
                stats["reused"] += 1
            keep.add(state.path(kind, item))
            keep.update(out / f for f in rec.get("files", {}))
            return rec

        # ---- music ------------------------------------------------------------------------
        try:
            soundfont = mr.find_soundfont(cfg.soundfont)
        except FileNotFoundError as e:
            soundfont = None
            failures.append(_failure(None, "t2m", "fluid-soundfont-gm", "setup", str(e)))
        scores = select_scores(cfg) if soundfont is not None else []
        pr.log(f"music: {len(scores)} score(s)")
        clip_notes: dict[str, dict] = {}
        music_rows: list[dict] = []
        for name in pr.bar(scores, len(scores), "music"):
            try:
                rec = cached("music", score_slug(name), _music_key(cfg, name, soundfont),
                             lambda n=name: build_score(out, cfg, n, soundfont))
            except Exception as e:  # never let one score stop the build
                failures.append(_failure(f"music-{score_slug(name)}", "t2m", f"music21:{name}", "build",
                                         f"{type(e).__name__}: {e}"))
                continue
            music_rows += rec.get("rows", [])
            failures += rec.get("failures", [])
            skipped += rec.get("skipped", [])
            for cid, c in rec.get("clips", {}).items():
                clip_notes[cid] = {**c, "music_key": rec["key"]}

        # ---- video-to-music subset --------------------------------------------------------
        ids = sorted(r["id"] for r in music_rows)
        chosen = select_video_clips(ids, cfg.n_video, cfg.seed)
        pr.log(f"video: {len(chosen)} of {len(ids)} clip(s)")

        def do_video(cid: str) -> tuple[str, dict]:
            c = clip_notes[cid]
            key = _key("video", cid, c["music_key"], cfg.video_fps, cfg.video_size, cfg.video_window_seconds,
                       cfg.video_codec)
            try:
                return cid, cached("video", cid, key, lambda: build_video(out, cfg, cid, c))
            except Exception as e:
                return cid, {"failures": [_failure(cid, "v2m", f"video:{cid}", "video", f"{type(e).__name__}: {e}")]}

        videos = dict(run_items(chosen, do_video, cfg.workers, pr, "video"))
        for r in music_rows:
            v = videos.get(r["id"])
            if v is not None:
                failures += v.get("failures", [])
                if v.get("video"):
                    r["task"], r["video"] = "v2m", v["video"]
        rows += music_rows

        # ---- speech -----------------------------------------------------------------------
        jobs = []
        for lang, n, specs in (("en", cfg.n_en_sentences, cfg.en_voices), ("zh", cfg.n_zh_sentences, cfg.zh_voices)):
            if n <= 0:
                continue
            specs = tuple(specs)[: max(1, cfg.voices_per_language)]
            try:
                texts = _cached_texts(state, lang, n, cfg.seed)
            except Exception as e:
                failures.append(_failure(None, f"{lang}_tts", ss.TEXT_SOURCES[lang][0], "text", f"{type(e).__name__}: {e}"))
                continue
            if len(texts) < n:
                failures.append(_failure(None, f"{lang}_tts", ss.TEXT_SOURCES[lang][0], "text",
                                         f"only {len(texts)} usable sentences, {n} asked for"))
            voices: list[ss.Voice | str] = []
            for spec in specs:
                try:
                    voices.append(ss.resolve_voice(spec, lang))
                except ValueError as e:
                    voices.append(str(e))
            for i, text in enumerate(texts):
                v = voices[i % len(voices)]
                if isinstance(v, str):
                    spec = specs[i % len(voices)]
                    failures.append(_failure(f"{lang}-{re.sub(r'[^A-Za-z0-9]+', '-', spec).strip('-')}-{i:04d}",
                                             f"{lang}_tts", spec, "voice", v))
                    continue
                jobs.append((lang, i, text, v))
        pr.log(f"speech: {len(jobs)} utterance(s)")

        def do_utt(job) -> dict:
            lang, i, text, v = job
            uid = f"{lang}-{v.name}-{i:04d}"
            key = _key("speech", uid, text, v, cfg.speech_sample_rate, cfg.silence_dbfs)

            def make() -> dict:
                problem = ss.check_voice(v)
                if problem:
                    return {"failures": [_failure(uid, f"{lang}_tts", v.source, "voice", problem)]}
                return build_utterance(out, cfg, uid, lang, text, v)

            try:
                return cached("speech", uid, key, make)
            except Exception as e:
                return {"failures": [_failure(uid, f"{lang}_tts", v.source, "synthesize", f"{type(e).__name__}: {e}")]}

        for rec in run_items(jobs, do_utt, cfg.workers, pr, "speech"):
            rows += rec.get("rows", [])
            failures += rec.get("failures", [])

        # ---- outputs ----------------------------------------------------------------------
        assign_splits(rows, cfg.test_fraction, cfg.seed)
        rows = [{k: r.get(k) for k in ROW_FIELDS} for r in sorted(rows, key=lambda r: r["id"])]
        failures = [{k: f.get(k) for k in FAILURE_FIELDS} for f in failures]
        failures.sort(key=lambda f: (str(f["task"]), str(f["id"]), str(f["source"]), str(f["reason"])))
        skipped = [{k: s.get(k) for k in SKIPPED_FIELDS} for s in skipped]
        skipped.sort(key=lambda s: (str(s["id"]), str(s["kind"])))
        summary = summarize(rows, failures, skipped)
        summary["config"] = cfg.to_dict()
        write_if_changed(out / "failures.jsonl", _jsonl(failures))
        write_if_changed(out / "skipped.jsonl", _jsonl(skipped))
        write_if_changed(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        write_if_changed(out / "metadata.jsonl", _jsonl(rows))
        if prune:
            prune_unowned(out, keep | {state.path("texts", lang) for lang in ("en", "zh")}, _PRUNED_DIRS)
        pr.log(f"done: {len(rows)} rows ({stats['built']} item(s) built, {stats['reused']} reused), "
               f"{len(failures)} failure(s), {len(skipped)} skipped; "
               + ", ".join(f"{t}: {c['count']} rows/{c['hours']:.3f} h" for t, c in summary["tasks"].items()))
    return out / "metadata.jsonl"


def assign_splits(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Mark a seeded ``test_fraction`` of each task's rows (at least one where a task has two or more)
    as split "test", the rest "train". The pick depends only on (seed, id), so growing the corpus never
    moves an item from test to train silently unless the ranking does; the held-out rows feed the demo
    benchmark and held-out NLL, and the demo profile balances only "train" rows."""
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for rs in by_task.values():
        n_test = math.ceil(test_fraction * len(rs)) if test_fraction > 0 and len(rs) >= 2 else 0
        ranked = sorted(rs, key=lambda r: hashlib.sha256(f"demo-split:{seed}:{r['id']}".encode()).hexdigest())
        test = {id(r) for r in ranked[:n_test]}
        for r in rs:
            r["split"] = "test" if id(r) in test else "train"


def _cached_texts(state: ItemState, lang: str, n: int, seed: int) -> list[str]:
    key = _key("texts", lang, n, seed)
    p = state.path("texts", lang)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
        if rec.get("key") == key:
            return list(rec["texts"])
    except (OSError, ValueError, KeyError):
        pass
    texts = ss.select_sentences(lang, n, seed)
    write_text(p, json.dumps({"key": key, "texts": texts}, ensure_ascii=False))
    return texts


def summarize(rows: list[dict], failures: list[dict], skipped: list[dict]) -> dict:
    tasks: dict[str, dict] = {}
    for t in ("en_tts", "zh_tts", "t2m", "v2m"):
        rs = [r for r in rows if r["task"] == t]
        secs = sum(float(r["duration"]) for r in rs)
        tasks[t] = {"count": len(rs), "seconds": round(secs, 3), "hours": round(secs / 3600, 4),
                    "speakers": sorted({r["speaker"] for r in rs if r.get("speaker")})}
    total = sum(c["seconds"] for c in tasks.values())
    return {"tasks": tasks, "rows": len(rows), "hours": round(total / 3600, 4), "failures": len(failures),
            "skipped": len(skipped)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.demo_corpus", description="Build the offline demo corpus.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--small", action="store_true", help="the tiny size used by tests")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--clip-seconds", type=float, default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--retry-failed", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    over = {k: v for k, v in (("seed", a.seed), ("clip_seconds", a.clip_seconds), ("workers", a.workers)) if v is not None}
    cfg = DemoCorpusConfig.small(**over) if a.small else DemoCorpusConfig.default(**over)
    t = time.monotonic()
    path = build_demo_corpus(a.out_dir, cfg, progress=not a.quiet, retry_failed=a.retry_failed)
    summary = json.loads((a.out_dir / "summary.json").read_text())
    print(json.dumps({"metadata": str(path), "seconds": round(time.monotonic() - t, 1),
                      "tasks": {k: {"count": v["count"], "hours": v["hours"]} for k, v in summary["tasks"].items()},
                      "failures": summary["failures"], "skipped": summary["skipped"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
