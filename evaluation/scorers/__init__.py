"""Scorers: one module per metric family behind one small interface (see ``base``)."""

from evaluation.scorers.base import (
    AudioItem,
    Scorer,
    ScorerUnavailable,
    available_scorers,
    load_scorer,
    load_scorers,
    register,
)

__all__ = ["AudioItem", "Scorer", "ScorerUnavailable", "available_scorers", "load_scorer", "load_scorers", "register"]
