"""The intervals of the regression gate (``evaluation.regression``, whose docstring states the rules):
rule 1, the paired item bootstrap (items, and seeds when there are several, resampled with replacement:
Owen 2007's pigeonhole bootstrap) as Hesterberg's expanded percentile interval; rule 2, the paired
half-subsample interval of a set-level metric; rule 3, the unpaired fallback from the runs' own CIs."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from evaluation import aggregate as A
from evaluation.metrics import bootstrap_ci, subsample_interval

N_BOOT = 2000        # paired item-bootstrap resamples (rule 1)
N_SUB = 500          # paired half-subsamples (rule 2)
ALPHA = 0.05         # two-sided level of the intervals: 95%
BOOT_SEED = 0


def is_finite(x: Any) -> bool:
    """A number that is finite (None, NA and non-numbers are not)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def paired_item_interval(baseline: np.ndarray, candidate: np.ndarray, *, n_boot: int = N_BOOT, alpha: float = ALPHA,
                         seed: int = BOOT_SEED, resample_seeds: bool = True) -> dict[str, Any]:
    """Rule 1 on two ``[items, seeds]`` matrices aligned by item and seed (NaN = no score). Only the
    cells finite on both sides are used. Returns delta (mean over seeds of the per-seed mean item
    difference), its percentile-bootstrap interval (items resampled with replacement, and with two or
    more seeds and ``resample_seeds`` the seed columns too, independently: see
    ``evaluation.regression``, rule 1), the baseline mean over the same pairs, n_items and n_pairs."""
    b, c = np.asarray(baseline, np.float64), np.asarray(candidate, np.float64)
    if b.shape != c.shape or b.ndim != 2:
        raise ValueError(f"baseline {b.shape} and candidate {c.shape} must be the same [items, seeds] shape")
    both = np.isfinite(b) & np.isfinite(c)
    keep = both.any(axis=1)
    b, c, both = np.where(both, b, np.nan)[keep], np.where(both, c, np.nan)[keep], both[keep]
    n_items, n_pairs = int(b.shape[0]), int(both.sum())
    out = dict(delta=math.nan, lo=math.nan, hi=math.nan, baseline_mean=math.nan, candidate_mean=math.nan,
               n_items=n_items, n_pairs=n_pairs)
    if n_items == 0:
        return out
    diff = c - b
    out.update(delta=A.seed_mean(diff), baseline_mean=A.seed_mean(b), candidate_mean=A.seed_mean(c))
    if n_items >= 2 and resample_seeds and diff.shape[1] >= 2:
        n_eff = effective_n(diff)
        out["lo"], out["hi"] = two_way_bootstrap_ci(diff, n_boot=n_boot, alpha=expanded_alpha(alpha, n_eff), seed=seed)
    elif n_items >= 2:
        out["lo"], out["hi"] = bootstrap_ci(diff, statistic=A.seed_mean, n_boot=n_boot,
                                            alpha=expanded_alpha(alpha, n_items), seed=seed)
    return out


def effective_n(matrix: np.ndarray) -> float:
    """The sample size that sets the interval's tails for ``seed_mean`` of ``[items, seeds]``: 1 +
    Welch-Satterthwaite degrees of freedom of its variance, item part var(row means)/n (n - 1 df) plus
    seed part var(column means)/S (S - 1 df). Seed-independent scores give n (as items alone); a seed
    effect that dominates gives about S, so 3 seeds cannot make a seed-sized change look significant."""
    m = np.asarray(matrix, np.float64)
    rows, cols = np.nanmean(m, axis=1), np.nanmean(m, axis=0)
    rows, cols = rows[np.isfinite(rows)], cols[np.isfinite(cols)]
    n, s = rows.size, cols.size
    if n < 2:
        return float(n)
    v_i = float(np.var(rows, ddof=1)) / n
    v_s = float(np.var(cols, ddof=1)) / s if s >= 2 else 0.0
    if v_s <= 0 or s < 2:
        return float(n)
    if v_i <= 0:
        return float(s)
    df = (v_i + v_s) ** 2 / (v_i ** 2 / (n - 1) + v_s ** 2 / (s - 1))
    return 1.0 + float(df)


