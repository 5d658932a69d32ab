"""Per-variant results, significance tests, sample-ratio mismatch and guardrails.

The unit is the request (one shown slate): CTR = share of requests with a click, purchase rate =
share with a bundle purchase, revenue per request = mean revenue. Requests of the same user are
treated as independent, which understates variances when users repeat a lot; the per-user SRM
check and user-level aggregation are the caller's choice of what ``outcomes`` holds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from features.events import BundlePurchaseEvent, ClickEvent, Event, ImpressionEvent
from serving.experiments.definitions import Experiment, Metric
from serving.experiments.stats import (
    TestResult,
    chi_square_goodness_of_fit,
    normal_quantile,
    normal_sf,
    student_t_quantile,
    student_t_sf,
    two_proportion_z_test,
    welch_t_test,
)

__all__ = [
    "ExperimentReport",
    "GuardrailDecision",
    "LearningCurve",
    "MetricEstimate",
    "RequestOutcome",
    "VariantResult",
    "analyze_experiment",
    "learning_curve",
    "outcomes_from_events",
    "third_means",
    "window_means",
]

SRM_ALPHA = 0.001  # the usual threshold: an SRM alarm means the data, not the policy, is suspect
LEARNING_WINDOWS = 10  # windows of a variant's requests, in serving order, in its learning curve


@dataclass(frozen=True)
class RequestOutcome:
    """What happened after one request of the experiment."""

    variant: str
    clicked: bool
    purchased: bool
    revenue: float = 0.0
    # Who was assigned; when every outcome has it, the SRM check counts users (the unit of
    # assignment), not requests, whose number per user varies with how much each user browses.
    user_id: str | None = None


@dataclass(frozen=True)
class MetricEstimate:
    """A metric's value with a (1 - alpha) confidence interval."""

    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class VariantResult:
    """Counts and metrics of one variant."""

    variant: str
    requests: int
    clicks: int
    purchases: int
    revenue_sum: float
    revenue_var: float
    ctr: MetricEstimate
    purchase_rate: MetricEstimate
    revenue_per_request: MetricEstimate

    def metric(self, metric: Metric) -> MetricEstimate:
        return getattr(self, metric)


@dataclass(frozen=True)
class GuardrailDecision:
    """Whether a variant breaches a guardrail (one-sided: significantly worse than control)."""

    variant: str
    metric: Metric
    stop: bool
    p_value: float
    reason: str


@dataclass(frozen=True)
class LearningCurve:
    """A variant's reward per request over time: is it learning from its feedback?

    ``window_ctr[j]`` is the CTR of the j-th of ``LEARNING_WINDOWS`` consecutive windows of its
    requests in serving order (``window_requests[j]`` of them); thirds likewise. A learning policy's
    last third beats its first; a fixed one's does not, beyond noise.
    """

    window_requests: tuple[int, ...]
    window_ctr: tuple[float, ...]
    first_third_ctr: float
    last_third_ctr: float


def window_means(values: Sequence[float], windows: int) -> tuple[list[int], list[float]]:
    """(end index, mean) of each of ``windows`` consecutive, near-equal windows of ``values``
    (empty windows of a short sequence left out)."""
    n = len(values)
    bounds = [round(j * n / windows) for j in range(windows + 1)]
    pairs = [(b, math.fsum(values[a:b]) / (b - a)) for a, b in zip(bounds, bounds[1:]) if b > a]
    return [b for b, _ in pairs], [m for _, m in pairs]


def third_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last third of ``values`` (nan with fewer than 3)."""
    third = len(values) // 3
    if third == 0:
        return math.nan, math.nan
    return math.fsum(values[:third]) / third, math.fsum(values[-third:]) / third


def learning_curve(rows: Sequence[RequestOutcome], windows: int = LEARNING_WINDOWS) -> LearningCurve:
    """The :class:`LearningCurve` of one variant's outcomes, given in serving order."""
    clicks = [float(o.clicked) for o in rows]
    ends, ctrs = window_means(clicks, windows)
    return LearningCurve(tuple(b - a for a, b in zip([0, *ends], ends)), tuple(ctrs), *third_means(clicks))


