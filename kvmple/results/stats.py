"""Statistics for noisy benchmark figures, on numpy/scipy (no hand-written tables).

- ``describe``: per cell n, mean, median, stddev, CV, a 95% bootstrap CI of the mean (BCa,
  10,000 resamples by default) and outliers flagged by Tukey's fences (never dropped).
- ``compare``: candidate vs baseline: ratio of means with a bootstrap CI, Mann-Whitney U,
  Welch's t, Cohen's d, and a verdict at a stated threshold.
- ``enough_runs``: the adaptive-repetition rule the runner asks after each run.
- ``runs_needed``: the power hint (runs per side to detect a change at the noise seen).

Everything is deterministic (seeded resampling) so reports are reproducible. Nothing here
returns NaN: quantities that do not exist for the data (a CI from one run, a t-test of two
constant samples) are ``None`` and the reports print "n/a".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
RESAMPLES = 10_000
ALPHA = 0.05
SEED = 20110126  # the RFC's date: any fixed seed makes reports reproducible

Verdict = Literal["improved", "regressed", "no significant change", "inconclusive"]
FloatArray = np.ndarray[Any, np.dtype[np.float64]]
Values = Sequence[float] | np.ndarray[Any, Any]


@dataclass(frozen=True)
class CellStats:
    """Summary of the ok runs of one cell (failed runs are only counted)."""

    values: tuple[float, ...]
    n: int
    n_failed: int
    mean: float
    median: float
    stddev: float | None
    cv: float | None
    ci_low: float | None
    ci_high: float | None
    outliers: tuple[int, ...]  # indices into values

    @property
    def halfwidth(self) -> float | None:
        """Half the width of the CI, in the metric's unit."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2

    @property
    def halfwidth_pct(self) -> float | None:
        """Half the width of the CI as a percentage of the mean."""
        hw = self.halfwidth
        return None if hw is None or self.mean == 0 else 100 * hw / abs(self.mean)


@dataclass(frozen=True)
class Comparison:
    """Candidate vs baseline for one cell; ratio = mean(candidate) / mean(baseline)."""

    baseline: CellStats
    candidate: CellStats
    ratio: float | None
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    mannwhitney_p: float | None
    welch_p: float | None
    cohens_d: float | None
    threshold: float
    alpha: float
    higher_is_better: bool
    verdict: Verdict
    why: str

    @property
    def change_pct(self) -> float | None:
        return None if self.ratio is None else 100 * (self.ratio - 1)


