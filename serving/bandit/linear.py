"""Linear contextual bandits over (user features, arm embedding).

- :class:`LinUCBDisjoint`: Li, Chu, Langford, Schapire, "A Contextual-Bandit Approach to
  Personalized News Article Recommendation", WWW 2010, Algorithm 1 (one ridge model per arm).
- :class:`LinUCBShared`: Algorithm 1 of the same paper with one model over the joint features.
- :class:`LinUCBHybrid`: same paper, Algorithm 2 (shared coefficients on z = user (x) arm features
  plus a per-arm part on the user features), so a new arm starts from what the shared part knows.
- :class:`LinearThompsonSampling`: Agrawal & Goyal, "Thompson Sampling for Contextual Bandits with
  Linear Payoffs", ICML 2013 (Gaussian posterior N(mu, v^2 B^-1) of one shared model).
- :class:`EpsilonGreedy` / :class:`Greedy`: the same shared ridge model, exploring uniformly with
  probability epsilon (a whole random slate), or never.

All ridge inverses are kept up to date by Sherman-Morrison rank-one updates (O(d^2) per update).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from serving.bandit._arm_table import ArmTable
from serving.bandit.base import (
    Arm,
    Arms,
    BanditPolicy,
    FeatureKind,
    LearnedWeights,
    _check_feature_kind,
    _check_positive_float,
    _check_positive_int,
    feature_dim,
    featurize,
    main_effects,
    ranked_topk,
)

__all__ = ["EpsilonGreedy", "Greedy", "LinUCBDisjoint", "LinUCBHybrid", "LinUCBShared", "LinearThompsonSampling"]


def _sherman_morrison(a_inv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(A + x x^T)^-1 from A^-1, in O(d^2)."""
    ax = a_inv @ x
    return a_inv - np.outer(ax, ax) / (1.0 + x @ ax)


