"""How good is a codec on held-out audio? (``unimoe codec report``)

(One module of ~570 lines on purpose: its stages, read, measure, summarise, check targets and render, hand
one report dict along, whose layout each part would otherwise have to restate.)

Every kept row of one split (``test`` by default) of a curated manifest is read as its span
(``unimoe.common.audio.load_span``), encoded and decoded by the codec, and the resynthesis is compared with
the ground truth:

- **code usage**, per codebook: how many of the ``codebook_size`` codes occur, and the perplexity
  ``exp(entropy)`` of the code histogram (``unimoe.codec_train.code_perplexity``), over all clips and
  per task;
- **multi-scale mel distance** (every clip): ``dac.nn.loss.MelSpectrogramLoss`` with the settings of
  DAC's training recipe (descript-audio-codec ``conf/base.yml``, also what ``unimoe codec train``
  optimises): windows 32..2048 (hop = window/4) with 5..320 mel bands, log10 of the mel magnitude
  (``pow=1``, clamped at 1e-5), L1, no linear-magnitude term; on audiotools ``AudioSignal``s of the
  ground truth (mono, resampled to the codec rate) and the resynthesis (trimmed to the same length);
- **English speech** (``en_tts``): PocketSphinx WER (``evaluation.scorers.pocketsphinx_wer``, Seed-TTS-eval
  normalisation from ``evaluation.text``) of the ground truth and of the resynthesis against the row's
  transcript, as corpus WER ``sum(S+D+I) / sum(words)`` over the clips both could be scored on, overall,
  per voice engine (festival, espeak-ng: the prefix of ``meta.source``) and per voice (``speaker``);
- **speech** (``en_tts``, ``zh_tts``): DNSMOS OVRL (``evaluation.scorers.dnsmos``) of both, per task and voice;
- **frame-rate buzz** (every clip): how far the power at the harmonics of the codec's frame rate
  (``k * sample_rate / hop``, +-2 Hz) stands above the power between them, in dB, resynthesis minus ground
  truth (:func:`frame_rate_buzz_db`). A young decoder rings at its frame rate, which pulls every key
  estimate towards the key of those harmonics (50 Hz: G) while the mel distance barely sees it;
- **music** (``t2m``, ``v2m``): tempo and key of both, estimated by the music-adherence scorer's estimator
  (``evaluation.scorers.music_adherence.analyse``: librosa beat tracker, Krumhansl–Schmuckler key); a
  clip's key is *kept* when the resynthesis's estimate is the same key (tonic and mode) as the ground
  truth's, its tempo when ``|ln(tempo_resynth / tempo_gt)| <= ln(1.04)`` (within 4 %, no octave
  factors: a codec must not move the beat). Clips whose ground truth gives no estimate (no pitch
  content / fewer than two beats) are left out of that fraction (counted in ``n_*_unestimable``); a
  resynthesis without an estimate counts as not kept.

Ground truth is scored at its own rate (the scorers resample as they always do); the resynthesis is at
the codec rate. A row that cannot be read or coded is listed in ``failures`` and the others still count;
a scorer that cannot run here is listed in ``unavailable`` and its numbers are null.

:func:`evaluate_targets` checks the targets of :data:`TARGETS` on a report (pass / fail / n/a when
nothing could be measured). Layering: this module imports ``unimoe`` and the scorers, never ``data``
(the manifest is read with pyarrow).
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from evaluation.scorers.base import AudioItem
from unimoe.codec_train import code_perplexity
from unimoe.common.audio import load_span, to_mono
from unimoe.common.files import atomic_write_text
from unimoe.common.music import key_name

SPEECH_TASKS = ("en_tts", "zh_tts")
MUSIC_TASKS = ("t2m", "v2m")
TEMPO_TOLERANCE = 0.04
# DAC's training recipe (conf/base.yml MelSpectrogramLoss), as unimoe.codec_train uses it.
MEL_WINDOW_LENGTHS = (32, 64, 128, 256, 512, 1024, 2048)
MEL_N_MELS = (5, 10, 20, 40, 80, 160, 320)
_MANIFEST_COLUMNS = ("id", "task", "audio_path", "offset", "duration", "text", "speaker", "status", "split", "meta")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    op: str  # ">=" | "<="
    threshold: float


TARGETS: tuple[Target, ...] = (
    Target("codebook_perplexity", "every codebook's perplexity >= 128 (value: the smallest)", ">=", 128.0),
    Target("festival_wer_delta", "resynthesised English WER within +0.15 of ground truth on the festival voice "
                                 "(value: WER(resynth) - WER(ground truth))", "<=", 0.15),
    Target("music_key_kept", "estimated key kept on >= 70% of music clips", ">=", 0.70),
    Target("music_tempo_kept", "estimated tempo within 4% on >= 80% of music clips", ">=", 0.80),
)


# ---- held-out rows ------------------------------------------------------------------------------------


def load_heldout_rows(manifest: str | Path, split: str = "test", max_items: int | None = None) -> list[dict]:
    """The kept rows of ``split`` in a curated manifest (``meta`` decoded), sorted by (task, id);
    ``max_items``: the first N of each task."""
    import pyarrow.parquet as pq

    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    missing = [c for c in _MANIFEST_COLUMNS if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: not a curated manifest (missing columns {missing})")
    rows = []
    for r in pq.read_table(path, columns=list(_MANIFEST_COLUMNS)).to_pylist():
        if r["status"] != "kept" or r["split"] != split:
            continue
        try:
            meta = json.loads(r["meta"]) if r["meta"] else {}
        except ValueError:
            meta = {}
        rows.append({**r, "meta": meta if isinstance(meta, dict) else {}})
    if not rows:
        raise ValueError(f"{path}: no kept rows in split {split!r}")
    rows.sort(key=lambda r: (str(r["task"]), str(r["id"])))
    if max_items is not None:
        per_task: dict[str, int] = defaultdict(int)
        kept = []
        for r in rows:
            per_task[r["task"]] += 1
            if per_task[r["task"]] <= max_items:
                kept.append(r)
        rows = kept
    return rows


def voice_of(row: dict) -> tuple[str | None, str | None]:
    """``(voice, engine)`` of a speech row: the voice is the row's ``speaker``; the engine is the prefix
    of ``meta.source`` (the demo corpus records ``festival:kal_diphone``, ``espeak-ng:en-us+f2``), else
    guessed from the speaker name, else None."""
    meta = row.get("meta") or {}
    source = meta.get("source") if isinstance(meta.get("source"), str) else None
    speaker = row.get("speaker") or meta.get("voice") or None
    engine = None
    for cand in (source, speaker):
        low = (cand or "").lower()
        if low.startswith("festival"):
            engine = "festival"
        elif "espeak" in low:
            engine = "espeak-ng"
        if engine:
            break
    return (str(speaker) if speaker else source), engine


# ---- measurements ---------------------------------------------------------------------------------------


def mel_distance_loss():
    """``dac.nn.loss.MelSpectrogramLoss`` with DAC's recipe settings (see the module doc)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dac.nn.loss import MelSpectrogramLoss
    n = len(MEL_N_MELS)
    return MelSpectrogramLoss(n_mels=list(MEL_N_MELS), window_lengths=list(MEL_WINDOW_LENGTHS), mel_fmin=[0.0] * n,
                              mel_fmax=[None] * n, pow=1.0, clamp_eps=1e-5, mag_weight=0.0, log_weight=1.0)


