"""The few distributions and tests the experiment analysis needs (no scipy in the environment).

- Normal: ``statistics.NormalDist`` (standard library).
- Chi-square survival function: regularized upper incomplete gamma Q(k/2, x/2), by the series /
  continued fraction of Numerical Recipes (Press et al., 3rd ed., section 6.2).
- Student t survival function: regularized incomplete beta I_x(a, b) by Lentz's continued
  fraction (Numerical Recipes section 6.4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "TestResult",
    "chi2_sf",
    "chi_square_goodness_of_fit",
    "normal_quantile",
    "normal_sf",
    "student_t_quantile",
    "student_t_sf",
    "two_proportion_z_test",
    "welch_t_test",
]

_EPS = 1e-15
_MAX_ITER = 500
_STD_NORMAL = NormalDist()


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its p-value.

    Attributes:
        statistic: z, t or chi-square.
        p_value: two-sided unless the test says otherwise.
        df: degrees of freedom (nan for z).
        effect: treatment minus control (nan where not meaningful).
        ci_low / ci_high: (1 - alpha) interval of the effect (nan where not computed).
    """

    statistic: float
    p_value: float
    df: float = math.nan
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal, accurate in the tail (erfc)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """Inverse standard normal CDF, p in (0, 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return _STD_NORMAL.inv_cdf(p)


def _gamma_series(a: float, x: float) -> float:
    # P(a, x) by its series; converges fast for x < a + 1.
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_cf(a: float, x: float) -> float:
    # Q(a, x) by the modified Lentz continued fraction; for x >= a + 1.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for X ~ chi-square(df).

    Args:
        x: statistic (>= 0).
        df: degrees of freedom (> 0).

    Returns:
        The upper tail probability.
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if x <= 0:
        return 1.0
    a, half = df / 2.0, x / 2.0
    if half < a + 1.0:
        return max(0.0, 1.0 - _gamma_series(a, half))
    return _gamma_cf(a, half)


def _beta_cf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = tiny if abs(d) < tiny else d
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITER):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + aa / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def _regularized_beta(x: float, a: float, b: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # Use the continued fraction where it converges fast, else the symmetry relation.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` (> 0, may be fractional, e.g. Welch) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(df):
        return normal_sf(t)
    tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)
    return tail if t >= 0 else 1.0 - tail


def student_t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t by bisection on :func:`student_t_sf` (p in (0, 1))."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - student_t_sf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def two_proportion_z_test(
    successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.05
) -> TestResult:
    """Two-sided z-test of p_b == p_a (pooled variance), with an unpooled CI of p_b - p_a.

    Args:
        successes_a: control successes.
        n_a: control trials (> 0).
        successes_b: treatment successes.
        n_b: treatment trials (> 0).
        alpha: 1 - CI level.

    Returns:
        z, two-sided p-value, effect p_b - p_a and its CI.
    """
    for name, s, n in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"group {name}: need 0 <= successes <= n and n > 0, got {s}/{n}")
    pa, pb = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    effect = pb - pa
    z = effect / se0 if se0 > 0 else 0.0
    se1 = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    q = normal_quantile(1.0 - alpha / 2.0)
    return TestResult(z, 2.0 * normal_sf(abs(z)), math.nan, effect, effect - q * se1, effect + q * se1)


def welch_t_test(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int, alpha: float = 0.05
) -> TestResult:
    """Welch's unequal-variance t-test of mean_b == mean_a, with a CI of mean_b - mean_a.

    Args:
        mean_a / var_a / n_a: control mean, sample variance (ddof=1) and size (>= 2).
        mean_b / var_b / n_b: treatment.
        alpha: 1 - CI level.

    Returns:
        t, two-sided p-value, Welch-Satterthwaite df, effect and CI.
    """
    if n_a < 2 or n_b < 2:
        raise ValueError("Welch's test needs at least 2 observations per group")
    if var_a < 0 or var_b < 0:
        raise ValueError("variances must be >= 0")
    sa, sb = var_a / n_a, var_b / n_b
    se = math.sqrt(sa + sb)
    effect = mean_b - mean_a
    if se == 0:
        return TestResult(0.0 if effect == 0 else math.copysign(math.inf, effect), 1.0 if effect == 0 else 0.0,
                          math.inf, effect, effect, effect)
    df = (sa + sb) ** 2 / ((sa**2 / (n_a - 1) if sa > 0 else 0.0) + (sb**2 / (n_b - 1) if sb > 0 else 0.0))
    t = effect / se
    q = student_t_quantile(1.0 - alpha / 2.0, df)
    return TestResult(t, 2.0 * student_t_sf(abs(t), df), df, effect, effect - q * se, effect + q * se)


def chi_square_goodness_of_fit(observed: list[int], expected_shares: list[float]) -> TestResult:
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
    stat = sum((o - total * s) ** 2 / (total * s) for o, s in zip(observed, expected_shares))
    df = len(observed) - 1
    return TestResult(stat, chi2_sf(stat, df), float(df))
