"""What the speaker-similarity scorers (wavlm_sim, resemblyzer_sim) share: the cosine of the generated
clip's and the voice prompt's embeddings, per item, a failing item NaN and the others still counted.
A subclass sets ``metric`` and implements ``embed``."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from evaluation.scorers.base import SPEECH, AudioItem, Scorer


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class SpeakerSimilarityScorer(Scorer):
    """Cosine between speaker embeddings of the generated clip and its prompt (higher is better)."""

    metric: ClassVar[str]
    tasks = SPEECH
    needs_reference = True  # the voice prompt the clip was generated from

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """The speaker embedding of one clip (raises ValueError when the clip cannot be embedded)."""
        raise NotImplementedError

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        return self.score_each(items, self.similarity)

    def similarity(self, item: AudioItem) -> dict[str, float]:
        if item.reference is None:
            raise ValueError("no prompt audio (AudioItem.reference)")
        ref_sr = item.reference_sample_rate or item.sample_rate
        return {self.metric: cosine(self.embed(item.wav, item.sample_rate), self.embed(item.reference, ref_sr))}
