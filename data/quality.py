"""Quality filtering of kept manifest rows.

The paper filters speech with UTMOS and music with audiobox-aesthetics (CE/CU/PC/PQ) and CLAP
text–audio similarity. Those scorers live in :mod:`evaluation.scorers`, which this package must not
import (layering: ``data`` may import ``unimoe`` only). The caller — the Prefect flow — builds the
scorers it can, and passes them in with the unavailability messages of the ones it could not; any
object with ``name``, ``version``, ``info()`` and ``score(items)`` will do (:class:`QualityScorer`).

Which scorers decide (:func:`plan_scorers`, recorded in every scored row):

=========== ======================================= ===============================================
modality    paper scorers (when given)              substitute when one is missing
=========== ======================================= ===============================================
speech      ``utmos22_strong``                      ``dnsmos`` (DNSMOS P.835 from ``speechmos``)
music       ``audiobox_aesthetics`` + ``clap``      ``signal_checks`` (built in, :func:`signal_checks`)
=========== ======================================= ===============================================

Speech rows are ``zh_tts``/``en_tts``, music rows ``t2m``/``v2m``. A paper scorer that is given always
decides; if any paper scorer of a modality is missing, the substitute decides *as well* and the row's
``meta["quality"]["substitute_for"]`` names the missing paper scorer(s). If speech has neither UTMOS
nor DNSMOS, :func:`plan_scorers` raises :class:`QualityError` — there is never a silent pass-through.

Rules (thresholds in :class:`QualityConfig`; every rule of every deciding scorer must pass):

- ``utmos22_strong``: ``utmos >= utmos_min``
- ``dnsmos``: ``dnsmos_ovrl >= dnsmos_ovrl_min``
- ``audiobox_aesthetics``: ``CE/CU/PC/PQ >= aesthetics_min[axis]`` (an axis whose minimum is ``None``
  is recorded but not checked)
- ``clap``: ``clap >= clap_min``; a row without ``text`` (caption) cannot be scored by CLAP and is
  filtered with reason ``quality:no_text``
- ``signal_checks``: ``silence_ratio <= max_silence_ratio``, ``clipping_ratio <= max_clipping_ratio``,
  ``min_dbfs <= loudness_dbfs <= max_dbfs``, ``min_duration <= duration <= max_duration``

Outcome of :func:`filter_records` for each *kept* row (other rows pass through unchanged; the output
has the same rows in the same order — nothing is dropped):

- passes every rule → stays ``kept``, ``meta["quality"]`` = ``{"decided_by", "scores", "substitute_for",
  "versions", "rules"}``;
- fails a rule → ``filtered``, reason ``quality:<metric><<min>`` or ``quality:<metric>><max>`` for the
  first failing rule (e.g. ``quality:dnsmos_ovrl<2.5``), ``detail`` lists every failing rule; the scores
  stay in ``meta["quality"]``;
- its audio span cannot be read (missing/corrupt file, empty or truncated span, NaN/inf samples) →
  ``quarantined``, reason ``unreadable_audio``, ``detail`` naming the underlying
  :class:`unimoe.common.audio.AudioSpanError` reason code (e.g. ``truncated``);
- a deciding scorer returns NaN/inf for a rule metric, or raises on the item → ``quarantined``, reason
  ``score_failed`` (takes precedence over rule failures: the assessment is incomplete).

A scorer whose output lacks a configured metric key altogether is a configuration mismatch and raises
:class:`QualityError` (it would otherwise fail every row).

The configuration, its rules and the plan live in :mod:`data.quality_rules` (re-exported here).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from data.manifest import ManifestRecord, mark
from data.quality_rules import (
    MODALITIES, MUSIC, SIGNAL_CHECKS, SPEECH, FilterPlan, QualityConfig, QualityError, Rule, modality, plan_scorers,
)  # fmt: skip

__all__ = [
    "MODALITIES", "MUSIC", "SIGNAL_CHECKS", "SIGNAL_CHECKS_VERSION", "SPEECH", "FilterPlan", "QualityConfig",
    "QualityError", "QualityItem", "QualityScorer", "Rule", "SignalChecks", "UnreadableAudio", "filter_records",
    "load_span", "modality", "plan_scorers", "quality_report", "signal_checks",
]  # fmt: skip
from unimoe.common.audio import AudioSpanError, to_mono
from unimoe.common.audio import load_span as read_span
from unimoe.common.reasons import Reason

# The version string documents the rules of :func:`signal_checks` (thresholds are in QualityConfig and
# in each row's ``meta["quality"]["rules"]``); bump it whenever the computation changes.
SIGNAL_CHECKS_VERSION = (
    "signal_checks/1: mono mean of channels; frames of frame_seconds (last partial frame included); "
    "silence_ratio = fraction of frames with RMS dBFS < silence_frame_dbfs; "
    "clipping_ratio = fraction of samples with |x| >= clip_level; "
    "loudness_dbfs = 20*log10(max(RMS of whole span, 1e-10)); duration = samples / rate"
)


@runtime_checkable
class QualityScorer(Protocol):
    """What :func:`filter_records` needs of a scorer (``evaluation.scorers.base.Scorer`` fits)."""

    name: str

    @property
    def version(self) -> str: ...

    def info(self) -> dict[str, Any]: ...

    def score(self, items: list[Any]) -> list[dict[str, float]]: ...


@dataclass
class QualityItem:
    """What :func:`filter_records` hands a scorer by default: a mono span of a row and its text (the
    fields a scorer reads; ``evaluation.scorers.base.AudioItem`` has them too)."""

    id: str
    wav: np.ndarray
    sample_rate: int
    text: str | None = None
    language: str | None = None


# --------------------------------------------------------------------------------------------
# signal-level checks (the built-in music substitute)


def _dbfs(rms: np.ndarray | float) -> np.ndarray | float:
    return 20.0 * np.log10(np.maximum(rms, 1e-10))


def signal_checks(wav: np.ndarray, sr: int, cfg: QualityConfig | None = None) -> dict[str, float]:
    """Deterministic signal-level measurements of one span (see :data:`SIGNAL_CHECKS_VERSION`).

    Returns ``silence_ratio``, ``clipping_ratio``, ``loudness_dbfs`` and ``duration`` (seconds). NaN
    for all of them when the input holds non-finite samples or is empty."""
    cfg = cfg or QualityConfig()
    x = to_mono(wav).astype(np.float64, copy=False)
    n = x.shape[0]
    if sr <= 0 or n == 0 or not np.all(np.isfinite(x)):
        nan = float("nan")
        return {"silence_ratio": nan, "clipping_ratio": nan, "loudness_dbfs": nan,
                "duration": (n / sr if sr > 0 else nan) if n else nan}  # fmt: skip
    flen = max(1, int(round(cfg.frame_seconds * sr)))
    nfull = n // flen
    sq = x * x
    energies = []
    if nfull:
        energies.append(sq[: nfull * flen].reshape(nfull, flen).mean(axis=1))
    if n > nfull * flen:
        energies.append(np.array([sq[nfull * flen :].mean()]))
    frame_db = _dbfs(np.sqrt(np.concatenate(energies)))
    return {
        "silence_ratio": float(np.mean(frame_db < cfg.silence_frame_dbfs)),
        "clipping_ratio": float(np.mean(np.abs(x) >= cfg.clip_level)),
        "loudness_dbfs": float(_dbfs(math.sqrt(float(sq.mean())))),
        "duration": n / float(sr),
    }


class SignalChecks:
    """:func:`signal_checks` as a scorer (name ``signal_checks``)."""

    name = SIGNAL_CHECKS
    metrics = {"silence_ratio": "lower", "clipping_ratio": "lower", "loudness_dbfs": "window",
               "duration": "window"}  # fmt: skip

    def __init__(self, cfg: QualityConfig | None = None):
        self.cfg = cfg or QualityConfig()

    @property
    def version(self) -> str:
        return SIGNAL_CHECKS_VERSION

    def info(self) -> dict[str, Any]:
        return {"scorer": self.name, "version": self.version, "metrics": dict(self.metrics),
                "rules": [str(r) for r in self.cfg.rules(SIGNAL_CHECKS)]}  # fmt: skip

    def score(self, items: list[Any]) -> list[dict[str, float]]:
        return [signal_checks(it.wav, it.sample_rate, self.cfg) for it in items]


# --------------------------------------------------------------------------------------------
# loading spans


class UnreadableAudio(ValueError):
    """A row's audio span cannot be used (message says why)."""


