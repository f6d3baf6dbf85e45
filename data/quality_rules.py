"""The quality filter's configuration and plan: thresholds per metric (:class:`QualityConfig`), the rules
they make (:class:`Rule`), and which scorers decide for each modality (:func:`plan_scorers`).

:mod:`data.quality` applies them to manifest rows; its module doc has the full table of scorers,
substitutes and rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pydantic import Field, field_validator, model_validator

from data.manifest import MUSIC_TASKS, TTS_TASKS
from unimoe.config import ConfigError, ConfigModel, TupleOf

SPEECH, MUSIC = "speech", "music"
MODALITIES = (SPEECH, MUSIC)

SIGNAL_CHECKS = "signal_checks"


class QualityError(RuntimeError):
    """Quality filtering cannot run as configured (no scorer for a modality, a metric key missing)."""



# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class Rule:
    """``metric op threshold`` must hold; ``op`` is ``">="`` (a minimum) or ``"<="`` (a maximum)."""

    metric: str
    op: str
    threshold: float

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value <= self.threshold

    @property
    def reason(self) -> str:
        """The reason code when the rule fails: ``quality:dnsmos_ovrl<2.5``, ``quality:silence_ratio>0.5``."""
        return f"quality:{self.metric}{'<' if self.op == '>=' else '>'}{self.threshold:g}"

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def _default_aesthetics_min() -> dict[str, float | None]:
    # PC (production complexity) is not a quality axis: recorded, not checked by default.
    return {"CE": 5.0, "CU": 5.0, "PC": None, "PQ": 6.0}


class QualityConfig(ConfigModel):
    """Thresholds and scorer names. Defaults are this project's choices (the paper gives none)."""

    section = "quality"

    # paper scorers
    utmos_min: float = 3.0
    # thresholds given are merged over the defaults (a YAML section names only the axes it changes)
    aesthetics_min: dict[str, float | None] = Field(default_factory=_default_aesthetics_min)
    clap_min: float = 0.2
    # substitutes
    dnsmos_ovrl_min: float = 2.5
    max_silence_ratio: float = 0.5
    max_clipping_ratio: float = 0.001
    min_dbfs: float = -45.0
    max_dbfs: float = -2.0
    min_duration: float = 1.0
    max_duration: float | None = 60.0
    # signal-check parameters
    frame_seconds: float = 0.05
    silence_frame_dbfs: float = -60.0
    clip_level: float = 0.999
    # metric keys as the scorers report them
    utmos_metric: str = "utmos"
    dnsmos_metric: str = "dnsmos_ovrl"
    clap_metric: str = "clap"
    # scorer names (registry names in evaluation.scorers)
    speech_paper: TupleOf[str] = ("utmos22_strong",)
    speech_substitute: str = "dnsmos"
    music_paper: TupleOf[str] = ("audiobox_aesthetics", "clap")
    music_substitute: str = SIGNAL_CHECKS
    clap_scorer: str = "clap"
    utmos_scorer: str = "utmos22_strong"
    aesthetics_scorer: str = "audiobox_aesthetics"
    dnsmos_scorer: str = "dnsmos"
    batch_size: int = 16

    @field_validator("aesthetics_min", mode="before")
    @classmethod
    def _over_default_axes(cls, value: Any) -> Any:
        return {**_default_aesthetics_min(), **value} if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _check_ranges(self) -> "QualityConfig":
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.frame_seconds <= 0:
            raise ConfigError(f"frame_seconds must be > 0, got {self.frame_seconds}")
        if self.min_dbfs > self.max_dbfs:
            raise ConfigError(f"min_dbfs {self.min_dbfs} > max_dbfs {self.max_dbfs}")
        if self.max_duration is not None and self.min_duration > self.max_duration:
            raise ConfigError(f"min_duration {self.min_duration} > max_duration {self.max_duration}")
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "QualityConfig":
        """Build from a plain dict (e.g. a YAML section; None: the defaults)."""
        return super().from_dict(d or {})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def rules(self, scorer: str) -> list[Rule]:
        """The rules a scorer's output must satisfy (empty for an unknown scorer name)."""
        if scorer == self.utmos_scorer:
            return [Rule(self.utmos_metric, ">=", self.utmos_min)]
        if scorer == self.dnsmos_scorer:
            return [Rule(self.dnsmos_metric, ">=", self.dnsmos_ovrl_min)]
        if scorer == self.aesthetics_scorer:
            return [Rule(axis, ">=", float(v)) for axis, v in self.aesthetics_min.items() if v is not None]
        if scorer == self.clap_scorer:
            return [Rule(self.clap_metric, ">=", self.clap_min)]
        if scorer == SIGNAL_CHECKS:
            out = [
                Rule("silence_ratio", "<=", self.max_silence_ratio),
                Rule("clipping_ratio", "<=", self.max_clipping_ratio),
                Rule("loudness_dbfs", ">=", self.min_dbfs),
                Rule("loudness_dbfs", "<=", self.max_dbfs),
                Rule("duration", ">=", self.min_duration),
            ]
            if self.max_duration is not None:
                out.append(Rule("duration", "<=", self.max_duration))
            return out
        return []

    def needs_text(self, scorer: str) -> bool:
        return scorer == self.clap_scorer