def mel_distance(loss, resynth: np.ndarray, truth: np.ndarray, sample_rate: int) -> float:
    """Multi-scale mel distance of two mono clips at ``sample_rate`` (the common length is used)."""
    import torch
    from audiotools import AudioSignal

    n = min(len(resynth), len(truth))
    if n == 0:
        raise ValueError("empty audio")
    x = AudioSignal(torch.from_numpy(np.ascontiguousarray(resynth[:n], dtype=np.float32))[None, None], sample_rate)
    y = AudioSignal(torch.from_numpy(np.ascontiguousarray(truth[:n], dtype=np.float32))[None, None], sample_rate)
    with torch.no_grad(), warnings.catch_warnings():
        # audiotools warns when a signal's cached STFT is replaced by one of another scale (expected here)
        warnings.filterwarnings("ignore", message="stft_data changed shape")
        return float(loss(x, y))


def frame_rate_harmonic_db(audio: np.ndarray, sample_rate: int, frame_rate: float) -> float:
    """Mean power density within +-2 Hz of the frame-rate harmonics 2..40 over that in the bands
    between them (0.2 to 0.8 of the way to the next harmonic), in dB, from one Hann-windowed FFT."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    if x.size < 2 * sample_rate / frame_rate:
        return math.nan
    power = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1.0 / sample_rate)
    harmonics = [k * frame_rate for k in range(2, 41) if (k + 1) * frame_rate < sample_rate / 2]
    on = np.concatenate([power[np.abs(freqs - h) <= 2.0] for h in harmonics])
    off = np.concatenate([power[(freqs >= h + 0.2 * frame_rate) & (freqs <= h + 0.8 * frame_rate)] for h in harmonics])
    if on.size == 0 or off.size == 0 or off.mean() <= 0 or on.mean() <= 0:
        return math.nan
    return float(10 * np.log10(on.mean() / off.mean()))


def frame_rate_buzz_db(resynth: np.ndarray, truth: np.ndarray, sample_rate: int, frame_rate: float) -> float:
    """:func:`frame_rate_harmonic_db` of the resynthesis minus that of the ground truth (both at the codec
    rate): 0 dB = no more frame-rate ringing than the original has."""
    return frame_rate_harmonic_db(resynth, sample_rate, frame_rate) - frame_rate_harmonic_db(truth, sample_rate,
                                                                                              frame_rate)


def tempo_kept(tempo_gt: float | None, tempo_resynth: float | None) -> bool:
    """Within ``TEMPO_TOLERANCE`` (log ratio, no octave factors)."""
    if not (_finite(tempo_gt) and _finite(tempo_resynth) and tempo_gt > 0 and tempo_resynth > 0):
        return False
    return abs(math.log(tempo_resynth / tempo_gt)) <= math.log1p(TEMPO_TOLERANCE) + 1e-12


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _nan_to_none(obj.item())
    return obj


class _Scorers:
    """The scorers the report reuses; a scorer that cannot run here is None with its reason."""

    def __init__(self, overrides: dict[str, Any] | None = None):
        from evaluation.scorers.base import ScorerUnavailable, load_scorer
        from evaluation.scorers.music_adherence import analyse

        self.unavailable: dict[str, str] = {}
        self.versions: dict[str, str | None] = {}
        self.asr = self.dnsmos = None
        import torch

        # onnxruntime (DNSMOS) gets as many threads as torch has, not its own default of every core
        options = {"pocketsphinx_wer": {}, "dnsmos": {"num_threads": torch.get_num_threads()}}
        for name in ("pocketsphinx_wer", "dnsmos"):
            try:
                s = (overrides or {}).get(name) or load_scorer(name, **options[name])
            except ScorerUnavailable as e:
                self.unavailable[name] = str(e)
                s = None
            self.versions[name] = s.version if s is not None else None
            setattr(self, "asr" if name == "pocketsphinx_wer" else "dnsmos", s)
        from evaluation.scorers.music_adherence import MusicAdherence

        self.versions["music_adherence"] = MusicAdherence().version
        self.analyse = analyse


def _score_item(row: dict, codec, sc: _Scorers, mel_loss) -> tuple[dict, np.ndarray]:
    """One row: the per-item record and its codes ``[K, frames]``. Raises on unreadable / uncodable audio."""
    wav, sr = load_span(row["audio_path"], row.get("offset"), row.get("duration"))
    truth = to_mono(wav)
    x = codec.prepare(truth, sr)
    if x.size == 0:
        raise ValueError("no samples at the codec rate")
    codes = codec.encode([x], codec.sample_rate)[0]
    y = codec.decode([codes])[0][:len(x)]
    task = row["task"]
    rec: dict[str, Any] = {"id": row["id"], "task": task, "seconds": len(truth) / sr, "frames": int(codes.shape[-1])}
    try:
        rec["mel_distance"] = mel_distance(mel_loss, y, x, codec.sample_rate)
    except Exception as e:  # noqa: BLE001 - one metric failing leaves the others
        rec["mel_distance"], rec["mel_distance_error"] = math.nan, f"{type(e).__name__}: {e}"
    rec["frame_rate_buzz_db"] = frame_rate_buzz_db(y, x, codec.sample_rate, codec.sample_rate / codec.hop_length)
    rsr = codec.sample_rate
    if task in SPEECH_TASKS:
        voice, engine = voice_of(row)
        rec.update(voice=voice, engine=engine)
        if sc.dnsmos is not None:
            sc.dnsmos.clear_failures()
            gt_s, rs_s = sc.dnsmos.score([AudioItem(f"{row['id']}/gt", truth, sr), AudioItem(f"{row['id']}/rs", y, rsr)])
            rec["dnsmos_ovrl_ground_truth"], rec["dnsmos_ovrl_resynthesis"] = gt_s["dnsmos_ovrl"], rs_s["dnsmos_ovrl"]
            if getattr(sc.dnsmos, "item_errors", None):
                rec["dnsmos_error"] = "; ".join(f"{k}: {v}" for k, v in sorted(sc.dnsmos.item_errors.items()))
        if task == "en_tts" and sc.asr is not None:
            text = row.get("text") or ""
            for side, audio, rate in (("ground_truth", truth, sr), ("resynthesis", y, rsr)):
                try:
                    hyp = sc.asr.transcribe(audio, rate)
                    m = sc.asr.score_transcript(text, hyp)
                except Exception as e:  # noqa: BLE001
                    rec[f"wer_{side}"], rec[f"wer_{side}_error"] = math.nan, f"{type(e).__name__}: {e}"
                    continue
                rec[f"transcript_{side}"] = hyp
                rec[f"wer_{side}"] = m[sc.asr.metric]
                rec[f"wer_errors_{side}"] = m[f"{sc.asr.metric}_errors"]
                rec["wer_ref_words"] = m[f"{sc.asr.metric}_ref_len"]
    elif task in MUSIC_TASKS:
        meta = row.get("meta") or {}
        rec["tempo_label"], rec["key_label"] = meta.get("tempo_bpm"), meta.get("key")
        for side, audio, rate in (("ground_truth", truth, sr), ("resynthesis", y, rsr)):
            try:
                est = sc.analyse(audio, rate)
            except Exception as e:  # noqa: BLE001 - silent / too short: no estimate
                rec[f"tempo_{side}"], rec[f"key_{side}"] = None, None
                rec[f"music_{side}_error"] = f"{type(e).__name__}: {e}"
                continue
            rec[f"tempo_{side}"] = est["tempo_bpm"] if est["beats"] >= 2 else None
            rec[f"key_{side}"] = key_name(est["key"])
        rec["key_kept"] = rec["key_ground_truth"] is not None and rec["key_resynthesis"] == rec["key_ground_truth"]
        rec["tempo_kept"] = tempo_kept(rec["tempo_ground_truth"], rec["tempo_resynthesis"])
    return rec, codes.numpy()


# ---- aggregation ----------------------------------------------------------------------------------------


def codebook_stats(codes: Sequence[np.ndarray], codebook_size: int) -> list[dict]:
    """Per codebook: codes used (of ``codebook_size``) and perplexity over all frames of ``codes``."""
    if not codes:
        return []
    allc = np.concatenate([np.asarray(c) for c in codes], axis=-1)
    return [{"codebook": i, "used": int(np.unique(allc[i]).size), "size": int(codebook_size),
             "perplexity": code_perplexity(allc[i], codebook_size)} for i in range(allc.shape[0])]


def _mean(vals: Iterable[Any]) -> float | None:
    v = [x for x in vals if _finite(x)]
    return float(np.mean(v)) if v else None


def _median_summary(vals: Iterable[Any]) -> dict:
    finite = [float(v) for v in vals if _finite(v)]
    return {"n": len(finite), "median": float(np.median(finite)) if finite else None}


def wer_summary(items: Sequence[dict]) -> dict:
    """Corpus WER of ground truth and resynthesis over the clips both were scored on."""
    paired = [r for r in items if _finite(r.get("wer_errors_ground_truth")) and _finite(r.get("wer_errors_resynthesis"))
              and _finite(r.get("wer_ref_words")) and r["wer_ref_words"] > 0]
    words = sum(r["wer_ref_words"] for r in paired)
    gt = sum(r["wer_errors_ground_truth"] for r in paired) / words if words else None
    rs = sum(r["wer_errors_resynthesis"] for r in paired) / words if words else None
    return {"n": len(paired), "words": int(words), "wer_ground_truth": gt, "wer_resynthesis": rs,
            "wer_delta": None if gt is None else rs - gt}


def dnsmos_summary(items: Sequence[dict]) -> dict:
    return {"n": sum(_finite(r.get("dnsmos_ovrl_ground_truth")) for r in items),
            "dnsmos_ovrl_ground_truth": _mean(r.get("dnsmos_ovrl_ground_truth") for r in items),
            "dnsmos_ovrl_resynthesis": _mean(r.get("dnsmos_ovrl_resynthesis") for r in items)}


def music_summary(items: Sequence[dict]) -> dict:
    keyed = [r for r in items if r.get("key_ground_truth") is not None]
    timed = [r for r in items if _finite(r.get("tempo_ground_truth"))]
    return {
        "n": len(items),
        "n_key": len(keyed), "n_key_unestimable": len(items) - len(keyed),
        "key_kept_fraction": (sum(bool(r["key_kept"]) for r in keyed) / len(keyed)) if keyed else None,
        "n_tempo": len(timed), "n_tempo_unestimable": len(items) - len(timed),
        "tempo_kept_fraction": (sum(bool(r["tempo_kept"]) for r in timed) / len(timed)) if timed else None,
        "mean_tempo_ground_truth": _mean(r.get("tempo_ground_truth") for r in items),
        "mean_tempo_resynthesis": _mean(r.get("tempo_resynthesis") for r in items),
    }


def summarise(items: Sequence[dict], codes_by_task: dict[str, list[np.ndarray]], codebook_size: int) -> dict:
    """Every aggregate of the report from the per-item records and the codes."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in items:
        by_task[r["task"]].append(r)
    speech = [r for r in items if r["task"] in SPEECH_TASKS]
    en = [r for r in items if r["task"] == "en_tts"]
    music = [r for r in items if r["task"] in MUSIC_TASKS]
    voices: dict[str, list[dict]] = defaultdict(list)
    for r in speech:
        voices[str(r.get("voice"))].append(r)
    engines: dict[str, list[dict]] = defaultdict(list)
    for r in en:
        engines[str(r.get("engine"))].append(r)
    per_voice = {}
    for v, rs in sorted(voices.items()):
        entry = {"task": rs[0]["task"], "engine": rs[0].get("engine"), "n": len(rs), **dnsmos_summary(rs)}
        if rs[0]["task"] == "en_tts":
            w = wer_summary(rs)
            entry.update({("n_wer" if k == "n" else k): x for k, x in w.items()})
        per_voice[v] = entry
    return {
        "codebooks": {"overall": codebook_stats([c for cs in codes_by_task.values() for c in cs], codebook_size),
                      "per_task": {t: codebook_stats(cs, codebook_size) for t, cs in sorted(codes_by_task.items())}},
        "mel_distance": {"overall": {"n": sum(_finite(r.get("mel_distance")) for r in items),
                                     "mean": _mean(r.get("mel_distance") for r in items)},
                         "per_task": {t: {"n": sum(_finite(r.get("mel_distance")) for r in rs),
                                          "mean": _mean(r.get("mel_distance") for r in rs)}
                                      for t, rs in sorted(by_task.items())}},
        "frame_rate_buzz_db": {"overall": _median_summary(r.get("frame_rate_buzz_db") for r in items),
                               "per_task": {t: _median_summary(r.get("frame_rate_buzz_db") for r in rs)
                                            for t, rs in sorted(by_task.items())}},
        "speech": {
            "wer_en": {"overall": wer_summary(en), "per_engine": {e: wer_summary(rs) for e, rs in sorted(engines.items())}},
            "dnsmos_ovrl": {"per_task": {t: dnsmos_summary(rs) for t, rs in sorted(by_task.items()) if t in SPEECH_TASKS}},
            "per_voice": per_voice,
        },
        "music": {"overall": music_summary(music),
                  "per_task": {t: music_summary(rs) for t, rs in sorted(by_task.items()) if t in MUSIC_TASKS}},
    }


