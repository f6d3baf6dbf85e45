"""What a benchmark run generates and how it is scored: ``BenchConfig``, the benchmarks' decoding
defaults and default scorers, and which clips a scorer judges (read from the scorer classes' metadata:
``evaluation.scorers.base.ScorerBase``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import model_validator

from evaluation import aggregate as A
from unimoe.config import ConfigError, ConfigModel

SPEECH, MUSIC = ("en_tts", "zh_tts"), ("t2m", "v2m")

# Default scorers per benchmark and task. Demo scorers ship their real weights in registry packages;
# paper scorers need the local weights store and are skipped (with the reason) when it lacks them.
# token_nll (the checkpoint's held-out token NLL on the items' ground truth) runs on the demo set, whose
# items all have ground-truth audio; name it in ``scorers`` to run it on another set.
DEFAULT_SCORERS: dict[str, dict[str, list[str]]] = {
    "demo": {"en_tts": ["pocketsphinx_wer", "resemblyzer_sim", "dnsmos", "token_nll"],
             "zh_tts": ["resemblyzer_sim", "dnsmos", "token_nll"],
             "t2m": ["music_adherence", "token_nll"], "v2m": ["music_adherence", "token_nll"]},
    "seedtts-en": {"en_tts": ["whisper_wer", "wavlm_sim", "utmos22_strong"]},
    "seedtts-zh": {"zh_tts": ["paraformer_cer", "wavlm_sim", "utmos22_strong"]},
    "librispeech-test-clean": {"en_tts": ["whisper_wer", "wavlm_sim", "utmos22_strong"]},
    "aishell3-test": {"zh_tts": ["paraformer_cer", "wavlm_sim", "utmos22_strong"]},
    "musiccaps": {"t2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"]},
    "v2m-bench": {"t2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"],
                  "v2m": ["audiobox_aesthetics", "clap", "openl3_fad", "passt", "clamp3"]},
}
# Where a scorer applies (its tasks; speaker-similarity scorers, ``needs_reference``, compare a clip with the
# voice prompt it was generated from) is the scorer class's metadata (``evaluation.scorers.base.ScorerBase``).
# Under the paper's protocol those score the clips generated from each item's own prompt, every other speech
# scorer the clips generated from the predefined voice prompt (``BenchConfig.speech_prompts``).
SPEECH_PROMPTS = ("paper", "item")
# Decoding defaults per benchmark (``BenchConfig``: None means "this benchmark's default"). The paper's
# benchmarks: greedy decoding, the mean over 3 seeds, WER/MOS from one predefined voice prompt. The demo set
# is a small offline smoke/regression set for a tiny CPU model: sampling, one seed and one generation per
# item keep a nightly run short; a nightly deployment states its own values (prefect.yaml).
# Guidance "official": the official inference's classifier-free guidance per task (10 for music, 1 for
# speech: unimoe.generation.GenerationConfig.guidance_scale=None); the demo runs without it (half the cost).
PAPER_DEFAULTS: dict[str, Any] = {"greedy": True, "seeds": [0, 1, 2], "speech_prompts": "paper",
                                  "guidance_scale": "official"}
DECODING_DEFAULTS: dict[str, dict[str, Any]] = {"demo": {"greedy": False, "seeds": [0], "speech_prompts": "item",
                                                         "guidance_scale": 0.0}}
OFFICIAL_GUIDANCE = "official"


def benchmark_defaults(benchmark: str) -> dict[str, Any]:
    """The decoding, seeds and voice-prompt protocol a benchmark runs with unless told otherwise."""
    return dict(DECODING_DEFAULTS.get(str(benchmark), PAPER_DEFAULTS))


class BenchConfig(ConfigModel):
    """Everything that changes what a run generates or how it is scored (hashed into ``config_hash``).
    ``greedy``, ``seeds`` and ``speech_prompts`` left None take the benchmark's defaults
    (``benchmark_defaults``); the resolved values are what ``to_dict`` records."""

    section = "bench"

    benchmark: str = "demo"
    seeds: list[int] | None = None        # None: the benchmark's default (paper sets 0,1,2; demo 0)
    scorers: list[str] | None = None      # None: DEFAULT_SCORERS[benchmark]
    max_items: int | None = None          # per task, the first N items (ids sorted)
    # Generation length caps. Speech: from the target text, at a slow speaking rate in UTF-8 bytes per second
    # (a CJK character is 3 bytes, so one rate serves English and Mandarin: F5-TTS sizes its durations on
    # UTF-8 byte counts the same way), plus a pad; cap = pad + bytes / rate, rounded up to whole seconds so
    # items of similar length share a batch. About twice the length of ordinary speech (~14 bytes/s), so the
    # cap ends runaway clips without cutting a slow reading short. Music: a fixed clip length (MusicCaps'
    # clips are 10 s). ``max_seconds``: a ceiling on every clip (quick runs); None: the caps alone.
    max_seconds: float | None = None
    music_seconds: float = 10.0
    speech_bytes_per_second: float = 7.0
    speech_pad_seconds: float = 2.0
    batch_size: int = 4
    # Decoding: None = the benchmark's default (greedy for the paper's sets). Greedy draws no random numbers,
    # so every seed gives the same clip; the sampling settings apply only when greedy is False.
    greedy: bool | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.95
    # a number, "official" (per task, as the official inference) or None (the benchmark's default)
    guidance_scale: float | str | None = None
    # "paper": WER/CER and MOS on clips from the benchmark's predefined voice prompt, SIM on clips from each
    # item's own prompt; "item": every speech metric on the item-prompted clip. None: the benchmark's default.
    speech_prompts: str | None = None
    # The predefined voice prompt (a file and its transcript) for every speech task; None: chosen from the
    # benchmark's own voice prompts (``predefined_voice_prompts``).
    voice_prompt_audio: str | None = None
    voice_prompt_text: str | None = None
    n_boot: int = A.N_BOOT
    set_n_boot: int = A.SET_N_BOOT
    # Also score the ground truth and its codec resynthesis (systems "ground_truth", "codec_resynth").
    toplines: bool = True

    @model_validator(mode="after")
    def _resolve_defaults(self) -> "BenchConfig":
        defaults = benchmark_defaults(self.benchmark)
        if self.greedy is None:
            self.greedy = bool(defaults["greedy"])
        if self.seeds is None:
            self.seeds = list(defaults["seeds"])
        if self.speech_prompts is None:
            self.speech_prompts = str(defaults["speech_prompts"])
        if self.guidance_scale is None:
            self.guidance_scale = defaults["guidance_scale"]
        if isinstance(self.guidance_scale, str) and self.guidance_scale != OFFICIAL_GUIDANCE:
            raise ConfigError(f"guidance_scale must be a number or {OFFICIAL_GUIDANCE!r}, got {self.guidance_scale!r}")
        if not self.seeds:
            raise ConfigError("seeds needs at least one seed")
        if self.speech_prompts not in SPEECH_PROMPTS:
            raise ConfigError(f"speech_prompts must be one of {SPEECH_PROMPTS}, got {self.speech_prompts!r}")
        if (self.voice_prompt_audio is None) != (self.voice_prompt_text is None):
            raise ConfigError("voice_prompt_audio and voice_prompt_text go together")
        if self.speech_bytes_per_second <= 0 or self.music_seconds <= 0 or self.speech_pad_seconds < 0:
            raise ConfigError("the length caps must be positive")
        return self

    def clip_seconds(self, task: str, text: str | None) -> float:
        """The generation cap of one clip (see the length-cap fields)."""
        if task in SPEECH:
            seconds = float(math.ceil(self.speech_pad_seconds
                                      + len((text or "").encode("utf-8")) / self.speech_bytes_per_second))
        else:
            seconds = float(self.music_seconds)
        return min(seconds, float(self.max_seconds)) if self.max_seconds is not None else seconds

    def decoding_label(self) -> str:
        """The decoding in words, as the result rows record it."""
        label = "greedy" if self.greedy else \
            f"sampling (temperature {self.temperature:g}, top-k {self.top_k}, top-p {self.top_p:g})"
        if self.guidance_scale == OFFICIAL_GUIDANCE:
            return label + ", guidance official (10 music, 1 speech)"
        return label + (f", guidance {self.guidance_scale:g}" if self.guidance_scale else "")

    def prompt_roles(self, task: str) -> dict[str, str]:
        """The generations a task needs: voice prompt (``item`` | ``fixed``) -> the scorers that score it
        (``all`` | ``similarity`` | ``content``). Music: one item-conditioned clip for every scorer."""
        if task not in SPEECH or self.speech_prompts == "item":
            return {"item": "all"}
        # model scorers (token NLL) judge the checkpoint on the ground truth, not a generated clip
        names = [n for n in self.scorers_for(task) if not is_model_scorer(n)]
        roles = {}
        if any(scorer_role(n) == "similarity" for n in names):
            roles["item"] = "similarity"
        if any(scorer_role(n) == "content" for n in names) or not roles:
            roles["fixed"] = "content"
        return roles

    @property
    def topline_seed(self) -> int:
        """The seed topline rows are recorded under (they do not depend on the seed): the first one."""
        return int(self.seeds[0]) if self.seeds else 0

    def scorers_for(self, task: str) -> list[str]:
        if self.scorers is None:
            return list(DEFAULT_SCORERS.get(self.benchmark, {}).get(task, []))
        return [s for s in self.scorers if task in scorer_tasks(s)]

    def generation(self, seed: int, max_frames: int):
        from unimoe.generation import GenerationConfig

        guidance = None if self.guidance_scale == OFFICIAL_GUIDANCE else self.guidance_scale
        return GenerationConfig(max_frames=max_frames, guidance_scale=guidance, greedy=bool(self.greedy),
                                temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=seed)


def _scorer_class(name: str):
    """The registered class of scorer ``name``; None for a name not registered here (or whose module cannot
    be imported): it then applies to every task and judges the clips a content scorer judges."""
    from evaluation.scorers import scorer_class

    try:
        return scorer_class(name)
    except (KeyError, ImportError):
        return None


def scorer_tasks(name: str) -> tuple[str, ...]:
    """The tasks scorer ``name`` can judge (an explicit ``scorers`` list is applied where it makes sense)."""
    cls = _scorer_class(name)
    return tuple(cls.tasks) if cls is not None else SPEECH + MUSIC


def is_model_scorer(name: str) -> bool:
    """Whether scorer ``name`` judges the checkpoint itself (token NLL) rather than a clip."""
    from evaluation.scorers.base import ModelScorer

    cls = _scorer_class(name)
    return cls is not None and issubclass(cls, ModelScorer)


def scorer_role(scorer: str) -> str:
    """Which speech generation a scorer judges under the paper's protocol (``BenchConfig.prompt_roles``):
    the item-prompted clips for a scorer that compares with the voice prompt, else the fixed-prompt ones."""
    cls = _scorer_class(scorer)
    return "similarity" if cls is not None and cls.needs_reference else "content"


def scores_row(scorer: str, row: dict) -> bool:
    """Whether ``scorer`` judges this row of a scoring index (rows without a role serve every scorer)."""
    role = row.get("scored_by") or "all"
    return role == "all" or role == scorer_role(scorer)



def score_plan(rec: dict[str, Any]) -> dict[str, list[str]]:
    """Scorer name -> the run's tasks it scores."""
    cfg = BenchConfig.from_dict(rec["config"])
    plan: dict[str, list[str]] = {}
    for task in rec["tasks"]:
        for s in cfg.scorers_for(task):
            plan.setdefault(s, []).append(task)
    return plan
