"""Context-free baselines: uniform random and smoothed popularity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from serving.bandit._arm_table import ArmTable
from serving.bandit.base import Arm, Arms, BanditPolicy, _check_positive_float, ranked_topk

__all__ = ["Popularity", "RandomPolicy"]


@dataclass(eq=False)
class RandomPolicy(BanditPolicy):
    """A uniformly random slate; P(arm at slot j) = 1 / n_arms. Learns nothing (counts updates)."""

    name: ClassVar[str] = "random"

    def _init_model(self) -> None:
        pass

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(arms)
        chosen = rng.choice(n, size=k, replace=False)
        return chosen, np.full(k, 1.0 / n), np.zeros(n)

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        pass

    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        pass

    def _model_state(self) -> dict[str, np.ndarray]:
        return {}

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        pass


@dataclass(eq=False)
class Popularity(BanditPolicy):
    """Greedy on each arm's smoothed mean reward (sum + prior_mean * prior_n) / (count + prior_n).

    Not personalised. A new arm scores ``prior_mean``; set it above the typical reward for
    optimistic initialisation (a new arm is shown until its evidence pulls it down).

    Args:
        prior_mean: score of an arm never shown.
        prior_n: weight of the prior, in pseudo-observations (> 0).
    """

    prior_mean: float = 0.0
    prior_n: float = 1.0
    name: ClassVar[str] = "popularity"

    def _check_params(self) -> None:
        _check_positive_float("prior_n", self.prior_n)
        if isinstance(self.prior_mean, bool) or not np.isfinite(self.prior_mean):
            raise ValueError(f"prior_mean must be a finite number, got {self.prior_mean!r}")

    def _init_model(self) -> None:
        self.table = ArmTable({"sum": np.zeros(()), "count": np.zeros(())})

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.table.gather(arms.ids)
        scores = (p["sum"] + self.prior_mean * self.prior_n) / (p["count"] + self.prior_n)
        chosen, props = ranked_topk(scores, k, rng)
        return chosen, props, scores

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        row = self.table.row(arm.id)  # first: a new row may reallocate the arrays
        self.table.arrays["count"][row] += 1.0

    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        row = self.table.row(arm.id)
        self.table.arrays["sum"][row] += reward

    def _model_state(self) -> dict[str, np.ndarray]:
        return self.table.state("arm.")

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        self.table.load("arm.", state)
