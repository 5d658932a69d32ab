"""The collector over real HTTP (Ray Serve) against a real Kafka broker (tansu)."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from support import TEST_LIMITS, TEST_TOKEN, CollectorHandle, make_event
from streamrec.runtime.kafka import read_topic, topic_end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


def _records_since(collector: CollectorHandle, topic: str, start: dict[int, int]) -> list[Any]:
    return read_topic(collector.settings.kafka, topic, start=start)


def _snapshot(collector: CollectorHandle) -> tuple[dict[int, int], dict[int, int]]:
    topics = collector.settings.kafka.topics
    return (
        topic_end_offsets(collector.settings.kafka, topics.events),
        topic_end_offsets(collector.settings.kafka, topics.dlq),
    )


def _without_receive_time(value: bytes) -> dict[str, Any]:
    record = json.loads(value)
    assert record.pop("received_at")
    return record


def test_round_trip_keyed_by_user_in_per_user_order(collector: CollectorHandle) -> None:
    events_start, _ = _snapshot(collector)
    users = [f"rt-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    sent = [make_event("view", user_id=users[i % 5], item_id=f"i{i}", session_id=f"s{i % 3}") for i in range(40)]
    sent.append(make_event("purchase", user_id=users[0], items=[{"item_id": "i1", "quantity": 2, "price": 19.99}], currency="EUR"))
    with collector.client() as client:
        assert client.post("/v1/events", json=sent[:30]).status_code == 200  # a JSON array
        for event in sent[30:35]:  # single events
            assert client.post("/v1/events", json=event).status_code == 200
        ndjson = "\n".join(json.dumps(e) for e in sent[35:])  # NDJSON
        reply = client.post("/v1/events", content=ndjson, headers={"content-type": "application/x-ndjson"})
        assert reply.status_code == 200 and reply.json()["accepted"] == len(sent) - 35

    records = _records_since(collector, collector.settings.kafka.topics.events, events_start)
    mine = [r for r in records if json.loads(r.value)["user_id"] in users]
    assert len(mine) == len(sent)
    by_id = {e["event_id"]: e for e in sent}
    for record in mine:
        content = _without_receive_time(record.value)
        assert content == by_id[content["event_id"]]  # the same content the client sent
        assert record.key == content["user_id"].encode()
        assert dict(record.headers)["type"] == content["type"].encode()
    for user in users:
        partitions = {r.partition for r in mine if r.key == user.encode()}
        assert len(partitions) == 1  # keyed by user: one partition, so one order
        got = [json.loads(r.value)["event_id"] for r in sorted(mine, key=lambda r: r.offset) if r.key == user.encode()]
        assert got == [e["event_id"] for e in sent if e["user_id"] == user]


def _future(days: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).isoformat()


BIG = "x" * (TEST_LIMITS["max_body_bytes"] + 10)
# (case, body bytes or JSON value, content type, expected status, expected reason)
BAD_INPUTS: list[tuple[str, Any, str, int, str]] = [
    ("invalid json", b'{"schema_version": 1,', "application/json", 400, "invalid_json"),
    ("non-utf8 bytes", b'{"user_id": "\xff\xfe"}', "application/json", 400, "invalid_utf8"),
    ("empty body", b"", "application/json", 400, "empty_body"),
    ("wrong content type", b"{}", "application/xml", 415, "unsupported_media_type"),
    ("wrong type", make_event(item_id=42), "application/json", 422, "wrong_type"),
    ("missing field", {k: v for k, v in make_event().items() if k != "session_id"}, "application/json", 422, "missing_field"),
    ("unknown event type", make_event("teleport"), "application/json", 422, "unknown_event_type"),
    ("unknown schema version", make_event(schema_version=7), "application/json", 422, "unsupported_schema_version"),
    ("timestamp far in the future", make_event(ts=_future(3)), "application/json", 422, "timestamp_out_of_range"),
    ("timestamp before 2000", make_event(ts="1970-01-01T00:00:00Z"), "application/json", 422, "timestamp_out_of_range"),
    ("timestamp without zone", make_event(ts="2017-11-25 10:00:00"), "application/json", 422, "timestamp_without_timezone"),
    ("negative price", make_event("purchase", items=[{"item_id": "a", "price": -5.0}]), "application/json", 422, "out_of_range"),
    ("NaN price", b'{"schema_version": 1, "type": "view", "price": NaN}', "application/json", 400, "not_a_finite_number"),
    ("negative quantity", make_event("add_to_cart", quantity=-1), "application/json", 422, "out_of_range"),
    ("oversize field", make_event(item_id="i" * 200), "application/json", 422, "field_too_large"),
    ("oversize list", make_event("search", query="q", result_item_ids=[f"i{i}" for i in range(TEST_LIMITS["max_list_items"] + 1)]), "application/json", 422, "field_too_large"),
    ("oversize body", json.dumps(make_event(page=BIG)).encode(), "application/json", 413, "body_too_large"),
    ("too-large batch", [make_event() for _ in range(TEST_LIMITS["max_batch_events"] + 1)], "application/json", 413, "batch_too_large"),
    ("empty batch", [], "application/json", 422, "empty_batch"),
    ("duplicate keys", b'{"type": "view", "type": "purchase"}', "application/json", 400, "duplicate_key"),
    ("nested garbage", make_event(item_id="a", meta={"x": [{"y": {"z": [1, None, "w"]}}]}), "application/json", 422, "unknown_field"),
    ("deep nesting", b"[" * 5000 + b"]" * 5000, "application/json", 400, "json_too_deep"),
    ("4000-deep objects", b'{"a":' * 4000 + b"1" + b"}" * 4000, "application/json", 400, "json_too_deep"),
    ("numeric ts", make_event(ts=1511604000), "application/json", 422, "wrong_type"),
    ("numeric ts in a string", make_event(ts="1511604000"), "application/json", 422, "wrong_type"),
    ("surrogate in user_id", make_event(user_id="u\ud800"), "application/json", 422, "invalid_unicode"),
    ("surrogate in a key", {**make_event(), "\ud800": 1}, "application/json", 422, "invalid_unicode"),
    ("not an object", 42, "application/json", 422, "not_an_object"),
    ("bad event id", make_event(event_id="123"), "application/json", 422, "wrong_type"),
    ("lone surrogate", b'{"schema_version": 1, "event_id": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "type": "view", "user_id": "u", "session_id": "s", "ts": "2017-11-25T10:00:00Z", "item_id": "i", "page": "\\ud800"}', "application/json", 422, "invalid_unicode"),
    ("propensity above 1", make_event("impression", request_id="r", surface="bundles", slots=[{"id": "b", "position": 0, "propensity": 2.0}]), "application/json", 422, "out_of_range"),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_and_lands_in_the_dlq(
    collector: CollectorHandle, case: str, body: Any, content_type: str, status: int, reason: str
) -> None:
    _, dlq_start = _snapshot(collector)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with collector.client() as client:
        reply = client.post("/v1/events", content=raw, headers={"content-type": content_type})
        assert reply.status_code == status, reply.text
        answer = reply.json()
        got_reason = answer["error"]["reason"] if "error" in answer else answer["results"][0]["reason"]
        assert got_reason == reason
        detail = answer["error"]["detail"] if "error" in answer else answer["results"][0]["detail"]
        assert len(detail) > 5
        # ... and the collector keeps serving.
        assert client.post("/v1/events", json=make_event()).status_code == 200
    dead = [json.loads(r.value) for r in _records_since(collector, collector.settings.kafka.topics.dlq, dlq_start)]
    assert [d["reason"] for d in dead] == [reason]
    letter = dead[0]
    assert letter["received_at"] and letter["source"] == "collector" and letter["detail"]
    assert letter["raw_size"] >= 0 and letter["raw_encoding"] in ("utf-8", "base64")


def test_mixed_batch_keeps_the_good_events(collector: CollectorHandle) -> None:
    events_start, dlq_start = _snapshot(collector)
    good = [make_event(), make_event("add_to_cart", quantity=3)]
    bad = [make_event(item_id=None), make_event("view", ts="1990-01-01T00:00:00Z"), "garbage"]
    batch = [good[0], bad[0], bad[1], good[1], bad[2]]
    with collector.client() as client:
        reply = client.post("/v1/events", json=batch)
    assert reply.status_code == 207
    answer = reply.json()
    assert (answer["accepted"], answer["rejected"]) == (2, 3)
    assert [r["status"] for r in answer["results"]] == ["accepted", "rejected", "rejected", "accepted", "rejected"]
    accepted_ids = {json.loads(r.value)["event_id"] for r in _records_since(collector, "events", events_start)}
    assert {e["event_id"] for e in good} <= accepted_ids
    dead = [json.loads(r.value) for r in _records_since(collector, collector.settings.kafka.topics.dlq, dlq_start)]
    assert sorted(d["batch_index"] for d in dead) == [1, 2, 4]
    assert {d["event_id"] for d in dead if d["batch_index"] == 1} == {bad[0]["event_id"]}
    assert json.loads(next(d["raw"] for d in dead if d["batch_index"] == 4)) == "garbage"


def test_surrogates_in_ids_reject_their_events_and_keep_the_rest_of_the_batch(collector: CollectorHandle) -> None:
    """A lone surrogate ("\\ud800") in user_id or event_id: those events get invalid_unicode and a
    dead letter; the good events of the batch are accepted (it was a 500 for all of them)."""
    events_start, dlq_start = _snapshot(collector)
    good = [make_event(), make_event()]
    bad_user, bad_id = make_event(user_id="u\ud800"), make_event(event_id="\ud800")
    body = json.dumps([good[0], bad_user, bad_id, good[1]]).encode()  # escapes: valid UTF-8 JSON
    with collector.client() as client:
        reply = client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 207, reply.text
    results = reply.json()["results"]
    assert [(r["status"], r.get("reason")) for r in results] == [
        ("accepted", None), ("rejected", "invalid_unicode"), ("rejected", "invalid_unicode"), ("accepted", None),
    ]
    assert results[1]["event_id"] == bad_user["event_id"] and results[2]["event_id"] is None
    accepted_ids = {json.loads(r.value)["event_id"] for r in _records_since(collector, "events", events_start)}
    assert {e["event_id"] for e in good} <= accepted_ids
    dead = [json.loads(r.value) for r in _records_since(collector, collector.settings.kafka.topics.dlq, dlq_start)]
    assert sorted((d["batch_index"], d["reason"]) for d in dead) == [(1, "invalid_unicode"), (2, "invalid_unicode")]
    assert {d["batch_index"]: d["detail"].split(":")[0] for d in dead} == {1: "user_id", 2: "event_id"}


def test_gzip_bodies_are_inflated_and_other_encodings_refused(collector: CollectorHandle) -> None:
    import gzip

    events_start, dlq_start = _snapshot(collector)
    batch = [make_event(), make_event()]
    with collector.client() as client:
        zipped = client.post(
            "/v1/events", content=gzip.compress(json.dumps(batch).encode()),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert zipped.status_code == 200 and zipped.json()["accepted"] == 2, zipped.text
        bomb = client.post(  # 20 MB of spaces in ~20 kB: stops at max_body_bytes
            "/v1/events", content=gzip.compress(b" " * 20_000_000),
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert (bomb.status_code, bomb.json()["error"]["reason"]) == (413, "body_too_large")
        for coding in ("br", "deflate", "gzip, br"):
            other = client.post(
                "/v1/events", content=json.dumps(batch).encode(),
                headers={"content-type": "application/json", "content-encoding": coding},
            )
            assert (other.status_code, other.json()["error"]["reason"]) == (415, "unsupported_content_encoding"), coding
    accepted_ids = {json.loads(r.value)["event_id"] for r in _records_since(collector, "events", events_start)}
    assert {e["event_id"] for e in batch} <= accepted_ids
    dead = [json.loads(r.value) for r in _records_since(collector, collector.settings.kafka.topics.dlq, dlq_start)]
    assert sorted(d["reason"] for d in dead) == ["body_too_large"] + ["unsupported_content_encoding"] * 3


def test_auth_is_required(collector: CollectorHandle) -> None:
    event = make_event()
    for token in (None, "wrong-token"):
        with collector.client(token=token) as client:
            reply = client.post("/v1/events", json=event)
            assert reply.status_code == 401
            assert reply.headers["www-authenticate"] == "Bearer"
    with collector.client() as client:
        assert client.post("/v1/events", json=event).status_code == 200
        assert client.get("/v1/events/healthz").status_code == 200


def test_declared_oversize_body_is_refused_before_reading(collector: CollectorHandle) -> None:
    with collector.client() as client:
        reply = client.post(
            "/v1/events",
            content=b"{" + b" " * (TEST_LIMITS["max_body_bytes"] + 10) + b"}",
            headers={"content-type": "application/json"},
        )
    assert reply.status_code == 413 and reply.json()["error"]["reason"] == "body_too_large"


def test_schema_and_openapi_are_published(collector: CollectorHandle) -> None:
    with collector.client() as client:
        schema = client.get("/v1/events/schema").json()
        openapi = client.get("/v1/events/openapi.json").json()
    assert "discriminator" in schema
    assert "/" in openapi["paths"]  # mounted at /v1/events


def test_concurrent_clients_keep_per_user_order(collector: CollectorHandle) -> None:
    """Several users posting at once: each user's events arrive in the order they were sent."""
    import asyncio

    import httpx

    events_start, _ = _snapshot(collector)
    users = [f"cc-{uuid.uuid4().hex[:8]}" for _ in range(8)]
    per_user = {u: [make_event(user_id=u, item_id=f"i{i}") for i in range(15)] for u in users}

    async def post_user(client: httpx.AsyncClient, events: list[dict[str, Any]]) -> None:
        for event in events:
            assert (await client.post("/v1/events", json=event)).status_code == 200

    async def run() -> None:
        headers = {"authorization": f"Bearer {TEST_TOKEN}"}
        async with httpx.AsyncClient(base_url=collector.url, headers=headers, timeout=30) as client:
            await asyncio.gather(*(post_user(client, events) for events in per_user.values()))

    asyncio.run(run())
    seen: dict[str, list[str]] = defaultdict(list)
    for record in sorted(_records_since(collector, "events", events_start), key=lambda r: (r.partition, r.offset)):
        value = json.loads(record.value)
        if value["user_id"] in per_user:
            seen[value["user_id"]].append(value["event_id"])
    assert {u: [e["event_id"] for e in per_user[u]] for u in users} == dict(seen)


def test_chunked_oversize_body_is_cut_off_and_its_start_kept_in_the_dlq(collector: CollectorHandle) -> None:
    """No Content-Length (chunked upload): the limit is enforced while reading."""
    _, dlq_start = _snapshot(collector)

    def chunks():  # noqa: ANN202
        yield b'[{"schema_version": 1, "note": "'
        for _ in range(TEST_LIMITS["max_body_bytes"] // 8192 + 2):
            yield b"y" * 8192

    with collector.client() as client:
        reply = client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["reason"] == "body_too_large"
    dead = [json.loads(r.value) for r in _records_since(collector, collector.settings.kafka.topics.dlq, dlq_start)]
    assert len(dead) == 1 and dead[0]["truncated"] is True
    assert dead[0]["raw"].startswith('[{"schema_version": 1')
