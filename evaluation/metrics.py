"""Public metric functions of the benchmark suite: error rates, Fréchet distance, KL, IS, bootstrap CIs.

Conventions (also recorded with results):

- **Error rates** (:func:`error_rates`, :func:`edit_counts`): both sides normalised with
  :func:`evaluation.text.normalize` (Seed-TTS-eval rules), then word-level Levenshtein alignment with
  ``jiwer``. For ``lang="en"`` tokens are words (WER); for ``lang="zh"`` the normaliser has already
  split the text into characters, so the same word-level alignment gives the CER. ``mean_utterance``
  is the mean of per-utterance rates (what Seed-TTS-eval publishes); ``corpus`` is
  ``sum(S+D+I) / sum(N)``.
  *Empty references* (empty after normalisation): an utterance rate is undefined (NaN) and the
  utterance is left out of ``mean_utterance``; its edits (all insertions) still count in the corpus
  numerator, and it adds 0 to the denominator. If every reference is empty both results are NaN.
- **Fréchet distance** (FAD): ``|mu1-mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` of Gaussian fits
  (sample covariance, ``ddof=1``), computed as in pytorch-fid / ``frechet_audio_distance``: when
  ``sqrtm`` is not finite (singular product), ``eps * I`` is added to both covariances and it is
  recomputed; a complex result whose diagonal has an imaginary part above 1e-3 is an error, otherwise
  the real part is used. :func:`frechet_distance_from_frames` is the audio form: each clip gives an
  array of frame embeddings and the Gaussians are fitted to ALL frames of a set, pooled across clips
  (stable-audio-metrics ``openl3_fd``: every 0.5 s OpenL3 frame is one sample), not to one mean per clip.
- **KL** on class posteriors, paired rows, mean over rows, natural log. Two directions, named:
  :func:`kl_gen_ref` = ``KL(p_gen || p_ref)`` with ``eps = 1e-6`` added to the reference only and no
  renormalisation, ``0 log 0 = 0`` -- what stable-audio-metrics ``passt_kld`` computes
  (``F.kl_div(log(p_ref + 1e-6), p_gen, reduction="sum")``), the KL of the paper's music metric set
  (arXiv 2510.13344); as there, identical posteriors give ``sum p log(p / (p + eps))`` ~= ``-C * eps``,
  not 0 (C classes: -5.3e-4 for PaSST's 527). :func:`kl_ref_gen` = ``KL(p_ref || p_gen)`` (audiocraft's direction), each row
  clipped to ``[eps, 1]`` and renormalised first, so a zero in ``p_gen`` gives a large finite value.
- **Inception score**: ``exp(E_x[KL(p(y|x) || p(y))])`` over each of ``splits`` parts of a seeded
  shuffle of the rows; mean and std (``ddof=0``) over the parts. ``0 log 0 = 0``.
- **Bootstrap CI** (:func:`bootstrap_ci`): percentile bootstrap over items (rows resampled with
  replacement; ``scipy.stats.bootstrap``), for statistics that are means of per-item values.
- **Half-sample CI** (:func:`subsample_ci`): for SET-level statistics (FAD, IS, KL over a set). A
  resample with replacement duplicates items, which shrinks a covariance (FAD goes up), repeats
  posteriors (IS) and so on: the resampled statistic is not distributed around the full-set value and
  the percentile interval can exclude it. Instead subsets of ``m = n // 2`` distinct items are drawn
  (without replacement, the delete-n/2 jackknife / half-sampling of Politis, Romano & Wolf,
  "Subsampling", 1999), their deviations from their own median are scaled by ``sqrt(m / (n - m))``
  (finite-population correction: exactly 1 for ``m = n/2``) and put around the full-set value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import linalg
from scipy.special import rel_entr

from evaluation.text import normalize

__all__ = [
    "bootstrap_ci",
    "edit_counts",
    "error_rates",
    "frechet_distance",
    "frechet_distance_from_frames",
    "frechet_from_stats",
    "gaussian_stats",
    "inception_score",
    "kl_gen_ref",
    "kl_ref_gen",
    "pool_frames",
    "subsample_ci",
    "subsample_interval",
]


# ------------------------------------------------------------------------------------------------------
# Error rates
# ------------------------------------------------------------------------------------------------------


def _edits(ref_tokens: list[str], hyp_tokens: list[str]) -> int:
    """Levenshtein distance (S + D + I) between token lists, via jiwer."""
    if not ref_tokens:
        return len(hyp_tokens)
    if not hyp_tokens:
        return len(ref_tokens)
    import jiwer

    out = jiwer.process_words(" ".join(ref_tokens), " ".join(hyp_tokens))
    return int(out.substitutions + out.deletions + out.insertions)


def edit_counts(ref: str, hyp: str | None, lang: str) -> tuple[int, int]:
    """``(errors, ref_len)`` of one utterance after normalisation: S + D + I and the number of
    reference tokens (words for en, characters for zh). ``hyp=None`` counts as an empty hypothesis."""
    r = normalize(ref or "", lang).split()
    h = normalize(hyp or "", lang).split()
    return _edits(r, h), len(r)


def utterance_rate(errors: int, ref_len: int) -> float:
    """``errors / ref_len``; NaN when the reference is empty (undefined)."""
    return errors / ref_len if ref_len > 0 else math.nan


def error_rates(refs: Sequence[str], hyps: Sequence[str | None], lang: str) -> dict[str, float]:
    """WER (en) or CER (zh): ``{"mean_utterance": ..., "corpus": ...}`` (see the module doc for the
    empty-reference rule). Empty input gives NaN for both."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    counts = [edit_counts(r, h, lang) for r, h in zip(refs, hyps)]
    rates = [utterance_rate(e, n) for e, n in counts if n > 0]
    total_n = sum(n for _, n in counts)
    return {
        "mean_utterance": float(np.mean(rates)) if rates else math.nan,
        "corpus": sum(e for e, _ in counts) / total_n if total_n > 0 else math.nan,
    }


