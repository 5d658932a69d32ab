"""Experiments: definitions, sticky salted assignment, analysis, SRM and guardrails (the statistics
themselves: test_experiment_stats.py)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import datetime, timezone

import numpy as np
import pytest
from pydantic import ValidationError

from features.events import parse_event
from serving.experiments import (
    Experiment,
    Guardrail,
    RequestOutcome,
    Variant,
    analyze_experiment,
    assign_variant,
    bucket,
    outcomes_from_events,
)
from serving.experiments.stats import chi_square_goodness_of_fit


def _experiment(**overrides) -> Experiment:
    base = dict(
        name="bundle-bandit-1",
        salt="2024-06-salt",
        variants=[
            Variant(name="control", policy="epsilon_greedy", params={"epsilon": 0.05}, share=0.5),
            Variant(name="linucb", policy="linucb", params={"alpha": 0.3}, share=0.3),
            Variant(name="ts", policy="linear_thompson", params={"v": 0.05}, share=0.2),
        ],
        guardrails=[Guardrail(metric="ctr", alpha=0.01, min_requests=500)],
    )
    return Experiment(**{**base, **overrides})


def test_assignment_matches_shares_chi_square() -> None:
    exp = _experiment()
    users = [f"user-{i}" for i in range(20_000)]
    names = [v.name for v in exp.variants]
    counts = [0, 0, 0]
    for u in users:
        counts[names.index(assign_variant(exp, u))] += 1
    result = chi_square_goodness_of_fit(counts, [v.share for v in exp.variants])
    assert result.p_value > 0.001, counts


def test_assignment_is_sticky_and_salted() -> None:
    exp = _experiment()
    first = {u: assign_variant(exp, u) for u in (f"u{i}" for i in range(500))}
    assert all(assign_variant(exp, u) == v for u, v in first.items())
    other = _experiment(salt="another-salt")
    moved = sum(assign_variant(other, u) != v for u, v in first.items())
    assert moved > 100  # a new salt reshuffles users


def test_assignment_is_stable_across_processes() -> None:
    """hashlib, not hash(): another interpreter with another PYTHONHASHSEED agrees."""
    code = "from serving.experiments import bucket; print(repr(bucket('salt-x', 'user-42')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(__import__("pathlib").Path(__file__).parents[3]))
    assert float(out.stdout) == bucket("salt-x", "user-42")
    assert 0.0 <= bucket("salt-x", "user-42") < 1.0


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"variants": [Variant(name="a", policy="greedy", share=1.0)]}, "at least 2"),
        ({"variants": [Variant(name="a", policy="greedy", share=0.5), Variant(name="b", policy="random", share=0.4)]},
         "sum to 1"),
        ({"variants": [Variant(name="a", policy="greedy", share=0.5), Variant(name="a", policy="random", share=0.5)]},
         "unique"),
        ({"salt": ""}, "salt"),
        ({"name": "has space"}, "name"),
        ({"control": "nope"}, "control"),
        ({"primary_metric": "dwell_time"}, "primary_metric"),
        ({"alpha": 0.0}, "alpha"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_invalid_experiment_definitions(overrides, match) -> None:
    with pytest.raises(ValidationError, match=match):
        _experiment(**overrides)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": "ucb9"}, "unknown policy"),
        ({"share": 0.0}, "share"),
        ({"share": 1.5}, "share"),
        ({"share": float("nan")}, "share"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_variants(kwargs, match) -> None:
    with pytest.raises(ValidationError, match=match):
        Variant(**{"name": "a", "policy": "greedy", "share": 0.5, **kwargs})


@pytest.mark.parametrize("args", [("", "u1"), ("salt", ""), ("salt", 7)])
def test_invalid_bucket_arguments(args) -> None:
    with pytest.raises(ValueError):
        bucket(*args)


def _outcomes(n: int, ctr: dict[str, float], seed: int, shares=(0.5, 0.3, 0.2)) -> list[RequestOutcome]:
    rng = np.random.default_rng(seed)
    names = list(ctr)
    out = []
    for _ in range(n):
        v = names[rng.choice(len(names), p=list(shares))]
        clicked = bool(rng.random() < ctr[v])
        purchased = clicked and bool(rng.random() < 0.2)
        out.append(RequestOutcome(v, clicked, purchased, float(rng.gamma(2.0, 20.0)) if purchased else 0.0))
    return out


def test_guardrail_stops_a_significantly_worse_variant_only() -> None:
    exp = _experiment()
    report = analyze_experiment(exp, _outcomes(20_000, {"control": 0.10, "linucb": 0.10, "ts": 0.06}, seed=0))
    assert report.stopped_variants() == {"ts"}
    assert not report.srm_detected
    res = report.variants["ts"]
    assert res.ctr.ci_low < res.ctr.value < res.ctr.ci_high
    assert report.comparisons["ts"]["ctr"].p_value < 0.001
    assert report.comparisons["linucb"]["ctr"].p_value > 0.001
    assert set(report.comparisons["ts"]) == {"ctr", "purchase_rate", "revenue_per_request"}


def test_guardrail_waits_for_min_requests() -> None:
    exp = _experiment(guardrails=[Guardrail(metric="ctr", min_requests=10_000)])
    report = analyze_experiment(exp, _outcomes(2000, {"control": 0.10, "linucb": 0.10, "ts": 0.0}, seed=1))
    assert report.stopped_variants() == set()


def test_sample_ratio_mismatch_is_detected() -> None:
    exp = _experiment()
    skewed = _outcomes(10_000, {"control": 0.1, "linucb": 0.1, "ts": 0.1}, seed=2, shares=(0.55, 0.27, 0.18))
    assert analyze_experiment(exp, skewed).srm_detected


def test_sample_ratio_mismatch_counts_users_not_requests() -> None:
    """Assignment is per user: users who browse more make more requests, which is no mismatch."""
    exp = _experiment()
    rng = np.random.default_rng(3)
    shares = [v.share for v in exp.variants]
    outcomes = []
    for u in range(3000):
        variant = exp.variants[rng.choice(len(shares), p=shares)].name
        # The last variant's users happen to make three times as many requests.
        for _ in range(int(rng.integers(1, 4)) * (3 if variant == exp.variants[-1].name else 1)):
            outcomes.append(RequestOutcome(variant, bool(rng.random() < 0.1), False, 0.0, f"u{u}"))
    by_users = analyze_experiment(exp, outcomes)
    assert by_users.srm_unit == "users" and not by_users.srm_detected
    anonymous = [RequestOutcome(o.variant, o.clicked, o.purchased, o.revenue) for o in outcomes]
    by_requests = analyze_experiment(exp, anonymous)
    assert by_requests.srm_unit == "requests" and by_requests.srm_detected


def test_invalid_outcomes() -> None:
    exp = _experiment()
    with pytest.raises(ValueError, match="unknown variant"):
        analyze_experiment(exp, [RequestOutcome("zzz", True, False)])
    with pytest.raises(ValueError, match="revenue"):
        analyze_experiment(exp, [RequestOutcome("control", True, True, -1.0)])
    with pytest.raises(ValueError, match="no outcomes"):
        analyze_experiment(exp, [])


def test_outcomes_from_contract_events() -> None:
    def ev(**fields):
        return parse_event({"schema_version": 1, "event_id": str(uuid.uuid4()), "user_id": "u1",
                            "session_id": "s1", "ts": "2024-01-01T00:00:00Z", **fields})
    events = [
        ev(type="impression", request_id="r1", surface="bundles", experiment="e1", variant="control",
           slots=[{"id": "b1", "position": 0, "propensity": 0.5}]),
        ev(type="impression", request_id="r2", surface="bundles", experiment="e1", variant="ts",
           slots=[{"id": "b2", "position": 0, "propensity": 0.25}]),
        ev(type="impression", request_id="r3", surface="bundles", experiment="other", variant="ts",
           slots=[{"id": "b2", "position": 0}]),
        ev(type="click", request_id="r2", bundle_id="b2"),
        ev(type="bundle_purchase", request_id="r2", bundle_id="b2",
           items=[{"item_id": "i1", "quantity": 2, "price": 10.0}, {"item_id": "i2", "price": 5.5}]),
    ]
    got = sorted(outcomes_from_events(events, "e1"), key=lambda o: o.variant)
    assert got == [RequestOutcome("control", False, False, 0.0, "u1"), RequestOutcome("ts", True, True, 25.5, "u1")]
    assert datetime.now(timezone.utc)  # (events carry aware timestamps)


def test_learning_curve_windows_and_thirds_in_serving_order() -> None:
    from serving.experiments.analysis import learning_curve

    # 30 requests: the first 10 never clicked, the last 10 always: a variant that learned
    rows = [RequestOutcome("v", clicked=n >= 20, purchased=False) for n in range(30)]
    curve = learning_curve(rows, windows=3)
    assert curve.window_requests == (10, 10, 10)
    assert curve.window_ctr == (0.0, 0.0, 1.0)
    assert (curve.first_third_ctr, curve.last_third_ctr) == (0.0, 1.0)
    uneven = learning_curve(rows[:7], windows=3)
    assert sum(uneven.window_requests) == 7 and len(uneven.window_requests) == 3
