"""Bandit policies on replay simulators built from real held-out interactions.

    make bench-bandit   (or: .venv/bin/python tests/benchmarks/bench_bandit_replay.py --rounds 3000 --seeds 10,11,12,13,14)

Youshu: arms = the 150 most popular bundles of the train split, reward 1 if the user has the shown
bundle in the held-out test split. Taobao: arms = the 150 most frequent categories before the
cutoff, reward 1 if the user has a later event in that category. Context = rank-8 SVD factors of
the training data. k = 1 slot per round, users drawn with replacement. Prints the mean cumulative
regret (+- std over seeds) per policy; lower is better.

Verdict (issue 24): LinUCB (alpha 0.3, as served) and linear Thompson sampling (v 0.05, tuned on
the Youshu tune split; the served experiment uses 0.3 over its named features), with `outer`
features here, as the replay's arms are raw embeddings rather than the served per-(user, bundle)
features, must each end
with at most 0.8x the cumulative regret of epsilon-greedy (0.02) on the same seeds, with a paired t
< -2 over the seeds. The bench exits 1 when any is missed (``--no-verdict``: prints the verdict, exits 0).

Scale: regret here is against an oracle that knows each user's held-out answers, and most of it no
policy can learn. The bench also runs greedy on a ridge fit of *every* held-out reward over the
same features (``hindsight_linear_policy``): the least regret a policy of the bandits' class
reaches. It prints that floor, how far below it the 0.8x target lies, and each bandit's *excess*
regret over the floor relative to epsilon-greedy's (the part of the regret that learning decides).
"""

import argparse
import math
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serving.bandit import EpsilonGreedy, Greedy, LinearThompsonSampling, LinUCBShared, RandomPolicy  # noqa: E402
from streamrec.simulation import ReplayData, compare_policies, hindsight_linear_policy, load_taobao_replay, load_youshu_replay  # noqa: E402
from verdict import Verdict, add_verdict_argument, ratio  # noqa: E402  (tests/benchmarks/verdict.py)


LINUCB, THOMPSON, BASELINE = "LinUCB (shared, alpha=0.3)", "linear TS (v=0.05)", "eps-greedy (0.02)"
FLOOR = "linear fit on the answers"
MAX_RATIO, MAX_T = 0.8, -2.0


def factories(data: ReplayData) -> dict:
    # Hyper-parameters chosen on the Youshu *tune* split (see tests/serving/policies/test_policy_replay.py).
    du, de = data.user_features.shape[1], data.arm_embeddings.shape[1]
    floor = hindsight_linear_policy(data, ridge=1.0)  # fitted once: it does not change during a run
    return {
        FLOOR: lambda: floor,
        LINUCB: lambda: LinUCBShared(du, de, alpha=0.3),
        THOMPSON: lambda: LinearThompsonSampling(du, de, v=0.05, propensity_draws=20),
        BASELINE: lambda: EpsilonGreedy(du, de, epsilon=0.02),
        "greedy": lambda: Greedy(du, de),
        "random": lambda: RandomPolicy(du, de),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--datasets", default="taobao,youshu")
    add_verdict_argument(parser)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    verdict = Verdict.from_args(args)
    loaders = {"taobao": lambda: load_taobao_replay(n_arms=150, rank=8), "youshu": lambda: load_youshu_replay(n_arms=150, rank=8, split="test")}
    for name in args.datasets.split(","):
        data = loaders[name]()
        results = compare_policies(data, factories(data), seeds, args.rounds)
        print(f"\n{name}: cumulative regret after {args.rounds} rounds, mean +- std over seeds {seeds}")
        for label, runs in sorted(results.items(), key=lambda kv: statistics.fmean(r.cumulative_regret for r in kv[1])):
            regrets = [r.cumulative_regret for r in runs]
            print(f"  {label:28s} {statistics.fmean(regrets):8.1f} +- {statistics.stdev(regrets) if len(regrets) > 1 else 0.0:6.1f}")
        print_scale(results)
        check_bandits(verdict, name, results)
    return verdict.report()


def paired_t(a: list[float], b: list[float]) -> float:
    """The paired t statistic of a - b over the seeds (nan when every difference is 0)."""
    return float(stats.ttest_rel(a, b).statistic) if len(a) > 1 else math.nan


def print_scale(results: dict) -> None:
    """Where the 0.8x target lies against the floor, and each bandit's share of the learnable regret."""
    mean = {label: statistics.fmean(r.cumulative_regret for r in runs) for label, runs in results.items()}
    floor, base = mean[FLOOR], mean[BASELINE]
    print(f"  target {MAX_RATIO}x {BASELINE} = {MAX_RATIO * base:.1f}; the {FLOOR} reaches {floor:.1f} "
          f"({ratio(floor, base):.3f}x): {'below' if MAX_RATIO * base < floor else 'above'} the floor")
    for label in (LINUCB, THOMPSON):
        print(f"  excess regret over the floor, {label} / {BASELINE}: "
              f"{mean[label] - floor:.1f} / {base - floor:.1f} = {ratio(mean[label] - floor, base - floor):.3f}x")


def check_bandits(verdict: Verdict, dataset: str, results: dict) -> None:
    """Each bandit against epsilon-greedy on the same seeds: regret ratio and paired t (issue 24)."""
    base = [r.cumulative_regret for r in results[BASELINE]]
    for label in (LINUCB, THOMPSON):
        regrets = [r.cumulative_regret for r in results[label]]
        verdict.check(f"{dataset} {label}: regret / {BASELINE}", ratio(statistics.fmean(regrets), statistics.fmean(base)),
                      "<=", MAX_RATIO, "x", note="issue 24")
        verdict.check(f"{dataset} {label}: paired t vs {BASELINE}", paired_t(regrets, base), "<", MAX_T, note="issue 24")


if __name__ == "__main__":
    sys.exit(main())
