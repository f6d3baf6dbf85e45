"""Regression gate: paired per-item bootstrap, paired subsample interval for set-level metrics,
failures for missing / NaN metrics, comparability (item set, n, scorer version, config), thresholds
from configs/regression_thresholds.yaml, system rows, baseline resolution, report, rows written."""

import math
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from evaluation import aggregate as A
from evaluation import regression as G
from evaluation import results as R
from evaluation.metrics import bootstrap_ci, frechet_distance
from test_results import agg_row

THR = G.load_thresholds()


# ---- helpers: two runs' items and aggregate rows built with the project's own aggregation ------------

def items_frame(matrix: np.ndarray, metric: str, *, task="en_tts", benchmark="demo", scorer="s", version="1",
                item_ids=None, seeds=None, **extra) -> pd.DataFrame:
    """Items rows of one metric from an ``[items, seeds]`` matrix."""
    n, s = matrix.shape
    item_ids = item_ids or [f"i{i:03d}" for i in range(n)]
    seeds = seeds or list(range(s))
    rows = [dict(benchmark=benchmark, task=task, item_id=item_ids[i], seed=seeds[j], metric=metric,
                 value=float(matrix[i, j]), scorer=scorer, scorer_version=version, **extra)
            for i in range(n) for j in range(s)]
    return pd.DataFrame(rows)


def agg_frame(items: pd.DataFrame, directions: dict[str, bool], *, config_hash="c", **extra) -> pd.DataFrame:
    rows = []
    for task, sub in items.groupby("task"):
        for r in A.aggregate_items(sub, directions, n_boot=200):
            rows.append(dict(r, benchmark=sub["benchmark"].iloc[0], config_hash=config_hash, **extra))
    return pd.DataFrame(rows)


def one(rows, metric):
    (r,) = [r for r in rows if r["metric"] == metric]
    return r


# ---- rule 1: paired per-item bootstrap --------------------------------------------------------------

def test_consistent_shift_inside_the_unpaired_noise_is_detected():
    rng = np.random.default_rng(1)
    difficulty = rng.normal(3.0, 1.0, size=(40, 1))               # items differ a lot ...
    base = difficulty + rng.normal(0, 0.05, size=(40, 3))
    cand = difficulty - 0.12 + rng.normal(0, 0.05, size=(40, 3))   # ... the candidate is 0.12 worse on each
    bi, ci = items_frame(base, "dnsmos_ovrl"), items_frame(cand, "dnsmos_ovrl")
    ba, ca = agg_frame(bi, {"dnsmos_ovrl": True}), agg_frame(ci, {"dnsmos_ovrl": True})
    c, b = ca.iloc[0], ba.iloc[0]
    thr = G.threshold_for("dnsmos_ovrl", b.value, THR)
    assert 0.12 > thr  # worse beyond the threshold (2% of ~3) ...
    # ... but the OLD rule (baseline outside the candidate's unpaired CI) does not see it:
    assert c.ci_low < b.value < c.ci_high
    assert not G.is_regression(c.value, b.value, True, thr, c.ci_low, c.ci_high)
    rows, new = G.compare_frames(ba, ca, bi, ci, thresholds=THR)
    r = one(rows, "dnsmos_ovrl")
    assert r["rule"] == G.RULE_PAIRED and r["regressed"] and r["comparable"] and new == []
    assert r["n_items"] == 40 and r["n_pairs"] == 120
    assert r["delta"] == pytest.approx(c.value - b.value)  # same pairs: the paired delta is the aggregate delta
    assert r["delta_ci_low"] < r["delta"] < r["delta_ci_high"] < 0
    assert r["item_set_hash"] == r["baseline_item_set_hash"]