@dataclass(frozen=True)
class ExperimentReport:
    """Everything :func:`analyze_experiment` computes."""

    experiment: str
    control: str
    variants: dict[str, VariantResult]
    comparisons: dict[str, dict[Metric, TestResult]]
    srm: TestResult
    srm_detected: bool
    guardrails: tuple[GuardrailDecision, ...]
    srm_unit: str = "requests"  # "users" when the outcomes carry user ids
    learning: dict[str, LearningCurve] = field(default_factory=dict)  # per variant (outcomes in serving order)

    def stopped_variants(self) -> set[str]:
        """Variants at least one guardrail says to stop."""
        return {g.variant for g in self.guardrails if g.stop}


def _wilson(successes: int, n: int, alpha: float) -> MetricEstimate:
    # Wilson score interval: sensible near 0 and 1, unlike the Wald interval.
    if n == 0:
        return MetricEstimate(math.nan, math.nan, math.nan)
    z = normal_quantile(1.0 - alpha / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return MetricEstimate(p, max(0.0, centre - half), min(1.0, centre + half))


def _mean_ci(total: float, var: float, n: int, alpha: float) -> MetricEstimate:
    if n == 0:
        return MetricEstimate(math.nan, math.nan, math.nan)
    mean = total / n
    if n < 2:
        return MetricEstimate(mean, -math.inf, math.inf)
    half = student_t_quantile(1.0 - alpha / 2.0, n - 1) * math.sqrt(var / n)
    return MetricEstimate(mean, mean - half, mean + half)


def _summarise(name: str, outcomes: Sequence[RequestOutcome], alpha: float) -> VariantResult:
    n = len(outcomes)
    clicks = sum(1 for o in outcomes if o.clicked)
    purchases = sum(1 for o in outcomes if o.purchased)
    revenues = [float(o.revenue) for o in outcomes]
    total = math.fsum(revenues)
    mean = total / n if n else 0.0
    var = math.fsum((r - mean) ** 2 for r in revenues) / (n - 1) if n > 1 else 0.0
    return VariantResult(
        name, n, clicks, purchases, total, var,
        _wilson(clicks, n, alpha), _wilson(purchases, n, alpha), _mean_ci(total, var, n, alpha),
    )


def _compare(control: VariantResult, treat: VariantResult, alpha: float) -> dict[Metric, TestResult]:
    out: dict[Metric, TestResult] = {}
    if control.requests > 0 and treat.requests > 0:
        out["ctr"] = two_proportion_z_test(control.clicks, control.requests, treat.clicks, treat.requests, alpha)
        out["purchase_rate"] = two_proportion_z_test(
            control.purchases, control.requests, treat.purchases, treat.requests, alpha
        )
    if control.requests > 1 and treat.requests > 1:
        out["revenue_per_request"] = welch_t_test(
            control.revenue_per_request.value, control.revenue_var, control.requests,
            treat.revenue_per_request.value, treat.revenue_var, treat.requests, alpha,
        )
    return out


def _worse_p_value(control: VariantResult, treat: VariantResult, metric: Metric, drop: float) -> float:
    """One-sided p-value of H0: treatment >= (1 - drop) * control (small p = significantly worse)."""
    if metric == "revenue_per_request":
        ma, mb = control.revenue_per_request.value, treat.revenue_per_request.value
        sa, sb = control.revenue_var / control.requests, treat.revenue_var / treat.requests
        se = math.sqrt((1 - drop) ** 2 * sa + sb)
        if se == 0:
            return 0.0 if mb < (1 - drop) * ma else 1.0
        denom = ((1 - drop) ** 4 * sa**2 / (control.requests - 1) if sa > 0 else 0.0) + (
            sb**2 / (treat.requests - 1) if sb > 0 else 0.0
        )
        df = (((1 - drop) ** 2 * sa + sb) ** 2 / denom) if denom > 0 else math.inf
        t = (mb - (1 - drop) * ma) / se
        return 1.0 - student_t_sf(t, df)
    count = "clicks" if metric == "ctr" else "purchases"
    pa = getattr(control, count) / control.requests
    pb = getattr(treat, count) / treat.requests
    se = math.sqrt((1 - drop) ** 2 * pa * (1 - pa) / control.requests + pb * (1 - pb) / treat.requests)
    if se == 0:
        return 0.0 if pb < (1 - drop) * pa else 1.0
    z = (pb - (1 - drop) * pa) / se
    return 1.0 - normal_sf(z)


def analyze_experiment(experiment: Experiment, outcomes: Iterable[RequestOutcome]) -> ExperimentReport:
    """Results per variant, tests against control, SRM check and guardrail decisions.

    Args:
        experiment: the definition (shares, control, alpha, guardrails).
        outcomes: one record per request, in serving order (the learning curves read it so);
            unknown variant names are an error.

    Returns:
        The report.
    """
    by_variant: dict[str, list[RequestOutcome]] = {v.name: [] for v in experiment.variants}
    for o in outcomes:
        if o.variant not in by_variant:
            raise ValueError(f"outcome of unknown variant {o.variant!r}")
        if not math.isfinite(o.revenue) or o.revenue < 0:
            raise ValueError(f"revenue must be finite and >= 0, got {o.revenue}")
        by_variant[o.variant].append(o)
    alpha = experiment.alpha
    results = {name: _summarise(name, rows, alpha) for name, rows in by_variant.items()}
    control = results[experiment.control_name]
    comparisons = {
        name: _compare(control, res, alpha) for name, res in results.items() if name != experiment.control_name
    }
    counts = [results[v.name].requests for v in experiment.variants]
    if sum(counts) == 0:
        raise ValueError("no outcomes to analyse")
    srm_unit = "requests"
    if all(o.user_id is not None for rows in by_variant.values() for o in rows):
        srm_unit = "users"
        counts = [len({o.user_id for o in by_variant[v.name]}) for v in experiment.variants]
    srm = chi_square_goodness_of_fit(counts, [v.share for v in experiment.variants])
    decisions = []
    for g in experiment.guardrails:
        for name, res in results.items():
            if name == experiment.control_name:
                continue
            if min(res.requests, control.requests) < g.min_requests:
                decisions.append(GuardrailDecision(name, g.metric, False, math.nan, "not enough requests yet"))
                continue
            p = _worse_p_value(control, res, g.metric, g.max_relative_drop)
            stop = p < g.alpha
            reason = f"{g.metric} significantly worse than control (p={p:.3g} < {g.alpha})" if stop else "ok"
            decisions.append(GuardrailDecision(name, g.metric, stop, p, reason))
    return ExperimentReport(
        experiment.name, experiment.control_name, results, comparisons, srm, srm.p_value < SRM_ALPHA, tuple(decisions),
        srm_unit, {name: learning_curve(rows) for name, rows in by_variant.items()},
    )


def outcomes_from_events(events: Iterable[Event], experiment: str) -> list[RequestOutcome]:
    """Join impressions of ``experiment`` with their clicks and bundle purchases by request_id.

    Args:
        events: contract events (any order); other types and experiments are ignored.
        experiment: the experiment name in the impressions.

    Returns:
        One outcome per impression request (revenue = sum of line price * quantity).
    """
    variants: dict[str, str] = {}
    users: dict[str, str] = {}
    clicked: set[str] = set()
    revenue: dict[str, float] = {}
    for e in events:
        if isinstance(e, ImpressionEvent) and e.experiment == experiment and e.variant is not None:
            variants[e.request_id] = e.variant
            users[e.request_id] = e.user_id
        elif isinstance(e, ClickEvent):
            clicked.add(e.request_id)
        elif isinstance(e, BundlePurchaseEvent):
            amount = math.fsum((line.price or 0.0) * line.quantity for line in e.items)
            revenue[e.request_id] = revenue.get(e.request_id, 0.0) + amount
    return [
        RequestOutcome(variant, rid in clicked, rid in revenue, revenue.get(rid, 0.0), users[rid])
        for rid, variant in variants.items()
    ]
