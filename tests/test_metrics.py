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
    frechet_from_stats,
    gaussian_stats,
    inception_score,
    kl_divergence,
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


def test_kl_matches_scipy_entropy():
    rng = np.random.default_rng(3)
    p, q = _rand_probs(rng, 20, 7), _rand_probs(rng, 20, 7)
    expect = np.mean([entropy(p[i], q[i]) for i in range(20)])  # KL(p || q), natural log
    assert kl_divergence(p, q) == pytest.approx(expect, rel=1e-6)
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    # direction: KL(ref || gen) is not symmetric
    assert kl_divergence(p, q) != pytest.approx(kl_divergence(q, p), rel=1e-3)


def test_kl_zeros_are_clipped_and_renormalised():
    ref = np.array([[0.5, 0.5, 0.0]])
    gen = np.array([[1.0, 0.0, 0.0]])
    eps = 1e-8
    r = np.clip(ref, eps, 1) / np.clip(ref, eps, 1).sum()
    g = np.clip(gen, eps, 1) / np.clip(gen, eps, 1).sum()
    got = kl_divergence(ref, gen, eps=eps)
    assert math.isfinite(got) and got == pytest.approx(entropy(r[0], g[0]), rel=1e-9)
    with pytest.raises(ValueError):
        kl_divergence(ref, np.ones((2, 3)) / 3)
    with pytest.raises(ValueError):
        kl_divergence(-ref, gen)


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