def test_noisy_null_pairs_are_not_flagged():
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0.3, 0.1, size=(30, 1))
    make = lambda: np.clip(difficulty + rng.normal(0, 0.15, size=(30, 3)), 0, None)  # noqa: E731
    bi, ci = items_frame(make(), "wer"), items_frame(make(), "wer")
    rows, _ = G.compare_frames(agg_frame(bi, {"wer": False}), agg_frame(ci, {"wer": False}), bi, ci, thresholds=THR)
    r = one(rows, "wer")
    assert r["rule"] == G.RULE_PAIRED and not r["regressed"] and r["comparable"]
    assert r["delta_ci_low"] < 0 < r["delta_ci_high"]
    # the interval alone (threshold 0) is calibrated: about 2.5% one-sided false alarms on null pairs
    alarms = 0
    for k in range(200):
        g = np.random.default_rng(100 + k)
        d = g.normal(0, 1, size=(25, 1))
        res = G.paired_item_interval(d + g.normal(0, 0.5, (25, 3)), d + g.normal(0, 0.5, (25, 3)), n_boot=400, seed=k)
        alarms += G.decide(res["delta"], res["lo"], res["hi"], True, 0.0)
    assert alarms <= 12, alarms  # 2.5% of 200 = 5 expected; a broken interval gives far more


def test_paired_pairs_only_and_seeds_kept_together():
    base = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]])
    cand = np.array([[1.5, 2.5], [9.0, 9.0], [np.nan, np.nan]])
    res = G.paired_item_interval(base, cand, n_boot=50)
    assert res["n_items"] == 2 and res["n_pairs"] == 3  # item 2 has no common pair; item 1 only seed 0
    # seed 0: mean(0.5, 6.0); seed 1: mean(0.5) -> mean over seeds
    assert res["delta"] == pytest.approx(((0.5 + 6.0) / 2 + 0.5) / 2)


def test_seed_level_effects_are_resampled_not_treated_as_fixed():
    """Null pairs whose generation seeds each shift every item (a seed's draw is shared by the whole run):
    the items-only bootstrap flags many of them; resampling the seeds too keeps false alarms near nominal,
    and a consistent per-item shift larger than the seed spread is still detected."""
    alarms = alarms_items_only = detected = 0
    for k in range(120):
        g = np.random.default_rng(5000 + k)
        d = g.normal(0, 1, size=(20, 1))
        run = lambda shift=0.0: d + shift + g.normal(0, 0.3, (1, 3)) + g.normal(0, 0.2, (20, 3))  # noqa: E731
        base, cand = run(), run()
        res = G.paired_item_interval(base, cand, n_boot=300, seed=k)
        alarms += G.decide(res["delta"], res["lo"], res["hi"], True, 0.0)
        fixed = G.paired_item_interval(base, cand, n_boot=300, seed=k, resample_seeds=False)
        alarms_items_only += G.decide(fixed["delta"], fixed["lo"], fixed["hi"], True, 0.0)
        worse = G.paired_item_interval(base, run(-1.5), n_boot=300, seed=k)
        detected += G.decide(worse["delta"], worse["lo"], worse["hi"], True, 0.0)
    assert alarms_items_only >= 30, alarms_items_only  # the old rule: most seed draws look like a change
    assert alarms <= 10, alarms
    assert detected >= 100, detected
    # seed-independent scores (token NLL): resampling seeds changes nothing
    d = np.random.default_rng(7).normal(0, 1, (20, 1))
    same = np.repeat(d, 3, axis=1)
    a = G.paired_item_interval(same, same + 0.1, n_boot=300)
    b = G.paired_item_interval(same, same + 0.1, n_boot=300, resample_seeds=False)
    assert (a["lo"], a["hi"]) == pytest.approx((b["lo"], b["hi"]))