def load_span(path: str | Path, offset: float | None, duration: float | None) -> tuple[np.ndarray, int]:
    """Read ``[offset, offset + duration)`` seconds of ``path`` as mono float32 at the file's rate.

    :func:`unimoe.common.audio.load_span` (only the span is decoded; see it for the tolerance rules) mixed
    down with :func:`~unimoe.common.audio.to_mono`. Raises :class:`UnreadableAudio` for a missing or
    undecodable file, bad bounds, an empty or truncated span or non-finite samples; its message starts
    with the :class:`~unimoe.common.audio.AudioSpanError` reason code (e.g. ``truncated: ...``)."""
    try:
        wav, sr = read_span(path, offset, duration)
    except AudioSpanError as e:
        raise UnreadableAudio(str(e)) from e
    return to_mono(wav), sr


# --------------------------------------------------------------------------------------------
# filtering


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _clean_scores(d: Mapping[str, Any]) -> dict[str, float | None]:
    """JSON-safe scores: non-finite (and non-numeric) values become ``None``."""
    return {str(k): _finite(v) for k, v in sorted(d.items())}


def _score_safe(scorer: Any, items: list[Any]) -> list[tuple[dict[str, Any] | None, str | None]]:
    """(scores, error) per item. A batch that raises (or answers with the wrong shape) is retried
    item by item, so one bad item cannot take its batch down with it."""
    if not items:
        return []
    try:
        out = scorer.score(items)
        if isinstance(out, tuple):
            out = list(out)
        ok = isinstance(out, list) and len(out) == len(items) and all(isinstance(o, Mapping) for o in out)
        if not ok:
            n = len(out) if hasattr(out, "__len__") else "?"
            raise QualityError(
                f"scorer {getattr(scorer, 'name', scorer)!r} returned {type(out).__name__} of {n} "
                f"for {len(items)} item(s); expected one dict each"
            )
        return [(dict(o), None) for o in out]
    except Exception as e:
        if len(items) == 1:
            return [(None, f"{type(e).__name__}: {e}")]
        return [r for it in items for r in _score_safe(scorer, [it])]


