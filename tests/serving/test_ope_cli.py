"""`streamrec ope` on impressions and feedback of a known logging policy, produced to a real broker.

The log is what ``/v1/bundles`` writes (contract impression event + decision context and candidate
set headers) for a uniformly random logging policy over changing candidate sets drawn from a pool
of bundles; clicks follow a known model P(click | user, bundle), so the true value of a fixed target
policy on the logged contexts is computable and the estimates must recover it within their intervals.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from kafka import KafkaProducer

from features.events import event_to_json, parse_event
from serving.bandit import Arms, make_policy
from serving.bandit.impressions import (
    CANDIDATES_HEADER,
    CONTEXT_HEADER,
    decision_to_impression,
    decode_candidates,
    encode_candidates,
)
from serving.ope.policy_replay import slot_probabilities
from streamrec.cli import build_parser
from streamrec.runtime.kafka import ensure_topics

from support import make_settings

pytestmark = pytest.mark.kafka

USER_DIM, ARM_DIM, POOL, ROUNDS, SLATE = 3, 4, 30, 2500, 3
EXPERIMENT = "ope_test"
EXPERIMENTS = {
    "experiments": [{
        "name": EXPERIMENT, "salt": "ope",
        "variants": [
            {"name": "ucb", "policy": "linucb", "params": {"alpha": 1.0, "ridge": 1.0, "features": "outer"}, "share": 0.5},
            {"name": "rnd", "policy": "random", "share": 0.5},
        ],
    }],
}


def _click_probability(user: np.ndarray, embedding: np.ndarray) -> float:
    # Rises with the bundle's embedding norm (what a fresh LinUCB ranks by) and with a user term.
    return float(1.0 / (1.0 + np.exp(-(1.2 * np.linalg.norm(embedding) - 2.5 + 0.5 * user.sum()))))


def _produce_log(settings: Any, seed: int) -> float:
    """Produce the log; returns the true value of a fresh LinUCB (top slot) on the logged contexts."""
    rng = np.random.default_rng(seed)
    pool_ids = [f"bundle-{i}" for i in range(POOL)]
    pool = rng.normal(size=(POOL, ARM_DIM)) * rng.uniform(0.3, 1.5, size=(POOL, 1))
    logging_policy = make_policy("random", USER_DIM, ARM_DIM)
    producer = KafkaProducer(**settings.kafka.client_options(), acks="all", linger_ms=5)
    events_topic, t0, truth = settings.kafka.topics.events, datetime(2024, 5, 1, tzinfo=timezone.utc), []

    def send(topic: str, event: dict[str, Any], headers: list[tuple[str, bytes]]) -> None:
        wire = event_to_json(parse_event(event)) if topic == events_topic else json.dumps(event).encode()
        producer.send(topic, key=event["user_id"].encode(), value=wire, headers=headers)

    for r in range(ROUNDS):
        user = rng.normal(size=USER_DIM) / 2
        rows = rng.choice(POOL, size=int(rng.integers(4, 9)), replace=False)
        ids, emb = [pool_ids[i] for i in rows], pool[rows]
        decision = logging_policy.select(user, Arms(tuple(ids), emb), SLATE, rng)
        request_id, ts = uuid.uuid4().hex, t0 + timedelta(seconds=r)
        impression = decision_to_impression(decision, user_id=f"u{r % 97}", session_id="s", request_id=request_id,
                                            ts=ts, experiment=EXPERIMENT, variant="rnd")
        context = {"e": EXPERIMENT, "v": "rnd", "x": user.tolist(), "a": {ids[i]: emb[i].tolist() for i in decision.indices}}
        producer.send(events_topic, key=b"u", value=event_to_json(impression), headers=[
            ("type", b"impression"), (CONTEXT_HEADER, json.dumps(context).encode()),
            (CANDIDATES_HEADER, encode_candidates(ids, emb)),
        ])
        truth.append(_click_probability(user, emb[int(np.argmax(np.linalg.norm(emb, axis=1)))]))
        for pos, i in enumerate(decision.indices):
            if rng.random() < _click_probability(user, emb[i]):
                click = {"schema_version": 1, "event_id": str(uuid.uuid4()), "type": "click", "user_id": f"u{r % 97}",
                         "session_id": "s", "ts": ts.isoformat(), "request_id": request_id, "bundle_id": ids[i], "position": pos}
                send(events_topic, click, [("type", b"click")])
                if r % 50 == 0:  # a retried click: counted once
                    send(events_topic, click, [("type", b"click")])
            elif r % 40 == 0:  # dismissals go to the serving feedback topic (reward 0)
                dismiss = {"schema_version": 1, "event_id": str(uuid.uuid4()), "type": "dismiss", "user_id": "u",
                           "session_id": "s", "ts": ts.isoformat(), "request_id": request_id, "bundle_id": ids[i]}
                send(settings.kafka.topics.feedback, dismiss, [("type", b"dismiss")])
    producer.flush()
    producer.close()
    return float(np.mean(truth))


@pytest.fixture(scope="module")
def logged(kafka_broker, tmp_path_factory) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    port = int(kafka_broker.settings.kafka.bootstrap_servers.rsplit(":", 1)[1])
    settings = make_settings(tmp_path_factory.mktemp("ope"), port, kafka={"topics": {"events": f"ope-{suffix}", "dlq": f"ope-dlq-{suffix}",
                                                                   "feedback": f"ope-feedback-{suffix}"}})
    ensure_topics(settings.kafka)  # the feedback topic with the others
    experiments_file = tmp_path_factory.mktemp("ope-exp") / "experiments.yaml"
    experiments_file.write_text(yaml.safe_dump(EXPERIMENTS))
    return {"settings": settings, "truth": _produce_log(settings, seed=11), "file": str(experiments_file)}


def _run_ope(logged: dict[str, Any], tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "ope.json"
    args = build_parser().parse_args(["ope", "--experiment", EXPERIMENT, "--experiments-file", logged["file"],
                                      "--json", str(out), *extra])
    assert args.func(args, logged["settings"]) == 0
    return json.loads(out.read_text())


def test_fixed_target_value_is_recovered_within_each_interval(logged, tmp_path, capsys) -> None:
    doc = _run_ope(logged, tmp_path, "--policy", "ucb", "--no-learning")
    truth = logged["truth"]
    assert doc["n"] == ROUNDS
    assert doc["target_policy"].startswith(f"{EXPERIMENT}/ucb = linucb")
    assert doc["logging_policy"] == f"{EXPERIMENT}: rnd (random) x{ROUNDS}"
    assert [e["estimator"] for e in doc["estimates"]] == ["IPS", "SNIPS", "DR"]
    for e in doc["estimates"]:
        assert e["ci_low"] <= truth <= e["ci_high"], (e, truth)
        assert e["ci_high"] - e["ci_low"] < 0.15, e  # informative, not a vacuous interval
    # The target really is better than the random logging policy, and the estimates say so.
    assert truth - doc["on_policy_value"] > 0.1
    assert all(e["ci_low"] > doc["on_policy_value"] for e in doc["estimates"])
    out = capsys.readouterr().out
    assert "duplicate feedback (event_id)" in out and "on-policy" in out


def test_the_logging_policy_as_target_gives_its_on_policy_value(logged, tmp_path) -> None:
    doc = _run_ope(logged, tmp_path, "--policy", "random")
    ips, snips = doc["estimates"][0], doc["estimates"][1]
    assert ips["value"] == pytest.approx(doc["on_policy_value"], rel=1e-12)
    assert snips["value"] == pytest.approx(doc["on_policy_value"], rel=1e-12)
    assert doc["target_policy"] == "random {}"


def test_learning_targets_replay_over_the_log(logged, tmp_path) -> None:
    for spec in ("ucb", "linear_thompson:v=0.25,propensity_draws=10"):
        doc = _run_ope(logged, tmp_path, "--policy", spec, "--draws", "200", "--ci", "bootstrap")
        assert doc["n"] == ROUNDS
        for e in doc["estimates"]:
            assert 0.0 <= e["value"] <= 1.0 and e["ci_low"] <= e["value"] <= e["ci_high"]


def test_unknown_policy_is_a_clear_error(logged, tmp_path) -> None:
    with pytest.raises(ValueError, match="neither a variant"):
        _run_ope(logged, tmp_path, "--policy", "no_such_policy")
    with pytest.raises(ValueError, match="bad parameters"):
        _run_ope(logged, tmp_path, "--policy", "linucb:alphaa=1")


@pytest.mark.parametrize("spec", ["epsilon_greedy:epsilon=0.3", "linear_thompson:v=1.0", "popularity", "random", "linucb"])
@pytest.mark.parametrize("slot", [0, 2])
def test_slot_probabilities_match_the_policy_own_choices(spec, slot) -> None:
    name, _, param = spec.partition(":")
    params = {param.split("=")[0]: float(param.split("=")[1])} if param else {}
    policy = make_policy(name, USER_DIM, ARM_DIM, **params)
    rng = np.random.default_rng(3)
    arms = Arms(tuple(f"a{i}" for i in range(5)), rng.normal(size=(5, ARM_DIM)))
    for i in range(5):  # some learned state, so scores differ between arms
        policy.update(arms.arm(i), np.ones(USER_DIM), float(i % 2))
    context = rng.normal(size=USER_DIM)
    probs = slot_probabilities(policy, context, arms, slot, rng, draws=4000)
    counts = np.bincount([policy.select(context, arms, slot + 1, rng).indices[slot] for _ in range(3000)], minlength=5)
    assert probs.sum() == pytest.approx(1.0)
    assert np.abs(probs - counts / 3000).max() < 0.04, (probs, counts / 3000)


def test_candidate_header_round_trip() -> None:
    emb = np.random.default_rng(0).normal(size=(7, 16))
    ids, decoded, _ = decode_candidates(encode_candidates([f"b{i}" for i in range(7)], emb))
    assert ids == tuple(f"b{i}" for i in range(7)) and np.allclose(decoded, emb, atol=1e-6)
    with pytest.raises(ValueError, match="malformed"):
        decode_candidates(b'{"ids": ["a"], "dim": 2, "emb": "AAAA"}')


def test_candidate_header_is_the_compact_json_it_was_and_keeps_any_unicode() -> None:
    """The Rust serializer writes what ``json.dumps(separators=(",", ":"))`` wrote (headers logged
    before the change and after read the same), and non-ASCII ids survive (as UTF-8)."""
    import base64
    import json

    emb = np.random.default_rng(1).normal(size=(3, 4))
    ids, items = ["b0", "b1", "b2"], [("i1", "i2"), ("i3",), ("i4", "i5", "i6")]
    expected = {"ids": ids, "dim": 4, "emb": base64.b64encode(emb.astype(np.float32).tobytes()).decode("ascii"),
                "items": [list(i) for i in items]}
    assert encode_candidates(ids, emb, items) == json.dumps(expected, separators=(",", ":")).encode()
    decoded = decode_candidates(encode_candidates(["bündel-ö", "包"], emb[:2], [("é",), ("\u2603",)]))
    assert decoded.ids == ("bündel-ö", "包") and decoded.items == {"bündel-ö": ("é",), "包": ("\u2603",)}


def test_candidate_header_carries_each_candidates_items() -> None:
    emb = np.zeros((2, 3))
    header = encode_candidates(["b0", "b1"], emb, [("i1", "i2"), ("i3",)])
    ids, decoded, items = decode_candidates(header)
    assert items == {"b0": ("i1", "i2"), "b1": ("i3",)}
    assert ids == ("b0", "b1") and decoded.shape == (2, 3)
    # a header written before the items were logged still decodes, without them
    assert decode_candidates(encode_candidates(["b0", "b1"], emb)).items == {}
    with pytest.raises(ValueError, match="one list per candidate"):
        encode_candidates(["b0", "b1"], emb, [("i1",)])
    # valid ids and embeddings (2 x 1 and 1 x 1 float32 zeros), malformed items
    with pytest.raises(ValueError, match="malformed.*items"):
        decode_candidates(b'{"ids": ["a", "b"], "dim": 1, "emb": "AAAAAAAAAAA=", "items": [["x"]]}')
    with pytest.raises(ValueError, match="malformed.*items"):
        decode_candidates(b'{"ids": ["a"], "dim": 1, "emb": "AAAAAA==", "items": [[1]]}')