def test_too_few_paired_items_are_flagged_not_decided():
    base = np.array([[0.9, 0.8], [0.7, 0.9], [0.8, 0.85]])
    cand = base - 0.5  # much worse, but on three items only
    bi, ci = items_frame(base, "tempo_adherence"), items_frame(cand, "tempo_adherence")
    rows, _ = G.compare_frames(agg_frame(bi, {"tempo_adherence": True}), agg_frame(ci, {"tempo_adherence": True}),
                               bi, ci, thresholds=THR)
    r = one(rows, "tempo_adherence")
    assert r["rule"] == G.RULE_PAIRED and not r["regressed"] and not r["comparable"]
    assert "too few to decide" in r["reason"] and r["n_items"] == 3 < G.MIN_PAIRED_ITEMS
    # the same shift on enough items is a regression
    base5 = np.vstack([base, [[0.75, 0.8], [0.85, 0.9]]])
    bi, ci = items_frame(base5, "tempo_adherence"), items_frame(base5 - 0.5, "tempo_adherence")
    rows, _ = G.compare_frames(agg_frame(bi, {"tempo_adherence": True}), agg_frame(ci, {"tempo_adherence": True}),
                               bi, ci, thresholds=THR)
    assert one(rows, "tempo_adherence")["regressed"]


# ---- rule 2: paired subsample interval for set-level metrics ----------------------------------------

