"""LearnerState.forget_user: the user's per-request entries go, everyone else's stay, later records
of the user are skipped, and the deletion survives a snapshot (no broker)."""

from __future__ import annotations

import json
import uuid

from features.privacy import Tombstone
from serving.app.learner_state import Attribution, LearnerState
from serving.bandit.impressions import CONTEXT_HEADER
from serving.experiments import Experiment
from serving.feedback_tokens import FeedbackClaim, FeedbackSigner

SIGNER = FeedbackSigner(b"test-feedback-signing-key-0123456789")

EXP = Experiment.model_validate({
    "name": "exp", "salt": "s", "variants": [
        {"name": "a", "policy": "linucb", "share": 0.5},
        {"name": "b", "policy": "popularity", "share": 0.5},
    ],
})


def _state() -> LearnerState:
    return LearnerState([EXP], user_dim=2, arm_dim=3, attribution=Attribution(SIGNER))


class Log:
    """Records on one partition of ``events``, offsets in order."""

    def __init__(self, state: LearnerState) -> None:
        self.state, self.offset = state, 0

    def add(self, value: dict, headers: list | None = None) -> None:
        self.state.apply_record("events", 0, self.offset, 1000 + self.offset, json.dumps(value).encode(), headers or [])
        self.offset += 1

    def impression(self, user: str, request_id: str, variant: str = "a") -> None:
        ctx = {"e": "exp", "v": variant, "x": [0.1, 0.2], "a": {"b0": [1.0, 0.0, 0.0], "b1": [0.0, 1.0, 0.0]}}
        self.add({"type": "impression", "request_id": request_id, "user_id": user}, [(CONTEXT_HEADER, json.dumps(ctx).encode())])

    def click(self, user: str, request_id: str, bundle: str = "b0") -> None:
        token = SIGNER.issue(FeedbackClaim(request_id, user, "exp", "a", ("b0", "b1"), 1000))
        self.add({"type": "click", "event_id": str(uuid.uuid4()), "request_id": request_id, "user_id": user,
                  "bundle_id": bundle, "feedback_token": token})


def _entries(state: LearnerState) -> tuple:
    return dict(state.contexts), {k: list(v) for k, v in state.pending.items()}, {k: list(v) for k, v in state.outcomes.items()}


def test_forget_user_removes_only_that_users_entries() -> None:
    state = _state()
    log = Log(state)
    log.impression("keep", "r-keep")
    log.click("keep", "r-keep")
    log.impression("gone", "r-gone-1")
    log.click("gone", "r-gone-1")
    log.impression("gone", "r-gone-2", "b")
    log.click("gone", "r-pending")  # feedback whose impression never came: waits in pending
    log.add({"type": "view", "user_id": "gone", "item_id": "i9", "event_id": str(uuid.uuid4())})
    contexts, pending, outcomes = _entries(state)
    assert {"r-gone-1", "r-gone-2"} <= contexts.keys() and "r-pending" in pending

    removed = state.forget_user("gone", "req-1")

    assert removed == {"contexts": 2, "pending": 1, "outcomes": 2, "requests": 3}
    contexts_after, pending_after, outcomes_after = _entries(state)
    assert contexts_after == {k: v for k, v in contexts.items() if k == "r-keep"}
    assert outcomes_after == {k: v for k, v in outcomes.items() if k == "r-keep"}
    assert pending_after == {} and state.counters["feedback_pending"] == 0
    assert set(state.request_users.values()) == {"keep"}
    assert state.forget_user("gone") == {"contexts": 0, "pending": 0, "outcomes": 0, "requests": 0}

    # Later records of the user are skipped (not folded into contexts, feedback or popularity).
    popularity = dict(state.popularity)
    log.impression("gone", "r-gone-3")
    log.add({"type": "view", "user_id": "gone", "item_id": "i9", "event_id": str(uuid.uuid4())})
    assert "r-gone-3" not in state.contexts and state.popularity == popularity
    assert state.counters["deleted_user_records"] == 2 and state.counters["users_forgotten"] == 1
    log.impression("keep", "r-keep-2")
    assert "r-keep-2" in state.contexts


def test_tombstone_record_and_snapshot_keep_the_deletion() -> None:
    state = _state()
    log = Log(state)
    log.impression("gone", "r1")
    log.impression("keep", "r2")
    tombstone = Tombstone.for_user("gone")
    assert state.apply_tombstone("privacy.tombstones", 0, 0, tombstone.to_json()) == {
        "contexts": 1, "pending": 0, "outcomes": 1, "requests": 1,
    }
    assert state.apply_tombstone("privacy.tombstones", 0, 0, tombstone.to_json()) is None  # offset already applied
    assert state.apply_tombstone("privacy.tombstones", 0, 1, b"not json") is None
    assert state.offsets["privacy.tombstones:0"] == 2 and state.counters["bad_records"] == 1

    restored = _state()
    restored.load_bytes(state.to_bytes())
    assert restored.deleted_users == {"gone": tombstone.request_id}
    assert dict(restored.request_users) == {"r2": "keep"} and set(restored.contexts) == {"r2"}
    Log(restored).impression("gone", "r3")  # offset 0 is behind the restored position: skipped
    restored.apply_record("events", 0, 99, 5000, json.dumps({"type": "impression", "request_id": "r4", "user_id": "gone"}).encode(),
                          [(CONTEXT_HEADER, json.dumps({"e": "exp", "v": "a", "x": [0, 0], "a": {}}).encode())])
    assert "r4" not in restored.contexts and restored.counters["deleted_user_records"] == 1


def test_snapshot_without_deletion_fields_still_loads() -> None:
    """Snapshots written before user deletion existed have no request_users / deleted_users."""
    import io

    import numpy as np

    state = _state()
    Log(state).impression("u", "r1")
    with np.load(io.BytesIO(state.to_bytes())) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    del meta["request_users"], meta["deleted_users"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    old = _state()
    old.load_bytes(buf.getvalue())
    assert set(old.contexts) == {"r1"} and not old.request_users and not old.deleted_users
