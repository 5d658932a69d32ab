"""The broker goes away while the collector runs: 503s, nothing claimed that Kafka did not ack."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import BrokerHandle, CollectorHandle, deploy_collector, make_event, start_broker
from streamrec.runtime.kafka import ensure_topics, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.ray]


@pytest.fixture
def private_stack(tmp_path: Path, ray_serve: int) -> Iterator[tuple[BrokerHandle, CollectorHandle]]:
    """A broker of this test's own (so stopping it disturbs no other test) and a collector on it."""
    from ray import serve

    broker = start_broker(tmp_path)
    collector = deploy_collector(broker.settings, ray_serve, "failover")
    yield broker, collector
    serve.delete("failover")
    broker.broker.resume()
    broker.broker.stop()


def _post_until(client: Any, event: dict[str, Any], status: int, timeout_s: float) -> tuple[int, float]:
    started = time.monotonic()
    while True:
        reply = client.post("/v1/events", json=event)
        if reply.status_code == status or time.monotonic() - started > timeout_s:
            return reply.status_code, time.monotonic() - started
        time.sleep(0.2)


def _ids_in_kafka(collector: CollectorHandle) -> set[str]:
    return {json.loads(r.value)["event_id"] for r in read_topic(collector.settings.kafka, "events")}


def test_frozen_broker_gives_503_then_recovers_without_losing_accepted_events(
    private_stack: tuple[BrokerHandle, CollectorHandle],
) -> None:
    broker, collector = private_stack
    accepted: list[str] = []
    with collector.client() as client:
        for _ in range(5):
            event = make_event()
            assert client.post("/v1/events", json=event).status_code == 200
            accepted.append(event["event_id"])

        broker.broker.pause()  # SIGSTOP: connections stay open, nothing answers
        event = make_event()
        started = time.monotonic()
        reply = client.post("/v1/events", json=event)
        assert reply.status_code == 503
        assert time.monotonic() - started < 15, "a dead broker must turn into a prompt 503"
        body = reply.json()
        assert body["error"]["reason"] == "broker_unavailable" and "NOT accepted" in body["error"]["detail"]
        assert reply.headers["retry-after"] == "1"

        broker.broker.resume()
        status, waited = _post_until(client, event, 200, timeout_s=30)  # the client retries the same event
        assert status == 200, f"collector did not recover within {waited:.0f}s"
        accepted.append(event["event_id"])
        for _ in range(5):
            event = make_event()
            assert client.post("/v1/events", json=event).status_code == 200
            accepted.append(event["event_id"])
    assert set(accepted) <= _ids_in_kafka(collector)


def test_stopped_broker_gives_503_and_a_restarted_one_accepts_again(
    private_stack: tuple[BrokerHandle, CollectorHandle],
) -> None:
    broker, collector = private_stack
    with collector.client() as client:
        assert client.post("/v1/events", json=make_event()).status_code == 200
        broker.broker.stop()
        status, _ = _post_until(client, make_event(), 503, timeout_s=15)
        assert status == 503
        # The embedded broker keeps data in memory: a restarted one starts empty, so topics are
        # created again (as `streamrec up` does). Events accepted from now on must all be there.
        broker.broker.start()
        ensure_topics(collector.settings.kafka)
        event = make_event()
        status, waited = _post_until(client, event, 200, timeout_s=30)
        assert status == 200, f"collector did not recover within {waited:.0f}s"
        later = [make_event() for _ in range(10)]
        assert client.post("/v1/events", json=later).status_code == 200
    assert {e["event_id"] for e in [event, *later]} <= _ids_in_kafka(collector)