def _array(values: Values) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError("values must be a flat sequence")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values must be finite numbers")
    return arr


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _bootstrap_ci(
    samples: tuple[FloatArray, ...],
    statistic: Callable[..., Any],
    *,
    resamples: int,
    confidence: float,
    seed: int,
) -> tuple[float | None, float | None]:
    """BCa bootstrap CI; percentile when BCa is undefined; None when the data cannot vary."""
    if any(len(s) < 2 for s in samples):
        return None, None
    if all(np.ptp(s) == 0 for s in samples):
        point = float(statistic(*samples, axis=-1))
        return point, point  # constant samples: every resample gives the same statistic
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled via NaN check
            result = sps.bootstrap(
                samples,
                statistic,
                n_resamples=resamples,
                confidence_level=confidence,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return float(low), float(high)
    return None, None


def _mean(x: FloatArray, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def tukey_outliers(values: Values, k: float = 1.5) -> tuple[int, ...]:
    """Indices of values outside [Q1 - k*IQR, Q3 + k*IQR] (needs at least 4 values)."""
    arr = _array(values)
    if len(arr) < 4:
        return ()
    q1, q3 = np.percentile(arr, [25, 75])
    iqr = q3 - q1
    low, high = q1 - k * iqr, q3 + k * iqr
    return tuple(int(i) for i in np.flatnonzero((arr < low) | (arr > high)))


def describe(
    values: Values,
    *,
    n_failed: int = 0,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> CellStats:
    """Summarise the ok runs of a cell. ValueError when there are none."""
    arr = _array(values)
    if len(arr) == 0:
        raise ValueError("no values to describe")
    mean = float(np.mean(arr))
    stddev = float(np.std(arr, ddof=1)) if len(arr) > 1 else None
    cv = stddev / abs(mean) if stddev is not None and mean != 0 else None
    low, high = _bootstrap_ci((arr,), _mean, resamples=resamples, confidence=confidence, seed=seed)
    return CellStats(
        values=tuple(float(v) for v in arr),
        n=len(arr),
        n_failed=n_failed,
        mean=mean,
        median=float(np.median(arr)),
        stddev=stddev,
        cv=cv,
        ci_low=low,
        ci_high=high,
        outliers=tukey_outliers(arr),
    )


def _ratio_of_means(baseline: FloatArray, candidate: FloatArray, axis: int = -1) -> Any:
    return np.mean(candidate, axis=axis) / np.mean(baseline, axis=axis)


def cohens_d(baseline: Values, candidate: Values) -> float | None:
    """(mean(candidate) - mean(baseline)) / pooled standard deviation (ddof=1)."""
    a, b = _array(baseline), _array(candidate)
    if len(a) < 2 or len(b) < 2:
        return None
    pooled = math.sqrt(
        ((len(a) - 1) * np.var(a, ddof=1) + (len(b) - 1) * np.var(b, ddof=1))
        / (len(a) + len(b) - 2)
    )
    if pooled == 0:
        return None
    return float((np.mean(b) - np.mean(a)) / pooled)


def compare(
    baseline: Values,
    candidate: Values,
    *,
    threshold: float = 0.02,
    alpha: float = ALPHA,
    higher_is_better: bool = True,
    n_failed: tuple[int, int] = (0, 0),
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
    described: tuple[CellStats, CellStats] | None = None,
) -> Comparison:
    """Candidate vs baseline with a verdict at ``threshold`` (a fraction: 0.02 = 2%).

    The verdict rule (documented in the reports):
    - a change is *significant* when the bootstrap CI of the ratio excludes 1 and Welch's
      t-test gives p < alpha (Mann-Whitney U is reported as the distribution-free check);
    - significant and at least ``threshold`` in the good direction: improved; in the bad
      direction: regressed;
    - otherwise, if the CI still reaches a ``threshold``-sized change in the bad direction,
      a regression cannot be ruled out: inconclusive (more runs would decide);
    - otherwise: no significant change. Fewer than 2 runs on a side: inconclusive.

    ``described`` passes already computed ``describe`` results of the same two samples.
    """
    a, b = _array(baseline), _array(candidate)
    if described is not None:  # the caller already described both cells (same data)
        sa, sb = described
    else:
        sa = describe(
            a, n_failed=n_failed[0], resamples=resamples, confidence=confidence, seed=seed
        )
        sb = describe(
            b, n_failed=n_failed[1], resamples=resamples, confidence=confidence, seed=seed
        )
    ratio = _finite(sb.mean / sa.mean) if sa.mean != 0 else None
    low, high = (None, None)
    if sa.mean != 0:
        low, high = _bootstrap_ci(
            (a, b), _ratio_of_means, resamples=resamples, confidence=confidence, seed=seed
        )
    mw_p = welch_p = None
    if len(a) >= 2 and len(b) >= 2:
        mw_p = _finite(sps.mannwhitneyu(b, a, alternative="two-sided").pvalue)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant samples: p is NaN -> None
            welch_p = _finite(sps.ttest_ind(b, a, equal_var=False).pvalue)
    verdict, why = _verdict(
        ratio,
        low,
        high,
        welch_p=welch_p,
        threshold=threshold,
        alpha=alpha,
        higher_is_better=higher_is_better,
    )
    return Comparison(
        baseline=sa,
        candidate=sb,
        ratio=ratio,
        ratio_ci_low=low,
        ratio_ci_high=high,
        mannwhitney_p=mw_p,
        welch_p=welch_p,
        cohens_d=cohens_d(a, b),
        threshold=threshold,
        alpha=alpha,
        higher_is_better=higher_is_better,
        verdict=verdict,
        why=why,
    )


def _verdict(
    ratio: float | None,
    low: float | None,
    high: float | None,
    *,
    welch_p: float | None,
    threshold: float,
    alpha: float,
    higher_is_better: bool,
) -> tuple[Verdict, str]:
    if ratio is None or low is None or high is None:
        return "inconclusive", "too few runs for a confidence interval"
    # express everything as "gain": positive is good, whatever the metric's direction
    sign = 1.0 if higher_is_better else -1.0
    gain = sign * (ratio - 1)
    gain_low, gain_high = sorted((sign * (low - 1), sign * (high - 1)))
    excludes_one = gain_low > 0 or gain_high < 0
    significant = excludes_one and welch_p is not None and welch_p < alpha
    pct = f"{100 * threshold:g}%"
    if significant and gain >= threshold:
        return "improved", f"CI excludes 1, Welch p={welch_p:.3g} < {alpha:g}, gain >= {pct}"
    if significant and gain <= -threshold:
        return "regressed", f"CI excludes 1, Welch p={welch_p:.3g} < {alpha:g}, loss >= {pct}"
    if gain_low < -threshold:
        return "inconclusive", f"the CI still allows a loss of more than {pct}; more runs decide"
    if significant:
        return "no significant change", f"significant but smaller than the {pct} threshold"
    return "no significant change", f"CI within the {pct} threshold or not significant"


def t_halfwidth_pct(values: Values, confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the Student-t CI of the mean, as % of the mean (None below 2 values)."""
    arr = _array(values)
    if len(arr) < 2 or np.mean(arr) == 0:
        return None
    sem = np.std(arr, ddof=1) / math.sqrt(len(arr))
    t = sps.t.ppf(0.5 + confidence / 2, df=len(arr) - 1)
    return float(100 * t * sem / abs(np.mean(arr)))


def enough_runs(values: Values, target_halfwidth_pct: float, n_min: int, n_max: int) -> bool:
    """Whether a cell may stop: n >= n_max, or n >= n_min and the CI half-width <= target %.

    Uses the Student-t interval rather than the bootstrap: with the few runs an early stop
    is decided on, percentile bootstraps are too narrow and would stop too soon.
    """
    n = len(values)
    if n >= n_max:
        return True
    if n < max(n_min, 2):
        return False
    hw = t_halfwidth_pct(values)
    return hw is not None and hw <= target_halfwidth_pct


def power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided two-sample t-test with n runs per side, standardised effect d."""
    if n < 2:
        return 0.0
    df = 2 * n - 2
    nc = effect * math.sqrt(n / 2)
    t = sps.t.ppf(1 - alpha / 2, df)
    return float(sps.nct.sf(t, df, nc) + sps.nct.cdf(-t, df, nc))


def runs_needed(
    cv: float,
    change: float,
    *,
    alpha: float = ALPHA,
    target_power: float = 0.8,
    n_limit: int = 100_000,
) -> int | None:
    """Runs per side to detect a relative ``change`` (0.05 = 5%) at coefficient of variation
    ``cv`` with the given power (two-sided Welch/Student t). None if beyond ``n_limit``."""
    if cv <= 0:
        return 2
    effect = abs(change) / cv
    if effect == 0:
        return None
    # normal approximation as the starting point, then the exact noncentral-t search
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(target_power)
    n = max(2, math.floor(2 * (z / effect) ** 2) - 2)
    if n > n_limit:
        return None
    while power(n, effect, alpha) < target_power:
        n += 1
        if n > n_limit:
            return None
    while n > 2 and power(n - 1, effect, alpha) >= target_power:
        n -= 1
    return int(n)
