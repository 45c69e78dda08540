"""The rule behind every verdict of the book (bnref.mnist.verdicts): its decisions, its confidence interval and its
false-positive rate."""

from __future__ import annotations

import numpy as np
import pytest

from bnref.mnist import verdicts


def test_compare_paired_rule():
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # every difference positive and the mean (0.5) far beyond two standard errors
    assert verdicts.compare_paired(base + [0.5, 0.6, 0.4, 0.5, 0.5], base, "more", "less") == "more"
    assert verdicts.compare_paired(base, base + [0.5, 0.6, 0.4, 0.5, 0.5], "more", "less") == "less"
    # identical differences: no spread, any positive mean counts
    assert verdicts.compare_paired(base + 0.01, base, "more", "less") == "more"
    # one seed with the other sign: not measured, however large the mean
    assert verdicts.compare_paired(base + [3.0, 3.0, 3.0, 3.0, -0.1], base, "more", "less", "same") == "same"
    # every sign positive but the mean within two standard errors: d = (0.01, 0.01, 0.01, 2): mean 0.5075,
    # sd 0.995, se 0.4975, 2 se = 0.995 > mean
    assert verdicts.compare_paired(base[:4] + [0.01, 0.01, 0.01, 2.0], base[:4], "more", "less", "same") == "same"
    for bad in ([1.0, 2.0], [[1.0, 2.0, 3.0]]):
        with pytest.raises(ValueError, match="3 seeds"):
            verdicts.compare_paired(bad, bad, "more", "less")
    with pytest.raises(ValueError, match="finite"):
        verdicts.compare_paired([1.0, np.inf, 2.0], [1.0, 1.0, 1.0], "more", "less")


def test_close_differences_need_five_seeds():
    # d = (0.1, 0.15, 0.35): every sign positive, mean 0.2 > 2 se = 0.152, but mean < 2 sd = 0.265: close
    d = np.array([0.1, 0.15, 0.35])
    assert abs(d.mean()) > 2 * d.std(ddof=1) / np.sqrt(3) and abs(d.mean()) < 2 * d.std(ddof=1)
    assert verdicts.paired_verdict(d) == 0
    assert verdicts.paired_verdict(d, close_seeds=0) == 1  # what the rule without the close condition says
    assert verdicts.compare_paired(d, np.zeros(3), "more", "less", "same") == "undecided"
    assert verdicts.compare_paired(d, np.zeros(3), "more", "less", "same", "too close") == "too close"
    # a close difference over five seeds decides: mean 0.2, sd 0.137 (2 sd = 0.274), 2 se = 0.122
    d5 = np.array([0.05, 0.1, 0.4, 0.2, 0.25])
    assert abs(d5.mean()) < 2 * d5.std(ddof=1)
    assert verdicts.paired_verdict(d5) == 1
    # a wide difference needs no more than three seeds: mean 1.0 >= 2 sd = 0.2
    assert verdicts.paired_verdict([0.9, 1.0, 1.1]) == 1


def test_compare_paired_is_the_paired_verdict_in_words():
    rng = np.random.default_rng(0)
    for n in (3, 4, 5):
        for _ in range(100):
            a, b = rng.normal(size=n), rng.normal(size=n) + rng.normal()
            d = a - b
            word = {1: "more", -1: "less", 0: "same"}[verdicts.paired_verdict(d)]
            if word == "same" and verdicts.paired_verdict(d, close_seeds=0) != 0:
                word = "undecided"
            assert verdicts.compare_paired(a, b, "more", "less", "same") == word


def test_paired_summary_interval():
    d = np.array([0.1, 0.2, 0.15, 0.12, 0.18])
    s = verdicts.paired_summary(d)
    half = 2.7764 * d.std(ddof=1) / np.sqrt(5)  # Student's t, 4 degrees of freedom, 97.5 %
    assert s.n == 5 and s.verdict == 1 and s.mean == pytest.approx(d.mean(), abs=1e-15)
    assert (s.low, s.high) == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    assert str(s) == f"{d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}]"
    with pytest.raises(ValueError, match="3 seeds"):
        verdicts.paired_summary([0.1, 0.2])


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, t in enumerate(verdicts.T975, start=1):
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=5e-5)  # four decimals


def test_vectorised_rule_is_the_rule():
    rng = np.random.default_rng(1)
    for n in (3, 4, 5, 7):
        d = rng.normal(size=(3000, n)) * rng.uniform(0.1, 1, size=(3000, 1)) + rng.normal(size=(3000, 1)) * 0.5
        expected = np.array([verdicts.paired_verdict(row) for row in d])
        assert np.array_equal(verdicts._verdicts(d), expected)
        assert {-1, 0, 1} <= set(expected)  # the sample exercises every outcome


def test_null_rate_of_the_rule():
    # Without the close condition, n = 3 needs all three signs equal (probability 1/4) and t > 2; with it,
    # |t| > 2 sqrt(3) too. Under a normal null t has Student's t distribution with n - 1 degrees of freedom:
    # P(|t| > 2 sqrt 3, df 2) = 0.074 bounds the n = 3 rate from above; with 5 seeds the sign condition alone
    # bounds it by 2 / 32 = 0.0625. The Monte Carlo's standard error at 200,000 trials is below 0.001.
    r3, r5 = verdicts.null_rate(3), verdicts.null_rate(5)
    assert 0.05 < r3 <= 0.0745 + 0.002
    assert 0.04 < r5 <= 0.0625 + 0.002
    assert verdicts.null_rate(8) < r5
    with pytest.raises(ValueError, match="at least 3"):
        verdicts.null_rate(2)


def test_aa_rate():
    rng = np.random.default_rng(2)
    values = rng.normal(size=30)
    r = verdicts.aa_rate(values, 3)
    assert 0.0 <= r <= 0.2
    # a method compared with itself on identical results never differs
    assert verdicts.aa_rate(np.ones(10), 3) == 0.0
    # runs sorted so that the first half is always lower cannot be told apart by random pairing: still a rate
    assert verdicts.aa_rate(np.arange(12.0), 5, draws=500) < 0.5
    with pytest.raises(ValueError, match="needs >= 10 runs"):
        verdicts.aa_rate(np.ones(9), 5)
    with pytest.raises(ValueError, match="finite"):
        verdicts.aa_rate([1.0, np.nan, 2, 3, 4, 5], 3)
    with pytest.raises(ValueError, match="at least 3"):
        verdicts.aa_rate(np.ones(10), 2)


def test_spread_and_within_spread():
    recorded = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sample sd sqrt(2.5) = 1.581
    mean, sd = verdicts.spread(recorded)
    assert mean == 3.0 and abs(sd - np.sqrt(2.5)) < 1e-15
    assert verdicts.within_spread(3.0 + 3 * sd - 1e-9, recorded)
    assert not verdicts.within_spread(3.0 + 3 * sd + 1e-9, recorded)
    assert not verdicts.within_spread(np.nan, recorded) and not verdicts.within_spread(np.inf, recorded)
    # every recorded seed lies inside the spread: at most (n - 1) / sqrt(n) = 1.79 sd from the mean
    assert all(verdicts.within_spread(v, recorded) for v in recorded)
    with pytest.raises(ValueError, match=">= 2"):
        verdicts.spread([1.0])
