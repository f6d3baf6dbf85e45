"""Public metric functions, each checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import entropy

from evaluation.metrics import (
    bootstrap_ci,
    edit_counts,
    error_rates,
    frechet_distance,
    frechet_distance_from_frames,
    frechet_from_stats,
    gaussian_stats,
    inception_score,
    kl_gen_ref,
    kl_ref_gen,
    subsample_ci,
    subsample_interval,
)


def _levenshtein(a: list[str], b: list[str]) -> int:
    """Plain dynamic-programming edit distance (independent of jiwer)."""
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[len(b)]


# ---- error rates ---------------------------------------------------------------------------------------


def test_error_rates_hand_counted_english():
    refs = ["The cat sat on the mat.", "Hello world", "It's fine"]
    hyps = ["the cat sat on a mat", "hello there big world", "its fine"]
    # 1 sub of 6 | 2 insertions of 2 | 1 sub ("it's" vs "its") of 2
    out = error_rates(refs, hyps, "en")
    assert out["mean_utterance"] == pytest.approx((1 / 6 + 2 / 2 + 1 / 2) / 3)
    assert out["corpus"] == pytest.approx((1 + 2 + 1) / (6 + 2 + 2))
    assert edit_counts(refs[1], hyps[1], "en") == (2, 2)


def test_error_rates_mandarin_cer():
    refs = ["今天天气很好。", "我爱北京"]
    hyps = ["今天天氣不好", "我爱北京天安门"]  # traditional 氣 is simplified before scoring
    out = error_rates(refs, hyps, "zh")
    assert out["mean_utterance"] == pytest.approx((1 / 6 + 3 / 4) / 2)
    assert out["corpus"] == pytest.approx(4 / 10)


def test_error_rates_match_independent_levenshtein():
    rng = np.random.default_rng(0)
    vocab = "a b c d e f".split()
    refs, hyps = [], []
    for _ in range(30):
        refs.append(" ".join(rng.choice(vocab, rng.integers(1, 8))))
        hyps.append(" ".join(rng.choice(vocab, rng.integers(0, 8))))
    edits = [_levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps)]
    lens = [len(r.split()) for r in refs]
    out = error_rates(refs, hyps, "en")
    assert out["mean_utterance"] == pytest.approx(np.mean([e / n for e, n in zip(edits, lens)]))
    assert out["corpus"] == pytest.approx(sum(edits) / sum(lens))


def test_error_rates_empty_references_and_hypotheses():
    # empty hypothesis: all deletions; None counts as empty
    assert error_rates(["a b c"], [""], "en") == {"mean_utterance": 1.0, "corpus": 1.0}
    assert error_rates(["a b c"], [None], "en")["corpus"] == 1.0
    # empty reference (after normalisation): no utterance rate, insertions count in the corpus numerator
    out = error_rates(["a b", "...", ""], ["a b", "x y", ""], "en")
    assert out["mean_utterance"] == 0.0
    assert out["corpus"] == pytest.approx(2 / 2)
    out = error_rates(["", "!"], ["x", ""], "en")
    assert math.isnan(out["mean_utterance"]) and math.isnan(out["corpus"])
    out = error_rates([], [], "en")
    assert math.isnan(out["mean_utterance"]) and math.isnan(out["corpus"])
    with pytest.raises(ValueError):
        error_rates(["a"], [], "en")


# ---- Fréchet distance ------------------------------------------------------------------------------------


def test_frechet_closed_form_diagonal():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert frechet_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expect, rel=1e-10)


def test_frechet_known_pair_non_diagonal():
    """Commuting covariances: S2 = R diag R^T with S1 = R diag' R^T -> closed form via the eigenvalues."""
    rng = np.random.default_rng(0)
    r, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.3, 2.0, 4.0, 1.0])
    s1, s2 = r @ np.diag(a) @ r.T, r @ np.diag(b) @ r.T
    mu1, mu2 = rng.standard_normal(4), rng.standard_normal(4)
    expect = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_from_stats(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-8)
    assert frechet_from_stats(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_from_samples_and_stats():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 3))
    b = rng.standard_normal((400, 3)) * 2.0 + 1.0
    mu, sig = gaussian_stats(a)
    np.testing.assert_allclose(mu, a.mean(0))
    np.testing.assert_allclose(sig, np.cov(a.T))
    got = frechet_distance(a, b)
    assert got == pytest.approx(frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b)))
    # population value: 3 * 1^2 (means) + 3 * (1 - 2)^2 (scales) = 6
    assert got == pytest.approx(6.0, rel=0.15)
    with pytest.raises(ValueError):
        gaussian_stats(a[:1])