def two_way_bootstrap_ci(matrix: np.ndarray, *, n_boot: int = N_BOOT, alpha: float = ALPHA,
                         seed: int = BOOT_SEED) -> tuple[float, float]:
    """Percentile interval of ``seed_mean`` over ``[items, seeds]`` when each resample draws the items
    and, independently, the seed columns with replacement (the pigeonhole bootstrap, Owen 2007)."""
    m = np.asarray(matrix, np.float64)
    n, s = m.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for start in range(0, n_boot, 256):  # chunks bound the [chunk, items, seeds] gather's memory
        k = min(256, n_boot - start)
        ii, ss = rng.integers(0, n, (k, n)), rng.integers(0, s, (k, s))
        stats[start:start + k] = A.seed_mean.batched(m[ii[:, :, None], ss[:, None, :]])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def expanded_alpha(alpha: float, n: float) -> float:
    """The percentile level of Hesterberg's expanded percentile interval for ``n`` items: alpha' with
    z(1 - alpha'/2) = sqrt(n / (n - 1)) * t(n - 1, 1 - alpha/2) (``alpha`` itself for n < 2)."""
    from scipy import stats

    if n < 2:
        return alpha
    z = math.sqrt(n / (n - 1)) * float(stats.t.ppf(1 - alpha / 2, n - 1))
    return max(float(2 * stats.norm.sf(z)), 1e-12)


def paired_subsample_interval(baseline: np.ndarray, candidate: np.ndarray, statistic: Callable[[np.ndarray], float],
                              *, m: int | None = None, n_sub: int = N_SUB, alpha: float = ALPHA,
                              seed: int = BOOT_SEED) -> dict[str, Any]:
    """Rule 2: the interval of ``statistic(candidate) - statistic(baseline)`` for a SET-level statistic,
    from ``n_sub`` common subsets of ``m`` items (default n // 2) drawn without replacement (see
    ``evaluation.regression``, rule 2, for the sqrt(m / (n - m)) scaling and the centring). ``baseline``
    and ``candidate`` are ``[n, ...]`` per-item inputs aligned by item (embeddings, posteriors,
    ``[n, seeds, 2]`` error counts...); ``statistic`` may carry ``.batched`` (``[B, m, ...] -> [B]``)."""
    b, c = np.asarray(baseline), np.asarray(candidate)
    if b.shape[0] != c.shape[0]:
        raise ValueError(f"baseline ({b.shape[0]}) and candidate ({c.shape[0]}) need one row per item, aligned")
    n = int(b.shape[0])
    out = dict(delta=math.nan, lo=math.nan, hi=math.nan, baseline_value=math.nan, candidate_value=math.nan,
               n_items=n, m=0, scale=math.nan)
    if n == 0:
        return out
    bv, cv = float(statistic(b)), float(statistic(c))
    out.update(delta=cv - bv, baseline_value=bv, candidate_value=cv)

    def difference(i: np.ndarray) -> float:  # the same subset i of items on both sides
        return float(statistic(c[i])) - float(statistic(b[i]))

    batched = getattr(statistic, "batched", None)
    if batched is not None:
        difference.batched = lambda ii: (np.asarray(batched(c[ii]), np.float64)  # type: ignore[attr-defined]
                                         - np.asarray(batched(b[ii]), np.float64))
    res = subsample_interval(np.arange(n), difference, point=cv - bv, m=m, n_sub=n_sub, alpha=alpha,
                             seed=seed, center=np.mean)
    out.update(lo=res.lo, hi=res.hi, m=res.m, scale=res.scale)
    return out


def unpaired_fallback_interval(value: float, ci_low: float, ci_high: float, baseline_value: float,
                               baseline_ci_low: float, baseline_ci_high: float) -> tuple[float, float, float]:
    """Rule 3: ``(delta, lo, hi)`` with ``delta +- sqrt(h_c^2 + h_b^2)`` from the runs' own CI half-widths."""
    delta = float(value) - float(baseline_value)
    if not (is_finite(ci_low) and is_finite(ci_high)):
        return delta, math.nan, math.nan  # no CI: the threshold alone decides
    half2 = ((float(ci_high) - float(ci_low)) / 2) ** 2
    if is_finite(baseline_ci_low) and is_finite(baseline_ci_high):
        half2 += ((float(baseline_ci_high) - float(baseline_ci_low)) / 2) ** 2
    half = math.sqrt(half2)
    return delta, delta - half, delta + half
