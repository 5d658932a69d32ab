"""The ground floor's Kafka clients (streamrec/runtime/kafka.py) against the real embedded broker."""

from __future__ import annotations

import uuid

from streamrec.runtime.kafka import committed_offsets, ensure_topics, new_admin, new_consumer, new_producer, read_topic


def test_every_client_comes_from_the_settings_and_topics_are_created_together(kafka_broker) -> None:
    suffix = uuid.uuid4().hex[:8]
    config = kafka_broker.settings.kafka.model_copy(update={"topics": kafka_broker.settings.kafka.topics.model_copy(
        update={"events": f"rt-{suffix}", "dlq": f"rt-dlq-{suffix}", "tombstones": f"rt-ts-{suffix}",
                "feedback": f"rt-fb-{suffix}"})})
    created = ensure_topics(config)
    assert set(created) == {f"rt-{suffix}", f"rt-dlq-{suffix}", f"rt-ts-{suffix}", f"rt-fb-{suffix}"}
    assert set(created.values()) == {config.partitions}

    producer = new_producer(config, acks="all")
    try:
        assert producer.config["bootstrap_servers"] == config.client_options()["bootstrap_servers"]
        producer.send(config.topics.feedback, key=b"u1", value=b"dismiss").get(timeout=10)
    finally:
        producer.close()
    assert [r.value for r in read_topic(config, config.topics.feedback)] == [b"dismiss"]

    consumer = new_consumer(config, group_id=f"g-{suffix}")
    try:
        assert consumer.config["enable_auto_commit"] is False  # nothing commits unless asked to
    finally:
        consumer.close()
    committing = new_consumer(config, enable_auto_commit=True)
    assert committing.config["enable_auto_commit"] is True
    committing.close()
    assert set(committed_offsets(config, config.topics.feedback, f"g-{suffix}").values()) == {None}

    admin = new_admin(config)
    try:
        assert config.topics.feedback in admin.list_topics()
    finally:
        admin.close()