def _clips(centres: np.ndarray, frames: int, spread: float, rng) -> list[np.ndarray]:
    """One clip per centre: ``frames`` frame embeddings around it whose mean is exactly the centre."""
    out = []
    for c in centres:
        noise = rng.standard_normal((frames, c.size)) * spread
        out.append(c + noise - noise.mean(axis=0))
    return out


def test_frechet_from_frames_pools_every_frame_not_item_means():
    """stable-audio-metrics fits the Gaussians to all OpenL3 frames. Two sets with the SAME per-clip mean
    embeddings but different within-clip spread have a large frame-level FAD and a zero item-mean FAD."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, 4))
    gen = _clips(centres, 30, 0.05, rng)   # steady clips
    ref = _clips(centres, 30, 1.0, rng)    # clips that move around within themselves
    got = frechet_distance_from_frames(gen, ref)
    assert got == pytest.approx(frechet_distance(np.vstack(gen), np.vstack(ref)), rel=1e-12)
    item_means = frechet_distance(np.stack([c.mean(0) for c in gen]), np.stack([c.mean(0) for c in ref]))
    assert item_means == pytest.approx(0.0, abs=1e-6)
    # population value: 4 dims * (sqrt(1 + 1) - sqrt(1 + 0.05^2))^2 ~= 0.68
    assert got == pytest.approx(0.68, rel=0.3)
    # a longer clip weighs more (its frames are more samples); a clip without frames adds nothing
    assert frechet_distance_from_frames(gen + [np.zeros((0, 4))], ref) == pytest.approx(got, rel=1e-12)
    with pytest.raises(ValueError, match="different embedding sizes"):
        frechet_distance_from_frames(gen + [np.zeros((3, 5))], ref)
    with pytest.raises(ValueError, match=r"\[frames, dims\]"):
        frechet_distance_from_frames([np.zeros(4)], ref)


def test_frechet_singular_covariance_is_finite():
    """Fewer items than dimensions: singular covariances; the result stays finite and >= ~0."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 16)), rng.standard_normal((6, 16))
    d = frechet_distance(a, b)
    assert math.isfinite(d) and d > 0
    z = np.zeros((3, 3))
    assert frechet_from_stats(np.zeros(3), z, np.ones(3), z) == pytest.approx(3.0, abs=1e-4)


# ---- KL / IS ------------------------------------------------------------------------------------------------


def _rand_probs(rng, n, c, alpha=1.0):
    return rng.dirichlet(np.full(c, alpha), size=n)


def test_kl_ref_gen_matches_scipy_entropy():
    rng = np.random.default_rng(3)
    p, q = _rand_probs(rng, 20, 7), _rand_probs(rng, 20, 7)
    expect = np.mean([entropy(p[i], q[i]) for i in range(20)])  # KL(p || q), natural log
    assert kl_ref_gen(p, q) == pytest.approx(expect, rel=1e-6)
    assert kl_ref_gen(p, p) == pytest.approx(0.0, abs=1e-12)
    # direction: KL(ref || gen) is not symmetric
    assert kl_ref_gen(p, q) != pytest.approx(kl_ref_gen(q, p), rel=1e-3)


def test_kl_ref_gen_zeros_are_clipped_and_renormalised():
    ref = np.array([[0.5, 0.5, 0.0]])
    gen = np.array([[1.0, 0.0, 0.0]])
    eps = 1e-8
    r = np.clip(ref, eps, 1) / np.clip(ref, eps, 1).sum()
    g = np.clip(gen, eps, 1) / np.clip(gen, eps, 1).sum()
    got = kl_ref_gen(ref, gen, eps=eps)
    assert math.isfinite(got) and got == pytest.approx(entropy(r[0], g[0]), rel=1e-9)
    with pytest.raises(ValueError):
        kl_ref_gen(ref, np.ones((2, 3)) / 3)
    with pytest.raises(ValueError):
        kl_ref_gen(-ref, gen)


