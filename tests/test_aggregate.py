"""Aggregation: mean over seeds of per-seed item means, corpus rates, and bootstrap CIs over items."""

import numpy as np
import pandas as pd
import pytest

from evaluation import aggregate as A
from evaluation.metrics import bootstrap_ci


def long_frame(matrix, metric="m", task="en_tts"):
    rows = []
    for i, per_seed in enumerate(matrix):
        for s, v in enumerate(per_seed):
            rows.append(dict(task=task, item_id=f"i{i:03d}", seed=s, metric=metric, value=v, scorer="sc", scorer_version="1"))
    return pd.DataFrame(rows)


def test_seed_average_and_ci_match_independent_computation():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(40, 3))
    [row] = A.aggregate_items(long_frame(m), {"m": True}, n_boot=500)
    assert row["value"] == pytest.approx(np.mean([m[:, s].mean() for s in range(3)]))
    assert row["n"] == 40 and row["seeds"] == "0,1,2" and row["higher_is_better"] is True
    # with no missing scores the seed-averaged mean equals the mean of per-item seed means, so the
    # CI is the item bootstrap of those (same resamples for the same RNG seed)
    lo, hi = bootstrap_ci(m.mean(axis=1), n_boot=500, seed=0)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))
    # and an independent percentile bootstrap with another RNG agrees to sampling noise
    idx = np.random.default_rng(123).integers(0, 40, (4000, 40))
    boots = m.mean(axis=1)[idx].mean(axis=1)
    ref = np.percentile(boots, [2.5, 97.5])
    assert row["ci_low"] == pytest.approx(ref[0], abs=0.05) and row["ci_high"] == pytest.approx(ref[1], abs=0.05)
    assert row["ci_low"] < row["value"] < row["ci_high"]


def test_nan_items_left_out_of_their_seed_only():
    m = np.array([[1.0, 3.0], [np.nan, 5.0], [np.nan, np.nan]])
    [row] = A.aggregate_items(long_frame(m), {"m": False}, n_boot=50)
    assert row["value"] == pytest.approx((1.0 + (3.0 + 5.0) / 2) / 2)
    assert row["n"] == 2


def test_corpus_rate_is_separate_metric():
    errs = np.array([[1, 0], [4, 2], [0, 0]], dtype=float)
    lens = np.array([[10, 10], [5, 5], [20, 20]], dtype=float)
    df = pd.concat([long_frame(errs / lens, "wer"), long_frame(errs, "wer_errors"), long_frame(lens, "wer_ref_len")])
    rows = {r["metric"]: r for r in A.aggregate_items(df, {"wer": False}, n_boot=200)}
    assert set(rows) == {"wer", "wer_corpus"}  # the counts are not metrics of their own
    assert rows["wer_corpus"]["value"] == pytest.approx(np.mean([5 / 35, 2 / 35]))
    assert rows["wer"]["value"] == pytest.approx(np.mean([(0.1 + 0.8 + 0) / 3, (0 + 0.4 + 0) / 3]))
    pairs = np.stack([errs, lens], axis=-1)
    lo, hi = bootstrap_ci(pairs, statistic=A.corpus_rate, n_boot=200, seed=0)
    assert (rows["wer_corpus"]["ci_low"], rows["wer_corpus"]["ci_high"]) == pytest.approx((lo, hi))


def test_one_task_at_a_time():
    df = pd.concat([long_frame(np.ones((2, 1)), task="en_tts"), long_frame(np.ones((2, 1)), task="t2m")])
    with pytest.raises(ValueError):
        A.aggregate_items(df, {"m": True})


def test_set_level_mean_over_seeds_and_paired_resampling():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(30, 2))
    gen = {0: ref + 0.1, 1: ref + 0.3}
    compare = lambda g, r: {"dist": float(np.mean(np.abs(g - r))), "other": 1.0}  # noqa: E731
    [row] = A.aggregate_set("t2m", compare, {"dist": False}, gen, ref, scorer="x", scorer_version="1", n_boot=50)
    assert row["value"] == pytest.approx(0.2) and row["n"] == 30 and row["seeds"] == "0,1"
    # rows stay paired under resampling, so this paired distance has no spread at all
    assert row["ci_low"] == pytest.approx(0.2) and row["ci_high"] == pytest.approx(0.2)
    with pytest.raises(ValueError):
        A.aggregate_set("t2m", compare, {"dist": False}, {0: ref[:5]}, ref, scorer="x", scorer_version="1")


