"""The experiment's outcome in one sentence: winner, no significant difference, or stopped.

Decision rule (on the experiment's primary metric, tests from ``serving.experiments.analysis``):

* a variant any guardrail says to stop is reported as stopped and cannot win;
* with ``k`` treatment variants each is tested at ``alpha / k`` (Bonferroni), because "any of k
  variants beats control" at an unadjusted alpha is a false alarm far more often than alpha;
* the winner is the significantly better treatment with the largest effect; if some treatment is
  significantly worse and none better, control is the winner; otherwise there is no significant
  difference;
* a sample-ratio mismatch does not change the decision but marks it untrustworthy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from serving.experiments.analysis import ExperimentReport, GuardrailDecision

__all__ = ["Comparison", "Verdict", "VerdictKind", "decide"]

VerdictKind = Literal["winner", "control_wins", "no_difference", "stopped", "no_data"]
METRIC_LABELS = {"ctr": "CTR", "purchase_rate": "purchase rate", "revenue_per_request": "revenue / request"}


@dataclass(frozen=True)
class Comparison:
    """One treatment against control on one metric."""

    variant: str
    metric: str
    control_value: float
    treatment_value: float
    effect: float  # treatment - control
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    @property
    def relative_lift(self) -> float:
        """effect / control (nan when control is 0)."""
        return self.effect / self.control_value if self.control_value else math.nan


@dataclass(frozen=True)
class Verdict:
    """What the report's first box says."""

    kind: VerdictKind
    headline: str
    metric: str
    alpha: float
    threshold: float  # per-comparison significance level after the Bonferroni correction
    comparisons: tuple[Comparison, ...]
    stopped: tuple[GuardrailDecision, ...]
    srm_detected: bool | None
    srm_p_value: float | None
    deciding: Comparison | None = None


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _comparisons(report: ExperimentReport, metric: str, threshold: float) -> list[Comparison]:
    control = report.variants[report.control]
    out = []
    for name, tests in report.comparisons.items():
        test = tests.get(metric)  # type: ignore[call-overload]
        if test is None:
            continue
        treat = report.variants[name]
        out.append(Comparison(
            name, metric, control.metric(metric).value, treat.metric(metric).value,  # type: ignore[arg-type]
            test.effect, test.ci_low, test.ci_high, test.p_value,
            math.isfinite(test.p_value) and test.p_value < threshold,
        ))
    return out


def no_data(reason: str) -> Verdict:
    """The verdict when there is nothing to analyse."""
    return Verdict("no_data", reason, "ctr", math.nan, math.nan, (), (), None, None)


def decide(report: ExperimentReport, metric: str, alpha: float) -> Verdict:
    """Apply the module's decision rule to an analysed experiment.

    Args:
        report: the analysis (server's or recomputed).
        metric: the primary metric of the definition.
        alpha: the experiment's two-sided significance level.

    Returns:
        The verdict with every treatment-vs-control comparison on ``metric``.

    Example:
        >>> decide(report, "ctr", 0.05).headline  # doctest: +SKIP
        'Winner: linucb'
    """
    k = max(1, len(report.comparisons))
    threshold = alpha / k
    comparisons = _comparisons(report, metric, threshold)
    stopped = tuple(g for g in report.guardrails if g.stop)
    stopped_names = {g.variant for g in stopped}
    eligible = [c for c in comparisons if c.variant not in stopped_names]
    better = [c for c in eligible if c.significant and c.effect > 0]
    worse = [c for c in comparisons if c.significant and c.effect < 0]
    label = metric_label(metric)
    deciding: Comparison | None
    if better:
        deciding = max(better, key=lambda c: c.effect)
        kind: VerdictKind = "winner"
        headline = f"Winner: {deciding.variant} (better {label} than control {report.control})"
    elif worse:
        deciding = min(worse, key=lambda c: c.effect)
        kind = "control_wins"
        headline = f"Control {report.control} wins: {deciding.variant} has a significantly lower {label}"
    else:
        deciding = min(comparisons, key=lambda c: c.p_value if math.isfinite(c.p_value) else 2.0, default=None)
        kind = "no_difference"
        headline = f"No significant difference in {label} between the variants"
    if stopped:
        names = ", ".join(sorted(stopped_names))
        headline = f"Stopped by guardrail: {names}. " + headline
        kind = "stopped" if kind != "winner" else kind
    return Verdict(kind, headline, metric, alpha, threshold, tuple(comparisons), stopped,
                   report.srm_detected, report.srm.p_value, deciding)
