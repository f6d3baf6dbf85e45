"""Scorers: one module per metric family behind one small interface (see ``base``)."""

from evaluation.scorers.base import (
    AudioItem,
    ModelScorer,
    Scorer,
    ScorerUnavailable,
    available_scorers,
    is_model_scorer,
    load_scorer,
    load_scorers,
    register,
    scorer_class,
    scorer_resources,
)

__all__ = ["AudioItem", "ModelScorer", "Scorer", "ScorerUnavailable", "available_scorers", "is_model_scorer",
           "load_scorer", "load_scorers", "register",
           "scorer_class", "scorer_resources"]