def test_batched_statistics_equal_the_per_resample_ones():
    """bootstrap_ci uses ``statistic.batched`` when present: same statistic, all resamples at once."""
    rng = np.random.default_rng(3)
    m = rng.random((9, 3))
    m[2, 1] = np.nan
    m[5] = np.nan  # an item with no value at all
    pairs = np.stack([rng.integers(0, 5, (9, 3)).astype(float), rng.integers(1, 20, (9, 3)).astype(float)], -1)
    pairs[4, :, 1] = 0.0
    for stat, v in ((A.seed_mean, m), (A.corpus_rate, pairs)):
        idx = np.random.default_rng(0).integers(0, len(v), size=(300, len(v)))
        loop = np.array([stat(v[i]) for i in idx])
        np.testing.assert_allclose(stat.batched(v[idx]), loop, rtol=1e-12, equal_nan=True)
        plain = lambda x, s=stat: s(x)  # noqa: E731  (no .batched: the per-resample loop)
        assert bootstrap_ci(v, statistic=stat, n_boot=300, seed=1) == pytest.approx(
            bootstrap_ci(v, statistic=plain, n_boot=300, seed=1), rel=1e-12)


def test_set_level_interval_contains_the_point_value():
    """FAD of n = 300 items in 64-d, two seeds: the set-level interval is a half-sample interval around the
    point value. (The earlier bootstrap with replacement gave an interval entirely above it: duplicated
    items shrink the covariances and inflate FAD.)"""
    from evaluation.metrics import frechet_distance

    rng = np.random.default_rng(5)
    ref = rng.normal(size=(300, 64))
    gen = {0: rng.normal(size=(300, 64)) + 0.05, 1: rng.normal(size=(300, 64)) + 0.05}
    compare = lambda g, r: {"fad": frechet_distance(g, r)}  # noqa: E731
    [row] = A.aggregate_set("t2m", compare, {"fad": False}, gen, ref, scorer="x", scorer_version="1", n_boot=40)
    assert row["value"] == pytest.approx(np.mean([frechet_distance(gen[s], ref) for s in (0, 1)]))
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert row["ci_high"] - row["ci_low"] < row["value"]


def test_item_rows_vectors_frames_and_missing_entries():
    rows = A.item_rows([np.ones(3), None, np.zeros(3)])
    assert rows.shape == (3, 3) and np.isnan(rows[1]).all() and rows.dtype == np.float64
    frames = A.item_rows([np.ones((4, 2)), None, np.ones((4, 2))])  # equal shapes stay per-item arrays
    assert frames.dtype == object and frames.shape == (3,) and frames[1] is None
    assert frames[[0, 2]][1].shape == (4, 2)
    assert A.item_rows([None, None]) is None and A.item_rows([]) is None
    assert A.any_finite(frames) and not A.any_finite(A.item_rows([np.zeros((0, 2)), np.full((1, 2), np.nan)]))
    assert A.any_finite(rows) and not A.any_finite(None)


def test_set_level_frames_and_metrics_left_out_by_compare():
    """Per-item frame arrays (ragged) go through aggregate_set as object arrays, subsets keep items whole; a
    metric compare does not return (KL without a reference) gets no row."""
    from evaluation.metrics import frechet_distance_from_frames

    rng = np.random.default_rng(2)
    gen = A.item_rows([rng.normal(size=(int(k), 3)) for k in rng.integers(3, 9, 12)])
    ref = A.item_rows([rng.normal(size=(int(k), 3)) + 0.5 for k in rng.integers(3, 9, 12)])
    sizes = []

    def compare(g, r):
        sizes.append(len(g))
        out = {"is": float(len(g))}
        if r is not None:
            out["fad"] = frechet_distance_from_frames(list(g), list(r))
        return out

    rows = {r["metric"]: r for r in A.aggregate_set("t2m", compare, {"fad": False, "is": True}, {0: gen}, ref,
                                                    scorer="x", scorer_version="1", n_boot=30)}
    assert rows["fad"]["value"] == pytest.approx(frechet_distance_from_frames(list(gen), list(ref)))
    assert rows["fad"]["ci_low"] <= rows["fad"]["value"] <= rows["fad"]["ci_high"]
    assert set(sizes) == {12, 6}  # the full set, then half-samples of whole items
    assert len(sizes) == 1 + 30  # one compare per subset for both metrics
    only_is = A.aggregate_set("t2m", compare, {"fad": False, "is": True}, {0: gen}, None, scorer="x",
                              scorer_version="1", n_boot=10)
    assert [r["metric"] for r in only_is] == ["is"]
