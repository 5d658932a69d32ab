"""LearnerState: the fold over the log is exactly-once and survives snapshot + replay (no broker)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from serving.app.learner_state import CONTEXT_HEADER, LearnerState
from serving.experiments import Experiment

EXP = Experiment.model_validate({
    "name": "exp", "salt": "s", "variants": [
        {"name": "a", "policy": "linucb", "share": 0.5},
        {"name": "b", "policy": "popularity", "share": 0.5},
    ],
})


def impression(request_id: str, variant: str, arms: dict[str, list[float]]) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = json.dumps({"type": "impression", "request_id": request_id, "user_id": "u"}).encode()
    ctx = {"e": "exp", "v": variant, "x": [0.1, 0.2], "a": arms}
    return value, [(CONTEXT_HEADER, json.dumps(ctx).encode())]


def feedback(kind: str, request_id: str, bundle_id: str, event_id: str | None = None) -> bytes:
    return json.dumps({"type": kind, "event_id": event_id or str(uuid.uuid4()), "request_id": request_id,
                       "bundle_id": bundle_id, "items": [{"item_id": "i1", "price": 2.0, "quantity": 2}]}).encode()


def make_log(n: int = 30) -> list[tuple[str, int, int, int, bytes, list]]:
    """(topic, partition, offset, ts, value, headers): impressions on p0, feedback on p0 and p1."""
    rng = np.random.default_rng(0)
    records = []
    offsets = {0: 0, 1: 0}

    def add(p: int, value: bytes, headers: list | None = None) -> None:
        records.append(("events", p, offsets[p], 1000 + len(records), value, headers or []))
        offsets[p] += 1

    for i in range(n):
        rid = f"r{i}"
        arms = {f"b{j}": list(rng.standard_normal(3)) for j in range(3)}
        if i % 5 == 4:  # feedback before its impression (another partition): must wait, then apply
            add(1, feedback("click", rid, "b1"))
            add(0, *impression(rid, "ab"[i % 2], arms))
        else:
            add(0, *impression(rid, "ab"[i % 2], arms))
            add(1, feedback("click" if i % 3 else "bundle_purchase", rid, "b0"))
    dup_id = str(uuid.uuid4())
    add(0, feedback("click", "r0", "b2", dup_id))
    add(1, feedback("click", "r0", "b2", dup_id))  # same event_id again: a duplicate
    add(0, feedback("click", "r1", "not-shown"))  # not shown in that request: unattributed
    add(0, b"not json")
    return records


def fold(state: LearnerState, records) -> None:
    for r in records:
        state.apply_record(*r)


def new_state() -> LearnerState:
    return LearnerState([EXP], user_dim=2, arm_dim=3)


def test_fold_counts_each_feedback_once() -> None:
    state = new_state()
    fold(state, make_log())
    c = state.counters
    assert c["feedback_applied"] == 31  # 30 + the first of the duplicate pair
    assert c["feedback_duplicates"] == 1
    assert c["feedback_unattributed"] == 1
    assert c["feedback_pending"] == 0
    assert c["bad_records"] == 1
    assert sum(p.n_updates for p in state.policies.values()) == 31
    # replaying records already folded changes nothing
    before = state.stats()
    fold(state, make_log())
    assert state.stats()["counters"] == before["counters"]


@pytest.mark.parametrize("cut", [0, 7, 33, 50, 64])
def test_snapshot_then_replay_equals_uninterrupted(cut: int) -> None:
    log = make_log()
    whole = new_state()
    fold(whole, log)
    first = new_state()
    fold(first, log[:cut])
    restored = new_state()
    assert restored.load_bytes(first.to_bytes()) == []
    # the restarted learner re-reads everything from the snapshot offsets (here: the whole log again)
    fold(restored, log)
    assert restored.counters == whole.counters
    for key, policy in whole.policies.items():
        a, b = policy.state_dict(), restored.policies[key].state_dict()
        assert a.keys() == b.keys()
        for name in a:
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(a[name], b[name], rtol=1e-9, atol=1e-12)
            else:
                assert np.array_equal(a[name], b[name])


def test_changed_variant_definition_starts_fresh() -> None:
    state = new_state()
    fold(state, make_log())
    changed = Experiment.model_validate({**EXP.model_dump(), "variants": [
        {"name": "a", "policy": "linucb", "params": {"alpha": 2.0}, "share": 0.5},
        {"name": "b", "policy": "popularity", "share": 0.5},
    ]})
    other = LearnerState([changed], user_dim=2, arm_dim=3)
    assert other.load_bytes(state.to_bytes()) == ["exp a"]
    assert other.policies["exp a"].n_updates == 0
    assert other.policies["exp b"].n_updates == state.policies["exp b"].n_updates


def test_outcomes_feed_the_experiment_analysis() -> None:
    from serving.experiments import analyze_experiment

    state = new_state()
    fold(state, make_log())
    outcomes = state.request_outcomes("exp")
    assert len(outcomes) == 30
    report = analyze_experiment(EXP, outcomes)
    assert report.variants["a"].requests + report.variants["b"].requests == 30
    assert sum(o.purchased for o in outcomes) == sum(1 for i in range(30) if i % 5 != 4 and i % 3 == 0)
