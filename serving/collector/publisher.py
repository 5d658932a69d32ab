"""Publishing accepted events and dead letters to Kafka, acknowledged by the broker.

kafka-python is thread-based; the collector is asyncio. `send()` blocks only while it waits for a
topic's metadata (kafka-python 3 has no bounded buffer pool to wait on), so it runs in a worker
thread until the producer knows every partition of the record's topic, and on the event loop from
then on: the hop to a worker thread and back cost as much CPU per record as the send itself. The
broker's acknowledgements are bridged back to the event loop as asyncio futures (no thread is
parked per request while waiting for acks).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from streamrec.config import KafkaConfig


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time; the caller must not claim anything as accepted."""


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class EventPublisher:
    """One idempotent, acks=all producer per collector replica, created lazily.

    Idempotence (on by default in kafka-python) keeps a user's events in order across retries
    with several requests in flight.
    """

    def __init__(self, config: KafkaConfig, client_id: str = "streamrec-collector", linger_ms: int = 1) -> None:
        self._config = config
        self._client_id = client_id
        self._linger_ms = linger_ms
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            if self._producer is not None:
                return self._producer
        # Built outside the lock: against a broker that accepts connections and never answers it
        # blocks until the bootstrap timeout, and `_discard_producer` must not wait for that.
        producer = self._new_producer()
        with self._lock:
            if self._producer is None:
                self._producer, producer = producer, None
            current = self._producer
        if producer is not None:  # another thread installed one meanwhile
            producer.close(timeout=0)
        return current

    def _new_producer(self) -> KafkaProducer:
        timeout_ms = int(self._config.produce_timeout_s * 1000)
        try:
            return KafkaProducer(
                **self._config.client_options(),
                client_id=self._client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self._linger_ms,
                compression_type=None,
                max_block_ms=int(self._config.metadata_timeout_s * 1000),
                # Not kafka-python's 30 s: a request that creates the producer must fail promptly.
                bootstrap_timeout_ms=int(self._config.metadata_timeout_s * 1000),
                request_timeout_ms=max(1000, timeout_ms - 500),
                delivery_timeout_ms=timeout_ms,
                reconnect_backoff_max_ms=1000,
                # Its sensors were ~11% of the I/O thread's CPU per record; nothing reads them.
                metrics_enabled=False,
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot connect to Kafka at {self._config.bootstrap_servers}: {exc}") from exc

    def _send_all(self, records: list[OutgoingRecord]) -> list[Any]:
        producer = self._get_producer()
        try:
            return [
                producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers)) for r in records
            ]
        except KafkaError as exc:
            self._discard_producer()
            raise BrokerUnavailable(f"Kafka did not accept the records: {exc}") from exc

    def _sends_without_blocking(self, records: list[OutgoingRecord]) -> bool:
        """Whether `send()` of these records returns at once: the producer exists and already
        knows the partitions of their topics. Reads kafka-python's metadata cache (`_metadata`,
        not public API); if that changes, every send takes the worker thread again."""
        producer = self._producer
        metadata = getattr(producer, "_metadata", None)
        if metadata is None:
            return False
        return all(metadata.partitions_for_topic(r.topic) for r in records)

    async def publish(self, records: list[OutgoingRecord]) -> list[Delivered]:
        """Send records and return once the broker acknowledged every one of them.

        Raises:
            BrokerUnavailable: any record was not acknowledged within the produce timeout.
        """
        if not records:
            return []
        return await self._acknowledged(await self._hand_over(records))

    async def send(self, records: list[OutgoingRecord]) -> asyncio.Future[list[Delivered]]:
        """Hand records to the producer and return at once with a future of their acknowledgement:
        it settles with the records' coordinates, or with ``BrokerUnavailable`` when the broker did
        not acknowledge within the produce timeout.

        Raises:
            BrokerUnavailable: the producer could not take the records (no broker to connect to,
                no metadata for the topic).
        """
        return asyncio.get_running_loop().create_task(self._acknowledged(await self._hand_over(records)))

    async def _hand_over(self, records: list[OutgoingRecord]) -> list[Any]:
        if self._sends_without_blocking(records):
            return self._send_all(records)
        return await asyncio.to_thread(self._send_all, records)

    async def _acknowledged(self, kafka_futures: list[Any]) -> list[Delivered]:
        loop = asyncio.get_running_loop()
        waiting = [_bridge(f, loop) for f in kafka_futures]
        try:
            metadata = await asyncio.wait_for(
                asyncio.gather(*waiting), timeout=self._config.produce_timeout_s + 1.0
            )
        except (KafkaError, asyncio.TimeoutError) as exc:
            # A producer whose records expired may keep a stale idempotence state (producer id,
            # sequence numbers) that a restarted broker no longer knows: start afresh next time.
            await asyncio.to_thread(self._discard_producer)
            raise BrokerUnavailable(
                f"Kafka at {self._config.bootstrap_servers} did not acknowledge within "
                f"{self._config.produce_timeout_s:.1f}s: {type(exc).__name__} {exc}"
            ) from exc
        return [Delivered(m.topic, m.partition, m.offset) for m in metadata]

    def _discard_producer(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=0)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=2)
                self._producer = None


def _bridge(kafka_future: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
    """An asyncio future that settles when kafka-python's future does (from its I/O thread)."""
    result: asyncio.Future[Any] = loop.create_future()

    def settle_ok(value: Any) -> None:
        if not result.done():
            result.set_result(value)

    def settle_error(exc: BaseException) -> None:
        if not result.done():
            result.set_exception(exc)

    kafka_future.add_callback(lambda md: loop.call_soon_threadsafe(settle_ok, md))
    kafka_future.add_errback(lambda exc: loop.call_soon_threadsafe(settle_error, exc))
    return result
