"""The ground floor's Kafka: creating streamrec's topics through the admin API (idempotent:
existing topics are kept), true end offsets, a group's committed offsets, and reading a topic."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import TopicAlreadyExistsError

from streamrec.runtime.config import KafkaConfig


def new_producer(config: KafkaConfig, **options: Any) -> KafkaProducer:
    """A kafka-python producer with this cluster's connection and security settings plus ``options``."""
    return KafkaProducer(**config.client_options(), **options)


def new_consumer(config: KafkaConfig, **options: Any) -> KafkaConsumer:
    """A kafka-python consumer (no topics subscribed) with this cluster's connection settings plus
    ``options``; offsets are never committed automatically unless ``options`` say so."""
    return KafkaConsumer(**config.client_options(), **{"enable_auto_commit": False, **options})


def new_admin(config: KafkaConfig, **options: Any) -> KafkaAdminClient:
    """A kafka-python admin client with this cluster's connection settings plus ``options``."""
    return KafkaAdminClient(**config.client_options(), **options)


def ensure_topics(config: KafkaConfig, timeout_s: float = 10.0) -> dict[str, int]:
    """Create the `events`, dead-letter, privacy tombstone and serving feedback topics if missing.

    Returns:
        topic name -> partition count, as the broker reports it after the call.
    """
    admin = new_admin(config, request_timeout_ms=int(timeout_s * 1000))
    try:
        wanted = {
            config.topics.events: config.partitions,
            config.topics.dlq: config.partitions,
            config.topics.tombstones: config.partitions,
            config.topics.feedback: config.partitions,
        }
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=parts, replication_factor=config.replication_factor)
            for name, parts in wanted.items()
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: that is the state we want
        described = admin.describe_topics(list(wanted))
        return {t["name"]: len(t["partitions"]) for t in described}
    finally:
        admin.close()


def end_offsets(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
    """The true end offset (high watermark) of each partition.

    Why not just ``consumer.end_offsets``: the embedded tansu broker answers ListOffsets(latest)
    with the base offset of the last record batch + 1, not the high watermark, so a batch of
    several records looks shorter than it is. A fetch response carries the right high watermark,
    so we fetch from the reported offset - 1 and read it. On Apache Kafka both agree.
    """
    listed = consumer.end_offsets(partitions)
    result: dict[TopicPartition, int] = {}
    saved = set(consumer.assignment())
    consumer.assign(partitions)
    try:
        for tp in partitions:
            if listed[tp] == 0:
                result[tp] = 0
                continue
            consumer.seek(tp, listed[tp] - 1)
            deadline = time.monotonic() + 10
            while consumer.highwater(tp) is None and time.monotonic() < deadline:
                consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
            highwater = consumer.highwater(tp)
            result[tp] = max(listed[tp], highwater or 0)
    finally:
        consumer.assign(list(saved))
    return result


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]


def wait_for_partitions(consumer: KafkaConsumer, topic: str, timeout_s: float = 10.0) -> list[TopicPartition]:
    """The topic's partitions, waiting while the client's metadata does not know them yet.

    Raises:
        RuntimeError: the topic has no partitions after ``timeout_s`` (does it exist?).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = _partitions(consumer, topic)
        if partitions:
            return partitions
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions (does it exist?)")
        time.sleep(0.2)


def committed_offsets(config: KafkaConfig, topic: str, group_id: str) -> dict[int, int | None]:
    """Partition -> the group's committed offset (None where nothing was committed)."""
    consumer = new_consumer(config, group_id=group_id)
    try:
        return {tp.partition: consumer.committed(tp) for tp in wait_for_partitions(consumer, topic)}
    finally:
        consumer.close()


def topic_end_offsets(config: KafkaConfig, topic: str) -> dict[int, int]:
    """Partition -> end offset of `topic` now (to read only what arrives later)."""
    consumer = new_consumer(config)
    try:
        partitions = _partitions(consumer, topic)
        return {tp.partition: end for tp, end in end_offsets(consumer, partitions).items()}
    finally:
        consumer.close()


def read_topic(
    config: KafkaConfig, topic: str, start: dict[int, int] | None = None, timeout_s: float = 60.0,
    bootstrap_timeout_s: float | None = None,
) -> list[ConsumerRecord]:
    """The records currently in `topic` (from `start` offsets per partition, else from the
    beginning), partition by partition in offset order. Reads without a consumer group.

    ``bootstrap_timeout_s`` bounds reaching the cluster (kafka-python waits 30 s by default):
    for callers that go on without the topic when the broker is down.
    """
    options = {"bootstrap_timeout_ms": int(bootstrap_timeout_s * 1000)} if bootstrap_timeout_s else {}
    consumer = new_consumer(config, **options)
    try:
        partitions = _partitions(consumer, topic)
        ends = end_offsets(consumer, partitions)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, (start or {}).get(tp.partition, 0))
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s}s")
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if r.offset < ends[TopicPartition(r.topic, r.partition)])
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()
