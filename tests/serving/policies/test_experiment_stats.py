"""Experiment statistics clustered by user (the unit of randomisation), checked against formulas
written out here with numpy: the sandwich over per-user sums, Wilson, Welch, tabulated quantiles."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats

from serving.experiments import Experiment, Guardrail, RequestOutcome, analyze_experiment
from serving.experiments.definitions import Metric
from serving.experiments.stats import (
    ClusteredMean,
    chi_square_goodness_of_fit,
    clustered_mean,
    compare_means,
    mean_interval,
    proportion_interval,
)

Z975 = 1.959963984540054  # standard normal, 97.5% quantile
T975_DF10 = 2.228138851986274  # Student's t with 10 df, 97.5% quantile (tables)
EXPERIMENT = Experiment.model_validate({
    "name": "e", "salt": "s", "control": "control",
    "variants": [{"name": "control", "policy": "random", "share": 0.5},
                 {"name": "treatment", "policy": "random", "share": 0.5}],
})


def wilson(successes: float, n: float, z: float = Z975) -> tuple[float, float]:
    """The Wilson score interval, by its formula."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def sandwich_variance(values: np.ndarray, users: np.ndarray) -> float:
    """Variance of the per-request mean from per-user sums S_i and counts N_i (delta method,
    equal to the CRV1 sandwich): G/(G-1) * sum_i (S_i - mean * N_i)^2 / N^2."""
    _, codes = np.unique(users, return_inverse=True)
    sums, counts = np.bincount(codes, weights=values), np.bincount(codes)
    mean, g = sums.sum() / counts.sum(), len(sums)
    return g / (g - 1) * float(np.sum((sums - mean * counts) ** 2)) / counts.sum() ** 2


def outcomes(variant: str, clicks: Sequence[bool], users: Sequence[str | None],
             revenue: Sequence[float] | None = None) -> list[RequestOutcome]:
    revenue = revenue or [0.0] * len(clicks)
    return [RequestOutcome(variant, c, False, r, u) for c, u, r in zip(clicks, users, revenue)]


