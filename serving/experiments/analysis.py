"""Per-variant results, significance tests, sample-ratio mismatch and guardrails.

The metrics are per request (one shown slate): CTR = share of requests with a click, purchase rate
= share with a bundle purchase, revenue per request = mean revenue. Users, not requests, are
randomised, so every interval and test clusters the requests by user (``serving.experiments.stats``):
a user who makes many requests widens the intervals instead of counting as many independent ones.
Requests without a user id count as independent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import get_args

import numpy as np

from features.events import BundlePurchaseEvent, ClickEvent, Event, ImpressionEvent
from serving.experiments.definitions import Experiment, Guardrail, Metric
from serving.experiments.stats import (
    ClusteredMean,
    TestResult,
    chi_square_goodness_of_fit,
    clustered_mean,
    compare_means,
    mean_interval,
    proportion_interval,
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
METRICS: tuple[Metric, ...] = get_args(Metric)


@dataclass(frozen=True)
class RequestOutcome:
    """What happened after one request of the experiment."""

    variant: str
    clicked: bool
    purchased: bool
    revenue: float = 0.0
    # Who was assigned: the variances cluster a user's requests, and when every outcome has it, the
    # SRM check counts users (the unit of assignment), not requests, whose number per user varies
    # with how much each user browses.
    user_id: str | None = None


@dataclass(frozen=True)
class MetricEstimate:
    """A metric's value with a (1 - alpha) confidence interval (clustered by user)."""

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


def _user_clusters(rows: Sequence[RequestOutcome]) -> np.ndarray:
    """A cluster id per request: its user's, or its own index when it has no user id."""
    ids: dict[str | int, int] = {}
    return np.array([ids.setdefault(o.user_id if o.user_id is not None else i, len(ids)) for i, o in enumerate(rows)])


def _estimates(rows: Sequence[RequestOutcome]) -> dict[Metric, ClusteredMean]:
    """Each metric's clustered mean over one variant's requests (none without requests)."""
    if not rows:
        return {}
    clusters = _user_clusters(rows)
    values: dict[Metric, list[float]] = {
        "ctr": [float(o.clicked) for o in rows],
        "purchase_rate": [float(o.purchased) for o in rows],
        "revenue_per_request": [o.revenue for o in rows],
    }
    return {m: clustered_mean(np.array(values[m]), clusters) for m in METRICS}


def _estimate(metric: Metric, mean: ClusteredMean | None, alpha: float) -> MetricEstimate:
    if mean is None:
        return MetricEstimate(math.nan, math.nan, math.nan)
    interval = mean_interval if metric == "revenue_per_request" else proportion_interval
    return MetricEstimate(mean.value, *interval(mean, alpha))


def _summarise(
    name: str, rows: Sequence[RequestOutcome], estimates: dict[Metric, ClusteredMean], alpha: float
) -> VariantResult:
    metrics = {m: _estimate(m, estimates.get(m), alpha) for m in METRICS}  # fields named by metric
    return VariantResult(
        name, len(rows), sum(o.clicked for o in rows), sum(o.purchased for o in rows),
        math.fsum(o.revenue for o in rows), **metrics,
    )


def _comparable(*estimates: dict[Metric, ClusteredMean]) -> bool:
    """Whether every group has the two users a variance needs (a variant's metrics share its users)."""
    return all(e and e["ctr"].clusters >= 2 for e in estimates)


def _compare(
    control: dict[Metric, ClusteredMean], treat: dict[Metric, ClusteredMean], alpha: float
) -> dict[Metric, TestResult]:
    if not _comparable(control, treat):
        return {}
    return {m: compare_means(control[m], treat[m], alpha) for m in METRICS}


def _guardrail(
    g: Guardrail, name: str, requests: int, control: dict[Metric, ClusteredMean], treat: dict[Metric, ClusteredMean]
) -> GuardrailDecision:
    if requests < g.min_requests:
        return GuardrailDecision(name, g.metric, False, math.nan, "not enough requests yet")
    if not _comparable(control, treat):
        return GuardrailDecision(name, g.metric, False, math.nan, "fewer than two users in a variant")
    # One-sided: H0 treatment >= (1 - drop) * control; a small p means significantly worse.
    p = compare_means(control[g.metric], treat[g.metric], g.alpha, control_weight=1.0 - g.max_relative_drop,
                      alternative="less").p_value
    stop = p < g.alpha
    reason = f"{g.metric} significantly worse than control (p={p:.3g} < {g.alpha})" if stop else "ok"
    return GuardrailDecision(name, g.metric, stop, p, reason)


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
    if not any(by_variant.values()):
        raise ValueError("no outcomes to analyse")
    alpha, control = experiment.alpha, experiment.control_name
    estimates = {name: _estimates(rows) for name, rows in by_variant.items()}
    results = {name: _summarise(name, rows, estimates[name], alpha) for name, rows in by_variant.items()}
    treatments = [name for name in results if name != control]
    comparisons = {name: _compare(estimates[control], estimates[name], alpha) for name in treatments}
    counts = [results[v.name].requests for v in experiment.variants]
    srm_unit = "requests"
    if all(o.user_id is not None for rows in by_variant.values() for o in rows):
        srm_unit = "users"
        counts = [len({o.user_id for o in by_variant[v.name]}) for v in experiment.variants]
    srm = chi_square_goodness_of_fit(counts, [v.share for v in experiment.variants])
    decisions = [
        _guardrail(g, name, min(results[name].requests, results[control].requests), estimates[control], estimates[name])
        for g in experiment.guardrails for name in treatments
    ]
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