# --------------------------------------------------------------------------------------------
# the plan: which scorers decide


def modality(task: str | None) -> str | None:
    """``"speech"`` for TTS tasks, ``"music"`` for T2M/V2M, else ``None``."""
    if task in TTS_TASKS:
        return SPEECH
    if task in MUSIC_TASKS:
        return MUSIC
    return None


@dataclass(frozen=True)
class FilterPlan:
    """Per modality, the scorers that decide and the paper scorers a substitute stands in for."""

    deciders: dict[str, tuple[str, ...]]
    substitute_for: dict[str, tuple[str, ...]]
    unavailable: dict[str, str] = field(default_factory=dict)

    def for_task(self, task: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        m = modality(task)
        if m is None:
            raise QualityError(f"no quality plan for task {task!r}")
        return self.deciders[m], self.substitute_for[m]

    @property
    def scorer_names(self) -> list[str]:
        return sorted({n for names in self.deciders.values() for n in names})

    def to_dict(self) -> dict[str, Any]:
        return {
            "deciders": {m: list(v) for m, v in self.deciders.items()},
            "substitute_for": {m: list(v) for m, v in self.substitute_for.items()},
            "unavailable": dict(self.unavailable),
        }


def plan_scorers(
    available: Iterable[str],
    unavailable: Mapping[str, str] | None = None,
    cfg: QualityConfig | None = None,
) -> FilterPlan:
    """Decide which scorers judge each modality from the names the caller could load.

    ``signal_checks`` is built in and always available. ``unavailable`` maps scorer name -> why it
    could not be loaded (``ScorerUnavailable`` message); it is recorded in the plan.
    Raises :class:`QualityError` when a modality would have no scorer at all.
    """
    cfg = cfg or QualityConfig()
    avail = set(available) | {SIGNAL_CHECKS}
    unavailable = {k: str(v) for k, v in (unavailable or {}).items() if k not in avail}
    deciders: dict[str, tuple[str, ...]] = {}
    subst: dict[str, tuple[str, ...]] = {}
    for m, paper, sub in (
        (SPEECH, cfg.speech_paper, cfg.speech_substitute),
        (MUSIC, cfg.music_paper, cfg.music_substitute),
    ):
        have = [n for n in paper if n in avail]
        missing = [n for n in paper if n not in avail]
        chosen = list(have)
        if missing:
            if sub not in avail:
                why = "; ".join(f"{n}: {unavailable.get(n, 'not provided')}" for n in [*missing, sub])
                raise QualityError(
                    f"no quality scorer for {m} rows: the paper scorer(s) {missing} and the substitute "
                    f"{sub!r} are all unavailable ({why})"
                )
            if sub not in chosen:
                chosen.append(sub)
        deciders[m] = tuple(chosen)
        subst[m] = tuple(missing)
    return FilterPlan(deciders=deciders, substitute_for=subst, unavailable=unavailable)

