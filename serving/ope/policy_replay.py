"""Replay a candidate (target) bandit policy over logged decisions and estimate its value.

The round of the estimate is one logged decision and its action is the bundle shown at one slot
(``slot``, the top one by default): the target's probability of putting that bundle at that slot,
over the *logged candidate set and user context*, is divided by the logging propensity of the same
slot. Rounds are independent requests, so the estimators' intervals apply as they are.

The target policy can learn while it is replayed (``learn=True``): it is updated with every logged
feedback in log order (the shown arm's embedding, the decision's context, the learner's rewards),
so at each decision it has what it would have learned from the log so far. Its action
probabilities at a decision are then those of a policy state that the log determines, which is what
IPS needs. ``learn=False`` evaluates the policy as constructed (a fixed policy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from serving.bandit import Arm, Arms, BanditPolicy, EpsilonGreedy, LinearThompsonSampling, RandomPolicy, featurize
from serving.bandit.base import FeatureKind
from serving.ope.estimators import (
    DoublyRobust,
    InverseProbabilityWeighting,
    LoggedFeedback,
    PolicyValueInterval,
    SelfNormalizedInverseProbabilityWeighting,
)
from serving.ope.impression_log import ImpressionLog, LoggedDecision, LoggedFeedbackEvent
from serving.ope.reward_model import RidgeRewardModel

__all__ = ["OpeResult", "estimate_policy_value", "slot_probabilities", "target_probabilities"]

PolicyFactory = Callable[[int, int], BanditPolicy]  # (user_dim, arm_dim) -> a fresh policy
# DR's reward model needs a few rounds per cross-fitting fold to be more than noise.
MIN_ROUNDS_FOR_DR = 20


def _tie_marginal(scores: np.ndarray, slot: int) -> np.ndarray:
    """P(arm at ``slot``) of a top-k by ``scores`` with exact ties broken uniformly (``ranked_topk``):
    each arm of the tie group that covers ``slot`` lands there with probability 1 / group size."""
    value = np.sort(scores)[::-1][slot]
    group = scores == value
    return group / np.count_nonzero(group)


def _all_scores(policy: BanditPolicy, context: np.ndarray, arms: Arms, rng: np.random.Generator) -> np.ndarray:
    """The policy's deterministic score of every arm, through its public ``select`` of all arms."""
    decision = policy.select(context, arms, len(arms), rng)
    scores = np.empty(len(arms))
    scores[list(decision.indices)] = decision.scores
    return scores


def _thompson_marginal(
    policy: LinearThompsonSampling, context: np.ndarray, arms: Arms, slot: int, rng: np.random.Generator, draws: int
) -> np.ndarray:
    # Monte Carlo over the posterior, as the policy's own propensity estimate does, but for every arm.
    x = featurize(policy.features, context, arms.embeddings)
    cov = 0.5 * (policy.a_inv + policy.a_inv.T)
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(cov.shape[0]))
    thetas = policy.theta[:, None] + policy.v * (chol @ rng.standard_normal((cov.shape[0], draws)))
    sampled = x @ thetas  # (n_arms, draws)
    at_slot = np.argmax(sampled, axis=0) if slot == 0 else np.argsort(-sampled, axis=0, kind="stable")[slot]
    return np.bincount(at_slot, minlength=len(arms)) / draws


def slot_probabilities(
    policy: BanditPolicy, context: np.ndarray, arms: Arms, slot: int, rng: np.random.Generator, draws: int = 1000
) -> np.ndarray:
    """P(the policy puts each arm at ``slot``), shape (n_arms,): exact except for Thompson sampling.

    Args:
        policy: the target policy in its current state.
        context: (user_dim,) user context.
        arms: the candidate arms.
        slot: the slot (0 = top), < len(arms).
        rng: tie-breaking and Thompson draws.
        draws: Monte Carlo draws of Thompson sampling.
    """
    n = len(arms)
    if not 0 <= slot < n:
        raise ValueError(f"slot {slot} is outside the {n} candidates")
    if isinstance(policy, RandomPolicy):
        return np.full(n, 1.0 / n)
    if isinstance(policy, LinearThompsonSampling):
        return _thompson_marginal(policy, context, arms, slot, rng, draws)
    greedy = _tie_marginal(_all_scores(policy, context, arms, rng), slot)
    if isinstance(policy, EpsilonGreedy):  # Greedy too (epsilon = 0): a uniform slate w.p. epsilon
        return (1.0 - policy.epsilon) * greedy + policy.epsilon / n
    return greedy  # LinUCB (shared, disjoint, hybrid), popularity: a deterministic ranking