# ---- targets ------------------------------------------------------------------------------------------------


def _target_value(name: str, report: dict) -> float | None:
    if name == "codebook_perplexity":
        books = (report.get("codebooks") or {}).get("overall") or []
        ppl = [c.get("perplexity") for c in books]
        # a codebook without a finite perplexity fails the "every codebook" target (value: NaN -> n/a only
        # when there are no codes at all)
        return (min(p if _finite(p) else -math.inf for p in ppl)) if ppl else None
    if name == "festival_wer_delta":
        fest = (((report.get("speech") or {}).get("wer_en") or {}).get("per_engine") or {}).get("festival") or {}
        return fest.get("wer_delta") if fest.get("n") else None
    music = (report.get("music") or {}).get("overall") or {}
    return music.get("key_kept_fraction" if name == "music_key_kept" else "tempo_kept_fraction")


def evaluate_targets(report: dict, targets: Sequence[Target] = TARGETS) -> list[dict]:
    """Each target: ``{"name", "description", "op", "threshold", "value", "passed"}``; ``passed`` is None
    ("n/a") when the report has nothing to measure it on (no festival rows, no music, no codes)."""
    out = []
    for t in targets:
        value = _target_value(t.name, report)
        if value == -math.inf:
            passed, value = False, None
        elif not _finite(value):
            passed = None
        else:
            passed = bool(value >= t.threshold - 1e-12) if t.op == ">=" else bool(value <= t.threshold + 1e-12)
        out.append({"name": t.name, "description": t.description, "op": t.op, "threshold": t.threshold,
                    "value": value if _finite(value) else None, "passed": passed})
    return out


