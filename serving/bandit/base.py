"""Shared pieces of the bandit policies: arms, decisions, featurisation, state snapshots.

A policy sees a *changing* set of arms (bundles): every request names the candidate arms with
their embeddings, so a bundle that appears for the first time is scored from its prior (and its
embedding, for the models with shared parameters) without any registration step.

Every decision carries the propensity of each shown slot, P(policy puts this arm at this slot),
so that the impression log supports off-policy evaluation (``serving.ope``).

Policies are plain dataclasses with no Ray imports; the Serve deployment wraps them.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = [
    "Arm",
    "Arms",
    "BanditPolicy",
    "Decision",
    "FeatureKind",
    "LearnedWeights",
    "featurize",
    "main_effects",
    "feature_dim",
    "ranked_topk",
    "state_from_bytes",
    "state_to_bytes",
]

FeatureKind = Literal["outer", "hadamard", "concat", "user"]
MAX_ARM_ID_CHARS = 64
NO_OFFSET = -1


@dataclass(frozen=True, eq=False)
class Arm:
    """One arm with the embedding it had when it was shown (feedback carries it back).

    Args:
        id: opaque arm (bundle) id.
        embedding: 1-D float vector.
    """

    id: str
    embedding: np.ndarray

    def __post_init__(self) -> None:
        _check_arm_id(self.id)
        emb = np.asarray(self.embedding, dtype=np.float64)
        if emb.ndim != 1 or emb.size == 0 or not np.all(np.isfinite(emb)):
            raise ValueError("arm embedding must be a non-empty 1-D finite vector")
        object.__setattr__(self, "embedding", emb)


@dataclass(frozen=True, eq=False)
class Arms:
    """The candidate arms of one request.

    Args:
        ids: unique arm ids, one per row of ``embeddings``.
        embeddings: (n_arms, arm_dim) finite float matrix.
    """

    ids: tuple[str, ...]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        for arm_id in ids:
            _check_arm_id(arm_id)
        if len(set(ids)) != len(ids):
            raise ValueError("arm ids must be unique within a request")
        emb = np.asarray(self.embeddings, dtype=np.float64)
        if emb.ndim != 2 or emb.shape[0] != len(ids) or emb.shape[1] == 0:
            raise ValueError(f"embeddings must have shape (len(ids)={len(ids)}, arm_dim), got {emb.shape}")
        if len(ids) == 0:
            raise ValueError("a request needs at least one arm")
        if not np.all(np.isfinite(emb)):
            raise ValueError("arm embeddings must be finite")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "embeddings", emb)

    def __len__(self) -> int:
        return len(self.ids)

    def arm(self, index: int) -> Arm:
        """The ``index``-th arm as an :class:`Arm` (for feedback)."""
        return Arm(self.ids[index], self.embeddings[index])

    def by_id(self, arm_id: str) -> Arm:
        """The arm with id ``arm_id``; ValueError if it is not a candidate."""
        try:
            return self.arm(self.ids.index(arm_id))
        except ValueError:
            raise ValueError(f"arm {arm_id!r} is not among the candidates") from None


@dataclass(frozen=True)
class Decision:
    """What a policy showed: one arm per slot (slot j = position j), each with its propensity.

    ``propensities[j]`` is P(the policy puts ``arm_ids[j]`` at slot j | context, candidates): exact
    for the deterministic and epsilon-greedy policies, a Monte Carlo estimate for Thompson sampling.
    """

    arm_ids: tuple[str, ...]
    propensities: tuple[float, ...]
    scores: tuple[float, ...]
    policy: str
    indices: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not (len(self.arm_ids) == len(self.propensities) == len(self.scores)):
            raise ValueError("arm_ids, propensities and scores must have the same length")
        if any(not (0.0 < p <= 1.0) for p in self.propensities):
            raise ValueError(f"propensities must be in (0, 1], got {self.propensities}")


def _check_arm_id(arm_id: Any) -> None:
    if not isinstance(arm_id, str) or not arm_id or len(arm_id) > MAX_ARM_ID_CHARS:
        raise ValueError(f"arm id must be a non-empty string of at most {MAX_ARM_ID_CHARS} chars, got {arm_id!r}")


def feature_dim(kind: FeatureKind, user_dim: int, arm_dim: int) -> int:
    """Length of the joint feature vector of :func:`featurize`.

    Args:
        kind: featurisation (see :func:`featurize`).
        user_dim: length of the user context.
        arm_dim: length of an arm embedding.

    Returns:
        The feature dimension.
    """
    if kind == "outer":
        return (user_dim + 1) * (arm_dim + 1)
    if kind == "hadamard":
        if user_dim != arm_dim:
            raise ValueError("hadamard features need user_dim == arm_dim")
        return user_dim + 1
    if kind == "concat":
        return user_dim + arm_dim + 1
    if kind == "user":
        return user_dim + 1
    raise ValueError(f"unknown feature kind {kind!r}; expected outer, hadamard, concat or user")


def featurize(kind: FeatureKind, context: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """Joint (user, arm) features, one row per arm; every kind ends with a bias term.

    ``outer`` = vec([u, 1] (x) [e, 1]) holds user, arm and all interaction terms (the shared
    features z of hybrid LinUCB, Li et al. 2010); ``hadamard`` = [u * e, 1] lets a linear model
    reweight the latent dimensions of a factorisation; ``user`` ignores the arm (disjoint models).

    Args:
        kind: featurisation.
        context: (user_dim,) user features.
        embeddings: (n_arms, arm_dim) arm embeddings.

    Returns:
        (n_arms, feature_dim) matrix.
    """
    n = embeddings.shape[0]
    ones = np.ones((n, 1))
    if kind == "outer":
        u1 = np.append(context, 1.0)
        e1 = np.hstack([embeddings, ones])
        return (e1[:, :, None] * u1[None, None, :]).reshape(n, -1)
    if kind == "hadamard":
        return np.hstack([embeddings * context[None, :], ones])
    if kind == "concat":
        return np.hstack([np.broadcast_to(context, (n, context.size)), embeddings, ones])
    if kind == "user":
        return np.broadcast_to(np.append(context, 1.0), (n, context.size + 1)).copy()
    raise ValueError(f"unknown feature kind {kind!r}")


@dataclass(frozen=True)
class LearnedWeights:
    """A linear policy's main-effect weights: one per user feature and one per arm feature."""

    user: np.ndarray  # (user_dim,)
    arm: np.ndarray  # (arm_dim,)
    bias: float