def _stable_topk_rows(values: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` largest values of each column, ties to the lower index: the first
    ``k`` rows of a stable argsort of ``-values``. k argmax passes instead of a full sort (a
    request has a few slots and a few hundred arms; the sort was most of a Thompson decision)."""
    work = values.astype(float, copy=True)
    columns = np.arange(work.shape[1])
    out = np.empty((k, work.shape[1]), dtype=np.intp)
    for slot in range(k):
        out[slot] = np.argmax(work, axis=0)  # the first maximum: the lower index wins a tie
        work[out[slot], columns] = -np.inf
    return out


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(arr, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"state array {name} has shape {arr.shape}, expected {shape}")
    return arr.copy()


@dataclass(eq=False)
class _SharedRidgePolicy(BanditPolicy):
    """One ridge regression on joint features shared by all arms.

    Args:
        ridge: L2 regularisation lambda (the prior precision), > 0.
        features: how user context and arm embedding are combined (see ``featurize``).
    """

    ridge: float = 1.0
    features: FeatureKind = "outer"

    def _check_params(self) -> None:
        _check_positive_float("ridge", self.ridge)
        _check_feature_kind(self.features, self.user_dim, self.arm_dim)

    def _init_model(self) -> None:
        self.dim = feature_dim(self.features, self.user_dim, self.arm_dim)
        self.a_inv = np.eye(self.dim) / self.ridge
        self.b = np.zeros(self.dim)
        self.theta = np.zeros(self.dim)

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        x = featurize(self.features, context, arm.embedding[None, :])[0]
        self.a_inv = _sherman_morrison(self.a_inv, x)
        self.theta = self.a_inv @ self.b

    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        x = featurize(self.features, context, arm.embedding[None, :])[0]
        self.b = self.b + reward * x
        self.theta = self.a_inv @ self.b

    def _model_state(self) -> dict[str, np.ndarray]:
        return {"a_inv": self.a_inv, "b": self.b}

    def learned_weights(self) -> LearnedWeights | None:
        return main_effects(self.features, self.theta, self.user_dim, self.arm_dim)

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        self.a_inv = _check_shape("a_inv", state.get("a_inv"), (self.dim, self.dim))
        self.b = _check_shape("b", state.get("b"), (self.dim,))
        self.theta = self.a_inv @ self.b


@dataclass(eq=False)
class EpsilonGreedy(_SharedRidgePolicy):
    """Ridge-greedy slate, replaced by a uniformly random slate with probability ``epsilon``.

    Exploring a whole slate at once keeps the propensity exact and cheap:
    P(arm at slot j) = (1 - eps) * P_greedy(arm at slot j) + eps / n_arms.

    Args:
        epsilon: exploration probability in [0, 1].
    """

    epsilon: float = 0.1
    name: ClassVar[str] = "epsilon_greedy"

    def _check_params(self) -> None:
        super()._check_params()
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 <= eps <= 1.0):
            raise ValueError(f"epsilon must be a number in [0, 1], got {eps!r}")

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = featurize(self.features, context, arms.embeddings)
        scores = x @ self.theta
        n = len(arms)
        explore = self.epsilon > 0 and rng.random() < self.epsilon
        if explore:
            chosen = rng.choice(n, size=k, replace=False)
        else:
            chosen, _ = ranked_topk(scores, k, rng)
        sorted_desc = np.sort(scores)[::-1]
        props = np.empty(k)
        for slot, i in enumerate(chosen):
            tie = scores == sorted_desc[slot]
            p_greedy = float(tie[i]) / np.count_nonzero(tie)
            props[slot] = (1.0 - self.epsilon) * p_greedy + self.epsilon / n
        return chosen, props, scores


@dataclass(eq=False)
class Greedy(EpsilonGreedy):
    """Pure exploitation of the ridge estimate (epsilon = 0); exact ties broken at random."""

    epsilon: float = field(default=0.0, init=False)
    name: ClassVar[str] = "greedy"


@dataclass(eq=False)
class LinearThompsonSampling(_SharedRidgePolicy):
    """Linear Thompson sampling (Agrawal & Goyal, ICML 2013), one shared model.

    Each request samples theta ~ N(mu, v^2 B^-1) and shows the top-k of x^T theta. Propensities are
    estimated by re-running the sampling ``propensity_draws`` times:
    p = (1 + #draws putting the arm at that slot) / (1 + propensity_draws), the realised draw
    counted as one of them, so a shown arm never gets propensity 0.

    Args:
        v: posterior scale (the paper's v; its theoretical value is far too large in practice).
        propensity_draws: Monte Carlo draws for the propensity estimate, >= 1.
    """

    v: float = 0.25
    propensity_draws: int = 100
    name: ClassVar[str] = "linear_thompson"

    def _check_params(self) -> None:
        super()._check_params()
        _check_positive_float("v", self.v)
        _check_positive_int("propensity_draws", self.propensity_draws)

    def _init_model(self) -> None:
        super()._init_model()
        self._chol: np.ndarray | None = None

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        super()._apply_exposure(arm, context)
        self._chol = None  # posterior covariance changed

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        super()._load_model_state(state)
        self._chol = None

    def _cholesky(self) -> np.ndarray:
        if self._chol is None:
            # Symmetrise: Sherman-Morrison accumulates tiny asymmetries.
            cov = 0.5 * (self.a_inv + self.a_inv.T)
            self._chol = np.linalg.cholesky(cov + 1e-12 * np.eye(self.dim))
        return self._chol

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = featurize(self.features, context, arms.embeddings)
        chol = self._cholesky()
        draws = 1 + self.propensity_draws
        # Column 0 is the draw that decides; the rest only estimate the propensity.
        thetas = self.theta[:, None] + self.v * (chol @ rng.standard_normal((self.dim, draws)))
        sampled = x @ thetas  # (n_arms, draws)
        ranks = _stable_topk_rows(sampled, k)  # (k, draws)
        chosen = ranks[:, 0]
        counts = (ranks == chosen[:, None]).sum(axis=1)  # includes the deciding draw
        props = counts / draws
        return chosen, props, sampled[:, 0]


@dataclass(eq=False)
class LinUCBShared(_SharedRidgePolicy):
    """LinUCB (Li et al., WWW 2010, Algorithm 1) with one model shared by all arms.

    Algorithm 1 with x_{t,a} = joint (user, arm) features and a single theta: the hybrid model
    without its per-arm part. Every arm, new ones included, is scored from its embedding; the
    width sqrt(x^T A^-1 x) is large for embeddings unlike anything shown so far.

    Args:
        alpha: exploration width, >= 0.
    """

    alpha: float = 1.0
    name: ClassVar[str] = "linucb"

    def _check_params(self) -> None:
        super()._check_params()
        _check_positive_float("alpha", self.alpha, allow_zero=True)

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = featurize(self.features, context, arms.embeddings)
        # Not einsum(..., optimize=True): planning its path cost more than the product itself.
        width = np.sqrt(np.maximum(((x @ self.a_inv) * x).sum(axis=1), 0.0))
        scores = x @ self.theta + self.alpha * width
        chosen, props = ranked_topk(scores, k, rng)
        return chosen, props, scores


@dataclass(eq=False)
class LinUCBDisjoint(BanditPolicy):
    """LinUCB with disjoint linear models (Li et al., WWW 2010, Algorithm 1).

    Score = x^T theta_a + alpha * sqrt(x^T A_a^-1 x). An unseen arm has A_a = ridge * I, so its
    width is the largest: it gets tried, and its bonus shrinks as it is shown (no starvation of
    the others once it is known).

    Args:
        alpha: exploration width, >= 0.
        ridge: L2 regularisation, > 0.
        features: per-arm features; ``user`` (the paper's setting) by default.
    """

    alpha: float = 1.0
    ridge: float = 1.0
    features: FeatureKind = "user"
    name: ClassVar[str] = "linucb_disjoint"

    def _check_params(self) -> None:
        _check_positive_float("alpha", self.alpha, allow_zero=True)
        _check_positive_float("ridge", self.ridge)
        _check_feature_kind(self.features, self.user_dim, self.arm_dim)

    def _init_model(self) -> None:
        self.dim = feature_dim(self.features, self.user_dim, self.arm_dim)
        self.table = ArmTable({"a_inv": np.eye(self.dim) / self.ridge, "b": np.zeros(self.dim)})

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = featurize(self.features, context, arms.embeddings)
        params = self.table.gather(arms.ids)
        a_inv, b = params["a_inv"], params["b"]
        theta = np.einsum("nij,nj->ni", a_inv, b)
        width = np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", x, a_inv, x), 0.0))
        scores = np.einsum("ni,ni->n", x, theta) + self.alpha * width
        chosen, props = ranked_topk(scores, k, rng)
        return chosen, props, scores

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        x = featurize(self.features, context, arm.embedding[None, :])[0]
        row = self.table.row(arm.id)
        self.table.arrays["a_inv"][row] = _sherman_morrison(self.table.arrays["a_inv"][row], x)

    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        x = featurize(self.features, context, arm.embedding[None, :])[0]
        row = self.table.row(arm.id)  # first: a new row may reallocate the arrays
        self.table.arrays["b"][row] += reward * x

    def _model_state(self) -> dict[str, np.ndarray]:
        return self.table.state("arm.")

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        self.table.load("arm.", state)


@dataclass(eq=False)
class LinUCBHybrid(BanditPolicy):
    """LinUCB with hybrid linear models (Li et al., WWW 2010, Algorithm 2).

    Expected reward = z^T beta + x^T theta_a with shared z = vec([u,1] (x) [e_a,1]) and per-arm
    x = [u, 1]. The shared beta transfers what was learnt about similar embeddings to a new arm;
    the per-arm theta_a and its uncertainty (prior A_a = ridge * I) give the new arm exploration.

    Args:
        alpha: exploration width, >= 0.
        ridge: L2 regularisation of both the shared and per-arm parts, > 0.
        shared_features: featurisation of z (``outer`` by default).
    """

    alpha: float = 1.0
    ridge: float = 1.0
    shared_features: FeatureKind = "outer"
    name: ClassVar[str] = "linucb_hybrid"

    def _check_params(self) -> None:
        _check_positive_float("alpha", self.alpha, allow_zero=True)
        _check_positive_float("ridge", self.ridge)
        _check_feature_kind(self.shared_features, self.user_dim, self.arm_dim)

    def _init_model(self) -> None:
        self.k_dim = feature_dim(self.shared_features, self.user_dim, self.arm_dim)
        self.d_dim = self.user_dim + 1
        self.a0 = np.eye(self.k_dim) * self.ridge
        self.a0_inv = np.eye(self.k_dim) / self.ridge
        self.b0 = np.zeros(self.k_dim)
        self.table = ArmTable(
            {
                "a_inv": np.eye(self.d_dim) / self.ridge,
                "B": np.zeros((self.d_dim, self.k_dim)),
                "b": np.zeros(self.d_dim),
            }
        )

    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = featurize(self.shared_features, context, arms.embeddings)  # (n, k_dim)
        x = np.append(context, 1.0)  # same per-arm features for every arm
        p = self.table.gather(arms.ids)
        a_inv, big_b, b = p["a_inv"], p["B"], p["b"]
        beta = self.a0_inv @ self.b0
        theta = np.einsum("nij,nj->ni", a_inv, b - big_b @ beta)
        ainv_x = a_inv @ x  # (n, d)
        bt_ainv_x = np.einsum("nij,ni->nj", big_b, ainv_x)  # B_a^T A_a^-1 x, (n, k)
        a0_z = z @ self.a0_inv
        s = (
            np.einsum("nk,nk->n", z, a0_z)
            - 2.0 * np.einsum("nk,nk->n", a0_z, bt_ainv_x)
            + ainv_x @ x
            + np.einsum("nk,nk->n", bt_ainv_x @ self.a0_inv, bt_ainv_x)
        )
        scores = z @ beta + theta @ x + self.alpha * np.sqrt(np.maximum(s, 0.0))
        chosen, props = ranked_topk(scores, k, rng)
        return chosen, props, scores

    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        z = featurize(self.shared_features, context, arm.embedding[None, :])[0]
        x = np.append(context, 1.0)
        row = self.table.row(arm.id)
        arr = self.table.arrays
        a_inv, big_b, b = arr["a_inv"][row], arr["B"][row], arr["b"][row]
        # Algorithm 2, lines 17-22 with r = 0: take the arm's old contribution out, update it, put it back.
        bt_ainv = big_b.T @ a_inv
        self.a0 += bt_ainv @ big_b
        self.b0 += bt_ainv @ b
        a_inv = _sherman_morrison(a_inv, x)
        big_b = big_b + np.outer(x, z)
        bt_ainv = big_b.T @ a_inv
        self.a0 += np.outer(z, z) - bt_ainv @ big_b
        self.b0 -= bt_ainv @ b
        arr["a_inv"][row], arr["B"][row] = a_inv, big_b
        self.a0 = 0.5 * (self.a0 + self.a0.T)
        self.a0_inv = np.linalg.inv(self.a0)

    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        # The reward terms of lines 17-22: b_a += r x, b0 += r z - B_a^T A_a^-1 (r x).
        z = featurize(self.shared_features, context, arm.embedding[None, :])[0]
        x = np.append(context, 1.0)
        row = self.table.row(arm.id)
        arr = self.table.arrays
        arr["b"][row] = arr["b"][row] + reward * x
        self.b0 += reward * (z - arr["B"][row].T @ (arr["a_inv"][row] @ x))

    def learned_weights(self) -> LearnedWeights | None:
        """The shared part beta (per-arm parts are each arm's own)."""
        return main_effects(self.shared_features, self.a0_inv @ self.b0, self.user_dim, self.arm_dim)

    def _model_state(self) -> dict[str, np.ndarray]:
        return {"a0": self.a0, "a0_inv": self.a0_inv, "b0": self.b0, **self.table.state("arm.")}

    def _load_model_state(self, state: dict[str, np.ndarray]) -> None:
        self.a0 = _check_shape("a0", state.get("a0"), (self.k_dim, self.k_dim))
        self.a0_inv = _check_shape("a0_inv", state.get("a0_inv"), (self.k_dim, self.k_dim))
        self.b0 = _check_shape("b0", state.get("b0"), (self.k_dim,))
        self.table.load("arm.", state)