def target_probabilities(
    log: ImpressionLog, make_policy: PolicyFactory, slot: int, learn: bool, rng: np.random.Generator,
    draws: int = 1000,
) -> list[np.ndarray]:
    """Per logged decision, the target's P(each candidate at ``slot``), replaying in log order.

    Args:
        log: decisions and feedback.
        make_policy: builds the fresh target policy from (user_dim, arm_dim).
        slot: evaluated slot.
        learn: update the target with the logged feedback as the replay passes it.
        rng: randomness of ties and Thompson draws.
        draws: Monte Carlo draws of Thompson sampling.
    """
    if not log.decisions:
        return []
    first = log.decisions[0]
    policy = make_policy(first.context.size, first.candidate_embeddings.shape[1])
    shown: dict[str, LoggedDecision] = {}
    pending: dict[str, list[LoggedFeedbackEvent]] = {}
    timeline: list[LoggedDecision | LoggedFeedbackEvent] = sorted(
        [*log.decisions, *(log.feedback if learn else [])], key=lambda item: item.order
    )
    out: list[np.ndarray] = []

    def learn_from(fb: LoggedFeedbackEvent, decision: LoggedDecision) -> None:
        embedding = decision.shown_embeddings.get(fb.bundle_id)
        if embedding is not None:  # feedback on a bundle the request did not show teaches nothing
            policy.credit(Arm(fb.bundle_id, embedding), decision.context, fb.reward)

    for item in timeline:
        if isinstance(item, LoggedDecision):
            arms = Arms(item.candidate_ids, item.candidate_embeddings)
            out.append(slot_probabilities(policy, item.context, arms, slot, rng, draws))
            shown[item.request_id] = item
            if learn:  # as the live learner: every shown bundle is an observation, credited by its feedback
                for bundle_id, embedding in item.shown_embeddings.items():
                    policy.expose(Arm(bundle_id, embedding), item.context)
            for fb in pending.pop(item.request_id, []):
                learn_from(fb, item)
        elif item.request_id in shown:
            learn_from(item, shown[item.request_id])
        else:  # feedback logged before its impression (another partition, clock skew)
            pending.setdefault(item.request_id, []).append(item)
    return out


@dataclass(frozen=True)
class OpeResult:
    """Estimates of the target's value per round (reward of the bundle at the slot)."""

    n: int
    estimates: list[PolicyValueInterval]
    on_policy: PolicyValueInterval  # the logging policy's realised value (mean logged reward)


def _padded(rows: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        out[i, : row.size] = row
    return out


def _reward_predictions(
    log: ImpressionLog, width: int, ridge: float, rng: np.random.Generator, features: FeatureKind = "concat",
) -> np.ndarray:
    """Cross-fitted q_hat(x, a) of every candidate: one ridge on joint (user, arm) features, fitted on
    every shown slot of the training fold (each has its reward: its feedback, or 0).

    ``RidgeRewardModel`` fits one model per action *index*, but a candidate index means a different
    bundle in every round here; so it is used with a single action over the joint features of
    ``featurize`` (``concat`` by default, as the shipped bandits: one weight per named feature of
    the served arm features, which extrapolates to bundles the logging policy seldom showed).
    Every slot, not only the evaluated one: a near-deterministic logger shows little else at slot 0.
    """
    n = len(log.decisions)
    joint = [featurize(features, d.context, d.candidate_embeddings) for d in log.decisions]
    slots = min(len(d.shown) for d in log.decisions)
    rows = [(i, d.candidate_index(s)) for s in range(slots) for i, d in enumerate(log.decisions)]
    x = np.stack([joint[i][a] for i, a in rows])
    y = np.concatenate([log.slot_rewards(s) for s in range(slots)])
    owner = np.array([i for i, _ in rows])
    folds = rng.permutation(n) % 2
    q = np.zeros((n, width))
    for fold in (0, 1):
        train = folds[owner] != fold
        model = RidgeRewardModel(1, ridge).fit(x[train], np.zeros(int(train.sum()), dtype=np.int64), y[train])
        for i in np.flatnonzero(folds == fold):
            q[i, : joint[i].shape[0]] = model.predict(joint[i])[:, 0]
    return q


def estimate_policy_value(
    log: ImpressionLog, target: list[np.ndarray], slot: int, alpha: float = 0.05, method: str = "normal",
    rng: np.random.Generator | None = None, ridge: float = 1.0,
) -> OpeResult:
    """IPS, SNIPS and (with enough rounds) DR of the target, and the logging policy's value.

    Args:
        log: decisions (with at least ``slot + 1`` shown slots each) and feedback.
        target: per decision, the target's probability of each candidate at ``slot``.
        slot: evaluated slot.
        alpha: 1 - confidence level of the intervals.
        method: ``normal`` or ``bootstrap`` intervals.
        rng: bootstrap resampling and DR's cross-fitting folds.
        ridge: L2 penalty of DR's reward model.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n = len(log.decisions)
    if n == 0 or len(target) != n:
        raise ValueError(f"need one target distribution per decision (decisions: {n}, distributions: {len(target)})")
    width = max(d.candidate_embeddings.shape[0] for d in log.decisions)
    actions = np.array([d.candidate_index(slot) for d in log.decisions], dtype=np.int64)
    pscore = np.array([d.propensities[slot] for d in log.decisions])
    rewards = log.slot_rewards(slot)
    data = LoggedFeedback(actions, rewards, pscore, width)
    dist = _padded(target, width)
    kwargs = {"alpha": alpha, "method": method, "rng": rng, "n_bootstrap": 1000}
    estimates = [
        InverseProbabilityWeighting().estimate_interval(data, dist, **kwargs),
        SelfNormalizedInverseProbabilityWeighting().estimate_interval(data, dist, **kwargs),
    ]
    if n >= MIN_ROUNDS_FOR_DR:
        q = _reward_predictions(log, width, ridge, rng)
        estimates.append(DoublyRobust().estimate_interval(data, dist, q, **kwargs))
    # The logging policy as its own target: weight 1 on every logged action, i.e. the mean reward.
    on_policy_dist = np.zeros((n, width))
    on_policy_dist[np.arange(n), actions] = 1.0
    on_policy = InverseProbabilityWeighting().estimate_interval(
        LoggedFeedback(actions, rewards, np.ones(n), width), on_policy_dist, **kwargs
    )
    return OpeResult(n, estimates, on_policy)