def main_effects(kind: FeatureKind, coef: np.ndarray, user_dim: int, arm_dim: int) -> LearnedWeights | None:
    """The weights of each user and arm feature alone in coefficients over :func:`featurize`
    features (``outer``: the terms with the other side's constant 1); None where a kind has no
    main effects (``hadamard`` holds interactions only; ``user`` ignores the arm)."""
    if kind == "concat":
        return LearnedWeights(coef[:user_dim].copy(), coef[user_dim : user_dim + arm_dim].copy(), float(coef[-1]))
    if kind == "outer":
        grid = coef.reshape(arm_dim + 1, user_dim + 1)  # rows: [e, 1], columns: [u, 1]
        return LearnedWeights(grid[arm_dim, :user_dim].copy(), grid[:arm_dim, user_dim].copy(), float(grid[arm_dim, user_dim]))
    return None


def ranked_topk(scores: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a deterministic score, exact ties broken uniformly at random.

    Args:
        scores: (n,) finite scores.
        k: slots to fill, 1 <= k <= n.
        rng: source of the tie-breaking permutation.

    Returns:
        (indices, propensities): the chosen indices in slot order and P(index at that slot). An arm
        in a tie group of size g that straddles chosen slots lands on each of them with prob 1/g.
    """
    order = _random_tiebreak_order(scores, rng)
    chosen = order[:k]
    sorted_scores = scores[order]
    props = np.empty(k)
    for slot in range(k):
        value = sorted_scores[slot]
        # The tie group of this slot's score, counted over the full ranking.
        group = int(np.count_nonzero(sorted_scores == value))
        props[slot] = 1.0 / group
    return chosen, props


def _random_tiebreak_order(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # lexsort: primary key -score, secondary a random key, so equal scores come in random order.
    return np.lexsort((rng.random(scores.size), -scores))


def state_to_bytes(state: dict[str, np.ndarray]) -> bytes:
    """Serialise a ``state_dict`` to bytes (npz, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    return buf.getvalue()


def state_from_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_to_bytes`; refuses pickled objects."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key].copy() for key in npz.files}


@dataclass(eq=False)
class BanditPolicy(ABC):
    """Base of every policy: argument checks, update bookkeeping and snapshot/restore.

    Subclasses implement ``_scores_and_select``, ``_apply_exposure`` / ``_apply_credit`` and the learned part of the
    state (``_model_state`` / ``_load_model_state``).

    Args:
        user_dim: length of the user context vector.
        arm_dim: length of an arm embedding.
    """

    user_dim: int
    arm_dim: int
    name: ClassVar[str] = "base"
    n_updates: int = field(default=0, init=False)
    last_offset: int = field(default=NO_OFFSET, init=False)

    def __post_init__(self) -> None:
        _check_positive_int("user_dim", self.user_dim)
        _check_positive_int("arm_dim", self.arm_dim)
        self._check_params()
        self._init_model()

    # -- the interface ---------------------------------------------------------------------

    def select(self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator) -> Decision:
        """Choose ``k`` distinct arms for ``k`` slots.

        Args:
            context: (user_dim,) user features.
            arms: the candidate arms with their embeddings.
            k: number of slots, 1 <= k <= len(arms).
            rng: the only source of randomness (seed it for reproducible decisions).

        Returns:
            The decision with one propensity per slot.
        """
        ctx = self._check_context(context)
        if not isinstance(arms, Arms):
            raise ValueError(f"arms must be an Arms instance, got {type(arms).__name__}")
        if arms.embeddings.shape[1] != self.arm_dim:
            raise ValueError(f"arm embeddings have dim {arms.embeddings.shape[1]}, policy expects {self.arm_dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(arms):
            raise ValueError(f"k must be an int in [1, {len(arms)}], got {k!r}")
        if not isinstance(rng, np.random.Generator):
            raise ValueError("rng must be a numpy.random.Generator")
        idx, props, scores = self._scores_and_select(ctx, arms, int(k), rng)
        return Decision(
            arm_ids=tuple(arms.ids[i] for i in idx),
            propensities=tuple(float(p) for p in props),
            scores=tuple(float(scores[i]) for i in idx),
            policy=self.name,
            indices=tuple(int(i) for i in idx),
        )

    def update(self, arm: Arm, context: np.ndarray, reward: float, offset: int | None = None) -> bool:
        """Learn from one shown arm and its whole reward: :meth:`expose` then :meth:`credit`.

        Args:
            arm: the shown arm, with the embedding it had when shown.
            context: the user context of that decision.
            reward: finite observed reward (click 0/1, revenue, ...).
            offset: Kafka offset of this feedback record; feedback at or below ``last_offset``
                was already applied (a replay after restart) and is skipped.

        Returns:
            True if applied, False if skipped as already applied.
        """
        arm, ctx, reward = self._checked(arm, context, reward)
        if not self._take_offset(offset):
            return False
        self._apply_exposure(arm, ctx)
        self._apply_credit(arm, ctx, reward)
        self.n_updates += 1
        return True

    def expose(self, arm: Arm, context: np.ndarray, offset: int | None = None) -> bool:
        """Count one showing of ``arm`` as an observation with reward 0 (its slot's impression).

        Live feedback arrives later and only for what was clicked: a learner that updated on
        clicks alone would never see what was shown and ignored, and a ridge fitted on positives
        only predicts "everything is clicked". Exposing every shown arm at impression time and
        :meth:`credit`-ing its reward when feedback comes gives the same estimate as
        ``update(arm, context, reward)`` with the final reward.
        """
        arm, ctx, _ = self._checked(arm, context, 0.0)
        if not self._take_offset(offset):
            return False
        self._apply_exposure(arm, ctx)
        self.n_updates += 1
        return True

    def credit(self, arm: Arm, context: np.ndarray, reward: float, offset: int | None = None) -> bool:
        """Add ``reward`` to an observation :meth:`expose` already counted (no new observation).
        Counted in ``n_updates`` (a version of the learned state: replicas re-pull on a change)."""
        arm, ctx, reward = self._checked(arm, context, reward)
        if not self._take_offset(offset):
            return False
        self._apply_credit(arm, ctx, reward)
        self.n_updates += 1
        return True

    def _checked(self, arm: Any, context: Any, reward: Any) -> tuple[Arm, np.ndarray, float]:
        if not isinstance(arm, Arm):
            raise ValueError(f"arm must be an Arm, got {type(arm).__name__}")
        if arm.embedding.size != self.arm_dim:
            raise ValueError(f"arm embedding has dim {arm.embedding.size}, policy expects {self.arm_dim}")
        ctx = self._check_context(context)
        if isinstance(reward, bool) or not isinstance(reward, (int, float, np.integer, np.floating)):
            raise ValueError(f"reward must be a number, got {reward!r}")
        if not np.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward!r}")
        return arm, ctx, float(reward)

    def _take_offset(self, offset: int | None) -> bool:
        """False for an offset at or below ``last_offset`` (already applied); else records it."""
        if offset is None:
            return True
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if offset <= self.last_offset:
            return False
        self.last_offset = int(offset)
        return True

    # STYLE.md names (obp-like); same behaviour.
    def select_action(self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator) -> Decision:
        """Alias of :meth:`select`."""
        return self.select(context, arms, k, rng)

    def update_params(self, arm: Arm, context: np.ndarray, reward: float, offset: int | None = None) -> bool:
        """Alias of :meth:`update`."""
        return self.update(arm, context, reward, offset)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Snapshot of everything learned, as numpy arrays (copies).

        Returns:
            Arrays including ``n_updates`` and ``last_offset`` (-1 when no offset was given).
        """
        state = {
            "policy": np.array(self.name),
            "user_dim": np.array(self.user_dim, dtype=np.int64),
            "arm_dim": np.array(self.arm_dim, dtype=np.int64),
            "n_updates": np.array(self.n_updates, dtype=np.int64),
            "last_offset": np.array(self.last_offset, dtype=np.int64),
        }
        for key, value in self._model_state().items():
            state[f"model.{key}"] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore a snapshot taken by :meth:`state_dict` of the same policy class and dims.

        Args:
            state: the snapshot.
        """
        for key in ("policy", "user_dim", "arm_dim", "n_updates", "last_offset"):
            if key not in state:
                raise ValueError(f"state is missing {key!r}")
        if str(state["policy"]) != self.name:
            raise ValueError(f"state is of policy {str(state['policy'])!r}, not {self.name!r}")
        if int(state["user_dim"]) != self.user_dim or int(state["arm_dim"]) != self.arm_dim:
            raise ValueError("state dims do not match this policy's user_dim / arm_dim")
        model = {k[len("model."):]: np.array(v, copy=True) for k, v in state.items() if k.startswith("model.")}
        self._load_model_state(model)
        self.n_updates = int(state["n_updates"])
        self.last_offset = int(state["last_offset"])

    def learned_weights(self) -> LearnedWeights | None:
        """The weight learned on each named feature, for a policy with shared linear weights."""
        return None

    def to_bytes(self) -> bytes:
        """:meth:`state_dict` serialised (npz)."""
        return state_to_bytes(self.state_dict())

    def load_bytes(self, data: bytes) -> None:
        """Restore from :meth:`to_bytes` output."""
        self.load_state_dict(state_from_bytes(data))

    # -- for subclasses --------------------------------------------------------------------

    def _check_params(self) -> None:
        """Validate hyper-parameters (ValueError)."""

    @abstractmethod
    def _init_model(self) -> None: ...

    @abstractmethod
    def _scores_and_select(
        self, context: np.ndarray, arms: Arms, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (chosen indices in slot order, their propensities, scores of all arms)."""

    @abstractmethod
    def _apply_exposure(self, arm: Arm, context: np.ndarray) -> None:
        """One more observation of ``arm`` in ``context``, with reward 0 so far."""

    @abstractmethod
    def _apply_credit(self, arm: Arm, context: np.ndarray, reward: float) -> None:
        """Add ``reward`` to an observation already counted by ``_apply_exposure``."""

    @abstractmethod
    def _model_state(self) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def _load_model_state(self, state: dict[str, np.ndarray]) -> None: ...

    def _check_context(self, context: Any) -> np.ndarray:
        ctx = np.asarray(context, dtype=np.float64) if not isinstance(context, str) else None
        if ctx is None or ctx.ndim != 1 or ctx.size != self.user_dim:
            raise ValueError(f"context must be a 1-D vector of length {self.user_dim}")
        if not np.all(np.isfinite(ctx)):
            raise ValueError("context must be finite")
        return ctx


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_positive_float(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = value >= 0 if allow_zero else value > 0
    if not np.isfinite(value) or not ok:
        raise ValueError(f"{name} must be finite and {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_feature_kind(kind: Any, user_dim: int, arm_dim: int) -> None:
    if kind not in ("outer", "hadamard", "concat", "user"):
        raise ValueError(f"features must be one of outer, hadamard, concat, user; got {kind!r}")
    feature_dim(kind, user_dim, arm_dim)


def stack_ids(ids: Sequence[str]) -> np.ndarray:
    """Arm ids as a numpy unicode array (empty-safe) for state dicts."""
    return np.array(list(ids), dtype=f"<U{MAX_ARM_ID_CHARS}")
