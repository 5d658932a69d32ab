"""DecisionLog on a real broker: decisions return before their ack while the broker keeps up; a
broker that stops answering turns new decisions into BrokerUnavailable (the API's 503), and the
records handed over before that reach Kafka once it answers again."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from serving.app.decision_log import DecisionLog
from serving.collector.publisher import BrokerUnavailable, EventPublisher, OutgoingRecord
from streamrec.runtime.kafka import read_topic
from support import start_broker

pytestmark = pytest.mark.kafka


def _record(topic: str) -> tuple[str, OutgoingRecord]:
    request_id = uuid.uuid4().hex
    return request_id, OutgoingRecord(topic, b"u1", json.dumps({"request_id": request_id}).encode())


async def _until(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_decisions_are_acknowledged_in_the_background_and_resent_after_the_broker_returns(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    kafka = broker.settings.kafka
    topic = kafka.topics.events
    publisher = EventPublisher(kafka, linger_ms=0)
    counts: Counter[str] = Counter()
    decisions = DecisionLog(publisher, ack_grace_s=0.3, retry_s=0.2, count=lambda what, n: counts.update({what: n}))
    logged: list[str] = []

    async def scenario() -> None:
        for _ in range(3):  # the first one creates the producer and learns the topic's partitions
            request_id, record = _record(topic)
            await decisions.log([record])
            logged.append(request_id)
        await _until(lambda: decisions.unacknowledged == 0, 10)
        assert decisions.prompt

        broker.broker.pause()  # SIGSTOP: connections stay open, nothing answers
        request_id, record = _record(topic)
        started = time.monotonic()
        await decisions.log([record])  # handed over: does not wait for the frozen broker
        assert time.monotonic() - started < 0.25
        logged.append(request_id)
        assert decisions.unacknowledged == 1

        await asyncio.sleep(0.4)  # past the grace: new decisions wait for their own ack
        assert not decisions.prompt
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await decisions.log([_record(topic)[1]])
        assert time.monotonic() - started < kafka.produce_timeout_s + 3

        await _until(lambda: counts["resent"] >= 1, 15)  # the handed-over record waits to be re-sent
        broker.broker.resume()
        await _until(lambda: decisions.unacknowledged == 0, 30)
        assert decisions.prompt

    try:
        asyncio.run(scenario())
        in_kafka = Counter(json.loads(r.value)["request_id"] for r in read_topic(kafka, topic))
        assert all(in_kafka[request_id] >= 1 for request_id in logged), (logged, in_kafka)
        assert counts["lost"] == 0
    finally:
        decisions.close()
        publisher.close()
        broker.broker.resume()
        broker.broker.stop()
