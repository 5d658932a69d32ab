"""A simple reward model for DR / DM: one ridge regression per action on the context."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RidgeRewardModel"]


@dataclass(eq=False)
class RidgeRewardModel:
    """q_hat(x, a) = [x, 1] . w_a, w_a fitted by ridge on the rounds where a was logged.

    An action never logged predicts the mean logged reward (its intercept-only prior).
    Predictions are clipped to the range of the rewards seen at fit time: a linear model
    extrapolates without bound outside the logged support (a near-deterministic logger leaves most
    of the feature space unsupported), and a click rate below 0 or above the largest reward ever
    observed is an artefact of the fit, not an estimate. DR's and DM's values stay in the reward
    range that way.

    Args:
        n_actions: number of actions.
        ridge: L2 penalty (> 0), not applied to the intercept.
        clip: clip predictions to [min, max] of the fitted rewards.
    """

    n_actions: int
    ridge: float = 1.0
    clip: bool = True
    weights: np.ndarray | None = field(default=None, init=False)
    reward_range: tuple[float, float] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.n_actions, bool) or not isinstance(self.n_actions, (int, np.integer)) or self.n_actions < 1:
            raise ValueError(f"n_actions must be a positive int, got {self.n_actions!r}")
        if isinstance(self.ridge, bool) or not np.isfinite(self.ridge) or self.ridge <= 0:
            raise ValueError(f"ridge must be a positive number, got {self.ridge!r}")

    def fit(self, contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> "RidgeRewardModel":
        """Fit one ridge per action.

        Args:
            contexts: (n, d) contexts.
            actions: (n,) logged actions.
            rewards: (n,) observed rewards.

        Returns:
            self.
        """
        x, actions, rewards = self._check(contexts, actions, rewards)
        d = x.shape[1]
        penalty = self.ridge * np.eye(d)
        penalty[-1, -1] = 1e-8  # leave the intercept (almost) free
        prior = np.zeros(d)
        prior[-1] = rewards.mean()
        weights = np.tile(prior, (self.n_actions, 1))
        for a in range(self.n_actions):
            rows = actions == a
            if rows.any():
                xa = x[rows]
                weights[a] = np.linalg.solve(xa.T @ xa + penalty, xa.T @ rewards[rows])
        self.weights = weights
        self.reward_range = (float(rewards.min()), float(rewards.max()))
        return self

    def predict(self, contexts: np.ndarray) -> np.ndarray:
        """(n, n_actions) predicted reward of every action."""
        if self.weights is None:
            raise ValueError("fit the model first")
        x = self._design(contexts)
        if x.shape[1] != self.weights.shape[1]:
            raise ValueError("contexts have a different dimension than at fit time")
        predicted = x @ self.weights.T
        if self.clip and self.reward_range is not None:
            return np.clip(predicted, *self.reward_range)
        return predicted

    def fit_predict(
        self,
        contexts: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        n_folds: int = 2,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Cross-fitted predictions: each round is predicted by a model that did not see it.

        Args:
            contexts: (n, d) contexts.
            actions: (n,) logged actions.
            rewards: (n,) rewards.
            n_folds: number of folds (>= 2), or 1 for no cross-fitting.
            rng: shuffles the folds (a fixed seed when None).

        Returns:
            (n, n_actions) predictions.
        """
        x, actions, rewards = self._check(contexts, actions, rewards)
        n = x.shape[0]
        if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 1 <= n_folds <= n:
            raise ValueError(f"n_folds must be an int in [1, {n}], got {n_folds!r}")
        raw = np.asarray(contexts, dtype=np.float64)
        if n_folds == 1:
            return self.fit(raw, actions, rewards).predict(raw)
        rng = rng if rng is not None else np.random.default_rng(0)
        folds = rng.permutation(n) % n_folds
        out = np.empty((n, self.n_actions))
        for f in range(n_folds):
            test = folds == f
            model = RidgeRewardModel(self.n_actions, self.ridge, self.clip).fit(raw[~test], actions[~test], rewards[~test])
            out[test] = model.predict(raw[test])
        self.fit(raw, actions, rewards)
        return out

    def _design(self, contexts: np.ndarray) -> np.ndarray:
        x = np.asarray(contexts, dtype=np.float64)
        if x.ndim != 2 or not np.all(np.isfinite(x)):
            raise ValueError("contexts must be a finite (n, d) array")
        return np.hstack([x, np.ones((x.shape[0], 1))])

    def _check(self, contexts: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> tuple[np.ndarray, ...]:
        x = self._design(contexts)
        a = np.asarray(actions)
        r = np.asarray(rewards, dtype=np.float64)
        if a.shape != (x.shape[0],) or r.shape != (x.shape[0],):
            raise ValueError("actions and rewards must be 1-D with one entry per context row")
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= self.n_actions:
            raise ValueError(f"actions must be integers in [0, {self.n_actions})")
        if not np.all(np.isfinite(r)):
            raise ValueError("rewards must be finite")
        return x, a.astype(np.int64), r