def test_kl_gen_ref_is_stable_audio_metrics_direction_and_epsilon():
    """stable-audio-metrics passt_kld: ``F.kl_div(log(p_ref + 1e-6), p_gen, reduction="sum")`` per item, i.e.
    KL(gen || ref) with the epsilon on the reference only. An asymmetric pair tells the directions apart."""
    gen = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    ref = np.array([[0.98, 0.02, 0.0], [0.25, 0.25, 0.5]])
    e = 1e-6
    by_hand = np.mean([
        0.5 * math.log(0.5 / (0.98 + e)) + 0.5 * math.log(0.5 / (0.02 + e)),  # 0 log 0 = 0 for the third class
        0.2 * math.log(0.2 / (0.25 + e)) + 0.3 * math.log(0.3 / (0.25 + e)) + 0.5 * math.log(0.5 / (0.5 + e)),
    ])
    got = kl_gen_ref(gen, ref)
    assert got == pytest.approx(by_hand, rel=1e-12)
    # the other direction (the project's earlier default) is a different number on this pair
    assert abs(got - kl_ref_gen(ref, gen)) > 0.3
    # independent oracle: torch's kl_div with stable-audio-metrics' arguments, summed per item, averaged
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g_t, r_t = torch.from_numpy(gen), torch.from_numpy(ref)
    oracle = np.mean([float(F.kl_div((r_t[i] + e).log(), g_t[i], reduction="sum")) for i in range(2)])
    assert got == pytest.approx(oracle, rel=1e-10)
    # mass where the reference has none: large but finite (log 1e6 per unit of mass)
    assert kl_gen_ref(np.array([[0.0, 1.0]]), np.array([[1.0, 0.0]])) == pytest.approx(math.log(1 / e), rel=1e-6)
    assert math.isnan(kl_gen_ref(np.zeros((0, 3)), np.zeros((0, 3))))
    with pytest.raises(ValueError, match="paired"):
        kl_gen_ref(gen, ref[:1])


def test_inception_score_hand_computation():
    # one split: p(y) = [0.5, 0.5]; each one-hot row has KL = log 2 -> IS = 2
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    mean, std = inception_score(probs, splits=1)
    assert mean == pytest.approx(2.0) and std == 0.0
    # identical rows carry no information -> IS = 1
    assert inception_score(np.full((10, 5), 0.2), splits=2)[0] == pytest.approx(1.0)


def test_inception_score_splits_against_manual():
    rng = np.random.default_rng(4)
    probs = _rand_probs(rng, 50, 6, alpha=0.3)
    perm = np.random.default_rng(7).permutation(50)
    scores = []
    for part in np.array_split(probs[perm], 5):
        py = part.mean(0)
        scores.append(np.exp(np.mean([entropy(row, py) for row in part])))
    mean, std = inception_score(probs, splits=5, seed=7)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-9)
    assert inception_score(probs, splits=5, seed=7) == (mean, std)  # deterministic
    with pytest.raises(ValueError):
        inception_score(probs[:3], splits=10)


# ---- bootstrap ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_basic_and_deterministic():
    v = np.arange(100, dtype=float)
    lo, hi = bootstrap_ci(v)
    assert lo < v.mean() < hi
    # normal approximation of the mean's spread: sd / sqrt(n) ~ 2.89; the 95% interval is ~ +-5.7
    assert (hi - lo) == pytest.approx(2 * 1.96 * v.std() / 10, rel=0.2)
    assert bootstrap_ci(v) == (lo, hi)
    assert bootstrap_ci(np.full(5, 3.0)) == (3.0, 3.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_bootstrap_ci_is_the_percentile_bootstrap_of_seeded_index_resamples():
    """The interval is the alpha/2 and 1 - alpha/2 percentiles (linear interpolation) of the statistic over
    ``n_boot`` resamples of item indices ``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``,
    written out here without scipy."""
    x = np.random.default_rng(3).exponential(size=37)
    for stat, alpha, seed in ((np.mean, 0.05, 0), (np.median, 0.1, 7)):
        idx = np.random.default_rng(seed).integers(0, 37, size=(400, 37))
        expected = np.percentile([stat(x[i]) for i in idx], [100 * alpha / 2, 100 * (1 - alpha / 2)])
        got = bootstrap_ci(x, stat, n_boot=400, alpha=alpha, seed=seed)
        assert got == pytest.approx(tuple(expected), rel=1e-12)
    assert bootstrap_ci([2.5]) == (2.5, 2.5)  # one item: every resample is that item
    # resamples with a NaN: no interval
    assert all(math.isnan(v) for v in bootstrap_ci([1.0, math.nan, 2.0], n_boot=50))


def test_bootstrap_ci_rows_for_corpus_rate():
    """Rows (errors, ref_len) are resampled together; statistic gets the [n, 2] resample."""
    rows = np.array([[1, 10], [0, 5], [3, 6], [2, 8], [0, 4]] * 8)
    corpus = lambda r: r[:, 0].sum() / r[:, 1].sum()  # noqa: E731
    lo, hi = bootstrap_ci(rows, statistic=corpus, n_boot=500)
    assert lo < corpus(rows) < hi
    assert bootstrap_ci([[1, 2], [3, 4]], statistic=lambda r: r.shape[1]) == (2.0, 2.0)


def test_bootstrap_coverage_sanity():
    """Across many normal samples the 90% interval of the mean covers the true mean about 90% of the time."""
    rng = np.random.default_rng(5)
    hits = 0
    trials = 200
    for t in range(trials):
        x = rng.normal(1.0, 2.0, size=40)
        lo, hi = bootstrap_ci(x, n_boot=300, alpha=0.1, seed=t)
        hits += lo <= 1.0 <= hi
    assert 0.82 <= hits / trials <= 0.97


# ---- half-sample interval (set-level statistics) ------------------------------------------------------------


def test_subsample_ci_covers_the_fad_point_value_where_the_bootstrap_does_not():
    """n = 300 items, 64-d (the issue's case): FAD ~ 8, and every bootstrap resample duplicates ~37% of the
    items, shrinking the covariances and inflating FAD so that its percentile interval lies above the point
    value. The half-sample interval is around the point value."""
    rng = np.random.default_rng(12)
    gen, ref = rng.standard_normal((300, 64)), rng.standard_normal((300, 64)) + 0.05
    fad = lambda idx: frechet_distance(gen[idx], ref[idx])  # noqa: E731
    items = np.arange(300)
    point = fad(items)
    lo, hi = subsample_ci(items, fad, n_sub=60)
    assert lo <= point <= hi and hi - lo < point
    b_lo, b_hi = bootstrap_ci(items, statistic=fad, n_boot=60)
    assert b_lo > point  # the with-replacement interval excludes the value it should describe
    assert subsample_ci(items, fad, point=point, n_sub=60) == (lo, hi)  # deterministic; point reused


def test_subsample_ci_scale_matches_the_sampling_spread_of_a_mean():
    """For a linear statistic the half-sample interval has the classical width 2 * 1.96 * sd / sqrt(n), for
    m = n/2 (scale 1) and for m = n/4 (scale sqrt(1/3))."""
    x = np.random.default_rng(4).normal(0.0, 1.0, 400)
    mean = lambda v: float(np.mean(v))  # noqa: E731
    mean.batched = lambda v: v.mean(axis=1)
    for m in (None, 100):
        lo, hi = subsample_ci(x, mean, m=m, n_sub=2000)
        assert lo < x.mean() < hi
        assert hi - lo == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.12)


