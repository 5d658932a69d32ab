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
