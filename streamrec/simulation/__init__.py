"""Replay simulation of bandit policies on real held-out interactions (Youshu, Taobao)."""

from streamrec.simulation.data import ReplayData, load_taobao_replay, load_youshu_replay
from streamrec.simulation.replay import ReplayResult, compare_policies, hindsight_linear_policy, run_replay, staggered_arrivals

__all__ = [
    "ReplayData",
    "ReplayResult",
    "compare_policies",
    "hindsight_linear_policy",
    "load_taobao_replay",
    "load_youshu_replay",
    "run_replay",
    "staggered_arrivals",
]
