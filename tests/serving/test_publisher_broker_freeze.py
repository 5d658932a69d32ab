"""The producer of the collector and the recommender (EventPublisher) against a frozen broker
(SIGSTOP: connections stay open, nothing answers). Every publish ends within the produce timeout
with BrokerUnavailable, nothing else, whether it meets the stale producer, a new one being built or
a worker thread waiting for metadata; "nothing was written" is never said of a record that reached
Kafka after all; the producer recovers once the broker answers again. Real broker, no Ray."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from serving.collector.publisher import BrokerUnavailable, EventPublisher, OutgoingRecord, producer_options
from streamrec.runtime.config import KafkaConfig
from streamrec.runtime.kafka import read_topic
from support import start_broker

pytestmark = pytest.mark.kafka

PRODUCE_TIMEOUT_S = 2.0
# Scheduling slack on 2 busy cores; the bound itself is the produce timeout.
MARGIN_S = 1.0


def test_kafka_timeouts_are_derived_from_the_produce_timeout() -> None:
    for produce_s, metadata_s, linger_ms in ((5.0, 3.0, 1), (0.5, 3.0, 0), (2.0, 1.0, 5)):
        options = producer_options(KafkaConfig(produce_timeout_s=produce_s, metadata_timeout_s=metadata_s), linger_ms)
        assert options["delivery_timeout_ms"] == produce_s * 1000
        # kafka-python refuses delivery < linger + request; none may outlast the produce timeout
        assert options["request_timeout_ms"] + linger_ms <= options["delivery_timeout_ms"]
        assert options["max_block_ms"] == options["bootstrap_timeout_ms"] == min(metadata_s, produce_s) * 1000


def test_every_publish_to_a_frozen_broker_fails_within_the_produce_timeout(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    kafka = broker.settings.kafka.model_copy(update={"produce_timeout_s": PRODUCE_TIMEOUT_S, "metadata_timeout_s": 1.5})
    topic, dlq = kafka.topics.events, kafka.topics.dlq
    publisher = EventPublisher(kafka, linger_ms=1)
    # (event ids, "ok" or BrokerUnavailable.maybe_written, seconds, via)
    outcomes: list[tuple[list[str], object, float, str]] = []

    async def one(via: str = "publish", topics: tuple[str, ...] = (topic,)) -> None:
        ids = [uuid.uuid4().hex for _ in topics]
        records = [OutgoingRecord(t, i.encode(), json.dumps({"event_id": i}).encode()) for t, i in zip(topics, ids)]
        started = time.monotonic()
        try:
            if via == "publish":
                await publisher.publish(records)
            else:  # the recommender's DecisionLog: hand over now, acknowledgement later
                await (await publisher.send(records))
            outcome: object = "ok"
        except BrokerUnavailable as exc:
            outcome = exc.maybe_written
        outcomes.append((ids, outcome, time.monotonic() - started, via))

    async def scenario() -> None:
        for _ in range(3):
            await one()
        assert [o for _, o, _, _ in outcomes] == ["ok"] * 3
        broker.broker.pause()
        # 6 s of traffic: requests meet the stale producer, its replacement being built, a worker
        # thread waiting for metadata of a topic not used yet (the DLQ), and the handed-over path.
        tasks = []
        for i in range(40):
            via = "send" if i % 4 == 1 else "publish"
            topics = (topic, dlq) if i % 5 == 2 else (topic,)
            tasks.append(asyncio.create_task(one(via, topics)))
            await asyncio.sleep(0.15)
        await asyncio.gather(*tasks)
        broker.broker.resume()
        deadline = time.monotonic() + 30
        while True:  # recovers: a new producer once the broker answers
            await one()
            if outcomes[-1][1] == "ok" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)

    try:
        asyncio.run(scenario())
        in_kafka = {json.loads(r.value)["event_id"] for t in (topic, dlq) for r in read_topic(kafka, t)}
    finally:
        publisher.close()
        broker.broker.resume()
        broker.broker.stop()

    frozen = outcomes[3:43]
    took = sorted(t for _, _, t, _ in frozen)
    written_anyway = [ids for ids, o, _, _ in frozen if set(ids) & in_kafka]
    print(
        f"\nfrozen broker, produce_timeout_s={PRODUCE_TIMEOUT_S}: {len(frozen)} publishes, max {took[-1]:.2f} s, "
        f"p95 {took[int(0.95 * len(took)) - 1]:.2f} s, median {took[len(took) // 2]:.2f} s; "
        f"{sum(o is True for _, o, _, _ in frozen)} said 'may have been written', {len(written_anyway)} were in Kafka anyway"
    )
    assert outcomes[-1][1] == "ok", "the publisher did not recover after the broker came back"
    assert all(o != "ok" for _, o, _, _ in frozen), "a frozen broker acknowledged nothing"
    assert took[-1] <= PRODUCE_TIMEOUT_S + MARGIN_S, took
    # "none was written" must be true: records that reached Kafka were all reported as maybe written.
    assert all(o is True for ids, o, _, _ in frozen if set(ids) & in_kafka), written_anyway


def test_health_check_replaces_a_producer_whose_io_thread_died_and_refuses_a_closed_publisher(tmp_path: Path) -> None:
    broker = start_broker(tmp_path)
    try:
        kafka = broker.settings.kafka
        publisher = EventPublisher(kafka, linger_ms=1)
        record = OutgoingRecord(kafka.topics.events, b"k", b'{"event_id": "health-1"}')
        asyncio.run(publisher.publish([record]))
        first = publisher._producer
        publisher.check()  # alive: kept
        assert publisher._producer is first
        first._sender.force_close()  # the I/O thread dies: records handed to it would never be sent
        first._sender.join(timeout=10)
        publisher.check()
        assert publisher._producer is None  # discarded, not restarted-around
        asyncio.run(publisher.publish([OutgoingRecord(kafka.topics.events, b"k", b'{"event_id": "health-2"}')]))
        assert publisher._producer is not None and publisher._producer is not first
        publisher.close()
        with pytest.raises(RuntimeError, match="closed"):
            publisher.check()
    finally:
        broker.broker.stop()
