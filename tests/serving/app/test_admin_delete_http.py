"""`DELETE /v1/admin/users/{user_id}` over real HTTP with a real broker: admin token only, 202 with
the request id, the tombstone in Kafka, the learner forgets the user now and skips their later
records; a tombstone published by the CLI path reaches the learner through Kafka too."""

from __future__ import annotations

import httpx
import pytest
from recommender_support import learner_stats, recommender, wait_for  # noqa: F401 (fixture)

from features.privacy import Tombstone, publish_tombstone
from streamrec.runtime.kafka import read_topic, topic_end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _counter(client: httpx.Client, name: str) -> int:
    # A stats read that failed (a busy replica's non-200) must not read as 0: the session's learner
    # has folded other tests' impressions, so a "before" of 0 would let a wait pass at once.
    stats = wait_for(lambda: learner_stats(client), what="the learner's stats")
    return stats.get("counters", {}).get(name, 0)


def _show_bundles(client: httpx.Client, user_id: str) -> None:
    """A bundles request (its impression carries the decision context the learner keeps)."""
    before = _counter(client, "impressions")
    r = client.get("/v1/bundles", params={"user_id": user_id, "item_id": "item-1", "k": 2})
    assert r.status_code == 200, r.text
    wait_for(lambda: _counter(client, "impressions") > before, what="learner folds the impression")


def test_admin_delete_needs_the_admin_token(recommender) -> None:
    settings = recommender.settings
    with recommender.client() as c:
        for headers in ({}, {"authorization": "Bearer wrong"},
                        {"authorization": f"Bearer {settings.collector.auth_token.get_secret_value()}"}):
            r = c.delete("/v1/admin/users/someone", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["error"]["reason"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"


def test_admin_delete_publishes_tombstone_and_learner_forgets(recommender) -> None:
    settings = recommender.settings
    admin = {"authorization": f"Bearer {settings.serving.admin_token.get_secret_value()}"}
    start = topic_end_offsets(settings.kafka, settings.kafka.topics.tombstones)
    with recommender.client() as c:
        _show_bundles(c, "erase-me")
        _show_bundles(c, "keep-me")
        forgotten = _counter(c, "users_forgotten")

        r = c.delete("/v1/admin/users/erase-me", params={"reason": "gdpr"}, headers=admin)

        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "accepted" and body["user_id"] == "erase-me" and len(body["request_id"]) == 32
        assert body["learner_removed"]["contexts"] == 1 and body["learner_removed"]["outcomes"] == 1
        records = read_topic(settings.kafka, settings.kafka.topics.tombstones, start=start)
        tombstones = [Tombstone.from_json(rec.value) for rec in records if rec.key == b"erase-me"]
        assert [(t.request_id, t.reason, t.source) for t in tombstones] == [(body["request_id"], "gdpr", "admin_api")]
        assert _counter(c, "users_forgotten") == forgotten + 1

        # The user's later impressions are skipped by the learner (its own tombstone arrives too).
        skipped = _counter(c, "deleted_user_records")
        c.get("/v1/bundles", params={"user_id": "erase-me", "item_id": "item-1", "k": 2})
        wait_for(lambda: _counter(c, "deleted_user_records") > skipped, what="learner skips the deleted user")
        # keep-me's context is untouched: a second deletion call for erase-me removes nothing.
        again = c.delete("/v1/admin/users/erase-me", headers=admin).json()
        assert again["learner_removed"] == {"contexts": 0, "pending": 0, "outcomes": 0, "requests": 0}
        assert c.delete("/v1/admin/users/bad%20id", headers=admin).status_code == 422


def test_cli_tombstone_reaches_the_learner_through_kafka(recommender) -> None:
    with recommender.client() as c:
        _show_bundles(c, "erase-via-kafka")
        forgotten = _counter(c, "users_forgotten")
        publish_tombstone(recommender.settings, Tombstone.for_user("erase-via-kafka"))
        wait_for(lambda: _counter(c, "users_forgotten") > forgotten, timeout_s=60, what="learner reads the tombstone")
