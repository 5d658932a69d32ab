"""Bandit policies: invalid arguments, propensities, snapshot/restore, offsets, new arms."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from serving.bandit import (
    POLICIES,
    Arm,
    Arms,
    EpsilonGreedy,
    Greedy,
    LinearThompsonSampling,
    LinUCBDisjoint,
    LinUCBHybrid,
    LinUCBShared,
    Popularity,
    RandomPolicy,
    featurize,
    make_policy,
)
from serving.bandit.base import ranked_topk
from serving.bandit.impressions import decision_to_impression

USER_DIM, ARM_DIM = 3, 2
ALL = [LinUCBShared, LinUCBDisjoint, LinUCBHybrid, LinearThompsonSampling, EpsilonGreedy, Greedy, RandomPolicy, Popularity]


def _arms(n: int = 6, seed: int = 0, prefix: str = "b") -> Arms:
    rng = np.random.default_rng(seed)
    return Arms(tuple(f"{prefix}{i}" for i in range(n)), rng.normal(size=(n, ARM_DIM)))


def _train(policy, n: int = 60, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    arms = _arms()
    for t in range(n):
        ctx = rng.normal(size=USER_DIM)
        i = int(rng.integers(len(arms)))
        policy.update(arms.arm(i), ctx, float(rng.random() < 0.3 + 0.1 * i), offset=t)


# -- invalid arguments --------------------------------------------------------------------

@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (LinUCBShared, {"user_dim": 0, "arm_dim": 2}, "user_dim"),
        (LinUCBShared, {"user_dim": 3, "arm_dim": -1}, "arm_dim"),
        (LinUCBShared, {"user_dim": 3.0, "arm_dim": 2}, "user_dim"),
        (LinUCBShared, {"user_dim": 3, "arm_dim": 2, "alpha": -0.1}, "alpha"),
        (LinUCBShared, {"user_dim": 3, "arm_dim": 2, "ridge": 0.0}, "ridge"),
        (LinUCBShared, {"user_dim": 3, "arm_dim": 2, "features": "cubic"}, "features"),
        (LinUCBShared, {"user_dim": 3, "arm_dim": 2, "features": "hadamard"}, "hadamard"),
        (LinUCBDisjoint, {"user_dim": 3, "arm_dim": 2, "alpha": float("nan")}, "alpha"),
        (LinUCBDisjoint, {"user_dim": 3, "arm_dim": 2, "ridge": -1.0}, "ridge"),
        (LinUCBHybrid, {"user_dim": 3, "arm_dim": 2, "alpha": "1"}, "alpha"),
        (LinUCBHybrid, {"user_dim": 3, "arm_dim": 2, "shared_features": "x"}, "features"),
        (LinearThompsonSampling, {"user_dim": 3, "arm_dim": 2, "v": 0.0}, "v"),
        (LinearThompsonSampling, {"user_dim": 3, "arm_dim": 2, "propensity_draws": 0}, "propensity_draws"),
        (LinearThompsonSampling, {"user_dim": 3, "arm_dim": 2, "v": float("inf")}, "v"),
        (EpsilonGreedy, {"user_dim": 3, "arm_dim": 2, "epsilon": 1.5}, "epsilon"),
        (EpsilonGreedy, {"user_dim": 3, "arm_dim": 2, "epsilon": -0.1}, "epsilon"),
        (EpsilonGreedy, {"user_dim": 3, "arm_dim": 2, "epsilon": True}, "epsilon"),
        (Popularity, {"user_dim": 3, "arm_dim": 2, "prior_n": 0.0}, "prior_n"),
        (Popularity, {"user_dim": 3, "arm_dim": 2, "prior_mean": float("nan")}, "prior_mean"),
        (RandomPolicy, {"user_dim": True, "arm_dim": 2}, "user_dim"),
    ],
)
def test_invalid_constructor_arguments(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    "context, arms, k, rng, match",
    [
        (np.zeros(2), None, 1, None, "context"),
        (np.zeros((1, 3)), None, 1, None, "context"),
        (np.array([0.0, np.nan, 0.0]), None, 1, None, "finite"),
        ("abc", None, 1, None, "context"),
        (np.zeros(3), "not arms", 1, None, "Arms"),
        (np.zeros(3), Arms(("a", "b"), np.zeros((2, 5))), 1, None, "dim"),
        (np.zeros(3), None, 0, None, "k must"),
        (np.zeros(3), None, 7, None, "k must"),
        (np.zeros(3), None, 1.0, None, "k must"),
        (np.zeros(3), None, True, None, "k must"),
        (np.zeros(3), None, 1, "seed", "rng"),
        (np.zeros(3), None, 1, 42, "rng"),
    ],
)
def test_invalid_select_arguments(cls, context, arms, k, rng, match) -> None:
    policy = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    arms = _arms() if arms is None else arms
    rng = np.random.default_rng(0) if rng is None else rng
    with pytest.raises(ValueError, match=match):
        policy.select(context, arms, k, rng)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize(
    "arm, context, reward, offset, match",
    [
        ("b0", np.zeros(3), 1.0, None, "Arm"),
        (Arm("b0", np.zeros(4)), np.zeros(3), 1.0, None, "dim"),
        (None, np.zeros(4), 1.0, None, "context"),
        (None, np.zeros(3), float("nan"), None, "finite"),
        (None, np.zeros(3), float("inf"), None, "finite"),
        (None, np.zeros(3), "1", None, "number"),
        (None, np.zeros(3), True, None, "number"),
        (None, np.zeros(3), 1.0, -1, "offset"),
        (None, np.zeros(3), 1.0, 1.5, "offset"),
    ],
)
def test_invalid_update_arguments(cls, arm, context, reward, offset, match) -> None:
    policy = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    arm = Arm("b0", np.zeros(ARM_DIM)) if arm is None else arm
    with pytest.raises(ValueError, match=match):
        policy.update(arm, context, reward, offset=offset)


@pytest.mark.parametrize(
    "ids, emb, match",
    [
        ((), np.zeros((0, 2)), "at least one"),
        (("a", "a"), np.zeros((2, 2)), "unique"),
        (("a", ""), np.zeros((2, 2)), "arm id"),
        (("a", 3), np.zeros((2, 2)), "arm id"),
        (("a", "x" * 65), np.zeros((2, 2)), "arm id"),
        (("a", "b"), np.zeros((3, 2)), "shape"),
        (("a", "b"), np.zeros(2), "shape"),
        (("a", "b"), np.array([[0.0, 1.0], [np.inf, 0.0]]), "finite"),
    ],
)
def test_invalid_arms(ids, emb, match) -> None:
    with pytest.raises(ValueError, match=match):
        Arms(ids, emb)


def test_make_policy_rejects_unknown_names_and_params() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("ucb9", 3, 2)
    with pytest.raises(ValueError, match="bad parameters"):
        make_policy("linucb", 3, 2, gamma=1.0)
    assert isinstance(make_policy("linear_thompson", 3, 2, v=0.1), LinearThompsonSampling)
    assert set(POLICIES) == {c.name for c in ALL}


# -- decisions and propensities --------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
def test_decision_has_k_distinct_arms_with_valid_propensities(cls) -> None:
    policy = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    _train(policy)
    arms = _arms()
    d = policy.select(np.ones(USER_DIM), arms, 3, np.random.default_rng(5))
    assert len(d.arm_ids) == 3 and len(set(d.arm_ids)) == 3
    assert all(0 < p <= 1 for p in d.propensities)
    assert d.policy == cls.name
    assert [arms.ids[i] for i in d.indices] == list(d.arm_ids)


def test_ranked_topk_tie_propensities_are_exact() -> None:
    scores = np.array([1.0, 3.0, 3.0, 3.0, 0.0])
    idx, props = ranked_topk(scores, 2, np.random.default_rng(0))
    assert set(idx) <= {1, 2, 3}
    np.testing.assert_allclose(props, [1 / 3, 1 / 3])
    counts = np.zeros(5)
    rng = np.random.default_rng(1)
    for _ in range(3000):
        counts[ranked_topk(scores, 2, rng)[0][0]] += 1
    np.testing.assert_allclose(counts[1:4] / 3000, 1 / 3, atol=0.03)


def _empirical_slot_freq(policy, ctx, arms, k, n, seed):
    rng = np.random.default_rng(seed)
    freq = np.zeros((k, len(arms)))
    reported = {}
    for _ in range(n):
        d = policy.select(ctx, arms, k, rng)
        for slot, (i, p) in enumerate(zip(d.indices, d.propensities)):
            freq[slot, i] += 1
            reported.setdefault((slot, i), []).append(p)
    return freq / n, reported


def test_epsilon_greedy_propensities_match_frequencies() -> None:
    policy = EpsilonGreedy(user_dim=USER_DIM, arm_dim=ARM_DIM, epsilon=0.3)
    _train(policy)
    arms, ctx = _arms(), np.array([0.5, -0.2, 1.0])
    freq, reported = _empirical_slot_freq(policy, ctx, arms, 2, 4000, seed=3)
    for (slot, i), ps in reported.items():
        assert np.ptp(ps) < 1e-12  # exact: the same value every time
        assert abs(ps[0] - freq[slot, i]) < 0.025, (slot, i, ps[0], freq[slot, i])


def test_thompson_propensities_match_frequencies() -> None:
    policy = LinearThompsonSampling(user_dim=USER_DIM, arm_dim=ARM_DIM, v=0.5, propensity_draws=200)
    _train(policy, n=40)
    arms, ctx = _arms(), np.array([0.5, -0.2, 1.0])
    freq, reported = _empirical_slot_freq(policy, ctx, arms, 1, 1500, seed=4)
    for (slot, i), ps in reported.items():
        # Monte Carlo estimate: mean over decisions is close to the true frequency.
        assert abs(np.mean(ps) - freq[slot, i]) < 0.06, (i, np.mean(ps), freq[slot, i])


def test_random_policy_propensity_is_one_over_n() -> None:
    d = RandomPolicy(user_dim=USER_DIM, arm_dim=ARM_DIM).select(np.zeros(3), _arms(8), 2, np.random.default_rng(0))
    assert d.propensities == (1 / 8, 1 / 8)


# -- snapshot / restore / offsets ---------------------------------------------------------

@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("via_bytes", [False, True])
def test_snapshot_restore_gives_identical_decisions(cls, via_bytes) -> None:
    original = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    _train(original)
    restored = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    if via_bytes:
        restored.load_bytes(original.to_bytes())
    else:
        restored.load_state_dict(original.state_dict())
    assert restored.n_updates == original.n_updates == 60
    assert restored.last_offset == original.last_offset == 59
    arms = Arms(_arms().ids + ("new",), np.vstack([_arms().embeddings, np.ones(ARM_DIM)]))
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    ctx_rng = np.random.default_rng(10)
    for _ in range(20):
        ctx = ctx_rng.normal(size=USER_DIM)
        da, db = original.select(ctx, arms, 2, rng_a), restored.select(ctx, arms, 2, rng_b)
        assert da == db
        # Both keep learning identically after the restore.
        original.update(arms.arm(da.indices[0]), ctx, 1.0)
        restored.update(arms.arm(db.indices[0]), ctx, 1.0)


@pytest.mark.parametrize("cls", [LinUCBShared, LinUCBHybrid, Popularity])
def test_load_state_dict_rejects_foreign_or_broken_state(cls) -> None:
    policy = cls(user_dim=USER_DIM, arm_dim=ARM_DIM)
    _train(policy)
    state = policy.state_dict()
    with pytest.raises(ValueError, match="dims"):
        cls(user_dim=USER_DIM + 1, arm_dim=ARM_DIM).load_state_dict(state)
    with pytest.raises(ValueError, match="policy"):
        RandomPolicy(user_dim=USER_DIM, arm_dim=ARM_DIM).load_state_dict(state)
    broken = dict(state)
    del broken["n_updates"]
    with pytest.raises(ValueError, match="n_updates"):
        cls(user_dim=USER_DIM, arm_dim=ARM_DIM).load_state_dict(broken)
    key = next(k for k in state if k.startswith("model.") and state[k].ndim >= 1 and state[k].dtype.kind == "f")
    broken = dict(state)
    broken[key] = state[key][..., :1]
    with pytest.raises(ValueError, match="shape"):
        cls(user_dim=USER_DIM, arm_dim=ARM_DIM).load_state_dict(broken)


def test_replayed_feedback_at_or_below_last_offset_is_skipped() -> None:
    policy = LinUCBShared(user_dim=USER_DIM, arm_dim=ARM_DIM)
    _train(policy)  # offsets 0..59
    snapshot = policy.state_dict()
    restarted = LinUCBShared(user_dim=USER_DIM, arm_dim=ARM_DIM)
    restarted.load_state_dict(snapshot)
    arm, ctx = Arm("b1", np.ones(ARM_DIM)), np.ones(USER_DIM)
    assert restarted.update(arm, ctx, 1.0, offset=59) is False  # already applied before the snapshot
    assert restarted.update(arm, ctx, 1.0, offset=12) is False
    assert restarted.n_updates == 60
    np.testing.assert_array_equal(restarted.state_dict()["model.b"], snapshot["model.b"])
    assert restarted.update(arm, ctx, 1.0, offset=60) is True
    assert (restarted.n_updates, restarted.last_offset) == (61, 60)
    assert restarted.update(arm, ctx, 1.0) is True  # no offset: always applied, offset kept
    assert restarted.last_offset == 60


def test_select_does_not_change_state() -> None:
    policy = LinUCBHybrid(user_dim=USER_DIM, arm_dim=ARM_DIM)
    _train(policy)
    before = policy.to_bytes()
    policy.select(np.ones(USER_DIM), _arms(prefix="unseen"), 2, np.random.default_rng(0))
    assert policy.to_bytes() == before


# -- new arms and the paper's algebra -----------------------------------------------------

@pytest.mark.parametrize("cls", [LinUCBDisjoint, LinUCBHybrid])
def test_new_arm_is_explored_without_starving_the_rest(cls) -> None:
    """An arm that appears later is tried, and the known good arm keeps most of the traffic.

    b2 pays 1 with probability 0.3, the others never; the new arm's optimism (its prior width)
    exceeds 0.3, so UCB must try it, then return to b2.
    """
    rng = np.random.default_rng(0)
    policy = cls(user_dim=USER_DIM, arm_dim=ARM_DIM, alpha=1.0)
    old = _arms(4)
    ctx = np.array([0.3, 0.1, -0.2])
    for _ in range(200):
        d = policy.select(ctx, old, 1, rng)
        policy.update(old.arm(d.indices[0]), ctx, float(d.arm_ids[0] == "b2" and rng.random() < 0.3))
    both = Arms(old.ids + ("fresh",), np.vstack([old.embeddings, rng.normal(size=(1, ARM_DIM))]))
    shown = []
    for _ in range(200):
        d = policy.select(ctx, both, 1, rng)
        shown.append(d.arm_ids[0])
        policy.update(both.arm(d.indices[0]), ctx, float(d.arm_ids[0] == "b2" and rng.random() < 0.3))
    assert "fresh" in shown[:5]
    assert shown.count("b2") > 140


def test_hybrid_linucb_equals_joint_ridge_regression() -> None:
    """Algorithm 2's bookkeeping gives the joint ridge solution and its variance (Li et al. 2010)."""
    rng = np.random.default_rng(0)
    ridge = 0.7
    policy = LinUCBHybrid(user_dim=USER_DIM, arm_dim=ARM_DIM, alpha=1.0, ridge=ridge)
    arms = _arms(4)
    k_dim, d_dim = (USER_DIM + 1) * (ARM_DIM + 1), USER_DIM + 1
    big = k_dim + len(arms) * d_dim

    def joint(u, a):
        v = np.zeros(big)
        v[:k_dim] = featurize("outer", u, arms.embeddings[a : a + 1])[0]
        v[k_dim + a * d_dim : k_dim + (a + 1) * d_dim] = np.append(u, 1.0)
        return v

    gram, rhs = ridge * np.eye(big), np.zeros(big)
    for _ in range(40):
        u, a, r = rng.normal(size=USER_DIM), int(rng.integers(4)), float(rng.random())
        policy.update(arms.arm(a), u, r)
        v = joint(u, a)
        gram += np.outer(v, v)
        rhs += r * v
    w = np.linalg.solve(gram, rhs)
    u = rng.normal(size=USER_DIM)
    expected = [joint(u, a) @ w + np.sqrt(joint(u, a) @ np.linalg.solve(gram, joint(u, a))) for a in range(4)]
    _, _, scores = policy._scores_and_select(u, arms, 1, rng)
    np.testing.assert_allclose(scores, expected, rtol=1e-8)


def test_decision_logs_as_contract_impression() -> None:
    policy = LinearThompsonSampling(user_dim=USER_DIM, arm_dim=ARM_DIM)
    d = policy.select(np.ones(USER_DIM), _arms(), 3, np.random.default_rng(0))
    event = decision_to_impression(
        d, user_id="u1", session_id="s1", request_id="r1", ts=datetime(2024, 1, 1, tzinfo=timezone.utc),
        experiment="exp1", variant="ts",
    )
    assert [s.id for s in event.slots] == list(d.arm_ids)
    assert [s.position for s in event.slots] == [0, 1, 2]
    assert [s.propensity for s in event.slots] == list(d.propensities)
    assert (event.policy, event.experiment, event.variant) == ("linear_thompson", "exp1", "ts")
