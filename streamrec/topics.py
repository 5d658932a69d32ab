"""Creating streamrec's Kafka topics through the admin API (idempotent: existing topics are kept)."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streamrec.config import KafkaConfig


def ensure_topics(config: KafkaConfig, timeout_s: float = 10.0) -> dict[str, int]:
    """Create the `events` and dead-letter topics if missing.

    Returns:
        topic name -> partition count, as the broker reports it after the call.
    """
    admin = KafkaAdminClient(**config.client_options(), request_timeout_ms=int(timeout_s * 1000))
    try:
        wanted = {config.topics.events: config.partitions, config.topics.dlq: config.partitions}
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