def _check_metric_keys(name: str, rules: list[Rule], scores: dict[str, Any]) -> None:
    missing = sorted({r.metric for r in rules} - set(scores))
    if missing:
        raise QualityError(
            f"scorer {name!r} does not report metric(s) {missing} (it reported {sorted(scores)}); "
            "fix the metric names in the quality config"
        )


def filter_records(
    records: Sequence[ManifestRecord],
    cfg: QualityConfig | None = None,
    scorers: Mapping[str, QualityScorer] | None = None,
    unavailable: Mapping[str, str] | None = None,
    *,
    plan: FilterPlan | None = None,
    load_audio: Callable[[str, float | None, float | None], tuple[np.ndarray, int]] = load_span,
    make_item: Callable[..., Any] = QualityItem,
    progress: Callable[[int, int], None] | None = None,
) -> list[ManifestRecord]:
    """Score every kept row and keep, filter or quarantine it (see the module docstring).

    ``scorers`` maps scorer name -> scorer object (``signal_checks`` is added if absent);
    ``unavailable`` maps the names the caller could not load -> why. ``plan`` defaults to
    ``plan_scorers(scorers, unavailable, cfg)``. ``load_audio(path, offset, duration)`` returns a mono
    float32 span and its rate (raise anything to mark the row ``unreadable_audio``). ``make_item`` builds
    the objects handed to ``score`` from keyword arguments ``id, wav, sample_rate, text, language``
    (pass ``evaluation.scorers.base.AudioItem`` from the flow). ``progress(done, total)`` is called
    after every batch. Returns the same number of rows, in the same order; inputs are not mutated.
    """
    cfg = cfg or QualityConfig()
    scorers = dict(scorers or {})
    scorers.setdefault(SIGNAL_CHECKS, SignalChecks(cfg))
    plan = plan or plan_scorers(scorers, unavailable, cfg)
    for name in plan.scorer_names:
        if name not in scorers:
            raise QualityError(f"the plan uses scorer {name!r} but no such scorer was passed in")
    versions = {name: str(scorers[name].version) for name in plan.scorer_names}

    out: list[ManifestRecord] = list(records)
    todo: dict[str, list[int]] = {m: [] for m in MODALITIES}
    for i, r in enumerate(out):
        if r.status != "kept":
            continue
        m = modality(r.task)
        if m is None:
            why = f"quality filtering has no rule for task {r.task!r}"
            out[i] = mark(r, "quarantined", Reason.UNKNOWN_TASK, why)
            continue
        todo[m].append(i)
    total = sum(len(v) for v in todo.values())
    done = 0
    checked_keys: set[str] = set()

    for m in MODALITIES:
        deciders = plan.deciders[m]
        substitute_for = list(plan.substitute_for[m]) or None
        rules = {name: cfg.rules(name) for name in deciders}
        rule_strs = {name: [str(r) for r in rules[name]] for name in deciders}
        idxs = todo[m]
        for b in range(0, len(idxs), cfg.batch_size):
            batch = idxs[b : b + cfg.batch_size]
            loaded: list[tuple[int, Any]] = []
            for i in batch:
                r = out[i]
                try:
                    wav, sr = load_audio(r.audio_path, r.offset, r.duration)
                    wav = np.asarray(wav, dtype=np.float32)
                    if wav.ndim != 1 or wav.size == 0 or not np.all(np.isfinite(wav)):
                        raise UnreadableAudio("loader returned empty, non-mono or non-finite audio")
                except Exception as e:
                    why = f"cannot load audio span: {e}"
                    out[i] = _quarantine(r, Reason.UNREADABLE_AUDIO, why, deciders, substitute_for)
                    continue
                item = make_item(id=r.id, wav=wav, sample_rate=int(sr), text=r.text, language=r.language)
                loaded.append((i, item))

            results: dict[str, dict[int, tuple[dict[str, Any] | None, str | None]]] = {}
            no_text: dict[int, list[str]] = defaultdict(list)
            for name in deciders:
                pairs = loaded
                if cfg.needs_text(name):
                    pairs = []
                    for i, it in loaded:
                        if out[i].text and out[i].text.strip():
                            pairs.append((i, it))
                        else:
                            no_text[i].append(name)
                res = _score_safe(scorers[name], [it for _, it in pairs])
                results[name] = {i: rs for (i, _), rs in zip(pairs, res)}
                if name not in checked_keys:
                    for scores, _err in res:
                        if scores is not None:
                            _check_metric_keys(name, rules[name], scores)
                            checked_keys.add(name)
                            break

            for i, _item in loaded:
                out[i] = _decide(out[i], deciders, substitute_for, rules, rule_strs, versions,
                                 {n: results[n].get(i) for n in deciders}, no_text.get(i, []))  # fmt: skip
            done += len(batch)
            if progress is not None:
                progress(done, total)
    return out


