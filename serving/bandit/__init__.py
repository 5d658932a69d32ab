"""Contextual bandit policies for choosing bundles (plain Python + numpy; no Ray imports)."""

from serving.bandit.base import Arm, Arms, BanditPolicy, Decision, featurize
from serving.bandit.linear import EpsilonGreedy, Greedy, LinearThompsonSampling, LinUCBDisjoint, LinUCBHybrid, LinUCBShared
from serving.bandit.registry import POLICIES, make_policy
from serving.bandit.simple import Popularity, RandomPolicy

__all__ = [
    "Arm",
    "Arms",
    "BanditPolicy",
    "Decision",
    "EpsilonGreedy",
    "Greedy",
    "LinUCBDisjoint",
    "LinUCBHybrid",
    "LinUCBShared",
    "LinearThompsonSampling",
    "POLICIES",
    "Popularity",
    "RandomPolicy",
    "featurize",
    "make_policy",
]
