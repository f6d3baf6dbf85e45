"""Aggregation of per-item scores into the benchmark's numbers, with 95% bootstrap CIs.

Rules (also in the README; every aggregate row records its scorer, scorer version and seeds):

1. Per-item metrics (WER per utterance, SIM, UTMOS, DNSMOS, PC/PQ/CE, CLAP, adherence, ...):
   value = mean over seeds of (mean over items of that seed). The paper generates with 3 seeds and
   averages them. An item that could not be scored (NaN) is left out of its seed's mean; ``n`` is the
   number of items with at least one finite score. For a WER/CER this is the published "mean of
   per-utterance error rates" (Seed-TTS-eval).
2. Corpus error rates: for an error-rate metric ``M`` whose scorer also returns ``M_errors`` and
   ``M_ref_len`` per item, ``M_corpus`` = mean over seeds of (sum of errors / sum of reference
   lengths over items). It is a separate metric (``wer_corpus``, ``cer_corpus``,
   ``wer_pocketsphinx_corpus``); the count columns themselves are not aggregates.
3. Set-level metrics (FAD, KL, IS: ``SetScorer.compare`` over per-item embeddings/posteriors):
   value = mean over seeds of compare(generated set of that seed, reference set). Generated and
   reference entries are aligned by item (paired KL). An item's entry is a vector (PaSST posteriors:
   the set is an ``[items, D]`` array) or an array of frame embeddings (OpenL3: an object array of
   ``[frames, D]`` arrays, pooled by ``compare``); see :func:`item_rows`.
4. 95% CI. Per-item metrics (rules 1 and 2): percentile bootstrap over ITEMS
   (``evaluation.metrics.bootstrap_ci``): items are resampled with replacement (the same items for
   every seed) and the whole aggregate is recomputed on each resample, ``n_boot`` resamples.
   Set-level metrics (rule 3): half-sample interval over ITEMS (``evaluation.metrics.subsample_ci``):
   ``n_boot`` subsets of n // 2 distinct items (the same items for every seed and for the paired
   reference entries), the rule-3 value recomputed on each, deviations from their median scaled by
   sqrt(m / (n - m)) and placed around the full-set value. A bootstrap WITH replacement is biased for
   these statistics (duplicated items shrink a covariance, so resampled FAD is inflated; its interval
   could exclude the point value), the half-sample interval always contains it. Fewer than 4 items:
   no interval (NaN). Set-level metrics default to fewer resamples (``SET_N_BOOT``) because every one
   refits the set statistic. Seeds are not resampled: they are averaged, as in the paper. Fixed RNG
   seed, so CIs are reproducible.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd

from evaluation.metrics import bootstrap_ci, subsample_ci

ERRORS_SUFFIX, REF_LEN_SUFFIX, CORPUS_SUFFIX = "_errors", "_ref_len", "_corpus"
N_BOOT = 1000
SET_N_BOOT = 200
BOOT_SEED = 0


def _nanmean(x: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, which is what we want
        return np.nanmean(x, axis=axis)


def seed_mean(matrix: np.ndarray) -> float:
    """Rule 1 on an ``[items, seeds]`` matrix: mean over seeds of the per-seed item means."""
    return float(_nanmean(_nanmean(matrix, axis=0)))


def corpus_rate(pairs: np.ndarray) -> float:
    """Rule 2 on ``[items, seeds, 2]`` (errors, reference length): mean over seeds of the pooled rate."""
    return float(_corpus_rate_batched(pairs[None])[0])


def _seed_mean_batched(matrices: np.ndarray) -> np.ndarray:
    """``seed_mean`` of each of ``[B, items, seeds]`` (bootstrap resamples at once)."""
    return _nanmean(_nanmean(matrices, axis=1), axis=1)


def _corpus_rate_batched(pairs: np.ndarray) -> np.ndarray:
    """``corpus_rate`` of each of ``[B, items, seeds, 2]``."""
    errors, lengths = np.nansum(pairs[..., 0], axis=1), np.nansum(pairs[..., 1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(lengths > 0, errors / np.where(lengths > 0, lengths, 1), np.nan)
    return _nanmean(rates, axis=1)


seed_mean.batched = _seed_mean_batched  # type: ignore[attr-defined]  (used by bootstrap_ci)
corpus_rate.batched = _corpus_rate_batched  # type: ignore[attr-defined]


def _matrix(df: pd.DataFrame, metric: str, items: list[str], seeds: list[int]) -> np.ndarray:
    sub = df[df["metric"] == metric]
    pivot = sub.pivot_table(index="item_id", columns="seed", values="value", aggfunc="mean", dropna=False)
    return pivot.reindex(index=items, columns=seeds).to_numpy(dtype=np.float64)


def aggregate_items(df: pd.DataFrame, directions: dict[str, bool], *, n_boot: int = N_BOOT,
                    boot_seed: int = BOOT_SEED) -> list[dict[str, Any]]:
    """Aggregate the per-item scores of ONE task (columns item_id, seed, metric, value, scorer,
    scorer_version) into rows (task, metric, higher_is_better, value, ci_low, ci_high, n, scorer,
    scorer_version, seeds). ``directions``: metric -> higher is better; metrics not in it (such as the
    ``_errors``/``_ref_len`` counts) are not aggregated on their own."""
    if df.empty:
        return []
    tasks = df["task"].unique() if "task" in df.columns else [None]
    if len(tasks) != 1:
        raise ValueError(f"aggregate_items takes one task at a time, got {list(tasks)}")
    seeds = sorted(int(s) for s in df["seed"].unique())
    seeds_str = ",".join(str(s) for s in seeds)
    items = sorted(df["item_id"].unique())
    present = set(df["metric"].unique())
    rows = []
    for metric in sorted(m for m in present if m in directions):
        sub = df[df["metric"] == metric]
        scorer, version = str(sub["scorer"].iloc[0]), str(sub["scorer_version"].iloc[0])
        base = dict(task=tasks[0], higher_is_better=bool(directions[metric]), scorer=scorer,
                    scorer_version=version, seeds=seeds_str)
        m = _matrix(df, metric, items, seeds)
        keep = ~np.all(np.isnan(m), axis=1)
        m = m[keep]
        rows.append(dict(base, metric=metric, **_with_ci(m, seed_mean, n_boot, boot_seed)))
        err, ref = metric + ERRORS_SUFFIX, metric + REF_LEN_SUFFIX
        if err in present and ref in present:
            pairs = np.stack([_matrix(df, err, items, seeds), _matrix(df, ref, items, seeds)], axis=-1)
            pairs = pairs[~np.all(np.isnan(pairs[..., 1]), axis=1)]
            rows.append(dict(base, metric=metric + CORPUS_SUFFIX, **_with_ci(pairs, corpus_rate, n_boot, boot_seed)))
    return rows


def _with_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int, boot_seed: int) -> dict:
    n = int(values.shape[0])
    if n == 0:
        return dict(value=math.nan, ci_low=math.nan, ci_high=math.nan, n=0)
    lo, hi = bootstrap_ci(values, statistic=statistic, n_boot=n_boot, seed=boot_seed)
    return dict(value=statistic(values), ci_low=lo, ci_high=hi, n=n)


def item_rows(entries: list[Any]) -> np.ndarray | None:
    """Per-item embeddings of a set, indexable by item (``x[idx]``) for rule 3 and its interval.

    Every entry a vector of one length (posteriors): an ``[items, D]`` float array, ``None`` entries
    (no input for that item, e.g. no reference audio) as NaN rows, which paired metrics leave out.
    Otherwise (frame embeddings ``[frames, D]``, ragged across items): a 1-D object array of the
    entries, ``None`` kept. All ``None`` (or no entries): ``None``.
    """
    arrays = [None if e is None else np.asarray(e) for e in entries]
    present = [a for a in arrays if a is not None]
    if not present:
        return None
    if all(a.ndim == 1 for a in present) and len({a.shape for a in present}) == 1:
        nan_row = np.full(present[0].shape, np.nan)
        return np.stack([nan_row if a is None else a.astype(np.float64) for a in arrays])
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):  # element-wise: assigning a list would try to broadcast equal shapes
        out[i] = a
    return out


def any_finite(x: Any) -> bool:
    """Whether a set of per-item embeddings (:func:`item_rows`'s forms) holds any finite value."""
    if x is None:
        return False
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.dtype == object:
        return any(e is not None and bool(np.isfinite(np.asarray(e, np.float64)).any()) for e in x)
    return bool(np.isfinite(x.astype(np.float64)).any())


def aggregate_set(task: str, compare: Callable[[Any, Any], dict[str, float]],
                  directions: dict[str, bool], generated: dict[int, np.ndarray], reference: np.ndarray | None, *,
                  scorer: str, scorer_version: str, n_boot: int = SET_N_BOOT,
                  boot_seed: int = BOOT_SEED) -> list[dict[str, Any]]:
    """Rules 3 and 4 for one set-level scorer on one task. ``generated``: seed -> per-item embeddings
    (``[items, D]`` or an object array of per-item arrays, see :func:`item_rows`; entries aligned by item
    across seeds and with ``reference``). Metrics that ``compare`` does not return (e.g. KL without a
    reference) get no row."""
    seeds = sorted(generated)
    if not seeds:
        return []
    n = len(generated[seeds[0]])
    if any(len(generated[s]) != n for s in seeds) or (reference is not None and len(reference) != n):
        raise ValueError("generated (every seed) and reference embeddings must have one entry per item, aligned")

    # every metric of a scorer comes from one compare call (PaSST: KL and IS); subsample_ci draws the same
    # subsets for each metric (same RNG seed), so each subset is compared once
    memo: dict[bytes, dict[str, float]] = {}

    def value(idx: np.ndarray, metric: str) -> float:
        key = np.asarray(idx).tobytes()
        if key not in memo:
            ref = None if reference is None else reference[idx]
            got = [compare(generated[s][idx], ref) for s in seeds]
            memo[key] = {m: float(np.mean([g.get(m, math.nan) for g in got])) for m in got[0]}
        return memo[key].get(metric, math.nan)

    everything = np.arange(n)
    full = {s: compare(generated[s], reference) for s in seeds}
    rows = []
    for metric in sorted(m for m in full[seeds[0]] if m in directions):
        v = float(np.mean([full[s][metric] for s in seeds]))
        lo, hi = subsample_ci(everything, statistic=lambda idx, m=metric: value(idx, m), point=v, n_sub=n_boot,
                              seed=boot_seed)
        rows.append(dict(task=task, metric=metric, higher_is_better=bool(directions[metric]), value=v, ci_low=lo,
                         ci_high=hi, n=n, scorer=scorer, scorer_version=scorer_version,
                         seeds=",".join(str(s) for s in seeds)))
    return rows
