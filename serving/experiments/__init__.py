"""A/B experiments of bandit policies: definitions, sticky assignment, analysis."""

from serving.experiments.analysis import (
    ExperimentReport,
    GuardrailDecision,
    RequestOutcome,
    VariantResult,
    analyze_experiment,
    outcomes_from_events,
)
from serving.experiments.assignment import assign_variant, bucket
from serving.experiments.definitions import Experiment, Guardrail, Variant

__all__ = [
    "Experiment",
    "ExperimentReport",
    "Guardrail",
    "GuardrailDecision",
    "RequestOutcome",
    "Variant",
    "VariantResult",
    "analyze_experiment",
    "assign_variant",
    "bucket",
    "outcomes_from_events",
]
