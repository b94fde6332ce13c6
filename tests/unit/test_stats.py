"""Statistics checked against numpy/scipy on fixed data sets (issue 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from kvmple.results import stats

# fixed data sets: two noisy throughput samples (transfers/s) and a sample with an outlier
BASE = [1432.0, 1390.5, 1461.2, 1405.8, 1444.1, 1419.9, 1398.3, 1452.7, 1427.4, 1410.6]
FASTER = [1521.3, 1498.2, 1544.0, 1510.9, 1533.7, 1502.4, 1529.8, 1515.5, 1540.1, 1507.6]
OUTLIER = [100.0, 101.0, 99.5, 100.5, 100.2, 99.8, 100.1, 140.0]


def test_describe_matches_numpy_and_scipy_bootstrap() -> None:
    s = stats.describe(BASE, resamples=10_000, seed=7)
    arr = np.array(BASE)
    assert s.n == 10
    assert s.mean == pytest.approx(arr.mean())
    assert s.median == pytest.approx(np.median(arr))
    assert s.stddev == pytest.approx(arr.std(ddof=1))
    assert s.cv == pytest.approx(arr.std(ddof=1) / arr.mean())
    ref = sps.bootstrap(
        (arr,),
        np.mean,
        n_resamples=10_000,
        confidence_level=0.95,
        method="BCa",
        rng=np.random.default_rng(7),
    ).confidence_interval
    assert (s.ci_low, s.ci_high) == pytest.approx((ref.low, ref.high))
    assert s.ci_low < s.mean < s.ci_high
    # the bootstrap CI of the mean is close to the t interval for well-behaved data
    t_low, t_high = sps.t.interval(0.95, 9, loc=arr.mean(), scale=sps.sem(arr))
    assert s.ci_low == pytest.approx(t_low, rel=0.01)
    assert s.ci_high == pytest.approx(t_high, rel=0.01)


def test_outliers_flagged_not_dropped() -> None:
    s = stats.describe(OUTLIER)
    assert s.outliers == (7,)
    assert s.n == len(OUTLIER)
    assert s.mean == pytest.approx(np.mean(OUTLIER))  # still pooled: flagged only
    assert stats.tukey_outliers([1.0, 2.0, 3.0]) == ()  # too few values for quartiles


def test_degenerate_data_gives_none_never_nan() -> None:
    one = stats.describe([5.0])
    assert (one.stddev, one.cv, one.ci_low, one.ci_high, one.halfwidth_pct) == (None,) * 5
    constant = stats.describe([3.0, 3.0, 3.0])
    assert (constant.ci_low, constant.ci_high, constant.stddev) == (3.0, 3.0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        stats.describe([])
    with pytest.raises(ValueError, match="finite"):
        stats.describe([1.0, float("nan")])
    c = stats.compare([3.0, 3.0, 3.0], [3.0, 3.0, 3.0])
    assert c.welch_p is None and c.cohens_d is None
    assert c.ratio == 1.0 and c.verdict == "no significant change"
    for value in (c.ratio, c.ratio_ci_low, c.ratio_ci_high, c.mannwhitney_p):
        assert value is None or math.isfinite(value)
    short = stats.compare([1.0], [2.0])
    assert short.verdict == "inconclusive" and short.ratio_ci_low is None


def test_compare_matches_scipy() -> None:
    c = stats.compare(BASE, FASTER, threshold=0.02, seed=3)
    a, b = np.array(BASE), np.array(FASTER)
    assert c.ratio == pytest.approx(b.mean() / a.mean())
    assert c.mannwhitney_p == pytest.approx(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
    assert c.welch_p == pytest.approx(sps.ttest_ind(b, a, equal_var=False).pvalue)
    pooled = math.sqrt((9 * a.var(ddof=1) + 9 * b.var(ddof=1)) / 18)
    assert c.cohens_d == pytest.approx((b.mean() - a.mean()) / pooled)
    ref = sps.bootstrap(
        (a, b),
        lambda x, y, axis: np.mean(y, axis=axis) / np.mean(x, axis=axis),
        n_resamples=10_000,
        confidence_level=0.95,
        method="BCa",
        vectorized=True,
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert (c.ratio_ci_low, c.ratio_ci_high) == pytest.approx((ref.low, ref.high))
    assert c.ratio_ci_low < c.ratio < c.ratio_ci_high


def test_verdicts() -> None:
    assert stats.compare(BASE, FASTER).verdict == "improved"  # +6.6%
    assert stats.compare(FASTER, BASE).verdict == "regressed"
    # the same data with a threshold above the change: significant but too small
    c = stats.compare(BASE, FASTER, threshold=0.10)
    assert c.verdict == "no significant change" and "smaller than" in c.why
    # lower-is-better metrics flip the direction
    assert stats.compare(BASE, FASTER, higher_is_better=False).verdict == "regressed"
    # identical samples shifted by nothing: no change, CI tight around 1
    assert stats.compare(BASE, BASE).verdict == "no significant change"
    # three noisy runs a side cannot rule out a 2% loss
    noisy = stats.compare([100.0, 80.0, 120.0], [101.0, 79.0, 118.0])
    assert noisy.verdict == "inconclusive"


def test_enough_runs() -> None:
    tight = [100.0, 100.5, 99.5, 100.2, 99.8]
    assert not stats.enough_runs(tight[:1], 2.0, n_min=1, n_max=30)  # one run: no CI yet
    assert not stats.enough_runs(tight[:2], 2.0, n_min=3, n_max=30)  # below n_min
    assert stats.enough_runs(tight, 2.0, n_min=3, n_max=30)
    wide = [100.0, 60.0, 140.0, 90.0]
    assert not stats.enough_runs(wide, 2.0, n_min=3, n_max=30)
    assert stats.enough_runs(wide, 2.0, n_min=3, n_max=4)  # n_max reached
    hw = stats.t_halfwidth_pct(tight)
    arr = np.array(tight)
    low, high = sps.t.interval(0.95, len(arr) - 1, loc=arr.mean(), scale=sps.sem(arr))
    assert hw == pytest.approx(100 * (high - low) / 2 / arr.mean())


def test_power_hint() -> None:
    # the textbook figure: d = 0.5, alpha 0.05, power 0.8 -> 64 per group
    assert stats.runs_needed(cv=0.10, change=0.05) == 64
    assert stats.power(64, 0.5) == pytest.approx(0.80, abs=0.01)
    assert stats.power(63, 0.5) < 0.8 <= stats.power(64, 0.5)
    # more noise needs more runs; a bigger change needs fewer
    assert stats.runs_needed(0.05, 0.02) > stats.runs_needed(0.02, 0.02)  # type: ignore[operator]
    assert stats.runs_needed(0.05, 0.10) < stats.runs_needed(0.05, 0.02)  # type: ignore[operator]
    assert stats.runs_needed(0.5, 0.0001, n_limit=1000) is None
