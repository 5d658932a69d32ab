"""The bandit decision context header (``DecisionContext``): one versioned codec for the recommender
that writes it, the learner (and its snapshots) and ``streamrec ope`` that read it; the version-less
v1 headers written before it still read the same."""

from __future__ import annotations

import io
import json
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from serving.app.learner_state import Attribution, LearnerState
from serving.bandit.impressions import CANDIDATES_HEADER, CONTEXT_HEADER, DecisionContext, Rewards, encode_candidates
from serving.experiments import Experiment
from serving.feedback_tokens import FeedbackClaim, FeedbackSigner
from serving.ope.impression_log import parse_records

# What /v1/bundles wrote before the codec (`json.dumps(context).encode()` of its dict): the user
# context, the shown bundles' float32 arm features as floats, and their items, in slot order.
V1_HEADER = (
    b'{"e": "bundles", "v": "linucb", "x": [0.25, 0.0, 1.0], '
    b'"a": {"bundle-7": [0.30000001192092896, -1.25], "bundle-3": [0.0, 2.0]}, '
    b'"i": {"bundle-7": ["item-1", "item-2"], "bundle-3": ["item-9"]}}'
)
V1_RECORD = DecisionContext(
    experiment="bundles", variant="linucb", context=(0.25, 0.0, 1.0),
    shown_arms={"bundle-7": (0.30000001192092896, -1.25), "bundle-3": (0.0, 2.0)},
    shown_items={"bundle-7": ("item-1", "item-2"), "bundle-3": ("item-9",)},
)


def served() -> DecisionContext:
    """A record built the way /v1/bundles builds it (numpy context, float32 feature rows, item tuples)."""
    features = np.array([[0.3, -1.25], [0.1, 7.0], [0.0, 2.0]], dtype=np.float32)
    return DecisionContext("bundles", "linucb", np.array([0.25, 0.0, 1.0]),
                           shown_arms={"bundle-7": features[0], "bundle-3": features[2]},
                           shown_items={"bundle-7": ("item-1", "item-2"), "bundle-3": ("item-9",)})


def test_round_trip() -> None:
    record = served()
    raw = record.encode()
    assert DecisionContext.decode(raw) == record
    assert record == V1_RECORD  # float32 features are widened exactly, as the v1 writer did
    assert list(DecisionContext.decode(raw).shown_arms) == ["bundle-7", "bundle-3"]  # slot order kept
    assert b" " not in raw and json.loads(raw)["ver"] == 2


def test_v2_is_v1_with_its_version_stated() -> None:
    """A reader of v1 dicts (a learner or `streamrec ope` not yet upgraded) reads a v2 header as it is."""
    doc, old = json.loads(V1_RECORD.encode()), json.loads(V1_HEADER)
    assert doc.pop("ver") == 2
    assert doc == old


def test_literal_v1_header_decodes_to_the_same_record() -> None:
    assert DecisionContext.decode(V1_HEADER) == V1_RECORD
    assert DecisionContext.decode(V1_HEADER.decode()) == V1_RECORD  # str as well as bytes


def test_v1_without_shown_arms_or_items() -> None:
    no_items = DecisionContext.decode(b'{"e": "exp", "v": "a", "x": [0, 0], "a": {"b0": [1, 2]}}')
    assert no_items == DecisionContext("exp", "a", (0.0, 0.0), {"b0": (1.0, 2.0)}, {})
    bare = DecisionContext.decode(b'{"e": "exp", "v": "a", "x": [0.5]}')
    assert bare.shown_arms == {} and bare.shown_items == {} and bare.context == (0.5,)


