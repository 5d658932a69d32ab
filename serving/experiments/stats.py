"""Statistics of the experiment analysis: per-user clustered means, their comparisons, the SRM test.

Users are assigned to variants by a hash of their id, so the user, not the request, is the unit of
randomisation. One user's requests are alike (same tastes, same visit), so the variance of a
per-request mean is computed from per-user totals: a user who makes many requests then widens the
interval instead of counting as many independent observations. A request without a user id is its
own cluster. Distributions are scipy's, the clustered variance statsmodels'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "Alternative",
    "ClusteredMean",
    "TestResult",
    "chi_square_goodness_of_fit",
    "clustered_mean",
    "compare_means",
    "mean_interval",
    "proportion_interval",
]

Alternative = Literal["two-sided", "less"]


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its p-value.

    Attributes:
        statistic: t or chi-square.
        p_value: two-sided unless the test says otherwise.
        df: degrees of freedom.
        effect: treatment minus control (nan where not meaningful).
        ci_low / ci_high: two-sided (1 - alpha) interval of the effect (nan where not computed).
        std_error: standard error of the effect (nan where not meaningful).
    """

    statistic: float
    p_value: float
    df: float = math.nan
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    std_error: float = math.nan


@dataclass(frozen=True)
class ClusteredMean:
    """A per-request mean and its variance with the requests clustered by user.

    Attributes:
        value: the metric summed over requests / requests (a ratio of per-user sums).
        variance: the variance of ``value``; nan with fewer than two clusters.
        requests: requests averaged.
        clusters: distinct users among them (a request without a user counts as one).
    """

    value: float
    variance: float
    requests: int
    clusters: int

    @property
    def df(self) -> int:
        """Degrees of freedom of the variance: clusters - 1 (it is estimated from per-user totals)."""
        return self.clusters - 1


def clustered_mean(values: np.ndarray, clusters: np.ndarray) -> ClusteredMean:
    """The mean of ``values`` with a cluster-robust variance.

    Args:
        values: the metric per request.
        clusters: the cluster (user) of each request, any hashable numpy dtype.

    Returns:
        The mean, its CRV1 variance and the counts.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0 or len(clusters) != n:
        raise ValueError(f"need one cluster per value and at least one value, got {n} values, {len(clusters)} clusters")
    _, codes = np.unique(clusters, return_inverse=True)
    g = int(codes.max()) + 1
    if g < 2:
        return ClusteredMean(float(values.mean()), math.nan, n, g)
    # statsmodels' cluster-robust OLS on a constant (CRV1, Stata's): for a mean it is the delta-method
    # variance of the ratio of per-user sums, G/(G-1) * sum_i (S_i - mean * N_i)^2 / N^2 (Deng et al.
    # 2018, the standard for per-request metrics of user-randomised experiments), and with one
    # request per user it is s^2 / n, the per-request variance; a maintained sandwich, not our own.
    fit = sm.OLS(values, np.ones((n, 1))).fit(cov_type="cluster", cov_kwds={"groups": codes})
    return ClusteredMean(float(fit.params[0]), float(fit.cov_params()[0, 0]), n, g)


def mean_interval(mean: ClusteredMean, alpha: float) -> tuple[float, float]:
    """Two-sided (1 - alpha) t interval with clusters - 1 df (the cluster-robust convention);
    unbounded with fewer than two clusters."""
    if not math.isfinite(mean.variance):
        return -math.inf, math.inf
    half = float(stats.t.ppf(1.0 - alpha / 2.0, mean.df)) * math.sqrt(mean.variance)
    return mean.value - half, mean.value + half


def proportion_interval(share: ClusteredMean, alpha: float) -> tuple[float, float]:
    """Wilson score interval of a share of requests, with the effective sample size
    requests / design effect (Korn & Graubard 1998); [0, 1] with fewer than two clusters."""
    if not math.isfinite(share.variance):
        return 0.0, 1.0
    p, n = share.value, share.requests
    per_request = p * (1.0 - p) / (n - 1)  # s^2 / n of 0/1 values: the variance if requests were independent
    # Kish's design effect, floored at 1: a user's requests are not less alike than strangers', so an
    # estimate below 1 (few users) or an undefined one (p is 0 or 1) leaves the per-request interval.
    deff = max(1.0, share.variance / per_request) if per_request > 0 else 1.0
    n_eff = n / deff
    # Wilson, not Wald: sensible near 0 and 1 (a variant without clicks still gets an upper bound).
    low, high = proportion_confint(p * n_eff, n_eff, alpha, method="wilson")
    return float(low), float(high)


def compare_means(
    control: ClusteredMean,
    treatment: ClusteredMean,
    alpha: float = 0.05,
    *,
    control_weight: float = 1.0,
    alternative: Alternative = "two-sided",
) -> TestResult:
    """t-test of treatment - control_weight * control, with a (1 - alpha) interval of that effect.

    Users are in exactly one variant, so the two means are independent and the variances add. The
    degrees of freedom are Welch-Satterthwaite's with clusters - 1 per variant (each variance is a
    sample variance of per-user totals); with one request per user this is Welch's test.

    Args:
        control: control's mean (at least two clusters).
        treatment: treatment's mean (at least two clusters).
        alpha: 1 - the interval's level.
        control_weight: e.g. 1 - tolerated relative drop, for a guardrail.
        alternative: "less" tests whether treatment is below control_weight * control.

    Returns:
        t, p-value, df, effect, its two-sided interval and standard error.
    """
    if not (math.isfinite(control.variance) and math.isfinite(treatment.variance)):
        raise ValueError("comparing means needs at least two users in each variant")
    va, vb = control_weight**2 * control.variance, treatment.variance
    se = math.sqrt(va + vb)
    effect = treatment.value - control_weight * control.value
    denom = (va**2 / control.df if va > 0 else 0.0) + (vb**2 / treatment.df if vb > 0 else 0.0)
    df = (va + vb) ** 2 / denom if denom > 0 else math.inf
    statistic = effect / se if se > 0 else (0.0 if effect == 0 else math.copysign(math.inf, effect))
    dist = stats.t(df)
    p = 2.0 * dist.sf(abs(statistic)) if alternative == "two-sided" else dist.cdf(statistic)
    half = float(dist.ppf(1.0 - alpha / 2.0)) * se
    return TestResult(statistic, float(p), df, effect, effect - half, effect + half, se)


def chi_square_goodness_of_fit(observed: Sequence[int], expected_shares: Sequence[float]) -> TestResult:
    """Pearson chi-square test of observed counts against expected shares.

    Args:
        observed: counts per category (>= 0, total > 0).
        expected_shares: shares per category (> 0, summing to 1).

    Returns:
        chi-square statistic, p-value, df = categories - 1.
    """
    if len(observed) != len(expected_shares) or len(observed) < 2:
        raise ValueError("need at least two categories and one share per observed count")
    total = sum(observed)
    if total <= 0 or any(o < 0 for o in observed):
        raise ValueError("observed counts must be >= 0 with a positive total")
    if any(s <= 0 for s in expected_shares) or not math.isclose(sum(expected_shares), 1.0, abs_tol=1e-9):
        raise ValueError("expected shares must be > 0 and sum to 1")
    result = stats.chisquare(observed, [total * s for s in expected_shares])
    return TestResult(float(result.statistic), float(result.pvalue), float(len(observed) - 1))
