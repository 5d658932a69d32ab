"""Off-policy estimators of a target policy's value from logged bandit feedback.

One interface, after obp's ``ope/estimators.py`` (Saito et al., "Open Bandit Dataset and
Pipeline", NeurIPS 2021 Datasets track): every estimator turns the log into one number per round,
``estimate_round_rewards``; the value is their mean (or a ratio for SNIPS) and the interval comes
from the same per-round numbers.

- IPS: Horvitz & Thompson 1952; in bandits e.g. Strehl et al. NeurIPS 2010.
- SNIPS: Swaminathan & Joachims, "The Self-Normalized Estimator for Counterfactual Learning",
  NeurIPS 2015.
- DR: Dudik, Langford & Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011.
- DM: the reward model alone (biased when the model is wrong; for reference).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from statistics import NormalDist
from typing import ClassVar, Literal

import numpy as np

__all__ = [
    "DirectMethod",
    "DoublyRobust",
    "InverseProbabilityWeighting",
    "LoggedFeedback",
    "OffPolicyEstimator",
    "PolicyValueInterval",
    "SelfNormalizedInverseProbabilityWeighting",
]


@dataclass(frozen=True)
class LoggedFeedback:
    """Logged rounds: the logging policy's action, its propensity and the observed reward.

    Args:
        actions: (n,) integer action index in [0, n_actions).
        rewards: (n,) observed reward.
        pscore: (n,) P(logging policy took ``actions[i]``), in (0, 1].
        n_actions: size of the action space.
        contexts: optional (n, d) contexts (needed to fit a reward model).
    """

    actions: np.ndarray
    rewards: np.ndarray
    pscore: np.ndarray
    n_actions: int
    contexts: np.ndarray | None = None

    def __post_init__(self) -> None:
        actions = np.asarray(self.actions)
        rewards = np.asarray(self.rewards, dtype=np.float64)
        pscore = np.asarray(self.pscore, dtype=np.float64)
        n = actions.shape[0] if actions.ndim == 1 else -1
        if n < 1:
            raise ValueError("actions must be a non-empty 1-D array")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError("actions must be integers")
        if isinstance(self.n_actions, bool) or not isinstance(self.n_actions, (int, np.integer)) or self.n_actions < 1:
            raise ValueError(f"n_actions must be a positive int, got {self.n_actions!r}")
        if actions.min() < 0 or actions.max() >= self.n_actions:
            raise ValueError(f"actions must be in [0, {self.n_actions})")
        if rewards.shape != (n,) or pscore.shape != (n,):
            raise ValueError("rewards and pscore must have the same length as actions")
        if not np.all(np.isfinite(rewards)):
            raise ValueError("rewards must be finite")
        if not np.all((pscore > 0) & (pscore <= 1)):
            raise ValueError("pscore must be in (0, 1]")
        object.__setattr__(self, "actions", actions.astype(np.int64))
        object.__setattr__(self, "rewards", rewards)
        object.__setattr__(self, "pscore", pscore)
        if self.contexts is not None:
            ctx = np.asarray(self.contexts, dtype=np.float64)
            if ctx.ndim != 2 or ctx.shape[0] != n or not np.all(np.isfinite(ctx)):
                raise ValueError("contexts must be a finite (n, d) array")
            object.__setattr__(self, "contexts", ctx)

    def __len__(self) -> int:
        return self.actions.shape[0]


@dataclass(frozen=True)
class PolicyValueInterval:
    """An estimate with a two-sided (1 - alpha) confidence interval."""

    estimator: str
    value: float
    lower: float
    upper: float
    std_error: float
    alpha: float
    method: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in [lower, upper]."""
        return self.lower <= value <= self.upper