def target_status(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


# ---- the report -------------------------------------------------------------------------------------------


def codec_report(codec, rows: Sequence[dict], *, manifest: str | Path | None = None, split: str = "test",
                 progress: bool = True, scorers: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """The report (a JSON-ready dict, NaN as null) of ``codec`` on ``rows`` (from :func:`load_heldout_rows`).
    ``scorers``: optional prebuilt ``pocketsphinx_wer`` / ``dnsmos`` scorer objects (else loaded here)."""
    from tqdm.auto import tqdm

    sc = _Scorers(scorers)
    mel_loss = mel_distance_loss()
    items: list[dict] = []
    failures: list[dict] = []
    codes_by_task: dict[str, list[np.ndarray]] = defaultdict(list)
    for row in tqdm(rows, desc="codec report", unit="clip", disable=not progress):
        try:
            rec, codes = _score_item(row, codec, sc, mel_loss)
        except Exception as e:  # noqa: BLE001 - an unreadable row is reported, the others still count
            failures.append({"id": row.get("id"), "task": row.get("task"), "error": f"{type(e).__name__}: {e}"})
            if log is not None:
                log(f"codec report: {row.get('id')}: {type(e).__name__}: {e}")
            continue
        items.append(rec)
        codes_by_task[rec["task"]].append(codes)
    counts = defaultdict(int)
    for r in rows:
        counts[r.get("task")] += 1
    report = {
        "codec": codec.info(),
        "manifest": None if manifest is None else str(manifest),
        "split": split,
        "protocol": {
            "mel_distance": {"loss": "dac.nn.loss.MelSpectrogramLoss", "window_lengths": list(MEL_WINDOW_LENGTHS),
                             "n_mels": list(MEL_N_MELS), "pow": 1.0, "clamp_eps": 1e-5, "mag_weight": 0.0,
                             "log_weight": 1.0, "signal": "mono, at the codec rate, resynthesis trimmed to the input"},
            "wer": "pocketsphinx_wer, seed-tts-eval normalisation (en); corpus WER over clips scored on both sides",
            "dnsmos": "dnsmos_ovrl (speechmos P.835), mean over clips",
            "music": f"music_adherence.analyse; key kept = same key; tempo kept = |ln(resynth/gt)| <= ln(1+{TEMPO_TOLERANCE})",
            "voice_engine": "prefix of meta.source (festival / espeak-ng), else from the speaker name",
        },
        "scorers": sc.versions,
        "unavailable": sc.unavailable,
        "counts": {"rows": len(rows), "scored": len(items), "failed": len(failures), "per_task": dict(sorted(counts.items()))},
        "failures": failures,
        **summarise(items, codes_by_task, codec.codebook_size),
        "items": items,
    }
    report["targets"] = evaluate_targets(report)
    report["all_targets_passed"] = all(t["passed"] is True for t in report["targets"])
    return _nan_to_none(report)


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return lines + [""]


def render_markdown(report: dict) -> str:
    """The report as markdown tables, ground truth beside resynthesis."""
    c = report["codec"]
    out = [f"# Codec report: {c['label']}", "",
           f"{c['sample_rate']} Hz, hop {c['hop_length']} ({c['frame_rate']:g} frames/s), "
           f"{c['num_codebooks']} x {c['codebook_size']} codes. Manifest `{report.get('manifest')}`, split "
           f"`{report['split']}`: {report['counts']['scored']} of {report['counts']['rows']} clips scored"
           f" ({report['counts']['failed']} failed).", ""]
    if report.get("unavailable"):
        out += [f"Unavailable scorers: {', '.join(sorted(report['unavailable']))} (their numbers are blank).", ""]
    out += ["## Targets", ""]
    out += _table(["target", "value", "threshold", "result"],
                  [(t["description"], t["value"], f"{t['op']} {t['threshold']:g}", target_status(t["passed"]))
                   for t in report["targets"]])
    out += ["## Code usage (per codebook)", ""]
    groups = [("all", report["codebooks"]["overall"])] + list(report["codebooks"]["per_task"].items())
    rows = [(g, s["codebook"], f"{s['used']} / {s['size']}", s["perplexity"]) for g, st in groups for s in st]
    out += _table(["clips", "codebook", "codes used", "perplexity"], rows)
    out += ["## Multi-scale mel distance (resynthesis vs ground truth; lower is better)", ""]
    md = report["mel_distance"]
    out += _table(["clips", "n", "mel distance"], [("all", md["overall"]["n"], md["overall"]["mean"])]
                  + [(t, v["n"], v["mean"]) for t, v in md["per_task"].items()])
    if "frame_rate_buzz_db" in report:  # reports written before this measure lack it
        fb = report["frame_rate_buzz_db"]
        out += ["## Frame-rate buzz (dB above ground truth at the frame-rate harmonics; 0 = none added)", ""]
        out += _table(["clips", "n", "median dB"], [("all", fb["overall"]["n"], fb["overall"]["median"])]
                      + [(t, v["n"], v["median"]) for t, v in fb["per_task"].items()])
    wer = report["speech"]["wer_en"]
    out += ["## English WER (PocketSphinx)", ""]
    out += _table(["voices", "clips", "words", "WER ground truth", "WER resynthesis", "delta"],
                  [("all", wer["overall"]["n"], wer["overall"]["words"], wer["overall"]["wer_ground_truth"],
                    wer["overall"]["wer_resynthesis"], wer["overall"]["wer_delta"])]
                  + [(f"engine {e}", w["n"], w["words"], w["wer_ground_truth"], w["wer_resynthesis"], w["wer_delta"])
                     for e, w in wer["per_engine"].items()])
    out += ["## Speech per voice", ""]
    out += _table(["voice", "task", "engine", "clips", "WER ground truth", "WER resynthesis",
                   "DNSMOS OVRL ground truth", "DNSMOS OVRL resynthesis"],
                  [(v, e["task"], str(e.get("engine") or "–"), e["n"], e.get("wer_ground_truth"), e.get("wer_resynthesis"),
                    e["dnsmos_ovrl_ground_truth"], e["dnsmos_ovrl_resynthesis"])
                   for v, e in report["speech"]["per_voice"].items()])
    out += ["## DNSMOS OVRL per task", ""]
    out += _table(["task", "clips", "ground truth", "resynthesis"],
                  [(t, d["n"], d["dnsmos_ovrl_ground_truth"], d["dnsmos_ovrl_resynthesis"])
                   for t, d in report["speech"]["dnsmos_ovrl"]["per_task"].items()])
    out += ["## Music: key and tempo kept", ""]
    mus = [("all", report["music"]["overall"])] + list(report["music"]["per_task"].items())
    out += _table(["clips", "n", "key kept", "(of n with a key)", "tempo within 4%", "(of n with a tempo)",
                   "mean tempo ground truth", "mean tempo resynthesis"],
                  [(g, m["n"], m["key_kept_fraction"], m["n_key"], m["tempo_kept_fraction"], m["n_tempo"],
                    m["mean_tempo_ground_truth"], m["mean_tempo_resynthesis"]) for g, m in mus])
    if report["failures"]:
        out += ["## Failed clips", ""]
        out += _table(["id", "task", "error"], [(str(f["id"]), str(f["task"]), f["error"]) for f in report["failures"]])
    return "\n".join(out)


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """``report.json`` and ``report.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    js, md = out_dir / "report.json", out_dir / "report.md"
    atomic_write_text(js, json.dumps(_nan_to_none(report), indent=2, sort_keys=True, allow_nan=False) + "\n")
    atomic_write_text(md, render_markdown(report) + "\n")
    return js, md


__all__ = ["TARGETS", "Target", "codec_report", "codebook_stats", "evaluate_targets", "frame_rate_buzz_db",
           "frame_rate_harmonic_db", "load_heldout_rows",
           "mel_distance", "mel_distance_loss", "render_markdown", "summarise", "target_status", "tempo_kept",
           "voice_of", "write_report"]
