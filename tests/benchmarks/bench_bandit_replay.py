"""Bandit policies on replay simulators built from real held-out interactions.

    make bench-bandit   (or: .venv/bin/python tests/benchmarks/bench_bandit_replay.py --rounds 3000 --seeds 10,11,12,13,14)

Youshu: arms = the 150 most popular bundles of the train split, reward 1 if the user has the shown
bundle in the held-out test split. Taobao: arms = the 150 most frequent categories before the
cutoff, reward 1 if the user has a later event in that category. Context = rank-8 SVD factors of
the training data. k = 1 slot per round, users drawn with replacement. Prints the mean cumulative
regret (+- std over seeds) per policy; lower is better.
"""

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serving.bandit import EpsilonGreedy, Greedy, LinearThompsonSampling, LinUCBShared, RandomPolicy  # noqa: E402
from serving.simulation import compare_policies, load_taobao_replay, load_youshu_replay  # noqa: E402


def factories(du: int, de: int) -> dict:
    # Hyper-parameters chosen on the Youshu *tune* split (see tests/serving/policies/test_policy_replay.py).
    return {
        "LinUCB (shared, alpha=0.3)": lambda: LinUCBShared(du, de, alpha=0.3),
        "linear TS (v=0.05)": lambda: LinearThompsonSampling(du, de, v=0.05, propensity_draws=20),
        "eps-greedy (0.02)": lambda: EpsilonGreedy(du, de, epsilon=0.02),
        "greedy": lambda: Greedy(du, de),
        "random": lambda: RandomPolicy(du, de),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--datasets", default="taobao,youshu")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    loaders = {"taobao": lambda: load_taobao_replay(n_arms=150, rank=8), "youshu": lambda: load_youshu_replay(n_arms=150, rank=8, split="test")}
    for name in args.datasets.split(","):
        data = loaders[name]()
        du, de = data.user_features.shape[1], data.arm_embeddings.shape[1]
        results = compare_policies(data, factories(du, de), seeds, args.rounds)
        print(f"\n{name}: cumulative regret after {args.rounds} rounds, mean +- std over seeds {seeds}")
        for label, runs in sorted(results.items(), key=lambda kv: statistics.fmean(r.cumulative_regret for r in kv[1])):
            regrets = [r.cumulative_regret for r in runs]
            print(f"  {label:28s} {statistics.fmean(regrets):8.1f} +- {statistics.stdev(regrets) if len(regrets) > 1 else 0.0:6.1f}")


if __name__ == "__main__":
    main()
