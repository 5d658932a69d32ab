"""Publishing accepted events and dead letters to Kafka, acknowledged by the broker.

kafka-python is thread-based; the collector is asyncio. `send()` blocks only while it waits for a
topic's metadata (kafka-python 3 has no bounded buffer pool to wait on), so it runs in a worker
thread until the producer knows every partition of the record's topic, and on the event loop from
then on: the hop to a worker thread and back cost as much CPU per record as the send itself. The
broker's acknowledgements are bridged back to the event loop as asyncio futures (no thread is
parked per request while waiting for acks).

Every publish has one deadline, ``kafka.produce_timeout_s`` from its start, that covers building a
producer, fetching metadata, handing the records over and the acknowledgements: a broker that is
frozen, gone or slow turns into ``BrokerUnavailable`` (the services' 503) within it, never a hung
request. The producer's own timeouts are derived from the same setting (``producer_options``).
A producer that missed a deadline is replaced; the stale one is closed in a background thread, so
closing it (kafka-python's ``close`` raises while records are pending) never reaches a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from features.events import EVENT_TYPES, SCHEMA_VERSION, Event
from streamrec.runtime.config import KafkaConfig
from streamrec.runtime.kafka import new_producer

log = logging.getLogger(__name__)

# Worker threads per publisher for the hand-overs that may block (a new producer, a topic's
# metadata): their own pool, so that a frozen broker cannot starve the event loop's default one.
HANDOVER_THREADS = 4


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge in time; the caller must not claim anything as accepted.

    Attributes:
        maybe_written: whether records had been handed to the producer. If so the broker may have
            written some of them after all (a produce request it read before it froze, answered
            too late), and a retry can duplicate them: harmless, as every reader de-duplicates by
            ``event_id``. False: nothing left this process.
    """

    def __init__(self, message: str, maybe_written: bool = True) -> None:
        super().__init__(message)
        self.maybe_written = maybe_written


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def producer_options(config: KafkaConfig, linger_ms: int) -> dict[str, int]:
    """kafka-python's timeouts, derived from ``produce_timeout_s`` so that none outlasts it.

    ``delivery_timeout_ms`` (send to ack or failure, retries included) is the produce timeout;
    ``request_timeout_ms`` leaves room within it for ``linger_ms`` (kafka-python requires
    delivery >= linger + request); building a producer (``bootstrap_timeout_ms``) and waiting for
    metadata (``max_block_ms``) take at most ``metadata_timeout_s``, and never more than the
    produce timeout. Retries are kafka-python's (unbounded, idempotent), cut off by the delivery
    timeout.

    Example:
        >>> producer_options(KafkaConfig(produce_timeout_s=5, metadata_timeout_s=3), linger_ms=1)["request_timeout_ms"]
        4499
    """
    timeout_ms = int(config.produce_timeout_s * 1000)
    connect_ms = int(min(config.metadata_timeout_s, config.produce_timeout_s) * 1000)
    return {
        "delivery_timeout_ms": timeout_ms,
        "request_timeout_ms": max(1, timeout_ms - linger_ms - min(500, timeout_ms // 4)),
        "max_block_ms": connect_ms,
        "bootstrap_timeout_ms": connect_ms,
    }


def event_producer_options(config: KafkaConfig, linger_ms: int) -> dict[str, Any]:
    """Every option of the publishers' producer beyond the cluster's connection: acks=all and
    idempotent, the timeouts of ``producer_options``, no sensors, the cached partitioner. The
    ingest benchmark's raw producer is built with the same, so that it is as strong a baseline."""
    return {
        **producer_options(config, linger_ms),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": linger_ms,
        "compression_type": None,
        "reconnect_backoff_max_ms": 1000,
        # Its sensors were ~11% of the I/O thread's CPU per record; nothing reads them.
        "metrics_enabled": False,
        "partitioner": CachedKeyPartitioner(),
    }


# One headers tuple per event type, built once (they were built per record).
_EVENT_HEADERS: dict[str, tuple[tuple[str, bytes], ...]] = {
    event_type: (("schema_version", str(SCHEMA_VERSION).encode()), ("type", event_type.encode()))
    for event_type in EVENT_TYPES
}


def event_record(topic: str, event: Event, wire: bytes, extra_headers: tuple[tuple[str, bytes], ...] = ()) -> OutgoingRecord:
    """An event's record: keyed by its user (a user's events stay in order on one partition), its
    contract version and type in headers (readers can route without parsing), then ``extra_headers``."""
    headers = _EVENT_HEADERS[event.type]
    return OutgoingRecord(topic, event.user_id.encode(), wire, (*headers, *extra_headers) if extra_headers else headers)


class CachedKeyPartitioner(DefaultPartitioner):
    """kafka-python's default partitioning (murmur2 of the key, as Java's client; keyless records
    as before), with each key's hash cached: the pure-Python murmur2 and the metadata lookups were
    ~9 of the ~95 us of replica CPU per event in a batch (py-spy), and a replica sees the same
    users' keys again and again. Same partition for every key as the default (tested)."""

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any, serialized_value: Any,
                  cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # keyless, or an unknown topic: the default's own answer (or error)
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        return sorted(partitions)[_positive_murmur2(serialized_key) % len(partitions)]


@functools.lru_cache(maxsize=1 << 16)
def _positive_murmur2(serialized_key: bytes) -> int:
    return murmur2(serialized_key) & 0x7FFFFFFF


@dataclass
class _Handover:
    """One publish's records on their way into the producer (from a worker thread)."""

    records: list[OutgoingRecord]
    deadline: float  # time.monotonic()
    lock: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False  # the request gave up: send nothing
    futures: list[Any] | None = None  # set once the records are in the producer


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
        self._lock = threading.Lock()  # guards _producer
        self._building = threading.Lock()  # one producer is built at a time; the others wait for it
        self._executor = ThreadPoolExecutor(HANDOVER_THREADS, thread_name_prefix=f"{client_id}-handover")

    # -- the producer ------------------------------------------------------------------------

    def _get_producer(self, deadline: float) -> KafkaProducer:
        with self._lock:
            if self._producer is not None:
                return self._producer
        # Built outside `_lock`: against a broker that accepts connections and never answers it
        # blocks until the bootstrap timeout, and `_discard_producer` must not wait for that.
        if not self._building.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise BrokerUnavailable(self._not_handed_over("no producer could be connected in time"), maybe_written=False)
        try:
            with self._lock:
                if self._producer is not None:  # built by the thread we waited for
                    return self._producer
            producer = self._new_producer()
            with self._lock:
                self._producer = producer
            return producer
        finally:
            self._building.release()

    def _new_producer(self) -> KafkaProducer:
        try:
            return new_producer(self._config, client_id=self._client_id, **event_producer_options(self._config, self._linger_ms))
        except KafkaError as exc:
            raise BrokerUnavailable(
                self._not_handed_over(f"cannot connect to Kafka at {self._config.bootstrap_servers}: {exc}"),
                maybe_written=False,
            ) from exc

    def _discard_producer(self, producer: KafkaProducer | None) -> None:
        """Stop using ``producer`` (if it is still the current one) and close it in the background.

        A producer whose records expired may keep a stale idempotence state (producer id, sequence
        numbers) that a restarted broker no longer knows: the next publish starts afresh.
        """
        with self._lock:
            if producer is None or producer is not self._producer:
                return
            self._producer = None
        threading.Thread(target=_close_quietly, args=(producer, 0.0), name="kafka-producer-close", daemon=True).start()

    # -- handing records over ----------------------------------------------------------------

    def _send_now(self, handover: _Handover, producer: KafkaProducer | None = None) -> tuple[KafkaProducer, list[Any]]:
        """Put the records into ``producer`` (default: the current one, built if need be) from a
        worker thread, or on the loop when the producer knows their topics (it cannot block)."""
        producer = producer or self._get_producer(handover.deadline)
        try:
            for topic in {r.topic for r in handover.records}:
                producer.partitions_for(topic)  # waits for the topic's metadata, at most max_block_ms
        except KafkaError as exc:
            self._discard_producer(producer)
            raise BrokerUnavailable(self._not_handed_over(f"no metadata from Kafka: {exc}"), maybe_written=False) from exc
        with handover.lock:
            if handover.abandoned or time.monotonic() >= handover.deadline:
                raise BrokerUnavailable(self._not_handed_over("the produce timeout passed"), maybe_written=False)
            futures: list[Any] = []
            try:
                for r in handover.records:
                    futures.append(producer.send(r.topic, key=r.key, value=r.value, headers=list(r.headers)))
            except KafkaError as exc:
                self._discard_producer(producer)
                raise BrokerUnavailable(f"Kafka did not accept the records: {exc}", maybe_written=bool(futures)) from exc
            handover.futures = futures
        return producer, futures

    def _ready_producer(self, records: list[OutgoingRecord]) -> KafkaProducer | None:
        """The producer if `send()` of these records returns at once: it exists and already knows
        the partitions of their topics. Reads kafka-python's metadata cache (`_metadata`, not
        public API); if that changes, every send takes the worker thread again."""
        producer = self._producer
        metadata = getattr(producer, "_metadata", None)
        if metadata is None or not all(metadata.partitions_for_topic(r.topic) for r in records):
            return None
        return producer

    async def _hand_over(self, records: list[OutgoingRecord], deadline: float) -> tuple[KafkaProducer, list[Any]]:
        handover = _Handover(records, deadline)
        ready = self._ready_producer(records)
        if ready is not None:
            return self._send_now(handover, ready)
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._send_now, handover)
        try:
            return await asyncio.wait_for(work, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            # The worker may still be waiting for a producer or metadata: it will send nothing now.
            # If it holds the lock it is sending this very moment: count the records as handed over.
            sent = True
            if handover.lock.acquire(blocking=False):
                handover.abandoned = True
                sent = handover.futures is not None
                handover.lock.release()
            raise BrokerUnavailable(
                self._not_handed_over("the records could not be handed to Kafka in time") if not sent
                else self._unacknowledged("the records were handed over as the time ran out"),
                maybe_written=sent,
            ) from None

    async def _acknowledged(self, producer: KafkaProducer, kafka_futures: list[Any], deadline: float) -> None:
        acknowledged = _AllAcknowledged(kafka_futures, asyncio.get_running_loop()).future
        try:
            await asyncio.wait_for(acknowledged, timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - a KafkaError from the I/O thread, or the deadline
            self._discard_producer(producer)
            raise BrokerUnavailable(self._unacknowledged(f"{type(exc).__name__} {exc}".strip()), maybe_written=True) from exc

    def _not_handed_over(self, why: str) -> str:
        return f"nothing was sent to Kafka at {self._config.bootstrap_servers} ({why})"

    def _unacknowledged(self, why: str) -> str:
        return (
            f"Kafka at {self._config.bootstrap_servers} did not acknowledge within "
            f"{self._config.produce_timeout_s:g}s ({why}); some records MAY have been written"
        )

    # -- the API -----------------------------------------------------------------------------

    async def publish(self, records: list[OutgoingRecord]) -> None:
        """Send records and return once the broker acknowledged every one of them, within
        ``kafka.produce_timeout_s`` from the call.

        Raises:
            BrokerUnavailable: any record was not acknowledged within the produce timeout
                (``maybe_written`` says whether some may have been written anyway).
        """
        if not records:
            return
        deadline = time.monotonic() + self._config.produce_timeout_s
        producer, futures = await self._hand_over(records, deadline)
        await self._acknowledged(producer, futures, deadline)

    async def send(self, records: list[OutgoingRecord]) -> asyncio.Future[None]:
        """Hand records to the producer and return at once with a future of their acknowledgement:
        it settles with None once the broker acknowledged every record, or with ``BrokerUnavailable``
        when it did not within the produce timeout (counted from this call).

        Raises:
            BrokerUnavailable: the producer could not take the records (no broker to connect to,
                no metadata for the topic) within the produce timeout.
        """
        deadline = time.monotonic() + self._config.produce_timeout_s
        producer, futures = await self._hand_over(records, deadline)
        return asyncio.get_running_loop().create_task(self._acknowledged(producer, futures, deadline))

    def check(self) -> None:
        """For the owning deployment's ``check_health``: a producer whose I/O thread died (it
        would take records and never send them) is discarded, so the next publish builds a new
        one; a closed publisher raises, as only a new replica can serve again. An unreachable
        broker is not a failure here: requests already get a fast 503, and restarting replicas
        would not bring the broker back. (``_sender`` is kafka-python's I/O thread, not public API.)

        Raises:
            RuntimeError: the publisher was closed.
        """
        if self._executor._shutdown:  # noqa: SLF001 - ThreadPoolExecutor has no public "is shut down"
            raise RuntimeError("the Kafka publisher is closed")
        producer = self._producer
        sender = getattr(producer, "_sender", None)
        if sender is not None and not sender.is_alive():
            self._discard_producer(producer)

    def close(self) -> None:
        """Flush what is pending for up to 2 s, then close (never raises)."""
        with self._lock:
            producer, self._producer = self._producer, None
        self._executor.shutdown(wait=False, cancel_futures=True)
        if producer is not None:
            _close_quietly(producer, 2.0)


def _close_quietly(producer: KafkaProducer, flush_s: float) -> None:
    """Close a producer without raising: kafka-python's ``close`` flushes first and raises
    ``KafkaTimeoutError`` when records are still pending after ``flush_s``; those are then
    dropped (their futures fail) and the producer's I/O thread stopped."""
    try:
        producer.close(timeout=flush_s)
        return
    except Exception:  # noqa: BLE001 - pending records (KafkaTimeoutError), or a half-built producer
        pass
    sender = getattr(producer, "_sender", None)  # kafka-python internals: drop what is pending
    try:
        if sender is not None:
            sender.force_close()
            sender.join(timeout=5.0)
        producer.close(timeout=0)
    except Exception as exc:  # noqa: BLE001 - nothing a caller could do about it
        log.warning("a stale Kafka producer did not close cleanly: %s: %s", type(exc).__name__, exc)


class _AllAcknowledged:
    """An asyncio future that settles when every one of kafka-python's futures has (from its I/O
    thread): with None once all succeeded, or with the first error.

    One hop to the event loop per publish, not one per record: each `call_soon_threadsafe` writes
    to the loop's wake-up pipe, and a 500-event batch made 500 of them (and 500 futures to gather).
    Records are counted, not collected: no caller reads their coordinates, and keeping them (an
    argument bound to each callback, a result object per record) made a 500-record publish's
    bridge cost 3.4-4.2 us a record against 2.0-2.1 us now (interleaved runs, one process).
    """

    def __init__(self, kafka_futures: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self._loop = loop
        self._left = len(kafka_futures)
        self._failed = False
        self._lock = threading.Lock()  # callbacks run on kafka-python's I/O thread, or here if already done
        if not kafka_futures:
            self.future.set_result(None)
        for kafka_future in kafka_futures:
            kafka_future.add_callback(self._acknowledged)
            kafka_future.add_errback(self._failed_with)

    def _acknowledged(self, _metadata: Any) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0 and not self._failed
        if last:
            self._settle(self._set_result, None)

    def _failed_with(self, exc: BaseException) -> None:
        with self._lock:
            first, self._failed = not self._failed, True
        if first:
            self._settle(self._set_exception, exc)

    def _settle(self, callback: Any, value: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, value)
        except RuntimeError:  # the loop is closed (shutdown): nobody waits any more
            pass

    def _set_result(self, _: None) -> None:
        if not self.future.done():  # not given up on (the deadline cancels it)
            self.future.set_result(None)

    def _set_exception(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
