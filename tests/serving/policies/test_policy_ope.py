"""Off-policy estimators on synthetic logs from a known logging policy (true value computable)."""

from __future__ import annotations

import numpy as np
import pytest

from serving.ope import (
    DirectMethod,
    DoublyRobust,
    InverseProbabilityWeighting,
    LoggedFeedback,
    RidgeRewardModel,
    SelfNormalizedInverseProbabilityWeighting,
)

N_ACTIONS, DIM = 5, 3


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _synthetic(seed: int, n: int = 3000):
    """Logs of a softmax logging policy; target = a sharper softmax on different scores.

    Returns the log, the target's action distribution and the target's true value on these
    contexts (sum_a pi(a|x) E[r|x,a], averaged), which every estimator should recover.
    """
    rng = np.random.default_rng(seed)
    theta = np.random.default_rng(1234).normal(size=(DIM, N_ACTIONS))
    x = rng.normal(size=(n, DIM))
    p_reward = 1.0 / (1.0 + np.exp(-(x @ theta)))  # E[r | x, a]
    logging = _softmax(0.5 * x @ theta[:, ::-1])
    target = _softmax(2.0 * x @ theta)
    actions = np.array([rng.choice(N_ACTIONS, p=p) for p in logging])
    rewards = (rng.random(n) < p_reward[np.arange(n), actions]).astype(float)
    log = LoggedFeedback(actions, rewards, logging[np.arange(n), actions], N_ACTIONS, x)
    return log, target, float((target * p_reward).sum(axis=1).mean())


@pytest.mark.parametrize("method", ["normal", "bootstrap"])
def test_ips_snips_dr_recover_the_target_value_within_their_interval(method) -> None:
    seeds = range(12) if method == "normal" else range(4)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for seed in seeds:
        log, target, truth = _synthetic(seed)
        q = RidgeRewardModel(N_ACTIONS).fit_predict(log.contexts, log.actions, log.rewards, n_folds=2,
                                                    rng=np.random.default_rng(seed))
        for est in (InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(), DoublyRobust()):
            ci = est.estimate_interval(log, target, q, alpha=0.05, method=method, n_bootstrap=200,
                                       rng=np.random.default_rng(seed))
            assert ci.lower < ci.value < ci.upper
            assert abs(ci.value - truth) < 0.1  # sanity: no gross bias
            covered[est.name] += ci.contains(truth)
    # 95% intervals: allow a miss or two over the seeds (binomial noise), not systematic misses.
    for name, hits in covered.items():
        assert hits >= len(seeds) - 2, (name, hits, len(seeds))


def test_ips_is_unbiased_and_dr_has_smaller_spread() -> None:
    ips, dr, truths = [], [], []
    for seed in range(20):
        log, target, truth = _synthetic(100 + seed, n=1500)
        q = RidgeRewardModel(N_ACTIONS).fit_predict(log.contexts, log.actions, log.rewards)
        ips.append(InverseProbabilityWeighting().estimate_policy_value(log, target) - truth)
        dr.append(DoublyRobust().estimate_policy_value(log, target, q) - truth)
        truths.append(truth)
    assert abs(np.mean(ips)) < 3 * np.std(ips) / np.sqrt(len(ips))
    assert np.std(dr) < np.std(ips)


def test_on_policy_ips_equals_the_mean_reward() -> None:
    log, _, _ = _synthetic(0, n=500)
    logging = np.zeros((500, N_ACTIONS))
    logging[np.arange(500), log.actions] = log.pscore  # weight 1 on the logged action
    rest = (1 - log.pscore) / (N_ACTIONS - 1)
    for a in range(N_ACTIONS):
        logging[log.actions != a, a] = rest[log.actions != a]
    assert InverseProbabilityWeighting().estimate_policy_value(log, logging) == pytest.approx(log.rewards.mean())
    assert SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(log, logging) == pytest.approx(
        log.rewards.mean()
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"actions": np.array([], dtype=int)}, "non-empty"),
        ({"actions": np.array([0.0, 1.0])}, "integers"),
        ({"actions": np.array([0, 5])}, r"in \[0, 5\)"),
        ({"rewards": np.array([1.0])}, "same length"),
        ({"rewards": np.array([1.0, np.nan])}, "finite"),
        ({"pscore": np.array([0.0, 0.5])}, r"\(0, 1\]"),
        ({"pscore": np.array([0.5, 1.5])}, r"\(0, 1\]"),
        ({"n_actions": 0}, "n_actions"),
        ({"contexts": np.zeros((3, 2))}, "contexts"),
    ],
)
def test_invalid_logged_feedback(kwargs, match) -> None:
    base = {"actions": np.array([0, 1]), "rewards": np.array([1.0, 0.0]), "pscore": np.array([0.5, 0.5]),
            "n_actions": 5}
    with pytest.raises(ValueError, match=match):
        LoggedFeedback(**{**base, **kwargs})