def _quality_meta(
    deciders, substitute_for, versions=None, scores=None, rule_strs=None, **extra
) -> dict[str, Any]:
    q = {
        "decided_by": list(deciders),
        "substitute_for": substitute_for,
        "scores": scores or {},
        "versions": {n: versions[n] for n in deciders} if versions else {},
        "rules": rule_strs or {},
    }
    q.update(extra)
    return q


def _quarantine(r: ManifestRecord, reason: str, detail: str, deciders, substitute_for, **q) -> ManifestRecord:
    meta = dict(r.meta or {})
    meta["quality"] = _quality_meta(deciders, substitute_for, **q)
    return mark(r, "quarantined", reason, detail).replace(meta=meta)


def _decide(
    r: ManifestRecord,
    deciders: Sequence[str],
    substitute_for: list[str] | None,
    rules: Mapping[str, list[Rule]],
    rule_strs: Mapping[str, list[str]],
    versions: Mapping[str, str],
    results: Mapping[str, tuple[dict[str, Any] | None, str | None] | None],
    no_text: list[str],
) -> ManifestRecord:
    scores: dict[str, dict[str, float | None]] = {}
    errors: list[str] = []
    failures: list[tuple[Rule, str, float]] = []
    for name in deciders:
        res = results.get(name)
        if res is None:  # skipped (no text)
            continue
        raw, err = res
        if raw is None:
            errors.append(f"{name} raised on this item: {err}")
            continue
        scores[name] = _clean_scores(raw)
        for rule in rules[name]:
            v = scores[name].get(rule.metric)
            if v is None:
                errors.append(f"{name} returned {raw.get(rule.metric)!r} for {rule.metric}")
            elif not rule.passes(v):
                failures.append((rule, name, v))
    meta = dict(r.meta or {})
    meta["quality"] = _quality_meta(deciders, substitute_for, versions, scores, dict(rule_strs))
    if errors:
        return mark(r, "quarantined", Reason.SCORE_FAILED, "; ".join(errors)).replace(meta=meta)
    if no_text:
        return mark(
            r, "filtered", Reason.QUALITY_NO_TEXT,
            f"{', '.join(no_text)} compare audio with its caption, and this row has no text",
        ).replace(meta=meta)  # fmt: skip
    if failures:
        detail = "; ".join(f"{name}: {rule.metric}={v:.4g} fails {rule}" for rule, name, v in failures)
        return mark(r, "filtered", failures[0][0].reason, detail).replace(meta=meta)
    return r.replace(meta=meta)


