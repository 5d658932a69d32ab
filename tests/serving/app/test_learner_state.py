"""LearnerState: the fold over the log is exactly-once and survives snapshot + replay (no broker)."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from serving.app.learner_state import Attribution, LearnerState
from serving.bandit.impressions import CONTEXT_HEADER
from serving.experiments import Experiment
from serving.feedback_tokens import FeedbackClaim, FeedbackSigner

SIGNER = FeedbackSigner(b"test-feedback-signing-key-0123456789")
SHOWN = ("b0", "b1", "b2")
ISSUED_MS = 1000

EXP = Experiment.model_validate({
    "name": "exp", "salt": "s", "variants": [
        {"name": "a", "policy": "linucb", "share": 0.5},
        {"name": "b", "policy": "popularity", "share": 0.5},
    ],
})


def impression(request_id: str, variant: str, arms: dict[str, list[float]]) -> tuple[bytes, list[tuple[str, bytes]]]:
    value = json.dumps({"type": "impression", "request_id": request_id, "user_id": "u"}).encode()
    ctx = {"e": "exp", "v": variant, "x": [0.1, 0.2], "a": arms, "i": {b: ["i1", "i2"] for b in arms}}
    return value, [(CONTEXT_HEADER, json.dumps(ctx).encode())]


def token(request_id: str, user_id: str = "u", variant: str = "a", shown: tuple[str, ...] = SHOWN,
          signer: FeedbackSigner = SIGNER, issued_ms: int = ISSUED_MS) -> str:
    return signer.issue(FeedbackClaim(request_id, user_id, "exp", variant, shown, issued_ms))


def feedback(kind: str, request_id: str, bundle_id: str, event_id: str | None = None, *, user_id: str = "u",
             feedback_token: str | None = "sign", items: list[dict] | None = None) -> bytes:
    event = {"type": kind, "event_id": event_id or str(uuid.uuid4()), "request_id": request_id, "user_id": user_id,
             "bundle_id": bundle_id, "items": items or [{"item_id": "i1", "price": 2.0, "quantity": 2}]}
    if feedback_token is not None:
        event["feedback_token"] = token(request_id) if feedback_token == "sign" else feedback_token
    return json.dumps(event).encode()


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
    add(0, feedback("click", "r1", "not-shown"))  # not in the signed slate: refused
    add(0, b"not json")
    return records


def fold(state: LearnerState, records) -> None:
    for r in records:
        state.apply_record(*r)


def new_state() -> LearnerState:
    return LearnerState([EXP], user_dim=2, arm_dim=3, attribution=Attribution(SIGNER, window_s=3600.0))


def test_fold_counts_each_feedback_once() -> None:
    state = new_state()
    fold(state, make_log())
    c = state.counters
    assert c["feedback_applied"] == 31  # 30 + the first of the duplicate pair
    assert c["feedback_duplicates"] == 1
    assert c["feedback_not_shown"] == 1
    assert c["feedback_unattributed"] == 0
    assert c["feedback_pending"] == 0
    assert c["bad_records"] == 1
    # every shown bundle of the 30 impressions is one observation (reward 0 until credited), and each
    # applied feedback one credit: both change the state the replicas pull (n_updates is its version)
    assert sum(p.n_updates for p in state.policies.values()) == 30 * 3 + 31
    assert sum(v["exposures"] for v in state.stats()["variants"].values()) == 30 * 3
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
    other = LearnerState([changed], user_dim=2, arm_dim=3, attribution=Attribution(SIGNER))
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


# -- attribution: only feedback on a served slate, once, within the window, at bounded value -----

ARMS = {b: [1.0, 0.0, 0.0] for b in SHOWN}


class OnePartition:
    def __init__(self, state: LearnerState) -> None:
        self.state, self.offset = state, 0

    def add(self, value: bytes, headers: list | None = None, ts_ms: int | None = None) -> list[str]:
        updated = self.state.apply_record("events", 0, self.offset, ts_ms or 2000 + self.offset, value, headers or [])
        self.offset += 1
        return updated


def _served(request_id: str = "r1") -> tuple[LearnerState, OnePartition]:
    state = new_state()
    log = OnePartition(state)
    log.add(*impression(request_id, "a", ARMS))
    return state, log


@pytest.mark.parametrize(
    ("reason", "value"),
    [
        ("feedback_unsigned", feedback("click", "r1", "b0", feedback_token=None)),
        ("feedback_malformed", feedback("click", "r1", "b0", feedback_token="not-a-token")),
        ("feedback_forged", feedback("click", "r1", "b0", feedback_token=token("r1", signer=FeedbackSigner(b"x" * 32)))),
        ("feedback_mismatch", feedback("click", "r1", "b0", user_id="someone-else")),
        ("feedback_mismatch", feedback("click", "r1", "b0", feedback_token=token("r2"))),
        ("feedback_not_shown", feedback("click", "r1", "b9")),
    ],
)
def test_forged_or_mismatched_feedback_changes_nothing(reason: str, value: bytes) -> None:
    state, log = _served()
    before = {k: p.state_dict() for k, p in state.policies.items()}
    assert log.add(value) == []
    assert state.counters[reason] == 1 and state.counters["feedback_applied"] == 0
    # refused feedback is dead-lettered, except an organic (unsigned) click, which is valid as an event
    assert [r.reason for r in state.rejections] == ([] if reason == "feedback_unsigned" else [reason])
    assert state.request_outcomes("exp")[0].clicked is False
    for key, policy in state.policies.items():
        for name, array in policy.state_dict().items():
            assert np.array_equal(array, before[key][name])


def test_feedback_outside_the_attribution_window_is_refused() -> None:
    state, log = _served()
    assert log.add(feedback("click", "r1", "b0"), ts_ms=ISSUED_MS + 3600 * 1000 + 1) == []
    assert state.counters["feedback_expired"] == 1
    assert log.add(feedback("click", "r1", "b0"), ts_ms=ISSUED_MS + 3600 * 1000) == ["exp a"]


def test_a_request_is_clicked_once_per_shown_bundle_and_bought_once() -> None:
    state, log = _served()
    assert log.add(feedback("click", "r1", "b0")) == ["exp a"]
    for _ in range(100):  # the same token, fresh event ids: replays
        assert log.add(feedback("click", "r1", "b0")) == []
    assert log.add(feedback("click", "r1", "b1")) == ["exp a"]  # another shown bundle counts
    assert log.add(feedback("bundle_purchase", "r1", "b0")) == ["exp a"]
    assert log.add(feedback("bundle_purchase", "r1", "b1")) == []
    assert state.counters["feedback_replayed"] == 101
    assert state.counters["feedback_applied"] == 3
    assert state.variant_counts["exp a"]["clicks"] == 2
    # the claims are part of the snapshot: a restarted learner refuses the same replays
    restored = new_state()
    restored.load_bytes(state.to_bytes())
    again = restored.apply_record("events", 0, 10_000, 3000, feedback("click", "r1", "b0"), [])
    assert again == [] and restored.counters["feedback_replayed"] == 102


def test_purchase_revenue_counts_the_bundles_items_at_bounded_price_and_quantity() -> None:
    state, log = _served()
    lines = [
        {"item_id": "i1", "price": 1e9, "quantity": 10_000},  # clamped to 10,000 x 10
        {"item_id": "i2", "price": 3.5, "quantity": 2},
        {"item_id": "not-in-bundle", "price": 100.0, "quantity": 1},  # ignored
    ]
    log.add(feedback("bundle_purchase", "r1", "b0", items=lines))
    (outcome,) = state.request_outcomes("exp")
    assert outcome.purchased and outcome.revenue == 10_000.0 * 10 + 3.5 * 2


def test_without_a_signing_key_nothing_is_credited() -> None:
    state = LearnerState([EXP], user_dim=2, arm_dim=3)
    log = OnePartition(state)
    log.add(*impression("r1", "a", ARMS))
    assert log.add(feedback("click", "r1", "b0")) == []
    assert state.counters["feedback_applied"] == 0 and state.counters["feedback_forged"] == 1
