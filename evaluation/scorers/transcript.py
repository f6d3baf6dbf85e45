"""What the ASR error-rate scorers (whisper_wer, paraformer_cer, pocketsphinx_wer) share: checking an
item, the per-item metric dict, and scoring a batch so that one bad clip is NaN and the others count.

A subclass sets ``metric`` and ``language`` (the normaliser's language, and the only item language it
accepts) and implements ``recognise`` (one clip) or, to batch, ``recognise_all``. Mandarin scorers also
carry ``zh_rule`` (``evaluation.text.ZH_RULES``; default the seed-tts-eval rule: reference as written,
hypothesis converted to simplified characters, one token per character, Latin letters included).
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

from evaluation.metrics import utterance_rate
from evaluation.scorers.base import AudioItem, Scorer
from evaluation.text import DEFAULT_ZH_RULE, check_zh_rule, normalize_pair

log = logging.getLogger(__name__)


class TranscriptScorer(Scorer):
    """Utterance error rate of a recognised transcript against ``AudioItem.text`` (lower is better), with
    ``<metric>_errors`` and ``<metric>_ref_len`` for the corpus rate (evaluation.metrics.corpus_rate)."""

    metric: ClassVar[str]
    needs_text = True
    language: ClassVar[str]  # "en" | "zh"
    zh_rule: str = DEFAULT_ZH_RULE  # Mandarin CER rule (evaluation.text); an instance may override it

    def __init_subclass__(cls, **kwargs):
        # an ASR scorer judges the TTS task of its language (en -> en_tts, zh -> zh_tts) unless it says otherwise
        super().__init_subclass__(**kwargs)
        if "tasks" not in cls.__dict__ and "language" in cls.__dict__:
            cls.tasks = (f"{cls.language}_tts",)

    @classmethod
    def edit_counts(cls, ref: str, hyp: str | None, zh_rule: str | None = None) -> tuple[int, int]:
        """``(S + D + I, reference tokens)`` after :func:`evaluation.text.normalize_pair`, aligned with
        jiwer (as seed-tts-eval's ``process_words``)."""
        r, h = (x.split() for x in normalize_pair(ref, hyp, cls.language,
                                                  zh_rule=check_zh_rule(zh_rule or cls.zh_rule)))
        if not r or not h:
            return max(len(r), len(h)), len(r)
        import jiwer

        out = jiwer.process_words(" ".join(r), " ".join(h))
        return int(out.substitutions + out.deletions + out.insertions), len(r)

    @classmethod
    def score_transcript(cls, ref: str, hyp: str, *, zh_rule: str | None = None) -> dict[str, float]:
        """The per-item metric dict for a given hypothesis (separate from recognition, for testing).
        ``zh_rule``: the Mandarin rule (default: the class's, seed-tts-eval)."""
        errors, n = cls.edit_counts(ref, hyp, zh_rule)
        if n == 0:
            raise ValueError("reference transcript is empty after normalisation")
        m = cls.metric
        return {m: utterance_rate(errors, n), f"{m}_errors": float(errors), f"{m}_ref_len": float(n)}

    def check_item(self, item: AudioItem) -> None:
        """ValueError when the item cannot be scored, whatever is recognised."""
        if not item.text:
            raise ValueError("no reference transcript (AudioItem.text)")
        if item.language not in (None, self.language):
            raise ValueError(f"language {item.language!r}: {self.name} scores {self.language!r} only")
        # rejects references that normalise to nothing
        self.score_transcript(item.text, "", zh_rule=self.zh_rule)

    def recognise(self, item: AudioItem) -> str:
        """The raw transcript of one clip."""
        raise NotImplementedError

    def recognise_all(self, items: list[AudioItem]) -> list[str | None]:
        """Transcripts in order; None where recognition failed (logged)."""
        return self.score_each(items, self.recognise, failed=lambda: None)

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        m = self.metric
        out = [{m: math.nan, f"{m}_errors": math.nan, f"{m}_ref_len": math.nan} for _ in items]
        ready: list[int] = []
        for i, item in enumerate(items):
            try:
                self.check_item(item)
                ready.append(i)
            except ValueError as e:
                log.warning("%s: item %r not scored (NaN): %s", self.name, item.id, e)
                self.note_failure(item.id, e)
        for i, hyp in zip(ready, self.recognise_all([items[i] for i in ready])):
            if hyp is None:
                self.note_failure(items[i].id, "recognition failed (see the log)")  # kept if a reason came first
            else:
                out[i] = self.score_transcript(items[i].text, hyp, zh_rule=self.zh_rule)
                log.debug("%s: %r -> %r", self.name, items[i].id, hyp)
        return out