def test_subsample_interval_is_the_scaled_spread_of_seeded_half_samples():
    """Subsets: the first m of a ``default_rng(seed)`` permutation per row; interval ``T_n - s * q`` with
    ``q`` the percentiles of the subset values' deviations from their median and ``s = sqrt(m / (n - m))``."""
    x = np.random.default_rng(1).normal(size=40)
    res = subsample_interval(x, np.mean, m=10, n_sub=100)
    assert res.m == 10 and res.scale == pytest.approx(math.sqrt(10 / 30))
    idx = np.argsort(np.random.default_rng(0).random((100, 40)), axis=1)[:, :10]
    t = np.array([x[i].mean() for i in idx])
    q_lo, q_hi = np.percentile(t - np.median(t), [2.5, 97.5])
    s = math.sqrt(10 / 30)
    assert (res.lo, res.hi) == pytest.approx((x.mean() - s * q_hi, x.mean() - s * q_lo), rel=1e-12)
    assert subsample_ci(x, np.mean, m=10, n_sub=100) == (res.lo, res.hi)
    half = subsample_interval(x, np.mean)
    assert (half.m, half.scale) == (20, 1.0)
    none = subsample_interval(np.arange(3.0), np.mean)  # too few items: no interval, no subsets
    assert none.m == 0 and all(math.isnan(v) for v in (none.lo, none.hi, none.scale))


@pytest.mark.parametrize("interval, count", [(bootstrap_ci, "n_boot"), (subsample_interval, "n_sub")])
def test_interval_arguments_are_checked(interval, count):
    """Both intervals refuse a scalar, a level outside (0, 1) and no resamples, naming what is wrong."""
    x = np.arange(8.0)
    with pytest.raises(ValueError, match="1-D array"):
        interval(3.0, np.mean)
    for alpha in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
            interval(x, np.mean, alpha=alpha)
    with pytest.raises(ValueError, match=f"{count} must be >= 1, got 0"):
        interval(x, np.mean, **{count: 0})


def test_subsample_ci_contains_the_point_even_for_a_skewed_statistic_and_edge_cases():
    x = np.zeros(50)
    x[0] = 1000.0  # one item dominates: half of the subsets hold it
    mx = lambda v: float(np.max(v))  # noqa: E731
    lo, hi = subsample_ci(x, mx, n_sub=300)
    assert lo <= 1000.0 <= hi
    assert all(math.isnan(v) for v in subsample_ci(np.arange(3.0), np.mean))  # too few items
    assert all(math.isnan(v) for v in subsample_ci(np.arange(8.0), np.mean, point=math.nan))
    with pytest.raises(ValueError):
        subsample_ci(np.arange(8.0), np.mean, m=8)