def _check_action_dist(data: LoggedFeedback, action_dist: np.ndarray) -> np.ndarray:
    dist = np.asarray(action_dist, dtype=np.float64)
    if dist.shape != (len(data), data.n_actions):
        raise ValueError(f"action_dist must have shape {(len(data), data.n_actions)}, got {dist.shape}")
    if not np.all(np.isfinite(dist)) or dist.min() < 0 or not np.allclose(dist.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("each row of action_dist must be a probability distribution")
    return dist


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


class OffPolicyEstimator(ABC):
    """Base: subclasses define the per-round terms; value and intervals follow from them."""

    name: ClassVar[str] = "base"
    needs_reward_model: ClassVar[bool] = False

    @abstractmethod
    def estimate_round_rewards(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-round contributions whose mean is the estimate (ratio estimators override value).

        Args:
            data: the log.
            action_dist: (n, n_actions) target policy's probability of each action per round.
            estimated_rewards: (n, n_actions) reward model predictions (DR, DM).

        Returns:
            (n,) per-round terms.
        """

    def estimate_policy_value(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> float:
        """The estimated value of the target policy.

        Args:
            data: the log.
            action_dist: (n, n_actions) target policy's action probabilities.
            estimated_rewards: (n, n_actions) reward model predictions, where needed.

        Returns:
            The estimate.
        """
        dist = _check_action_dist(data, action_dist)
        q = self._check_estimated_rewards(data, estimated_rewards)
        return self._value(data, dist, q, np.arange(len(data)))

    def estimate_interval(
        self,
        data: LoggedFeedback,
        action_dist: np.ndarray,
        estimated_rewards: np.ndarray | None = None,
        alpha: float = 0.05,
        method: Literal["normal", "bootstrap"] = "normal",
        n_bootstrap: int = 1000,
        rng: np.random.Generator | None = None,
    ) -> PolicyValueInterval:
        """Estimate with a (1 - alpha) confidence interval.

        Args:
            data: the log.
            action_dist: target policy's action probabilities.
            estimated_rewards: reward model predictions, where needed.
            alpha: 1 - confidence level, in (0, 1).
            method: ``normal`` (CLT on the per-round terms; delta method for SNIPS) or
                ``bootstrap`` (percentile interval over resampled rounds).
            n_bootstrap: bootstrap resamples (>= 10).
            rng: bootstrap randomness (required for ``bootstrap``, for reproducibility).

        Returns:
            The interval.
        """
        _check_alpha(alpha)
        dist = _check_action_dist(data, action_dist)
        q = self._check_estimated_rewards(data, estimated_rewards)
        n = len(data)
        value = self._value(data, dist, q, np.arange(n))
        if method == "normal":
            se = self._std_error(data, dist, q, value)
            z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
            return PolicyValueInterval(self.name, value, value - z * se, value + z * se, se, alpha, method)
        if method == "bootstrap":
            if not isinstance(rng, np.random.Generator):
                raise ValueError("bootstrap needs rng (a numpy.random.Generator)")
            if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 10:
                raise ValueError(f"n_bootstrap must be an int >= 10, got {n_bootstrap!r}")
            boots = np.array([self._value(data, dist, q, rng.integers(n, size=n)) for _ in range(n_bootstrap)])
            lo, hi = np.quantile(boots, [alpha / 2.0, 1.0 - alpha / 2.0])
            return PolicyValueInterval(self.name, value, float(lo), float(hi), float(boots.std(ddof=1)), alpha, method)
        raise ValueError(f"method must be 'normal' or 'bootstrap', got {method!r}")

    # -- internals ------------------------------------------------------------------------

    def _value(self, data: LoggedFeedback, dist: np.ndarray, q: np.ndarray | None, rows: np.ndarray) -> float:
        return float(self._terms(data, dist, q, rows).mean())

    def _std_error(self, data: LoggedFeedback, dist: np.ndarray, q: np.ndarray | None, value: float) -> float:
        terms = self._terms(data, dist, q, np.arange(len(data)))
        return float(terms.std(ddof=1) / np.sqrt(terms.size)) if terms.size > 1 else float("inf")

    def _terms(self, data: LoggedFeedback, dist: np.ndarray, q: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
        sub = LoggedFeedback(data.actions[rows], data.rewards[rows], data.pscore[rows], data.n_actions)
        return self.estimate_round_rewards(sub, dist[rows], None if q is None else q[rows])

    def _check_estimated_rewards(self, data: LoggedFeedback, estimated_rewards: np.ndarray | None) -> np.ndarray | None:
        if not self.needs_reward_model:
            return None
        if estimated_rewards is None:
            raise ValueError(f"{self.name} needs estimated_rewards (n, n_actions) from a reward model")
        q = np.asarray(estimated_rewards, dtype=np.float64)
        if q.shape != (len(data), data.n_actions) or not np.all(np.isfinite(q)):
            raise ValueError(f"estimated_rewards must be a finite array of shape {(len(data), data.n_actions)}")
        return q


def _importance_weights(data: LoggedFeedback, dist: np.ndarray, max_weight: float | None) -> np.ndarray:
    w = dist[np.arange(len(data)), data.actions] / data.pscore
    # Clipping trades variance for (downward) bias; None keeps IPS unbiased.
    return w if max_weight is None else np.minimum(w, max_weight)


def _check_max_weight(max_weight: float | None) -> None:
    if max_weight is not None and (isinstance(max_weight, bool) or not np.isfinite(max_weight) or max_weight <= 0):
        raise ValueError(f"max_weight must be None or a positive number, got {max_weight!r}")


@dataclass(frozen=True)
class InverseProbabilityWeighting(OffPolicyEstimator):
    """IPS: mean of w_i r_i with w_i = pi(a_i | x_i) / pscore_i; unbiased with full support.

    Args:
        max_weight: optional clipping of w (None = no clipping).
    """

    max_weight: float | None = None
    name: ClassVar[str] = "ips"

    def __post_init__(self) -> None:
        _check_max_weight(self.max_weight)

    def estimate_round_rewards(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> np.ndarray:
        return _importance_weights(data, action_dist, self.max_weight) * data.rewards


@dataclass(frozen=True)
class SelfNormalizedInverseProbabilityWeighting(OffPolicyEstimator):
    """SNIPS: sum(w r) / sum(w); slightly biased, far less variance when weights are large.

    The normal interval uses the delta method: se = sd(w_i (r_i - V)) / (sqrt(n) mean(w)).
    """

    name: ClassVar[str] = "snips"

    def estimate_round_rewards(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> np.ndarray:
        w = _importance_weights(data, action_dist, None)
        if not w.any():  # the target never chose a logged action: no support, SNIPS is undefined
            return np.full(w.size, np.nan)
        return w * data.rewards / w.mean()

    def _std_error(self, data: LoggedFeedback, dist: np.ndarray, q: np.ndarray | None, value: float) -> float:
        w = _importance_weights(data, dist, None)
        if not w.any():
            return float("nan")
        infl = w * (data.rewards - value)
        return float(infl.std(ddof=1) / (np.sqrt(w.size) * w.mean()))


@dataclass(frozen=True)
class DirectMethod(OffPolicyEstimator):
    """DM: mean over rounds of sum_a pi(a | x) q_hat(x, a)."""

    name: ClassVar[str] = "dm"
    needs_reward_model: ClassVar[bool] = True

    def estimate_round_rewards(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> np.ndarray:
        assert estimated_rewards is not None  # checked by the public methods
        return (action_dist * estimated_rewards).sum(axis=1)


@dataclass(frozen=True)
class DoublyRobust(OffPolicyEstimator):
    """DR: DM plus the importance-weighted residual of the logged action.

    Unbiased if either the propensities or the reward model are right; fit the reward model with
    cross-fitting (``RidgeRewardModel.fit_predict``) so its errors do not correlate with the
    residuals it corrects.

    Args:
        max_weight: optional clipping of the importance weight.
    """

    max_weight: float | None = None
    name: ClassVar[str] = "dr"
    needs_reward_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_max_weight(self.max_weight)

    def estimate_round_rewards(
        self, data: LoggedFeedback, action_dist: np.ndarray, estimated_rewards: np.ndarray | None = None
    ) -> np.ndarray:
        assert estimated_rewards is not None
        rows = np.arange(len(data))
        w = _importance_weights(data, action_dist, self.max_weight)
        q_logged = estimated_rewards[rows, data.actions]
        return (action_dist * estimated_rewards).sum(axis=1) + w * (data.rewards - q_logged)