@pytest.mark.parametrize(
    "estimator, dist, q, kwargs, match",
    [
        (InverseProbabilityWeighting(), np.full((2, 4), 0.25), None, {}, "shape"),
        (InverseProbabilityWeighting(), np.full((2, 5), 0.3), None, {}, "probability"),
        (InverseProbabilityWeighting(), np.full((2, 5), 0.2), None, {"alpha": 1.5}, "alpha"),
        (InverseProbabilityWeighting(), np.full((2, 5), 0.2), None, {"method": "jackknife"}, "method"),
        (InverseProbabilityWeighting(), np.full((2, 5), 0.2), None, {"method": "bootstrap"}, "rng"),
        (DoublyRobust(), np.full((2, 5), 0.2), None, {}, "estimated_rewards"),
        (DirectMethod(), np.full((2, 5), 0.2), np.zeros((2, 4)), {}, "estimated_rewards"),
    ],
)
def test_invalid_estimator_arguments(estimator, dist, q, kwargs, match) -> None:
    log = LoggedFeedback(np.array([0, 1]), np.array([1.0, 0.0]), np.array([0.5, 0.5]), 5)
    with pytest.raises(ValueError, match=match):
        estimator.estimate_interval(log, dist, q, **kwargs)


def test_invalid_estimator_and_model_parameters() -> None:
    with pytest.raises(ValueError, match="max_weight"):
        InverseProbabilityWeighting(max_weight=0.0)
    with pytest.raises(ValueError, match="ridge"):
        RidgeRewardModel(3, ridge=-1.0)
    with pytest.raises(ValueError, match="n_actions"):
        RidgeRewardModel(0)
    with pytest.raises(ValueError, match="fit the model"):
        RidgeRewardModel(3).predict(np.zeros((1, 2)))


def test_reward_model_stays_in_the_observed_reward_range_outside_the_logged_support() -> None:
    # Logged contexts span [0, 1] with reward = x; a context at 5 would be predicted near 5 by the
    # line, far above any reward ever seen (and -4 at -4): clipped to the observed [0, 1].
    x = np.linspace(0.0, 1.0, 50)[:, None]
    rewards = x[:, 0].copy()
    model = RidgeRewardModel(1, ridge=1e-6).fit(x, np.zeros(50, dtype=np.int64), rewards)
    far = np.array([[5.0], [-4.0], [0.5]])
    np.testing.assert_allclose(model.predict(far)[:, 0], [1.0, 0.0, 0.5], atol=1e-6)
    unclipped = RidgeRewardModel(1, ridge=1e-6, clip=False).fit(x, np.zeros(50, dtype=np.int64), rewards)
    np.testing.assert_allclose(unclipped.predict(far)[:, 0], [5.0, -4.0, 0.5], atol=1e-4)


def test_snips_without_any_supported_round_is_undefined_not_a_division_warning() -> None:
    # A deterministic logger always chose action 0; the target never does: no weight anywhere.
    log = LoggedFeedback(np.zeros(4, dtype=np.int64), np.array([1.0, 0.0, 1.0, 1.0]), np.ones(4), 3)
    target = np.tile([0.0, 0.5, 0.5], (4, 1))
    with np.errstate(all="raise"):
        estimate = SelfNormalizedInverseProbabilityWeighting().estimate_interval(log, target)
    assert np.isnan(estimate.value) and np.isnan(estimate.std_error)
    assert InverseProbabilityWeighting().estimate_interval(log, target).value == 0.0
