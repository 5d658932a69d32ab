"""The recommender app over real HTTP with a real broker: bundles -> impression in Kafka ->
feedback -> learner; bad requests; cold start; the learner killed under traffic."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from recommender_support import CATALOGUE, EVERY_REPLICA, learner_stats, recommender, wait_for  # noqa: F401 (fixture)

from serving.bandit.impressions import CONTEXT_HEADER
from support import ADMIN, READER
from streamrec.runtime.kafka import read_topic, topic_end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _impression(settings, start: dict[int, int], request_id: str):
    records = read_topic(settings.kafka, settings.kafka.topics.events, start=start, timeout_s=20)
    found = [r for r in records if json.loads(r.value).get("request_id") == request_id and json.loads(r.value)["type"] == "impression"]
    return found


def test_bundles_impression_feedback_updates_learner(recommender) -> None:
    settings = recommender.settings
    start = topic_end_offsets(settings.kafka, settings.kafka.topics.events)
    with recommender.client() as c:
        r = c.get("/v1/bundles", params={"user_id": "alice", "item_id": "item-2", "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["experiment"] == "bundles_ab" and body["variant"] in {"pop", "ucb", "ts"}
        assert body["policy"] in {"popularity", "linucb", "linear_thompson"}
        assert len(body["bundles"]) == 3
        for pos, b in enumerate(body["bundles"]):
            assert b["position"] == pos and 0 < b["propensity"] <= 1 and b["items"] and b["reason"]
        catalogue = {b["id"]: b["items"] for b in CATALOGUE}
        for b in body["bundles"]:
            if b["bundle_id"] in catalogue:
                assert b["items"] == catalogue[b["bundle_id"]]
        # the slate is in Kafka as a contract impression with the decision context header
        found = wait_for(lambda: _impression(settings, start, body["request_id"]), timeout_s=20, what="impression")
        assert len(found) == 1
        event = json.loads(found[0].value)
        assert event["user_id"] == "alice" and event["surface"] == "bundles"
        assert [s["id"] for s in event["slots"]] == [b["bundle_id"] for b in body["bundles"]]
        assert all(s["propensity"] == b["propensity"] for s, b in zip(event["slots"], body["bundles"]))
        assert (event["experiment"], event["variant"]) == (body["experiment"], body["variant"])
        assert CONTEXT_HEADER in dict(found[0].headers)
        # POST form gives the same user the same variant (sticky assignment)
        again = c.post("/v1/bundles", json={"user_id": "alice", "k": 2})
        assert again.status_code == 200 and again.json()["variant"] == body["variant"]
        # feedback -> Kafka -> learner applies it within seconds
        key = f"bundles_ab {body['variant']}"
        before = learner_stats(c)
        shown = body["bundles"][1]["bundle_id"]
        fb = c.post("/v1/feedback", json={"type": "click", "request_id": body["request_id"], "user_id": "alice", "bundle_id": shown,
                                          "feedback_token": body["feedback_token"]})
        assert fb.status_code == 200, fb.text
        assert fb.json()["type"] == "click"
        after = wait_for(
            lambda: (s := learner_stats(c)) and s["counters"]["feedback_applied"] == before["counters"]["feedback_applied"] + 1 and s,
            timeout_s=15, what="the learner applying the click",
        )
        assert after["variants"][key]["clicks"] == before["variants"][key]["clicks"] + 1
        # live experiment results count the request and its click
        report = c.get("/v1/experiments/bundles_ab", headers=READER).json()
        assert report["experiment"]["split"] == {"pop": 0.34, "ucb": 0.33, "ts": 0.33}
        result = report["analysis"]["variants"][body["variant"]]
        assert result["requests"] >= 2 and result["clicks"] >= 1
        listing = c.get("/v1/experiments", headers=ADMIN).json()
        assert {e["name"] for e in listing["experiments"]} == {"bundles_ab", "solo_ucb"}


BAD_REQUESTS = [
    ("get", "/v1/bundles", {"params": {"user_id": "u", "experiment": "nope"}}, 404, "unknown_experiment"),
    ("get", "/v1/bundles", {"params": {"user_id": "u", "k": 999}}, 422, "k_too_large"),
    ("get", "/v1/bundles", {"params": {"user_id": "u", "k": "three"}}, 422, "invalid_request"),
    ("get", "/v1/bundles", {"params": {"k": 2}}, 422, "invalid_request"),
    ("get", "/v1/bundles", {"params": {"user_id": "u", "colour": "red"}}, 422, "invalid_request"),
    ("get", "/v1/bundles", {"params": {"user_id": "has space"}}, 422, "invalid_request"),
    ("post", "/v1/bundles", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("post", "/v1/bundles", {"content": b"[1, 2]"}, 400, "not_an_object"),
    ("post", "/v1/bundles", {"content": b""}, 400, "empty_body"),
    ("post", "/v1/bundles", {"content": b'{"user_id": "u", "k": NaN}'}, 400, "invalid_json"),
    ("post", "/v1/bundles", {"content": b'{"user_id": "' + b"x" * 20_000 + b'"}'}, 413, "body_too_large"),
    ("post", "/v1/feedback", {"json": {"type": "like", "request_id": "r", "user_id": "u", "bundle_id": "b"}}, 422, "invalid_request"),
    ("post", "/v1/feedback", {"json": {"type": "click", "user_id": "u", "bundle_id": "b"}}, 422, "invalid_request"),
    ("post", "/v1/feedback", {"json": {"type": "click", "request_id": "r", "user_id": "u"}}, 422, "invalid_field"),
    ("post", "/v1/feedback", {"json": {"type": "purchase", "request_id": "r", "user_id": "u", "bundle_id": "b"}}, 422, "missing_field"),
    ("post", "/v1/feedback", {"json": {"type": "dismiss", "request_id": "r", "user_id": "u"}}, 422, "missing_field"),
    ("post", "/v1/feedback", {"json": {"type": "click", "request_id": "r", "user_id": "u", "bundle_id": "b", "event_id": "nope"}}, 422, "invalid_request"),
    ("get", "/v1/recommendations", {"params": {"user_id": "u", "exclude": ",".join(f"i{i}" for i in range(300))}}, 422, "list_too_long"),
    ("get", "/v1/recommendations", {"params": {"user_id": "u", "diversity": 2}}, 422, "invalid_request"),
    ("get", "/v1/recommendations", {"params": {"user_id": "u", "k": 100}}, 422, "k_too_large"),
    ("get", "/v1/experiments/nope", {"headers": READER}, 404, "unknown_experiment"),
]


def test_bad_requests_are_4xx_and_service_keeps_serving(recommender) -> None:
    with recommender.client() as c:
        failures = []
        for method, path, kwargs, status, reason in BAD_REQUESTS:
            r = getattr(c, method)(path, **kwargs)
            got = (r.status_code, r.json().get("error", {}).get("reason") if r.headers.get("content-type", "").startswith("application/json") else r.text)
            if got != (status, reason):
                failures.append((method, path, str(kwargs)[:80], got, (status, reason)))
        assert not failures, failures
        assert c.get("/v1/bundles", params={"user_id": "bob"}).status_code == 200
        assert c.get("/healthz").json() == {"status": "ok", "service": "recommender"}


def test_cold_start_recommendations_use_popularity_with_quota(recommender, collector) -> None:
    # no registry and no Feast in this state dir: popularity from the event log, category quota
    events = []
    for i in range(6):
        events += [{"schema_version": 1, "event_id": str(uuid.uuid4()), "type": "view", "user_id": f"cs-{i}-{j}",
                    "session_id": "s", "ts": "2017-11-25T10:00:00Z", "item_id": f"pop-{i}",
                    "category_id": "shoes" if i < 4 else "socks"} for j in range(10 - i)]
    with collector.client() as cc:
        assert cc.post("/v1/events", json=events).status_code == 200
    with recommender.client() as c:
        def ready():
            r = c.get("/v1/recommendations", params={"user_id": "new-user", "item_id": "pop-0", "k": 3, "min_cross_category": 1})
            body = r.json()
            return body if r.status_code == 200 and {"pop-1", "pop-4"} <= {i["item_id"] for i in body["items"]} else None

        body = wait_for(ready, timeout_s=20, what="popularity recommendations", streak=EVERY_REPLICA)
        ids = [i["item_id"] for i in body["items"]]
        assert body["source"] == "popularity" and len(ids) == 3 and "pop-0" not in ids
        assert any(i["category"] == "socks" for i in body["items"])  # the cross-category quota
        assert all(i["reason"] for i in body["items"])
        # diversity knob is accepted and echoed; POST form works
        r = c.post("/v1/recommendations", json={"user_id": "new-user", "k": 2, "diversity": 0.0})
        assert r.status_code == 200 and r.json()["diversity"] == 0.0 and len(r.json()["items"]) == 2
        # bundles for an unknown user: cold start context, still a full slate
        r = c.get("/v1/bundles", params={"user_id": f"cold-{uuid.uuid4().hex[:8]}", "experiment": "solo_ucb"})
        assert r.status_code == 200 and r.json()["context_source"] == "cold_start" and len(r.json()["bundles"]) == 3


def test_learner_killed_under_traffic_restores_exactly_once(recommender) -> None:
    import ray

    with recommender.client() as c:
        base = wait_for(lambda: learner_stats(c), what="learner")
        # stable baseline: nothing pending from earlier tests
        base = wait_for(lambda: (s := learner_stats(c)) and s["counters"]["feedback_pending"] == 0 and s, what="no pending")
        applied0 = base["counters"]["feedback_applied"]
        start = {t: {int(k.split(":")[1]): v for k, v in base["offsets"].items() if k.split(":")[0] == t}
                 for t in (recommender.settings.kafka.topics.events, recommender.settings.kafka.topics.feedback)}
        dups0 = base["counters"]["feedback_duplicates"]
        started0 = base["started_at"]
        sent: set[str] = set()
        served: list[dict] = []

        def serve_and_feedback(n: int, tag: str) -> None:
            for i in range(n):
                user = f"{tag}-{i}"
                r = c.get("/v1/bundles", params={"user_id": user, "k": 2})
                assert r.status_code == 200, r.text
                served.append(r.json())
                body = r.json()
                kind = ("click", "dismiss", "purchase")[i % 3]
                payload = {"type": kind, "request_id": body["request_id"], "user_id": user,
                           "bundle_id": body["bundles"][0]["bundle_id"], "event_id": str(uuid.uuid4()),
                           "feedback_token": body["feedback_token"]}
                if kind == "purchase":
                    payload["items"] = [{"item_id": x, "price": 3.0} for x in body["bundles"][0]["items"]]
                assert c.post("/v1/feedback", json=payload).status_code == 200
                sent.add(payload["event_id"])
                if i == 0:  # the same event twice (a client retry): applied once
                    assert c.post("/v1/feedback", json=payload).status_code == 200

        serve_and_feedback(9, "before")
        wait_for(lambda: learner_stats(c)["snapshots"] > base["snapshots"], timeout_s=10, what="a snapshot")
        serve_and_feedback(6, "late")  # some of these land after the last snapshot
        actors = [a for a in ray.util.list_named_actors(all_namespaces=True) if "BanditLearner" in a["name"] and "recommender" in a["name"]]
        assert len(actors) == 1, actors
        ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
        # while the learner is down, feedback still reaches Kafka (it does not need the learner)
        pending_after_kill = served[-3:]
        for body in pending_after_kill:
            payload = {"type": "click", "request_id": body["request_id"], "user_id": body["user_id"],
                       "bundle_id": body["bundles"][1]["bundle_id"], "event_id": str(uuid.uuid4()),
                       "feedback_token": body["feedback_token"]}
            r = c.post("/v1/feedback", json=payload)
            assert r.status_code == 200, r.text
            sent.add(payload["event_id"])
        # a new replica restores the snapshot and replays Kafka from its offsets
        final = wait_for(
            lambda: (s := learner_stats(c)) and s["started_at"] != started0 and s["counters"]["feedback_applied"] >= applied0 + len(sent) and s,
            timeout_s=90, interval_s=0.5, what="a restored learner catching up",
        )
        time.sleep(2)  # anything applied twice would show up now
        final = learner_stats(c)
        assert final["restored"]["from_snapshot"] is True
        assert final["counters"]["feedback_applied"] == applied0 + len(sent)
        # every feedback record in Kafka since the baseline: distinct ones applied once, copies skipped
        settings = recommender.settings
        log = [json.loads(r.value) for topic in (settings.kafka.topics.events, settings.kafka.topics.feedback)
               for r in read_topic(settings.kafka, topic, start=start.get(topic), timeout_s=20)]
        ids = [e["event_id"] for e in log if e.get("type") in ("click", "bundle_purchase", "dismiss")]
        assert set(ids) == sent
        assert final["counters"]["feedback_duplicates"] - dups0 == len(ids) - len(set(ids)) >= 1
        assert final["counters"]["feedback_pending"] == 0
        assert sum(final["variants"][f"bundles_ab {v}"]["updates"] for v in ("pop", "ucb", "ts")) == sum(
            base["variants"][f"bundles_ab {v}"]["updates"] for v in ("pop", "ucb", "ts")) + len(sent)
        assert final["restored"]["feedback_applied_at_restore"] < final["counters"]["feedback_applied"]  # replayed some
        assert c.get("/v1/bundles", params={"user_id": "after-restart"}).status_code == 200