def correlated_requests(rng: np.random.Generator, users: int, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users with 1..40 requests each and their own click rate and spend: requests of a user alike."""
    counts = rng.geometric(0.15, size=users).clip(max=40)
    who = np.repeat([f"{prefix}{i}" for i in range(users)], counts)
    rate = np.repeat(rng.beta(1.0, 8.0, size=users), counts)
    clicks = rng.random(len(who)) < rate
    revenue = np.where(clicks, np.repeat(rng.gamma(2.0, 15.0, size=users), counts), 0.0)
    return who, clicks, revenue


def test_clustered_variance_matches_the_sandwich_on_per_user_sums() -> None:
    rng = np.random.default_rng(7)
    data = {v: correlated_requests(rng, 150, v) for v in ("control", "treatment")}
    by_hand = {}
    for variant, (who, clicks, revenue) in data.items():
        for name, values in (("ctr", clicks.astype(float)), ("revenue_per_request", revenue)):
            got = clustered_mean(values, who)
            by_hand[variant, name] = sandwich_variance(values, who)
            assert got.value == pytest.approx(values.mean(), rel=1e-12)
            assert got.variance == pytest.approx(by_hand[variant, name], rel=1e-9)
            assert (got.requests, got.clusters) == (len(who), 150)
    rows = [o for v, (who, clicks, revenue) in data.items()
            for o in outcomes(v, clicks.tolist(), who.tolist(), revenue.tolist())]
    report = analyze_experiment(EXPERIMENT, rows)
    metrics: tuple[Metric, ...] = ("ctr", "revenue_per_request")
    for name in metrics:
        test = report.comparisons["treatment"][name]
        assert test.std_error == pytest.approx(math.sqrt(by_hand["control", name] + by_hand["treatment", name]),
                                               rel=1e-9)
    mean = report.variants["treatment"].revenue_per_request
    half = stats.t.ppf(0.975, 150 - 1) * math.sqrt(by_hand["treatment", "revenue_per_request"])
    assert (mean.ci_low, mean.ci_high) == pytest.approx((mean.value - half, mean.value + half), rel=1e-9)


def test_one_request_per_user_gives_the_per_request_statistics() -> None:
    """With one request per user the clustered analysis is the textbook per-request one: Wilson for
    CTR, s / sqrt(n) with n - 1 df for revenue, Welch's test for the difference."""
    rng = np.random.default_rng(11)
    n = {"control": 800, "treatment": 600}
    clicks = {v: rng.random(k) < 0.1 for v, k in n.items()}
    revenue = {v: np.where(clicks[v], rng.gamma(2.0, 15.0, size=k), 0.0) for v, k in n.items()}
    rows = [o for v in n for o in outcomes(v, clicks[v].tolist(), [f"{v}{i}" for i in range(n[v])],
                                            revenue[v].tolist())]
    report = analyze_experiment(EXPERIMENT, rows)
    for v, k in n.items():
        ctr = report.variants[v].ctr
        assert (ctr.ci_low, ctr.ci_high) == pytest.approx(wilson(clicks[v].sum(), k), rel=1e-9)
        mean = report.variants[v].revenue_per_request
        half = stats.t.ppf(0.975, k - 1) * revenue[v].std(ddof=1) / math.sqrt(k)
        assert (mean.ci_low, mean.ci_high) == pytest.approx((mean.value - half, mean.value + half), rel=1e-9)
    sa, sb = (revenue[v].var(ddof=1) / n[v] for v in n)
    welch = report.comparisons["treatment"]["revenue_per_request"]
    assert welch.std_error == pytest.approx(math.sqrt(sa + sb), rel=1e-9)
    assert welch.df == pytest.approx((sa + sb) ** 2 / (sa**2 / (n["control"] - 1) + sb**2 / (n["treatment"] - 1)),
                                     rel=1e-9)
    assert welch.effect == pytest.approx(revenue["treatment"].mean() - revenue["control"].mean(), rel=1e-12)


def test_a_user_with_many_requests_widens_the_interval() -> None:
    """The same 100 clicks in 1000 requests: from 100 clicking users they are strong evidence, from one
    user who clicked all 100 of their requests they are one user's taste."""
    control = outcomes("control", [i < 70 for i in range(1000)], [f"c{i}" for i in range(1000)])
    clicks = [i < 100 for i in range(1000)]
    spread = outcomes("treatment", clicks, [f"t{i}" for i in range(1000)])
    heavy_users = ["heavy" if i < 100 else f"t{i}" for i in range(1000)]
    heavy = outcomes("treatment", clicks, heavy_users)
    anonymous = outcomes("treatment", clicks, [None] * 1000)  # requests as independent: the naive analysis
    naive, one_each, clustered = (analyze_experiment(EXPERIMENT, control + rows) for rows in (anonymous, spread, heavy))

    per_request = wilson(100, 1000)
    for report in (naive, one_each):
        ctr = report.variants["treatment"].ctr
        assert (ctr.ci_low, ctr.ci_high) == pytest.approx(per_request, rel=1e-9)
    ctr = clustered.variants["treatment"].ctr
    assert ctr.value == 0.1
    assert ctr.ci_low < per_request[0] and ctr.ci_high > per_request[1]
    assert ctr.ci_high - ctr.ci_low > 5 * (per_request[1] - per_request[0])
    # Wilson with the effective sample size n / design effect, the design effect by hand
    variance = sandwich_variance(np.array(clicks, dtype=float), np.array(heavy_users))
    n_eff = 1000 / (variance / (0.1 * 0.9 / 999))
    assert (ctr.ci_low, ctr.ci_high) == pytest.approx(wilson(0.1 * n_eff, n_eff), rel=1e-9)

    assert one_each.comparisons["treatment"]["ctr"].p_value < 0.05  # 10% vs 7% over 1000 users each
    test = clustered.comparisons["treatment"]["ctr"]
    assert test.p_value > 0.5 and test.ci_low < 0 < test.ci_high
    control_variance = 0.07 * 0.93 / 999
    assert test.std_error == pytest.approx(math.sqrt(control_variance + variance), rel=1e-9)


def test_a_heavy_user_does_not_trip_a_guardrail_alone() -> None:
    """One user who never clicks in 300 requests makes the treatment's per-request CTR look far worse;
    clustered by user it is one user of 301 and no reason to stop."""
    guarded = EXPERIMENT.model_copy(update={"guardrails": (Guardrail(metric="ctr", alpha=0.01, min_requests=200),)})
    control = outcomes("control", [i % 10 == 0 for i in range(600)], [f"c{i}" for i in range(600)])
    clicks = [i >= 300 and i % 10 == 0 for i in range(600)]
    per_request = analyze_experiment(guarded, control + outcomes("treatment", clicks, [None] * 600))
    users = ["heavy" if i < 300 else f"t{i}" for i in range(600)]
    clustered = analyze_experiment(guarded, control + outcomes("treatment", clicks, users))
    assert per_request.stopped_variants() == {"treatment"}
    assert clustered.stopped_variants() == set() and clustered.guardrails[0].reason == "ok"


def test_compare_means_against_tabulated_quantiles() -> None:
    # Welch-Satterthwaite df = 10 when only the treatment (11 users) varies: t(10) tables apply.
    control = ClusteredMean(1.0, 0.0, 50, 5)
    up = compare_means(control, ClusteredMean(1.0 + T975_DF10 * 0.2, 0.04, 60, 11))
    assert up.df == pytest.approx(10.0, rel=1e-12) and up.std_error == pytest.approx(0.2, rel=1e-12)
    assert up.p_value == pytest.approx(0.05, abs=1e-9)
    assert up.ci_low == pytest.approx(0.0, abs=1e-9) and up.ci_high == pytest.approx(2 * T975_DF10 * 0.2, rel=1e-9)
    down = compare_means(control, ClusteredMean(1.0 - T975_DF10 * 0.2, 0.04, 60, 11), alternative="less")
    assert down.p_value == pytest.approx(0.025, abs=1e-9)
    assert compare_means(control, ClusteredMean(1.0 + T975_DF10 * 0.2, 0.04, 60, 11),
                         alternative="less").p_value == pytest.approx(0.975, abs=1e-9)
    # Welch-Satterthwaite by hand, and a weighted control (a guardrail's tolerated drop)
    a, b = ClusteredMean(10.0, 4.0 / 30, 30, 30), ClusteredMean(11.0, 9.0 / 40, 40, 40)
    welch = compare_means(a, b)
    sa, sb = 4.0 / 30, 9.0 / 40
    assert welch.df == pytest.approx((sa + sb) ** 2 / (sa**2 / 29 + sb**2 / 39), rel=1e-12)
    assert welch.statistic == pytest.approx(1.0 / math.sqrt(sa + sb), rel=1e-12)
    weighted = compare_means(a, b, control_weight=0.9)
    assert weighted.effect == pytest.approx(11.0 - 9.0, rel=1e-12)
    assert weighted.std_error == pytest.approx(math.sqrt(0.81 * sa + sb), rel=1e-12)
    # many users: the normal limit
    z = compare_means(ClusteredMean(0.0, 0.5, 10**7, 10**7), ClusteredMean(Z975, 0.5, 10**7, 10**7))
    assert z.p_value == pytest.approx(0.05, abs=1e-6)


def test_zero_variance_comparisons() -> None:
    zero = ClusteredMean(0.0, 0.0, 100, 20)
    same = compare_means(zero, zero)
    assert (same.statistic, same.p_value, same.ci_low, same.ci_high) == (0.0, 1.0, 0.0, 0.0)
    apart = compare_means(zero, ClusteredMean(0.5, 0.0, 100, 20))
    assert apart.statistic == math.inf and apart.p_value == 0.0 and apart.effect == 0.5
    # no clicks at all: an upper bound all the same (Wilson), not a zero-width interval
    assert proportion_interval(zero, 0.05) == pytest.approx(wilson(0, 100), abs=1e-12)


def test_fewer_than_two_users_leave_the_variance_unknown() -> None:
    one_user = clustered_mean(np.array([1.0, 0.0, 1.0]), np.array(["u", "u", "u"]))
    assert math.isnan(one_user.variance) and one_user.clusters == 1
    assert mean_interval(one_user, 0.05) == (-math.inf, math.inf)
    assert proportion_interval(one_user, 0.05) == (0.0, 1.0)
    with pytest.raises(ValueError, match="two users"):
        compare_means(one_user, one_user)
    guarded = EXPERIMENT.model_copy(update={"guardrails": (Guardrail(metric="ctr", min_requests=2),)})
    rows = (outcomes("control", [True, False] * 50, [f"c{i}" for i in range(100)])
            + outcomes("treatment", [False] * 100, ["bot"] * 100))
    report = analyze_experiment(guarded, rows)
    assert report.comparisons["treatment"] == {}
    (decision,) = report.guardrails
    assert not decision.stop and decision.reason == "fewer than two users in a variant"


def test_sample_ratio_chi_square_by_hand() -> None:
    result = chi_square_goodness_of_fit([510, 290, 200], [0.5, 0.3, 0.2])
    statistic = 10**2 / 500 + 10**2 / 300 + 0.0
    assert result.statistic == pytest.approx(statistic, rel=1e-12) and result.df == 2.0
    assert result.p_value == pytest.approx(math.exp(-statistic / 2), rel=1e-12)  # chi-square(2) tail: exp(-x/2)
    with pytest.raises(ValueError, match="sum to 1"):
        chi_square_goodness_of_fit([1, 2], [0.5, 0.6])