@pytest.mark.parametrize(("raw", "message"), [
    (b"", "Expecting value"),
    (b'{"e": "exp", "v": "a", "x": [1', "Expecting"),
    (b"\xff\xfe\x00", "codec can't decode"),
    (b'["exp", "a"]', "must be a JSON object, got list"),
    (b'{"v": "a", "x": []}', "missing key(s) 'e'"),
    (b'{"e": "exp"}', "missing key(s) 'v', 'x' (a v1 context"),
    (b'{"ver": 2, "e": "exp", "v": "a", "x": [], "a": {}}', "missing key(s) 'i' (a v2 context"),
    (b'{"ver": 3, "e": "exp", "v": "a", "x": []}', "unsupported version 3"),
    (b'{"ver": "2", "e": "exp", "v": "a", "x": []}', "unsupported version '2'"),
    (b'{"ver": true, "e": "exp", "v": "a", "x": []}', "unsupported version True"),
    (b'{"e": 1, "v": "a", "x": []}', "experiment ('e') must be a string, got int"),
    (b'{"e": "exp", "v": null, "x": []}', "variant ('v') must be a string, got NoneType"),
    (b'{"e": "exp", "v": "a", "x": "0.1"}', 'context ("x") must be a list of numbers, got str'),
    (b'{"e": "exp", "v": "a", "x": {"0": 1}}', 'context ("x") must be a list of numbers, got dict'),
    (b'{"e": "exp", "v": "a", "x": [true]}', 'context ("x") must hold numbers, got bool'),
    (b'{"e": "exp", "v": "a", "x": [[1.0]]}', 'context ("x") must hold numbers, got list'),
    (b'{"e": "exp", "v": "a", "x": [], "a": [[1.0]]}', 'shown_arms ("a") must map bundle ids to lists, got list'),
    (b'{"e": "exp", "v": "a", "x": [], "a": {"b0": [1, "2"]}}', "shown_arms (\"a\") of 'b0' must hold numbers, got str"),
    (b'{"e": "exp", "v": "a", "x": [], "a": {"b0": 1}}', "shown_arms (\"a\") of 'b0' must be a list of numbers, got int"),
    (b'{"e": "exp", "v": "a", "x": [], "i": {"b0": [1]}}', "shown_items (\"i\") of 'b0' must hold strings, got int"),
    (b'{"e": "exp", "v": "a", "x": [], "i": {"b0": "item"}}', "shown_items (\"i\") of 'b0' must be a list of strings"),
])
def test_malformed_headers_raise_value_error(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match="malformed streamrec-bandit header") as caught:
        DecisionContext.decode(raw)
    assert message in str(caught.value)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_rejected(number: bytes) -> None:
    for raw in (b'{"e": "exp", "v": "a", "x": [0.5, %s]}' % number,
                b'{"e": "exp", "v": "a", "x": [0.5], "a": {"b0": [%s]}}' % number):
        with pytest.raises(ValueError, match="non-finite|must be finite"):
            DecisionContext.decode(raw)


def test_non_finite_features_are_refused_when_built() -> None:
    """Never written: a NaN feature would poison the policy the learner updates with it."""
    with pytest.raises(ValueError, match=r'context \("x"\) must be finite, got nan'):
        DecisionContext("exp", "a", np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="of 'b0' must be finite, got inf"):
        DecisionContext("exp", "a", (0.1,), {"b0": np.array([np.inf], dtype=np.float32)})
    with pytest.raises(ValueError, match=r"must be a vector of numbers, got a float64 array of shape \(2, 2\)"):
        DecisionContext("exp", "a", np.zeros((2, 2)))


# -- the readers --------------------------------------------------------------------------------

SIGNER = FeedbackSigner(b"test-feedback-signing-key-0123456789")
EXP = Experiment.model_validate({"name": "exp", "salt": "s", "variants": [
    {"name": "a", "policy": "linucb", "share": 0.5}, {"name": "b", "policy": "popularity", "share": 0.5},
]})
V1_EXP_HEADER = b'{"e": "exp", "v": "a", "x": [0.1, 0.2], "a": {"b0": [1.0, 0.5, -0.5], "b1": [0.0, 1.0, 2.0]}, "i": {"b0": ["i1"], "b1": ["i2"]}}'


def new_state() -> LearnerState:
    return LearnerState([EXP], user_dim=2, arm_dim=3, attribution=Attribution(SIGNER, window_s=3600.0))


def impression(request_id: str) -> bytes:
    return json.dumps({"type": "impression", "request_id": request_id, "user_id": "u"}).encode()


def feedback(kind: str, request_id: str, bundle_id: str) -> bytes:
    claim = SIGNER.issue(FeedbackClaim(request_id, "u", "exp", "a", ("b0", "b1"), 1000))
    return json.dumps({"type": kind, "event_id": str(uuid.uuid4()), "request_id": request_id, "user_id": "u",
                       "bundle_id": bundle_id, "feedback_token": claim,
                       "items": [{"item_id": "i1", "price": 2.0, "quantity": 2}, {"item_id": "i2", "price": 5.0}]}).encode()