# --------------------------------------------------------------------------------------------
# reporting


def quality_report(records: Iterable[ManifestRecord], plan: FilterPlan | None = None) -> dict[str, Any]:
    """Counts per task / status / reason, kept hours per task, and which scorers decided.

    ``decided_by[task][scorer]`` and ``substitute_for[task][paper scorer]`` count the rows that carry
    a ``meta["quality"]`` block (every row :func:`filter_records` scored or quarantined there)."""
    status = Counter()
    by_task: dict[str, Counter] = defaultdict(Counter)
    kept_s: dict[str, float] = defaultdict(float)
    reasons: dict[str, Counter] = defaultdict(Counter)
    reasons_by_task: dict[str, Counter] = defaultdict(Counter)
    decided: dict[str, Counter] = defaultdict(Counter)
    subst: dict[str, Counter] = defaultdict(Counter)
    n = scored = 0
    for r in records:
        n += 1
        task = r.task or "none"
        status[r.status] += 1
        by_task[task][r.status] += 1
        if r.status == "kept":
            kept_s[task] += float(r.duration or 0.0)
        else:
            reasons[r.status][r.reason or "-"] += 1
            reasons_by_task[task][r.reason or "-"] += 1
        q = (r.meta or {}).get("quality")
        if isinstance(q, dict):
            scored += 1
            for name in q.get("decided_by") or []:
                decided[task][name] += 1
            for name in q.get("substitute_for") or []:
                subst[task][name] += 1
    tasks = sorted(by_task)
    rep: dict[str, Any] = {
        "rows": n,
        "scored": scored,
        "status": {s: status.get(s, 0) for s in ("kept", "filtered", "quarantined")},
        "by_task": {
            t: {
                "rows": sum(by_task[t].values()),
                "kept": by_task[t]["kept"],
                "filtered": by_task[t]["filtered"],
                "quarantined": by_task[t]["quarantined"],
                "kept_hours": kept_s[t] / 3600.0,
            }
            for t in tasks
        },
        "reasons": {s: dict(sorted(c.items())) for s, c in sorted(reasons.items())},
        "reasons_by_task": {t: dict(sorted(c.items())) for t, c in sorted(reasons_by_task.items())},
        "decided_by": {t: dict(sorted(c.items())) for t, c in sorted(decided.items())},
        "substitute_for": {t: dict(sorted(c.items())) for t, c in sorted(subst.items())},
    }
    if plan is not None:
        rep["plan"] = plan.to_dict()
    return rep
