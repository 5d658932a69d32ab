"""The publisher's bridge from kafka-python's futures (settled on its I/O thread) to one asyncio
future per publish: settled once every record is acknowledged, with the first error, and nothing
set after a deadline."""

from __future__ import annotations

import asyncio
import threading

import pytest
from kafka.future import Future as KafkaFuture

from serving.collector.publisher import _AllAcknowledged


def _settle_from_thread(actions: list) -> None:
    thread = threading.Thread(target=lambda: [action() for action in actions])
    thread.start()
    thread.join()


def test_it_settles_only_once_every_record_is_acknowledged() -> None:
    async def main() -> None:
        futures = [KafkaFuture() for _ in range(3)]
        futures[1].success("already")  # acknowledged before the bridge was made: called back at once
        bridge = _AllAcknowledged(futures, asyncio.get_running_loop())
        _settle_from_thread([lambda: futures[2].success("third")])
        await asyncio.sleep(0.01)
        assert not bridge.future.done()  # one is still pending
        _settle_from_thread([lambda: futures[0].success("first")])
        return await asyncio.wait_for(bridge.future, timeout=5)

    assert asyncio.run(main()) is None


def test_the_first_error_settles_it_and_later_ones_are_ignored() -> None:
    async def main() -> None:
        futures = [KafkaFuture() for _ in range(3)]
        bridge = _AllAcknowledged(futures, asyncio.get_running_loop())
        _settle_from_thread([lambda: futures[0].success("ok"), lambda: futures[1].failure(ValueError("first")),
                             lambda: futures[2].failure(KeyError("second"))])
        with pytest.raises(ValueError, match="first"):
            await asyncio.wait_for(bridge.future, timeout=5)

    asyncio.run(main())


def test_acknowledgements_after_the_deadline_are_dropped() -> None:
    async def main() -> None:
        futures = [KafkaFuture()]
        bridge = _AllAcknowledged(futures, asyncio.get_running_loop())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(bridge.future, timeout=0.01)  # cancels the bridge's future
        _settle_from_thread([lambda: futures[0].success("late")])
        await asyncio.sleep(0.01)  # the late settle runs on the loop without raising InvalidStateError
        assert bridge.future.cancelled()

    asyncio.run(main())


def test_no_records_is_acknowledged_at_once() -> None:
    async def main() -> bool:
        return _AllAcknowledged([], asyncio.get_running_loop()).future.done()

    assert asyncio.run(main())


class _Cluster:
    """The part of kafka-python's ClusterMetadata a partitioner reads."""

    def __init__(self, partitions: dict[str, set[int]]) -> None:
        self._partitions = partitions

    def topics(self) -> set[str]:
        return set(self._partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions.get(topic)

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions.get(topic, set())


def test_cached_partitioner_puts_every_key_where_the_default_does() -> None:
    import random

    from kafka.partitioner.default import DefaultPartitioner

    from serving.collector.publisher import CachedKeyPartitioner

    rng = random.Random(7)
    cluster = _Cluster({"three": {0, 1, 2}, "gappy": {2, 5, 9, 11}, "one": {0}})
    ours, default = CachedKeyPartitioner(), DefaultPartitioner()
    keys = [f"user-{rng.randrange(10**9)}".encode() for _ in range(2000)] + [b"", "é-ü".encode()]
    for topic in ("three", "gappy", "one"):
        for key in keys + keys[:50]:  # the second time from the cache
            assert ours.partition(topic, None, key, None, None, cluster) == default.partition(topic, None, key, None, None, cluster)
    # Keyless records and unknown topics: the default's own answer.
    assert ours.partition("three", None, None, None, None, cluster) in {0, 1, 2}
    with pytest.raises(ValueError):
        ours.partition("missing", None, b"k", None, None, cluster)


def test_event_records_carry_the_key_and_headers_readers_route_by() -> None:
    from features.events import SCHEMA_VERSION, parse_event
    from serving.collector.publisher import event_record
    from support import make_event

    event = parse_event(make_event("add_to_cart", user_id="u-7"))
    record = event_record("events", event, b"{}")
    assert (record.topic, record.key, record.value) == ("events", b"u-7", b"{}")
    assert record.headers == (("schema_version", str(SCHEMA_VERSION).encode()), ("type", b"add_to_cart"))
    extra = event_record("events", event, b"{}", (("x-context", b"c"),))
    assert extra.headers == (*record.headers, ("x-context", b"c"))


def test_the_event_producer_options_are_acks_all_idempotent_and_bounded_by_the_produce_timeout() -> None:
    from serving.collector.publisher import CachedKeyPartitioner, event_producer_options, producer_options
    from streamrec.runtime.config import KafkaConfig

    config = KafkaConfig(produce_timeout_s=5, metadata_timeout_s=3)
    options = event_producer_options(config, linger_ms=1)
    assert options["acks"] == "all" and options["enable_idempotence"] is True and options["linger_ms"] == 1
    assert isinstance(options["partitioner"], CachedKeyPartitioner)
    assert producer_options(config, 1).items() <= options.items()