# ------------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------------


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and sample covariance ``[D, D]`` (``ddof=1``) of embeddings ``x [N, D]`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's computation)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # scipy warns on singular products (e.g. fewer items than dimensions); as in the reference
        # implementations only a non-finite result triggers the eps*I retry.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has an imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussian fits of embedding sets ``a [N, D]`` and ``b [M, D]``."""
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b), eps=eps)


def pool_frames(clips: Sequence[np.ndarray]) -> np.ndarray:
    """All frame embeddings of a set of clips, ``[sum of T_i, D]``: each clip is ``[T_i, D]`` (a clip with
    no frames adds nothing); every clip must have the same ``D``."""
    arrays = [np.asarray(c, dtype=np.float64) for c in clips]
    if not arrays:
        raise ValueError("no clips")
    for a in arrays:
        if a.ndim != 2:
            raise ValueError(f"each clip's frame embeddings must be [frames, dims], got shape {a.shape}")
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise ValueError(f"clips have different embedding sizes: {sorted(dims)}")
    return np.concatenate(arrays, axis=0)


def frechet_distance_from_frames(gen: list[np.ndarray], ref: list[np.ndarray], eps: float = 1e-6) -> float:
    """FAD as stable-audio-metrics computes it: the Fréchet distance between Gaussians fitted to ALL
    frame embeddings of the generated clips and of the reference clips (each array ``[frames, dims]``
    for one clip). A long clip weighs more than a short one, as in the reference implementation."""
    return frechet_distance(pool_frames(gen), pool_frames(ref), eps=eps)


# ------------------------------------------------------------------------------------------------------
# Class-posterior metrics
# ------------------------------------------------------------------------------------------------------


def _probs(p: Any, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"{name} must be [N, C], got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"{name} must hold finite, non-negative probabilities")
    return p


def _clip_renorm(p: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(p, eps, 1.0)
    return p / p.sum(axis=1, keepdims=True)


STABLE_AUDIO_KL_EPS = 1e-6  # stable-audio-metrics passt_kld: added to the reference posteriors


def _paired(p_gen: Any, p_ref: Any) -> tuple[np.ndarray, np.ndarray]:
    g, r = _probs(p_gen, "p_gen"), _probs(p_ref, "p_ref")
    if r.shape != g.shape:
        raise ValueError(f"p_gen {g.shape} and p_ref {r.shape} must have the same shape (paired rows)")
    return g, r


def kl_gen_ref(p_gen: np.ndarray, p_ref: np.ndarray, eps: float = STABLE_AUDIO_KL_EPS) -> float:
    """Mean over paired rows of ``KL(p_gen || p_ref + eps)`` (natural log): stable-audio-metrics'
    direction and epsilon (on the reference only, not renormalised); ``0 log 0 = 0`` on the generated side."""
    g, r = _paired(p_gen, p_ref)
    if g.shape[0] == 0:
        return math.nan
    # xlogy-style: rel_entr(g, q) = g log(g / q), 0 where g == 0 (torch.kl_div's convention)
    return float(np.mean(rel_entr(g, r + eps).sum(axis=1)))


def kl_ref_gen(p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over paired rows of ``KL(p_ref || p_gen)`` (natural log; audiocraft's direction), rows
    clipped to ``[eps, 1]`` and renormalised first (the project's earlier default, kept as an option)."""
    g, r = _paired(p_gen, p_ref)
    if r.shape[0] == 0:
        return math.nan
    r, g = _clip_renorm(r, eps), _clip_renorm(g, eps)
    return float(np.mean(np.sum(r * (np.log(r) - np.log(g)), axis=1)))


def inception_score(probs: np.ndarray, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of ``exp(mean_x KL(p(y|x) || p(y)))`` over ``splits`` parts of the rows
    shuffled with ``numpy.random.default_rng(seed)``; ``p(y)`` is the mean posterior of each part."""
    p = _probs(probs, "probs")
    if splits < 1 or p.shape[0] < splits:
        raise ValueError(f"need 1 <= splits <= N, got splits={splits}, N={p.shape[0]}")
    p = p / p.sum(axis=1, keepdims=True)
    p = p[np.random.default_rng(seed).permutation(p.shape[0])]
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        scores.append(math.exp(float(np.mean(rel_entr(part, py).sum(axis=1)))))
    return float(np.mean(scores)), float(np.std(scores))


# ------------------------------------------------------------------------------------------------------
# Uncertainty
# ------------------------------------------------------------------------------------------------------


def _stat_of_indices(values: np.ndarray,
                     statistic: Callable[[np.ndarray], float]) -> Callable[..., np.ndarray]:
    """``statistic`` over index sets ``[B, k] -> [B]``: ``statistic.batched`` on all of them at once when it
    has one (``[B, k, ...] -> [B]``: no Python call per resample, which dominated cached benchmark
    re-runs), else one call per row."""
    batched = getattr(statistic, "batched", None)

    def stat(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        if batched is not None:
            return np.asarray(batched(values[idx]), dtype=np.float64)
        return np.array([float(statistic(values[i])) for i in idx])

    return stat


def _check_interval_args(values: Any, alpha: float, count_name: str, count: int) -> np.ndarray:
    """``values`` as an array of per-item rows; ValueError for a scalar, ``alpha`` outside (0, 1) or fewer
    than one resample (``count``, the caller's ``count_name``)."""
    v = np.asarray(values)
    if v.ndim == 0:
        raise ValueError("values must be a 1-D array or a sequence of per-item rows")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if count < 1:
        raise ValueError(f"{count_name} must be >= 1, got {count}")
    return v


def bootstrap_ci(
    values: Any,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap ``(lo, hi)`` of ``statistic`` at level ``1 - alpha`` (``scipy.stats.bootstrap``).

    ``values`` is a 1-D array of per-item values or ``[N, ...]`` per-item rows (e.g. ``(errors,
    ref_len)`` pairs for a corpus rate); items (rows) are resampled with replacement ``n_boot`` times
    (scipy resamples item indices, drawn from ``numpy.random.default_rng(seed)``) and each resample is
    passed whole to ``statistic`` (or all at once to ``statistic.batched``, when it has one). No items
    -> ``(nan, nan)``; a NaN statistic in any resample -> ``(nan, nan)``.
    """
    from scipy.stats import DegenerateDataWarning, bootstrap

    v = _check_interval_args(values, alpha, "n_boot", n_boot)
    n = v.shape[0]
    if n == 0:
        return math.nan, math.nan
    if n == 1:  # scipy needs two items; every resample of one item is that item
        t = float(statistic(v))
        return t, t
    with warnings.catch_warnings():
        # scipy warns (about BCa) when a resample's statistic is NaN; the NaN interval says so already
        warnings.simplefilter("ignore", DegenerateDataWarning)
        res = bootstrap((np.arange(n),), _stat_of_indices(v, statistic), n_resamples=n_boot,
                        confidence_level=1 - alpha, method="percentile", vectorized=True,
                        rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


MIN_SUBSAMPLE_ITEMS = 4  # below this there are too few distinct half-samples for an interval


class SubsampleInterval(NamedTuple):
    lo: float
    hi: float
    m: int  # subset size; 0 when there is no interval
    scale: float  # sqrt(m / (n - m)); NaN when there is no interval


def subsample_interval(
    values: Any,
    statistic: Callable[[np.ndarray], float],
    *,
    point: float | None = None,
    m: int | None = None,
    n_sub: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    center: Callable[[np.ndarray], Any] = np.median,
) -> SubsampleInterval:
    """Half-sample interval at level ``1 - alpha`` of a SET-level ``statistic`` around its full-set value
    ``T_n`` (``point``, computed here when not given), with the subset size and scale it used.

    ``values`` is ``[N, ...]`` per-item rows (a 1-D index array works: the statistic then maps indices to
    its own data). ``n_sub`` subsets of ``m`` distinct items (default ``N // 2``) are drawn without
    replacement, each passed to ``statistic`` (or all at once to ``statistic.batched``), giving ``T_m``.
    With ``s = sqrt(m / (N - m))`` and ``q`` the ``alpha/2``, ``1 - alpha/2`` percentiles of
    ``T_m - center(T_m)``, the interval is ``[T_n - s * q_hi, T_n - s * q_lo]``.

    Why: a statistic that is asymptotically linear in the items has ``Var(T_m - T_n) = sigma^2 (1/m - 1/n)``
    on subsets drawn without replacement, and ``Var(T_n) = sigma^2 / n``, so ``s`` maps the spread of the
    subset values onto that of ``T_n`` (Politis & Romano's subsampling with the finite-population
    correction; ``s = 1`` for ``m = N/2``). Non-linear set statistics are biased by the set size (FAD on
    ``m`` items is larger than on ``N``), so the deviations are taken from the subsets' own centre rather
    than from ``T_n``; the median (the default ``center``) makes ``q_lo <= 0 <= q_hi``, so the interval
    always contains ``T_n`` however skewed ``T_m`` is. Items are never duplicated, unlike a bootstrap with
    replacement, whose duplicates inflate FAD so much that its interval can lie entirely above ``T_n``.

    No interval (``(nan, nan, 0, nan)``) with fewer than ``MIN_SUBSAMPLE_ITEMS`` items, a non-finite ``T_n``
    or fewer than two finite subset values (non-finite ones are left out).
    """
    none = SubsampleInterval(math.nan, math.nan, 0, math.nan)
    v = _check_interval_args(values, alpha, "n_sub", n_sub)
    n = int(v.shape[0])
    if n < MIN_SUBSAMPLE_ITEMS:
        return none
    m = n // 2 if m is None else int(m)
    if not 1 <= m < n:
        raise ValueError(f"subset size m must be in [1, n), got m={m}, n={n}")
    t_n = float(statistic(v)) if point is None else float(point)
    if not math.isfinite(t_n):
        return none
    # m distinct items per row: the first m of a random permutation
    idx = np.argsort(np.random.default_rng(seed).random((n_sub, n)), axis=1)[:, :m]
    t_m = _stat_of_indices(v, statistic)(idx)
    t_m = t_m[np.isfinite(t_m)]
    if t_m.size < 2:
        return none
    q_lo, q_hi = np.percentile(t_m - center(t_m), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    s = math.sqrt(m / (n - m))
    return SubsampleInterval(t_n - s * float(q_hi), t_n - s * float(q_lo), m, s)


def subsample_ci(values: Any, statistic: Callable[[np.ndarray], float],
                 **options: Any) -> tuple[float, float]:
    """``(lo, hi)`` of :func:`subsample_interval` (same keyword options: ``point``, ``m``, ``n_sub``,
    ``alpha``, ``seed``), with the deviations taken from the median of the subset values."""
    res = subsample_interval(values, statistic, **options)
    return res.lo, res.hi
