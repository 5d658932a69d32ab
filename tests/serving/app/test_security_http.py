"""The recommender tried as an attacker would, over real HTTP with a real broker (issue 23, 2 and 8):
no endpoint but health and docs without a credential; forged, mismatched, replayed and
over-priced feedback changes neither the learner nor the experiment and is dead-lettered with a
reason; the salt is never published; the learner's stats leak no paths."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest
from recommender_support import learner_stats, recommender, wait_for  # noqa: F401 (fixture)

from serving.feedback_tokens import FeedbackClaim, FeedbackSigner
from streamrec.runtime.kafka import read_topic, topic_end_offsets
from support import ADMIN, FRONTEND, READER, TEST_TOKEN

pytestmark = [pytest.mark.kafka, pytest.mark.ray]

ENDPOINTS = [
    ("get", "/v1/bundles?user_id=u"),
    ("post", "/v1/bundles"),
    ("get", "/v1/recommendations?user_id=u"),
    ("post", "/v1/recommendations"),
    ("post", "/v1/feedback"),
    ("get", "/v1/experiments"),
    ("get", "/v1/experiments/bundles_ab"),
    ("get", "/v1/learner"),
    ("delete", "/v1/admin/users/u"),
]
# Which credentials each endpoint takes (everything else: 401).
TAKES = {
    "/v1/experiments": {"admin"},
    "/v1/experiments/bundles_ab": {"admin", "reader"},
    "/v1/learner": {"admin"},
    "/v1/admin/users/u": {"admin"},
}


def _call(c, method: str, path: str, headers: dict[str, str]):
    kwargs = {"json": {"user_id": "u"}} if method == "post" else {}
    return getattr(c, method)(path, headers=headers, **kwargs)


def test_no_endpoint_but_health_and_docs_answers_without_its_credential(recommender) -> None:
    with recommender.client(headers={}) as c:
        for method, path in ENDPOINTS:
            takes = TAKES.get(path, {"frontend"})
            for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer nope"}), ("frontend", FRONTEND),
                                  ("reader", READER), ("admin", ADMIN)):
                if name in takes:
                    continue
                r = _call(c, method, path, headers)
                assert r.status_code == 401, (method, path, name, r.status_code, r.text)
                assert r.json()["error"]["reason"] == "unauthorized"
        assert c.get("/healthz").status_code == 200
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").status_code == 200


def test_the_salt_is_never_published_and_learner_stats_leak_no_paths(recommender) -> None:
    with recommender.client(headers=ADMIN) as c:
        listing = c.get("/v1/experiments")
        report = c.get("/v1/experiments/bundles_ab")
        stats = c.get("/v1/learner").json()
    assert listing.status_code == report.status_code == 200
    for body in (listing.text, report.text):
        assert "test-salt" not in body and '"salt"' not in body
    assert "pid" not in stats and "snapshot_path" not in stats
    assert str(recommender.settings.data.state_dir) not in json.dumps(stats)


def _dlq_reasons(settings, start) -> list[str]:
    return [json.loads(r.value)["reason"] for r in read_topic(settings.kafka, settings.kafka.topics.dlq, start=start, timeout_s=10)]


def _revenue(c, slate) -> float:
    analysis = c.get(f"/v1/experiments/{slate['experiment']}", headers=READER).json()["analysis"] or {"variants": {}}
    return (analysis["variants"].get(slate["variant"]) or {}).get("revenue_sum", 0.0)


def test_forged_mismatched_and_replayed_feedback_moves_nothing(recommender) -> None:
    settings = recommender.settings
    dlq_start = topic_end_offsets(settings.kafka, settings.kafka.topics.dlq)
    user = f"attacker-{uuid.uuid4().hex[:8]}"
    with recommender.client() as c:
        slate = c.get("/v1/bundles", params={"user_id": user, "k": 2}).json()
        other = c.get("/v1/bundles", params={"user_id": user, "k": 2}).json()
        key = f"{slate['experiment']} {slate['variant']}"
        shown = slate["bundles"][0]["bundle_id"]
        wait_for(lambda: learner_stats(c)["counters"]["impressions"] > 0, what="impressions folded")
        before = learner_stats(c)
        revenue_before = _revenue(c, slate)

        def feedback(**fields):
            body = {"type": "click", "request_id": slate["request_id"], "user_id": user, "bundle_id": shown,
                    "feedback_token": slate["feedback_token"], **fields}
            return c.post("/v1/feedback", json=body)

        forged_token = FeedbackSigner(b"an attacker's own key, 32 bytes!").issue(
            FeedbackClaim(slate["request_id"], user, slate["experiment"], slate["variant"], (shown,), 0))
        refused = {
            "feedback_unsigned": feedback(feedback_token=None),
            "feedback_forged": feedback(feedback_token=forged_token),
            "feedback_mismatch": feedback(feedback_token=other["feedback_token"]),
            "feedback_not_shown": feedback(bundle_id="bundle-never-shown"),
        }
        refused["feedback_mismatch (user)"] = feedback(user_id="victim")
        for reason, r in refused.items():
            assert r.status_code == 403, (reason, r.text)
            assert r.json()["error"]["reason"] == reason.split(" ")[0]
        # one real click, then 30 replays of it with fresh event ids, and a purchase priced at the contract's limit
        assert feedback().status_code == 200
        for _ in range(30):
            assert feedback(event_id=str(uuid.uuid4())).status_code == 200
        purchase = feedback(type="purchase", items=[{"item_id": slate["bundles"][0]["items"][0], "price": 1e9, "quantity": 10_000}])
        assert purchase.status_code == 200, purchase.text
        after = wait_for(
            lambda: (s := learner_stats(c)) and s["counters"]["feedback_replayed"] >= before["counters"]["feedback_replayed"] + 30
            and s["counters"]["feedback_applied"] >= before["counters"]["feedback_applied"] + 2 and s,
            timeout_s=30, what="the learner folding the feedback",
        )
        assert after["counters"]["feedback_applied"] == before["counters"]["feedback_applied"] + 2  # the click, the purchase
        assert after["variants"][key]["updates"] == before["variants"][key]["updates"] + 2  # credited once each
        assert after["variants"][key]["clicks"] == before["variants"][key]["clicks"] + 1
        # the purchase counts at the bounded price and quantity, not at 1e9 x 10,000
        limits = settings.serving
        assert _revenue(c, slate) - revenue_before == limits.max_item_price * limits.max_line_quantity
    reasons = wait_for(lambda: (r := _dlq_reasons(settings, dlq_start)) and r.count("feedback_replayed") >= 30 and r,
                       timeout_s=30, what="the dead letters")
    for reason in ("feedback_unsigned", "feedback_forged", "feedback_mismatch", "feedback_not_shown"):
        assert reason in reasons, reasons
    assert reasons.count("feedback_replayed") == 30


def test_clicks_through_the_collector_are_credited_only_with_the_slates_token(recommender, collector) -> None:
    user = f"tracker-{uuid.uuid4().hex[:8]}"
    with recommender.client() as c:
        slate = c.get("/v1/bundles", params={"user_id": user, "k": 2}).json()
        before = learner_stats(c)["counters"]

    def click(**fields):
        return {"schema_version": 1, "event_id": str(uuid.uuid4()), "type": "click", "user_id": user, "session_id": "s",
                "ts": datetime.now(timezone.utc).isoformat(), "request_id": slate["request_id"],
                "bundle_id": slate["bundles"][0]["bundle_id"], **fields}

    events = [click(), click(), click(feedback_token=slate["feedback_token"]), click(feedback_token=slate["feedback_token"])]
    with collector.client(TEST_TOKEN) as cc:
        r = cc.post("/v1/events", json=events)
        assert r.status_code == 200, r.text
    with recommender.client() as c:
        after = wait_for(
            lambda: (s := learner_stats(c)["counters"]) and s["feedback_unsigned"] >= before["feedback_unsigned"] + 2
            and s["feedback_replayed"] >= before["feedback_replayed"] + 1 and s,
            timeout_s=30, what="the learner folding the collector's clicks",
        )
    assert after["feedback_applied"] == before["feedback_applied"] + 1
