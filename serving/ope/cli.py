"""`streamrec ope`: off-policy evaluation of a candidate bandit policy on the logged impressions.

    streamrec ope --policy <variant | policy[:key=value,...]> [--experiment NAME]
                  [--experiments-file FILE] [--logging-variant NAME ...] [--slot N]
                  [--no-learning] [--alpha A] [--ci normal|bootstrap] [--json FILE]

Reads the impressions of ``/v1/bundles`` (with their decision context and candidate set headers)
and their feedback from Kafka (the ``events`` topic and the serving feedback topic), replays the
candidate policy over the logged contexts and candidate sets (``serving.ope.policy_replay``), and
prints IPS, SNIPS and DR estimates with confidence intervals next to the logging policy's
on-policy value. ``--policy`` names a variant of the experiment (``deploy/local/experiments.yaml``
by default), built with ``serving.bandit.make_policy``, or a policy spec such as
``linucb:alpha=0.5,features=outer``.

The value is the expected reward of the bundle shown at ``--slot`` (0: the top one) per request,
with the learner's rewards (``settings.serving.click_reward`` / ``purchase_reward`` / ``dismiss_reward``).
Only Kafka holds the decision contexts (record headers); the Parquet lake keeps the contract events
alone, so it cannot be the source of a contextual replay.

Registered with ``streamrec.cli.build_parser`` via :func:`register`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from serving.recommend.bundle_features import ARM_DIM, USER_DIM

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["TargetSpec", "cmd_ope", "register", "resolve_target"]

DEFAULT_EXPERIMENTS_FILE = "deploy/local/experiments.yaml"
ESTIMATOR_LABELS = {"ips": "IPS", "snips": "SNIPS", "dr": "DR"}


def register(subparsers: Any) -> None:
    """Add the ``ope`` subcommand to the ``streamrec`` sub-parsers."""
    p = subparsers.add_parser("ope", help="off-policy evaluation of a bandit policy on the logged impressions")
    p.add_argument("--policy", required=True,
                   help="a variant of the experiment, or a policy spec NAME[:key=value,...] (e.g. linucb:alpha=0.5)")
    p.add_argument("--experiment", help="experiment whose impressions are evaluated (default: the file's default)")
    p.add_argument("--experiments-file", default=DEFAULT_EXPERIMENTS_FILE,
                   help=f"experiments YAML (default: {DEFAULT_EXPERIMENTS_FILE}, relative to the repository)")
    p.add_argument("--logging-variant", action="append", dest="logging_variants", metavar="NAME",
                   help="only impressions of this variant (repeatable; default: every variant)")
    p.add_argument("--source", choices=("kafka",), default="kafka",
                   help="where the log is read: kafka (the lake drops the record headers holding the decision contexts)")
    p.add_argument("--slot", type=int, default=0, help="evaluated slot of the slate (0: the top bundle)")
    p.add_argument("--no-learning", action="store_true",
                   help="evaluate the policy as constructed, without learning from the logged feedback")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level of the intervals")
    p.add_argument("--ci", choices=("normal", "bootstrap"), default="normal", help="interval method")
    p.add_argument("--draws", type=int, default=1000, help="Monte Carlo draws of a Thompson sampling target")
    p.add_argument("--seed", type=int, default=0, help="seed of ties, Thompson draws, bootstrap and DR folds")
    p.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    p.set_defaults(func=cmd_ope)


@dataclass(frozen=True)
class TargetSpec:
    """The candidate policy: registry name, parameters, and how it was named."""

    label: str
    policy: str
    params: dict[str, Any]

    def build(self, user_dim: int, arm_dim: int) -> Any:
        from serving.bandit import make_policy

        return make_policy(self.policy, user_dim, arm_dim, **self.params)


def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    params: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"policy spec {spec!r}: expected key=value, got {pair!r}")
        params[key.strip()] = yaml.safe_load(value)  # numbers and booleans typed as in the YAML files
    return name.strip(), params


def resolve_target(spec: str, experiment: Any) -> TargetSpec:
    """A variant of ``experiment`` called ``spec``, else ``spec`` as a policy spec.

    Raises:
        ValueError: neither a variant nor a known policy.
    """
    from serving.bandit import POLICIES

    for variant in experiment.variants:
        if variant.name == spec:
            return TargetSpec(f"{experiment.name}/{variant.name} = {variant.policy} {json.dumps(variant.params, sort_keys=True)}",
                              variant.policy, dict(variant.params))
    name, params = _parse_spec(spec)
    if name not in POLICIES:
        variants = [v.name for v in experiment.variants]
        raise ValueError(f"--policy {spec!r} is neither a variant of {experiment.name!r} {variants} "
                         f"nor a policy {sorted(POLICIES)}")
    return TargetSpec(f"{name} {json.dumps(params, sort_keys=True)}", name, params)


def _load_experiment(path: str, name: str | None) -> Any:
    from serving.app.args import RecommenderArgs

    parsed = RecommenderArgs(experiments_file=path)  # validates the file as the Serve app does
    wanted = name or parsed.default_experiment
    for experiment in parsed.experiments:
        if experiment.name == wanted:
            return experiment
    raise ValueError(f"no experiment {wanted!r} in {path}; known: {[e.name for e in parsed.experiments]}")


def _finite_or_none(value: float) -> float | None:
    # An undefined estimate (SNIPS without support) is NaN, which strict JSON cannot carry.
    return value if np.isfinite(value) else None


def result_document(target: TargetSpec, logging_policy: str, result: Any) -> dict[str, Any]:
    """The JSON document (shape read by ``streamrec report``); undefined values are null."""
    return {
        "target_policy": target.label,
        "logging_policy": logging_policy,
        "n": result.n,
        "estimates": [
            {"estimator": ESTIMATOR_LABELS[e.estimator], "value": _finite_or_none(e.value),
             "ci_low": _finite_or_none(e.lower), "ci_high": _finite_or_none(e.upper)}
            for e in result.estimates
        ],
        "on_policy_value": result.on_policy.value,
    }


def _print_result(doc: dict[str, Any], result: Any, log: Any, slot: int, learn: bool, alpha: float) -> None:
    level = f"{100 * (1 - alpha):g}%"
    print(f"target policy : {doc['target_policy']} ({'learning from the log' if learn else 'fixed'})")
    print(f"logging policy: {doc['logging_policy']}")
    print(f"rounds        : {doc['n']} decisions; value = reward of the bundle at slot {slot}; feedback events {len(log.feedback)}")
    for reason, count in sorted(log.skipped.items()):
        print(f"  skipped {count:>6}  {reason}")
    print(f"  {'estimator':<10} {'value':>9}  {level + ' interval':>22}  {'std err':>8}")
    rows = [*result.estimates, result.on_policy]
    for e in rows:
        label = "on-policy" if e is result.on_policy else ESTIMATOR_LABELS[e.estimator]
        print(f"  {label:<10} {e.value:>9.4f}  [{e.lower:>9.4f}, {e.upper:>9.4f}]  {e.std_error:>8.4f}")


def cmd_ope(args: argparse.Namespace, settings: Settings) -> int:
    from serving.ope.impression_log import read_impression_log
    from serving.ope.policy_replay import estimate_policy_value, target_probabilities

    if args.slot < 0:
        raise ValueError("--slot must be >= 0")
    experiment = _load_experiment(args.experiments_file, args.experiment)
    target = resolve_target(args.policy, experiment)
    target.build(USER_DIM, ARM_DIM)  # bad parameters fail before reading
    log = read_impression_log(settings, experiment.name, args.logging_variants)
    too_short = [d for d in log.decisions if len(d.shown) <= args.slot]
    if too_short:
        log.skipped[f"slate shorter than slot {args.slot}"] += len(too_short)
        log.decisions = [d for d in log.decisions if len(d.shown) > args.slot]
    if not log.decisions:
        skipped = ", ".join(f"{r}: {n}" for r, n in log.skipped.items()) or "the topics are empty"
        raise ValueError(f"no replayable impressions of experiment {experiment.name!r} in Kafka ({skipped})")
    rng = np.random.default_rng(args.seed)
    learn = not args.no_learning
    dists = target_probabilities(log, target.build, args.slot, learn, rng, args.draws)
    result = estimate_policy_value(log, dists, args.slot, alpha=args.alpha, method=args.ci, rng=rng)
    logging_policy = f"{experiment.name}: " + ", ".join(f"{k} x{n}" for k, n in sorted(log.logging_policies().items()))
    doc = result_document(target, logging_policy, result)
    _print_result(doc, result, log, args.slot, learn, args.alpha)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