def _fad_sets(seed, n=30, d=8, cand_noise=1.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    ref = z + 0.3 * rng.normal(size=(n, d))
    base = np.concatenate([z + 0.3 * rng.normal(size=(n, d)), ref], axis=1)
    cand = np.concatenate([z + cand_noise * rng.normal(size=(n, d)), ref], axis=1)
    return base, cand


def _fad(x):  # rows: generated embedding | paired reference embedding
    return frechet_distance(x[:, : x.shape[1] // 2], x[:, x.shape[1] // 2:])


def test_set_level_interval_centred_on_the_full_set_difference_not_biased_by_duplicates():
    base, cand = _fad_sets(1000)
    res = G.paired_subsample_interval(base, cand, _fad, n_sub=300)
    full = _fad(cand) - _fad(base)
    assert res["delta"] == pytest.approx(full) and res["m"] == 15 and res["scale"] == pytest.approx(1.0)
    width = res["hi"] - res["lo"]
    assert res["lo"] < full < res["hi"]
    assert abs((res["lo"] + res["hi"]) / 2 - full) < 0.1 * width
    # A bootstrap WITH replacement (what aggregate_set's CI does) puts duplicated items in every resample;
    # for FAD that inflates the resampled statistic, so its percentile interval is shifted off the
    # full-set difference by a large part of its width.
    lo, hi = bootstrap_ci(np.arange(len(base)), statistic=lambda i: _fad(cand[i]) - _fad(base[i]), n_boot=300)
    assert (lo + hi) / 2 - full > 0.25 * (hi - lo)
    # never duplicates: every subsample is m distinct items
    seen = []
    G.paired_subsample_interval(np.arange(10.0), np.arange(10.0), lambda x: seen.append(len(set(x))) or 0.0, n_sub=20)
    assert seen[2:] and all(k == 5 for k in seen[2:])


@pytest.mark.parametrize("m", [None, 10])
def test_subsample_interval_is_calibrated_for_a_linear_statistic(m):
    """Mean of per-item values (the variance is known): ~95% coverage of the true difference for m = n/2
    (scale 1) and m = n/4 (scale sqrt(1/3)); an unscaled interval at m = n/4 would cover ~99.9%."""
    mean = lambda x: float(np.mean(x))  # noqa: E731
    mean.batched = lambda x: x.mean(axis=1)
    cover = 0
    for k in range(300):
        rng = np.random.default_rng(k)
        d = rng.normal(0, 1, 40)
        res = G.paired_subsample_interval(d, d + 0.3 + rng.normal(0, 0.5, 40), mean, m=m, n_sub=400, seed=k)
        cover += res["lo"] <= 0.3 <= res["hi"]
    assert 0.90 <= cover / 300 <= 0.985, cover


def test_corpus_rate_is_compared_with_the_paired_subsample_rule():
    rng = np.random.default_rng(3)
    ref_len = rng.integers(5, 30, size=(40, 2)).astype(float)
    base_err = rng.binomial(ref_len.astype(int), 0.10).astype(float)
    cand_err = base_err + rng.binomial(ref_len.astype(int), 0.05)  # ~5 WER points worse on every utterance
    def frame(err):
        rate = err / ref_len
        return pd.concat([items_frame(rate, "wer"), items_frame(err, "wer_errors"), items_frame(ref_len, "wer_ref_len")])
    bi, ci = frame(base_err), frame(cand_err)
    rows, _ = G.compare_frames(agg_frame(bi, {"wer": False}), agg_frame(ci, {"wer": False}), bi, ci, thresholds=THR)
    r = one(rows, "wer_corpus")
    assert r["rule"] == G.RULE_SUBSAMPLE and r["regressed"] and r["n_items"] == 40 and r["n_pairs"] == 80
    assert r["delta"] == pytest.approx(A.corpus_rate(np.stack([cand_err, ref_len], -1))
                                       - A.corpus_rate(np.stack([base_err, ref_len], -1)))
    assert 0 < r["delta_ci_low"] < r["delta"] < r["delta_ci_high"]
    assert one(rows, "wer")["rule"] == G.RULE_PAIRED


def test_set_level_metric_without_item_inputs_falls_back_with_a_label():
    ba = pd.DataFrame([agg_row("b", metric="fad", value=5.0, ci_low=4.5, ci_high=5.5)])
    ca = pd.DataFrame([agg_row("c", metric="fad", value=7.0, ci_low=6.5, ci_high=7.5)])
    rows, _ = G.compare_frames(ba, ca, None, None, thresholds=THR)
    r = one(rows, "fad")
    assert r["rule"] == G.RULE_FALLBACK and r["regressed"] and "no per-item inputs in the items table" in r["reason"]
    assert r["delta_ci_low"] == pytest.approx(2.0 - math.sqrt(0.5 ** 2 + 0.5 ** 2))


# ---- failures and comparability ----------------------------------------------------------------------

def _pair(seed=4, n=20):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.7, 0.05, size=(n, 2))
    return items_frame(base, "sim"), items_frame(base + rng.normal(0, 0.01, size=(n, 2)), "sim")


def test_metric_missing_in_the_candidate_fails():
    bi, ci = _pair()
    ba = agg_frame(bi, {"sim": True})
    ba = pd.concat([ba, pd.DataFrame([agg_row("b", metric="fad", value=5.0)])[ba.columns]], ignore_index=True)
    rows, _ = G.compare_frames(ba, agg_frame(ci, {"sim": True}), bi, ci, thresholds=THR)
    r = one(rows, "fad")
    assert r["regressed"] and r["reason"] == "missing in candidate" and r["rule"] == G.RULE_MISSING
    assert not one(rows, "sim")["regressed"]


def test_nan_metric_fails():
    bi, ci = _pair()
    ci = ci.assign(value=np.nan)  # every item failed
    ca = agg_frame(ci, {"sim": True})
    assert math.isnan(ca["value"].iloc[0])
    rows, _ = G.compare_frames(agg_frame(bi, {"sim": True}), ca, bi, ci, thresholds=THR)
    r = one(rows, "sim")
    assert r["regressed"] and r["reason"] == "all items failed"
    # a NaN aggregate without per-item rows (a set-level metric) fails too
    rows, _ = G.compare_frames(pd.DataFrame([agg_row("b", metric="kl", value=1.0)]),
                               pd.DataFrame([agg_row("c", metric="kl", value=float("nan"))]), None, None, thresholds=THR)
    assert one(rows, "kl")["regressed"] and one(rows, "kl")["reason"] == "value is NaN in the candidate"
    # NaN in both runs: nothing to compare, not a regression
    rows, _ = G.compare_frames(pd.DataFrame([agg_row("b", metric="kl", value=float("nan"))]),
                               pd.DataFrame([agg_row("c", metric="kl", value=float("nan"))]), None, None, thresholds=THR)
    assert not one(rows, "kl")["regressed"] and not one(rows, "kl")["comparable"]


def test_mismatched_item_set_is_flagged_and_decided_on_common_pairs():
    bi, ci = _pair()
    ci = ci[ci["item_id"] != "i000"]  # one item dropped in the candidate
    rows, _ = G.compare_frames(agg_frame(bi, {"sim": True}), agg_frame(ci, {"sim": True}), bi, ci, thresholds=THR)
    r = one(rows, "sim")
    assert not r["comparable"] and "item set differs" in r["reason"] and "n differs (20 -> 19)" in r["reason"]
    assert "2 baseline (item, seed) pairs not in the candidate" in r["reason"]
    assert r["n_items"] == 19 and r["n_pairs"] == 38 and r["item_set_hash"] != r["baseline_item_set_hash"]
    assert r["rule"] == G.RULE_PAIRED and not r["regressed"]


def test_scorer_version_or_config_mismatch_is_refused():
    bi, ci = _pair()
    ci_bad = ci.assign(value=ci["value"] - 0.3)  # much worse, but measured by another scorer version
    ba = agg_frame(bi, {"sim": True})
    rows, _ = G.compare_frames(ba, agg_frame(ci_bad.assign(scorer_version="2"), {"sim": True}), bi,
                               ci_bad.assign(scorer_version="2"), thresholds=THR)
    r = one(rows, "sim")
    assert not r["comparable"] and not r["regressed"] and r["rule"] == G.RULE_NOT_COMPARED
    assert "scorer version differs (1 -> 2)" in r["reason"]
    rows, _ = G.compare_frames(ba, agg_frame(ci_bad, {"sim": True}, config_hash="other"), bi, ci_bad, thresholds=THR)
    assert "config differs" in one(rows, "sim")["reason"] and not one(rows, "sim")["comparable"]
    rows, _ = G.compare_frames(ba, agg_frame(ci_bad, {"sim": True}), bi, ci_bad, thresholds=THR)
    assert one(rows, "sim")["regressed"] and one(rows, "sim")["comparable"]  # same version: a regression


def test_model_scorer_versions_name_the_checkpoint_and_still_compare():
    """token_nll's version names the checkpoint it scored: another checkpoint is what a regression check
    compares, so that part is ignored; a change of its protocol is still refused."""
    bi, ci = _pair()
    worse = ci.assign(value=ci["value"] - 0.3)
    v1 = "token_nll 1 (checkpoint sha256:aaaa11112222, max_frames 150)"
    v2 = "token_nll 1 (checkpoint sha256:bbbb33334444, max_frames 150)"
    v3 = "token_nll 2 (checkpoint sha256:bbbb33334444, max_frames 150)"  # another protocol
    b_items = bi.assign(scorer_version=v1)
    ba = agg_frame(b_items, {"sim": True})
    c_items = worse.assign(scorer_version=v2)
    rows, _ = G.compare_frames(ba, agg_frame(c_items, {"sim": True}), b_items, c_items, thresholds=THR)
    assert one(rows, "sim")["comparable"] and one(rows, "sim")["regressed"]
    c_items = worse.assign(scorer_version=v3)
    rows, _ = G.compare_frames(ba, agg_frame(c_items, {"sim": True}), b_items, c_items, thresholds=THR)
    assert one(rows, "sim")["rule"] == G.RULE_NOT_COMPARED and "scorer version differs" in one(rows, "sim")["reason"]


def test_only_model_rows_are_gated():
    bi, ci = _pair()
    worse = ci.assign(value=ci["value"] - 0.3)
    # the candidate's ground-truth topline rows are much worse: not gated; a frame without "system" = model
    ci_sys = pd.concat([ci.assign(system="model"), worse.assign(system="ground_truth")], ignore_index=True)
    ca = pd.concat([agg_frame(ci, {"sim": True}, system="model"), agg_frame(worse, {"sim": True}, system="ground_truth")],
                   ignore_index=True)
    rows, _ = G.compare_frames(agg_frame(bi, {"sim": True}), ca, bi, ci_sys, thresholds=THR)
    assert len(rows) == 1 and not rows[0]["regressed"] and rows[0]["comparable"] and rows[0]["n_pairs"] == 40
    # and the model rows are what decides
    ca2 = pd.concat([agg_frame(worse, {"sim": True}, system="model"), agg_frame(ci, {"sim": True}, system="codec_resynth")])
    ci2 = pd.concat([worse.assign(system="model"), ci.assign(system="codec_resynth")])
    rows, _ = G.compare_frames(agg_frame(bi, {"sim": True}), ca2, bi, ci2, thresholds=THR)
    assert len(rows) == 1 and rows[0]["regressed"]


# ---- thresholds ----------------------------------------------------------------------------------------

def test_thresholds_come_from_the_reviewed_yaml():
    path = G.THRESHOLDS_PATH
    assert path.name == "regression_thresholds.yaml" and path.parent.name == "configs" and path.is_file()
    t = G.load_thresholds()
    assert t["is"] == {"rel": 0.05} and t["wer"] == {"abs": 0.01} and t["*"] == {"rel": 0.02}
    # every entry has its own comment line right above it
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"
    assert G.load_thresholds(defaults=None, overrides={"x": {"abs": 1}}) == {"x": {"abs": 1}}


def test_thresholds_absolute_relative_prefix_and_overrides(tmp_path):
    t = G.load_thresholds(overrides={"sim": {"abs": 0.03}, "dnsmos": {"rel": 0.1}})
    assert G.threshold_for("sim", 0.5, t) == pytest.approx(0.03)
    assert G.threshold_for("dnsmos_ovrl", 3.0, t) == pytest.approx(0.3)  # prefix match, relative
    assert G.threshold_for("wer_corpus", 0.2, t) == pytest.approx(0.01)
    assert G.threshold_for("anything", -2.0, t) == pytest.approx(0.04)  # "*" default, relative to |baseline|
    cfg = tmp_path / "thr.yaml"
    cfg.write_text("wer: {rel: 0.5}\n")
    assert G.threshold_for("wer", 0.2, G.load_thresholds(cfg)) == pytest.approx(0.1)
    assert G.threshold_for("fad", 2.0, G.load_thresholds(cfg)) == pytest.approx(0.1)  # the YAML's, kept
    with pytest.raises(ValueError):
        G.load_thresholds(overrides={"x": {"pct": 1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("wer: {abs: -1}\n")
    with pytest.raises(ValueError, match="wer"):
        G.load_thresholds(bad)


def test_unpaired_display_rule_kept_for_the_dashboard():
    assert G.is_regression(0.5, 0.7, True, 0.1, 0.45, 0.55)
    assert not G.is_regression(0.5, 0.7, True, 0.1, 0.3, 0.75)
    assert not G.is_regression(0.5, 0.55, True, 0.1, 0.49, 0.51)
    assert G.is_regression(0.30, 0.10, False, 0.05, 0.25, 0.35)
    assert not G.is_regression(float("nan"), 0.1, False, 0.0, 0, 1)
    assert G.decide(-0.2, -0.3, -0.1, True, 0.1) and not G.decide(-0.2, -0.3, 0.1, True, 0.1)
    assert not G.decide(-0.05, -0.06, -0.04, True, 0.1) and G.decide(0.2, 0.1, 0.3, False, 0.1)
    assert G.decide(0.2, float("nan"), float("nan"), False, 0.1)  # no interval: the threshold decides


# ---- runs on disk ----------------------------------------------------------------------------------------

def _run(root, run_id, day, rows, kind="adhoc", variant="v"):
    R.write_rows(root, "aggregate", [agg_row(run_id, kind=kind, variant=variant, **r) for r in rows], run_id=run_id,
                 when=datetime(2024, 1, day, tzinfo=timezone.utc))


def _items_rows(run_id, frame):
    return [dict(run_id=run_id, variant="v", benchmark=r.benchmark, task=r.task, item_id=r.item_id, seed=int(r.seed),
                 metric=r.metric, value=float(r.value), scorer=r.scorer, scorer_version=r.scorer_version, audio_path="")
            for r in frame.itertuples(index=False)]


def test_compare_runs_writes_rows_and_report(tmp_path):
    # aggregate rows only (no items): the labelled unpaired fallback decides
    _run(tmp_path, "base", 1, [dict(metric="wer", value=0.10, ci_low=0.09, ci_high=0.11),
                               dict(metric="sim", value=0.60, higher_is_better=True, ci_low=0.5, ci_high=0.7),
                               dict(metric="gone", value=1.0)])
    _run(tmp_path, "cur", 2, [dict(metric="wer", value=0.20, ci_low=0.18, ci_high=0.22),  # worse beyond both
                              dict(metric="sim", value=0.55, higher_is_better=True, ci_low=0.45, ci_high=0.65),
                              dict(metric="fresh", value=1.0)])
    s = G.compare_runs(tmp_path, "cur")
    assert s.baseline_run_id == "base" and s.regressed
    assert [r["metric"] for r in s.regressions] == ["gone", "wer"]  # a metric missing now fails
    assert s.new == ["demo/en_tts/fresh"] and s.missing == ["demo/en_tts/gone"]
    rows = R.read_table(tmp_path, "regression", run_id="cur").set_index("metric")
    assert len(rows) == 3 and rows.loc["wer", "regressed"] and rows.loc["gone", "regressed"]
    assert rows.loc["gone", "reason"] == "missing in candidate"
    assert rows.loc["wer", "delta"] == pytest.approx(0.1) and rows.loc["wer", "rule"] == G.RULE_FALLBACK
    assert not rows.loc["sim", "regressed"]  # the difference's interval contains 0
    assert "REGRESSED" in s.report and "| ❌ | demo | en_tts | wer |" in s.report and "gone" in s.report
    assert s.to_dict()["incomparable"] == {"demo/en_tts/gone": "missing in candidate"}


def test_compare_runs_pairs_items_from_the_tables(tmp_path):
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.7, 0.1, size=(30, 1))
    bi = items_frame(difficulty + rng.normal(0, 0.01, (30, 2)), "sim", scorer="s")
    ci = items_frame(difficulty - 0.03 + rng.normal(0, 0.01, (30, 2)), "sim", scorer="s")
    for run_id, day, frame in (("base", 1, bi), ("cur", 2, ci)):
        agg = agg_frame(frame, {"sim": True}).iloc[0]
        _run(tmp_path, run_id, day, [dict(metric="sim", higher_is_better=True, value=agg.value, ci_low=agg.ci_low,
                                          ci_high=agg.ci_high, n=int(agg.n))])
        R.write_rows(tmp_path, "items", _items_rows(run_id, frame), run_id=run_id,
                     when=datetime(2024, 1, day, tzinfo=timezone.utc))
    s = G.compare_runs(tmp_path, "cur")
    assert s.regressed and s.regressions[0]["rule"] == G.RULE_PAIRED
    row = R.read_table(tmp_path, "regression", run_id="cur").iloc[0]
    assert row["comparable"] and row["n_pairs"] == 60 and row["n_items"] == 30 and row["delta_ci_high"] < 0
    assert row["item_set_hash"] == G.item_set_hash(ci) and row["reason"] == ""
    assert G.RULE_PAIRED in s.report


def test_baseline_resolution(tmp_path):
    _run(tmp_path, "n1", 1, [dict()], kind="nightly", variant="dense")
    _run(tmp_path, "a1", 2, [dict()], kind="adhoc", variant="moe")
    _run(tmp_path, "n2", 3, [dict()], kind="nightly", variant="moe")
    _run(tmp_path, "n3", 4, [dict()], kind="nightly", variant="moe")
    assert G.resolve_baseline(tmp_path, "n3") == "n2"  # previous run of the same benchmark, kind and variant
    assert G.resolve_baseline(tmp_path, "n2") is None  # n1 is another variant, a1 another kind
    assert G.resolve_baseline(tmp_path, "n2", "a1") == "a1"  # by run id
    assert G.resolve_baseline(tmp_path, "n2", "dense") == "n1"  # by variant name
    assert G.resolve_baseline(tmp_path, "n1") is None
    with pytest.raises(G.BaselineNotFound):
        G.resolve_baseline(tmp_path, "n2", "no-such-thing")
    s = G.compare_runs(tmp_path, "n1")
    assert not s.regressed and s.baseline_run_id is None and "No baseline" in s.report
    assert R.read_table(tmp_path, "regression").empty


def test_expanded_percentile_level_widens_small_samples_only():
    assert G.expanded_alpha(0.05, 8) == pytest.approx(0.0115, abs=0.001)
    assert G.expanded_alpha(0.05, 40) == pytest.approx(0.0405, abs=0.001)
    assert G.expanded_alpha(0.05, 10_000) == pytest.approx(0.05, abs=0.001)
    # few items (5 per run): closer to the nominal one-sided 2.5% than the plain percentile bootstrap (a
    # bootstrap of 5 items cannot reach beyond their range, so neither is exact)
    alarms = plain = 0
    for k in range(300):
        g = np.random.default_rng(1000 + k)
        d = g.normal(0, 1, size=(5, 1))
        base, cand = d + g.normal(0, 0.5, (5, 2)), d + g.normal(0, 0.5, (5, 2))
        res = G.paired_item_interval(base, cand, n_boot=400, seed=k)
        alarms += G.decide(res["delta"], res["lo"], res["hi"], True, 0.0)
        lo, hi = bootstrap_ci(cand - base, statistic=A.seed_mean, n_boot=400, seed=k)
        plain += G.decide(res["delta"], lo, hi, True, 0.0)
    assert alarms <= 20 and plain - alarms >= 5, (alarms, plain)  # nominal: 7.5 of 300


def test_a_baseline_written_before_the_trust_columns_is_still_compared(tmp_path):
    """A baseline recorded with the older tables (no system / n_asked, manifest or reference hashes,
    decoding, protocol, device, packages, transcripts) pairs with a new run's rows as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(9)
    difficulty = rng.normal(0.7, 0.1, size=(30, 1))
    frame = items_frame(difficulty + rng.normal(0, 0.01, (30, 2)), "sim", scorer="s")
    agg = agg_frame(frame, {"sim": True}).iloc[0]
    row = dict(metric="sim", higher_is_better=True, value=agg.value, ci_low=agg.ci_low, ci_high=agg.ci_high,
               n=int(agg.n))
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    old = {"aggregate": pa.schema([f for f in R.SCHEMAS["aggregate"]
                                   if f.name not in R.TRUST_COLUMNS + ("system", "n_asked")]),
           "items": pa.schema([f for f in R.SCHEMAS["items"]
                               if f.name not in ("system", "transcript", "voice_prompt")])}
    for name, rows in (("aggregate", [agg_row("base", **row)]), ("items", _items_rows("base", frame))):
        part = tmp_path / name / "date=2024-01-01" / "part-base-00000000.parquet"
        part.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([{**r, "timestamp": when} for r in rows], schema=old[name]), part)
    trust = dict(manifest_hash="m", decoding="greedy", voice_prompt="item", scorer_protocol="{}", device="cpu",
                 dtype="float32", packages=R.package_versions(), system="model", n_asked=30)
    day2 = datetime(2024, 1, 2, tzinfo=timezone.utc)
    R.write_rows(tmp_path, "aggregate", [agg_row("cur", **row, **trust)], run_id="cur", when=day2)
    R.write_rows(tmp_path, "items",
                 [{**r, "transcript": None, "voice_prompt": "item"} for r in _items_rows("cur", frame)],
                 run_id="cur", when=day2)
    s = G.compare_runs(tmp_path, "cur")
    assert s.baseline_run_id == "base" and not s.regressed
    (r,) = s.rows
    assert r["rule"] == G.RULE_PAIRED and r["comparable"] and r["n_pairs"] == 60 and r["delta"] == pytest.approx(0.0)