def test_learner_folds_v1_and_v2_headers_alike() -> None:
    states = []
    for header in (V1_EXP_HEADER, DecisionContext.decode(V1_EXP_HEADER).encode()):
        state = new_state()
        state.apply_record("events", 0, 0, 1000, impression("r1"), [(CONTEXT_HEADER, header)])
        state.apply_record("events", 0, 1, 1001, feedback("bundle_purchase", "r1", "b0"), [])
        state.apply_record("events", 0, 2, 1002, impression("r2"), [(CONTEXT_HEADER, b'{"e": "exp", "v": "a", "x": [NaN, 0]}')])
        states.append(state)
    v1, v2 = states
    assert v1.stats() == v2.stats()
    assert v1.counters["bad_records"] == 1 and v1.counters["feedback_applied"] == 1
    assert v1.request_outcomes("exp")[0].revenue == 4.0  # the bought bundle's items only ("i")
    for key, policy in v1.policies.items():
        for name, value in policy.state_dict().items():
            assert np.array_equal(value, v2.policies[key].state_dict()[name])


def _with_meta(data: bytes, edit) -> bytes:  # noqa: ANN001 - a callable on the snapshot's meta dict
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    edit(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_snapshot_of_the_old_learner_restores() -> None:
    """Snapshots before the codec held each context as its v1 header dict plus "t" and the claims "c"."""
    state = new_state()
    state.apply_record("events", 0, 0, 1000, impression("r1"), [(CONTEXT_HEADER, V1_EXP_HEADER)])
    state.apply_record("events", 0, 1, 1001, feedback("click", "r1", "b0"), [])
    data = state.to_bytes()
    saved = json.loads(np.load(io.BytesIO(data))["meta"].tobytes())["contexts"]
    assert saved == [["r1", {"ver": 2, **json.loads(V1_EXP_HEADER), "t": 1000, "c": ["click:b0"]}]]

    def as_old_learner_wrote_it(meta: dict) -> None:
        meta["contexts"] = [["r1", {**json.loads(V1_EXP_HEADER), "t": 1000, "c": ["click:b0"]}]]

    for snapshot in (data, _with_meta(data, as_old_learner_wrote_it)):
        restored = new_state()
        assert restored.load_bytes(snapshot) == []
        assert restored.contexts == state.contexts
        restored.apply_record("events", 0, 2, 1002, feedback("click", "r1", "b0"), [])  # the claim was kept
        restored.apply_record("events", 0, 3, 1003, feedback("click", "r1", "b1"), [])
        assert restored.counters["feedback_replayed"] == 1 and restored.counters["feedback_applied"] == 2


def test_snapshot_context_that_no_longer_decodes_is_dropped() -> None:
    state = new_state()
    state.apply_record("events", 0, 0, 1000, impression("r1"), [(CONTEXT_HEADER, V1_EXP_HEADER)])
    state.apply_record("events", 0, 1, 1000, impression("r2"), [(CONTEXT_HEADER, V1_EXP_HEADER)])

    def poisoned(meta: dict) -> None:
        meta["contexts"][0][1]["x"] = "not a vector"

    restored = new_state()
    restored.load_bytes(_with_meta(state.to_bytes(), poisoned))
    assert list(restored.contexts) == ["r2"]


def test_ope_reads_v1_and_v2_headers_alike() -> None:
    ids, embeddings = ["b0", "b1", "b2"], np.arange(9, dtype=np.float64).reshape(3, 3)
    event = {"type": "impression", "request_id": "r1", "user_id": "u", "policy": "linucb",
             "slots": [{"id": "b0", "position": 0, "propensity": 0.5}, {"id": "b1", "position": 1, "propensity": 0.25}]}
    logs = []
    for header in (V1_EXP_HEADER, DecisionContext.decode(V1_EXP_HEADER).encode(), b'{"e": "exp", "v": "a"}'):
        record = SimpleNamespace(topic="events", partition=0, offset=0, timestamp=1000, value=json.dumps(event).encode(),
                                 headers=[(CONTEXT_HEADER, header), (CANDIDATES_HEADER, encode_candidates(ids, embeddings))])
        logs.append(parse_records([record], Rewards()))
    (v1,), (v2,) = logs[0].decisions, logs[1].decisions
    assert (v1.experiment, v1.variant, v1.shown) == (v2.experiment, v2.variant, v2.shown) == ("exp", "a", ("b0", "b1"))
    assert np.array_equal(v1.context, v2.context) and v1.context.tolist() == [0.1, 0.2]
    assert v1.shown_embeddings.keys() == v2.shown_embeddings.keys() == {"b0", "b1"}
    assert all(np.array_equal(v1.shown_embeddings[b], v2.shown_embeddings[b]) for b in ("b0", "b1"))
    assert not logs[2].decisions and logs[2].skipped == {"malformed impression (ValueError)": 1}
