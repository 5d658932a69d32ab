"""Replay on real held-out interactions: the linear exploring policies beat the baselines.

Hyper-parameters were chosen on the Youshu *tune* split (3 seeds x 3000 rounds) and are fixed
here: LinUCB (shared model) alpha=0.3, linear TS v=0.05, epsilon-greedy epsilon=0.02 (its best).
The claim is on the mean cumulative regret over seeds, not on every seed.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.bandit import EpsilonGreedy, Greedy, LinearThompsonSampling, LinUCBShared, RandomPolicy
from streamrec.simulation import ReplayData, compare_policies, hindsight_linear_policy, load_taobao_replay, load_youshu_replay, run_replay
from streamrec.simulation.data import datasets_dir

try:
    datasets_dir()
    HAVE_DATA = True
except FileNotFoundError:
    HAVE_DATA = False

pytestmark = pytest.mark.skipif(not HAVE_DATA, reason="shared datasets not available")
SEEDS = (10, 11, 12)


def _factories(data: ReplayData) -> dict:
    du, de = data.user_features.shape[1], data.arm_embeddings.shape[1]
    return {
        "linucb": lambda: LinUCBShared(du, de, alpha=0.3),
        "linear_ts": lambda: LinearThompsonSampling(du, de, v=0.05, propensity_draws=20),
        "eps_greedy": lambda: EpsilonGreedy(du, de, epsilon=0.02),
        "greedy": lambda: Greedy(du, de),
        "random": lambda: RandomPolicy(du, de),
    }


def _mean_regret(data: ReplayData, n_rounds: int, seeds=SEEDS) -> dict[str, float]:
    results = compare_policies(data, _factories(data), seeds, n_rounds)
    return {label: float(np.mean([r.cumulative_regret for r in runs])) for label, runs in results.items()}


def _assert_exploring_policies_win(regret: dict[str, float]) -> None:
    for smart in ("linucb", "linear_ts"):
        for baseline in ("eps_greedy", "greedy", "random"):
            assert regret[smart] < regret[baseline], (smart, baseline, regret)


@pytest.fixture(scope="module")
def taobao() -> ReplayData:
    return load_taobao_replay(n_arms=150, rank=8)


def test_taobao_replay_data_is_consistent(taobao: ReplayData) -> None:
    assert taobao.n_arms == 150 and taobao.user_features.shape == (taobao.n_users, 8)
    assert taobao.arm_embeddings.shape == (150, 9)  # 8 factors + log popularity
    assert (taobao.rewards.sum(axis=1) > 0).all()  # every replayed user has a later real event
    assert set(np.unique(taobao.rewards)) <= {0.0, 1.0}


def test_taobao_linucb_and_ts_have_lower_regret_than_baselines(taobao: ReplayData) -> None:
    _assert_exploring_policies_win(_mean_regret(taobao, n_rounds=3000))


def test_replay_is_reproducible_and_oracle_bounds_reward(taobao: ReplayData) -> None:
    du, de = taobao.user_features.shape[1], taobao.arm_embeddings.shape[1]
    a = run_replay(taobao, LinearThompsonSampling(du, de, v=0.05, propensity_draws=10), 300, seed=3, k=2)
    b = run_replay(taobao, LinearThompsonSampling(du, de, v=0.05, propensity_draws=10), 300, seed=3, k=2)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.propensities, b.propensities)
    assert (a.rewards <= a.oracle).all() and (a.oracle <= 2).all()
    assert ((a.propensities > 0) & (a.propensities <= 1)).all()


def test_new_arms_mid_run_are_shown(taobao: ReplayData) -> None:
    du, de = taobao.user_features.shape[1], taobao.arm_embeddings.shape[1]
    results = compare_policies(taobao, {"linucb": lambda: LinUCBShared(du, de, alpha=0.3)}, [0], 1000,
                               fraction_late=0.3)
    assert results["linucb"][0].cumulative_reward > 0


# Youshu's rewards are sparse (a 1.5% hit rate for random): per seed the regret of the learners
# spreads by 50-90, more than their gaps, so 5 seeds could not separate them (an xfail until
# 2026-12-05). 40 paired seeds can: same users per seed for every policy (BENCHMARKS.md).
YOUSHU_SEEDS = tuple(range(100, 140))


@pytest.fixture(scope="module")
def youshu_runs() -> dict[str, np.ndarray]:
    youshu = load_youshu_replay(n_arms=150, rank=8, split="test")
    results = compare_policies(youshu, _factories(youshu), YOUSHU_SEEDS, 3000)
    return {label: np.array([r.cumulative_regret for r in runs]) for label, runs in results.items()}


@pytest.mark.slow
def test_youshu_linucb_and_ts_beat_random(youshu_runs: dict[str, np.ndarray]) -> None:
    regret = {label: float(runs.mean()) for label, runs in youshu_runs.items()}
    for smart in ("linucb", "linear_ts"):
        assert regret[smart] < regret["random"] - 100, regret


@pytest.mark.slow
def test_youshu_linucb_and_ts_have_lower_regret_than_baselines(youshu_runs: dict[str, np.ndarray]) -> None:
    _assert_exploring_policies_win({label: float(runs.mean()) for label, runs in youshu_runs.items()})
    # Thompson sampling's lead is beyond seed noise (paired over seeds: measured t = -2.5 against
    # epsilon-greedy, -3.3 against greedy); LinUCB's over epsilon-greedy is on the mean only
    # (t = -1.3 on these seeds, -1.4 on seeds 140-199), as BENCHMARKS.md says.
    for baseline in ("eps_greedy", "greedy"):
        diff = youshu_runs["linear_ts"] - youshu_runs[baseline]
        t = diff.mean() / (diff.std(ddof=1) / np.sqrt(diff.size))
        assert t < -2.0, (baseline, t)


def test_hindsight_linear_policy_is_the_floor_of_the_learning_policies(taobao: ReplayData) -> None:
    # Fitted on every held-out answer and frozen: it beats the online learners of its own class
    # on every seed, and feedback during the run leaves it unchanged.
    floor = hindsight_linear_policy(taobao)
    theta = floor.theta.copy()
    results = compare_policies(taobao, {"floor": lambda: floor, **_factories(taobao)}, SEEDS, 1500)
    np.testing.assert_array_equal(floor.theta, theta)
    for seed_index in range(len(SEEDS)):
        floor_regret = results["floor"][seed_index].cumulative_regret
        for label in ("linucb", "linear_ts", "eps_greedy"):
            assert floor_regret < results[label][seed_index].cumulative_regret, (label, seed_index)


# --- named per-(user, arm) features: what the served bandit sees of a candidate -------------------


def test_z_within_rows_uses_only_the_offered_arms() -> None:
    from streamrec.simulation.data import _z_within_rows

    scores = np.array([[1.0, 2.0, 3.0, 100.0], [5.0, 5.0, 5.0, 5.0]])
    offered = np.array([[True, True, True, False], [True, True, True, True]])
    z = _z_within_rows(scores, offered)
    # Row 0 over (1, 2, 3): mean 2, population std sqrt(2/3); the unoffered 100 gets no score (0), as
    # a candidate without a model score does in the served features.
    np.testing.assert_allclose(z[0, :3], [-1 / np.sqrt(2 / 3), 0.0, 1 / np.sqrt(2 / 3)])
    assert z[0, 3] == 0.0
    np.testing.assert_array_equal(z[1], 0.0)  # a constant row carries no ranking signal


@pytest.fixture(scope="module")
def taobao_pairs() -> ReplayData:
    return load_taobao_replay(n_arms=150, rank=8, pair_features=True)


def test_taobao_pair_features_match_a_hand_count(taobao_pairs: ReplayData) -> None:
    import pandas as pd

    from streamrec.simulation.data import TAOBAO_DEFAULT_CUTOFF, TAOBAO_PAIR_FEATURES

    data = taobao_pairs
    assert data.pair_features.shape == (data.n_users, data.n_arms, len(TAOBAO_PAIR_FEATURES))
    assert data.arm_dim == len(TAOBAO_PAIR_FEATURES) == len(data.pair_feature_names)
    df = pd.read_csv(datasets_dir() / "taobao_userbehavior_subset" / "UserBehavior_head.csv", header=None,
                     names=["user", "item", "category", "behavior", "ts"])
    train = df[df["ts"] < TAOBAO_DEFAULT_CUTOFF]
    column = {name: i for i, name in enumerate(TAOBAO_PAIR_FEATURES)}
    row = 0
    user = data.user_ids[row]
    mine = train[train["user"] == user]
    top_category = mine["category"].value_counts().index[0]
    arm = data.arm_ids.index(f"c{top_category}")
    got = data.pair_features[row, arm]
    in_category = mine[mine["category"] == top_category]
    assert got[column["events"]] == pytest.approx(np.log1p(len(in_category)) / 5)
    arm_categories = {int(a[1:]) for a in data.arm_ids}
    assert got[column["category_share"]] == pytest.approx(len(in_category) / mine["category"].isin(arm_categories).sum())
    assert got[column["seen"]] == 1.0
    assert got[column["intent"]] == pytest.approx(np.log1p((in_category["behavior"] != "pv").sum()) / 3)
    days = (TAOBAO_DEFAULT_CUTOFF - in_category["ts"].max()) / 86_400
    assert got[column["recency"]] == pytest.approx(1 / (1 + days))
    untouched = [i for i, a in enumerate(data.arm_ids) if int(a[1:]) not in set(mine["category"])]
    assert (data.pair_features[row, untouched, column["seen"]] == 0).all()
    assert (data.pair_features[row, untouched, column["recency"]] == 0).all()


def test_policies_see_the_pair_features_and_the_floor_is_theirs(taobao_pairs: ReplayData) -> None:
    data = taobao_pairs
    seen: list[np.ndarray] = []

    class Recording(Greedy):
        def select(self, context, arms, k, rng):  # type: ignore[override]
            seen.append(arms.embeddings.copy())
            return super().select(context, arms, k, rng)

    du = data.user_features.shape[1]
    run_replay(data, Recording(du, data.arm_dim, features="concat"), 5, seed=0)
    users = np.random.default_rng([0, 0]).integers(data.n_users, size=5)  # run_replay's user stream
    for user, embeddings in zip(users, seen):
        np.testing.assert_array_equal(embeddings, data.pair_features[user])
    floor = hindsight_linear_policy(data, features="concat")
    results = compare_policies(data, {"floor": lambda: floor,
                                      "linucb": lambda: LinUCBShared(du, data.arm_dim, alpha=0.3, features="concat")},
                               SEEDS, 1500)
    # Over these features LinUCB learns about all that a linear model can: its mean regret is within
    # a few percent of the fit on every answer (measured 1.004x at 3000 rounds over 10 seeds), and on
    # a single seed it can even end below it (the ridge fit is not the best classifier of its class).
    floor_mean = np.mean([r.cumulative_regret for r in results["floor"]])
    linucb_mean = np.mean([r.cumulative_regret for r in results["linucb"]])
    assert 0.97 * floor_mean <= linucb_mean <= 1.05 * floor_mean, (floor_mean, linucb_mean)
