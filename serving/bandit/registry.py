"""Policies by name, so an experiment variant (policy + params) can be built from config."""

from __future__ import annotations

from typing import Any

from serving.bandit.base import BanditPolicy
from serving.bandit.linear import EpsilonGreedy, Greedy, LinearThompsonSampling, LinUCBDisjoint, LinUCBHybrid, LinUCBShared
from serving.bandit.simple import Popularity, RandomPolicy

__all__ = ["POLICIES", "make_policy"]

POLICIES: dict[str, type[BanditPolicy]] = {
    cls.name: cls
    for cls in (LinUCBDisjoint, LinUCBHybrid, LinUCBShared, LinearThompsonSampling, EpsilonGreedy, Greedy, RandomPolicy, Popularity)
}


def make_policy(name: str, user_dim: int, arm_dim: int, **params: Any) -> BanditPolicy:
    """Build a policy from its registry name and hyper-parameters.

    Args:
        name: one of ``POLICIES``.
        user_dim: user context length.
        arm_dim: arm embedding length.
        **params: the policy's hyper-parameters (unknown ones are an error).

    Returns:
        The policy, untrained.
    """
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}")
    try:
        return cls(user_dim=user_dim, arm_dim=arm_dim, **params)
    except TypeError as exc:  # unknown keyword
        raise ValueError(f"bad parameters for policy {name!r}: {exc}") from None
