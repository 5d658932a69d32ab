"""Off-policy evaluation: estimate a new policy's value from the impression log (arm + propensity)."""

from serving.ope.estimators import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    LoggedFeedback,
    OffPolicyEstimator,
    PolicyValueInterval,
    SelfNormalizedInverseProbabilityWeighting,
)
from serving.ope.reward_model import RidgeRewardModel

__all__ = [
    "DirectMethod",
    "DoublyRobust",
    "InverseProbabilityWeighting",
    "LoggedFeedback",
    "OffPolicyEstimator",
    "PolicyValueInterval",
    "RidgeRewardModel",
    "SelfNormalizedInverseProbabilityWeighting",
]
