"""A pure-Python Kafka source for Beam (Beam's ``ReadFromKafka`` is cross-language and needs Java).

Bounded mode: ``plan_offset_ranges`` fixes, per partition, ``[start, stop)`` where start is the
consumer group's committed offset (or given offsets, or the beginning) and stop the end offset
(high watermark, through ``streamrec.runtime.kafka.end_offsets``) seen when the batch is planned;
``ReadKafkaOffsetRanges`` reads exactly those records. ``commit_offsets`` stores the stops under
the group *after* every sink of the batch succeeded (``assign`` + ``commit``: no group join).

Unbounded mode: ``ReadKafkaUnbounded`` is a splittable DoFn over ``[start, inf)`` per partition
that defers when it has caught up and reports the event-time watermark of what it read; it is the
same source for a streaming runner (Flink / Dataflow). Locally ``--follow`` runs bounded
micro-batches in a loop instead (the DirectRunner does not stream progressively).

Example:
    >>> ranges = plan_offset_ranges(settings.kafka, "events", "streamrec-features")  # doctest: +SKIP
    >>> records = p | beam.Create(ranges) | ReadKafkaOffsetRanges(settings.kafka.client_options())
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, TYPE_CHECKING

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipelines import kafka_reader
from pipelines.kafka_reader import KafkaOffsetRange
from pipelines.kafka_reader import consumer as _consumer
from pipelines.kafka_reader import take_polled as _take_polled
from pipelines.metrics import set_consumer_lag
from pipelines.records import KafkaRecord
from streamrec.runtime.kafka import committed_offsets, end_offsets, new_consumer, wait_for_partitions

if TYPE_CHECKING:
    from streamrec.runtime.config import KafkaConfig

__all__ = [
    "KafkaOffsetRange",
    "ReadKafkaOffsetRanges",
    "ReadKafkaUnbounded",
    "beginning_offsets",
    "commit_offsets",
    "committed_offsets",
    "plan_offset_ranges",
    "read_offset_ranges",
]


def beginning_offsets(kafka_config: KafkaConfig, topic: str) -> dict[int, int]:
    """Partition -> the first offset the topic still holds."""
    consumer = new_consumer(kafka_config)  # offsets only: nothing is fetched
    try:
        partitions = wait_for_partitions(consumer, topic)
        return {tp.partition: offset for tp, offset in consumer.beginning_offsets(partitions).items()}
    finally:
        consumer.close()


def plan_offset_ranges(
    kafka_config: KafkaConfig,
    topic: str,
    group_id: str,
    start_offsets: dict[int, int] | None = None,
    max_records_per_partition: int | None = None,
) -> list[KafkaOffsetRange]:
    """The next bounded batch: per partition from the committed (or given) offset to the end now.

    Args:
        kafka_config: ``streamrec.runtime.config.KafkaConfig``.
        topic: the events topic.
        group_id: the consumer group whose committed offsets say what was processed.
        start_offsets: partition -> offset, overriding the committed ones.
        max_records_per_partition: cut each range to at most this many records.

    Returns:
        One range per partition (possibly empty).
    """
    consumer = new_consumer(kafka_config, group_id=group_id)  # offsets only: nothing is fetched
    try:
        partitions = wait_for_partitions(consumer, topic)
        ends = end_offsets(consumer, partitions)
        beginnings = consumer.beginning_offsets(partitions)
        ranges = []
        for tp in partitions:
            if start_offsets is not None and tp.partition in start_offsets:
                start = start_offsets[tp.partition]
            else:
                committed = consumer.committed(tp)
                start = committed if committed is not None else beginnings[tp]
            stop = ends[tp]
            if max_records_per_partition is not None:
                stop = min(stop, start + max_records_per_partition)
            ranges.append(KafkaOffsetRange(topic, tp.partition, start, max(start, stop)))
        return ranges
    finally:
        consumer.close()


def commit_offsets(kafka_config: KafkaConfig, group_id: str, ranges: list[KafkaOffsetRange]) -> None:
    """Store each range's stop as the group's committed offset (after the batch's sinks succeeded)."""
    consumer = new_consumer(kafka_config, group_id=group_id)  # offsets only: nothing is fetched
    try:
        partitions = [TopicPartition(r.topic, r.partition) for r in ranges]
        consumer.assign(partitions)
        consumer.commit({TopicPartition(r.topic, r.partition): OffsetAndMetadata(r.stop, "", -1) for r in ranges})
    finally:
        consumer.close()


def read_offset_ranges(kafka_config: KafkaConfig, ranges: list[KafkaOffsetRange], timeout_s: float = 60.0) -> list[KafkaRecord]:
    """All records of ``ranges``, read by the caller (the micro-batch driver), partition by
    partition in offset order (``pipelines.kafka_reader``)."""
    return kafka_reader.read_offset_ranges(kafka_config.client_options(), ranges, timeout_s)


def read_offset_range(consumer: KafkaConsumer, offset_range: KafkaOffsetRange, timeout_s: float = 60.0) -> Iterator[KafkaRecord]:
    """Exactly the records of ``offset_range``, in offset order."""
    if offset_range.size == 0:
        return
    tp = TopicPartition(offset_range.topic, offset_range.partition)
    consumer.assign([tp])
    consumer.seek(tp, offset_range.start)
    deadline = time.monotonic() + timeout_s
    position = offset_range.start
    while position < offset_range.stop:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {offset_range} stalled at offset {position}")
        records = consumer.poll(timeout_ms=500, max_records=5000).get(tp, [])
        position, taken = _take_polled(consumer, tp, offset_range, position, records)
        yield from taken


class _ReadOffsetRangeFn(beam.DoFn):
    def __init__(self, client_options: dict[str, Any]):
        self.client_options = client_options
        self.consumer: KafkaConsumer | None = None

    def setup(self):
        self.consumer = _consumer(self.client_options)

    def process(self, offset_range: KafkaOffsetRange):
        assert self.consumer is not None
        yield from read_offset_range(self.consumer, offset_range)

    def teardown(self):
        if self.consumer is not None:
            self.consumer.close()


class ReadKafkaOffsetRanges(beam.PTransform):
    """PCollection[KafkaOffsetRange] -> PCollection[KafkaRecord] (bounded; an edge of the pipeline).

    Args:
        client_options: ``KafkaConfig.client_options()`` (bootstrap servers, security).
    """

    def __init__(self, client_options: dict[str, Any]):
        super().__init__()
        self.client_options = client_options

    def expand(self, ranges):
        return ranges | "Reshuffle" >> beam.Reshuffle() | "Read" >> beam.ParDo(_ReadOffsetRangeFn(self.client_options))


# --- unbounded --------------------------------------------------------------------------------


class _OpenEndedRestrictionProvider(RestrictionProvider):
    """Restriction ``[start, stop)`` of offsets; stop is ``2**63-1`` (unbounded) unless given."""

    def initial_restriction(self, element: KafkaOffsetRange) -> OffsetRange:
        return OffsetRange(element.start, element.stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: KafkaOffsetRange, restriction: OffsetRange) -> int:
        return min(restriction.size(), 1 << 30)


UNBOUNDED_STOP = (1 << 63) - 1


class _ReadPartitionUnboundedFn(beam.DoFn):
    """Reads one partition from ``start`` onwards; defers (self-checkpoints) when caught up."""

    def __init__(
        self,
        client_options: dict[str, Any],
        poll_timeout_ms: int = 1000,
        resume_delay_s: float = 1.0,
        event_time: Callable[[KafkaRecord], float | None] | None = None,
    ):
        self.client_options = client_options
        self.event_time = event_time
        self.poll_timeout_ms = poll_timeout_ms
        self.resume_delay_s = resume_delay_s
        self.consumer: KafkaConsumer | None = None

    def setup(self):
        self.consumer = _consumer(self.client_options)

    def teardown(self):
        if self.consumer is not None:
            self.consumer.close()

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: KafkaOffsetRange,
        tracker=beam.DoFn.RestrictionParam(_OpenEndedRestrictionProvider()),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider()),
    ):
        assert self.consumer is not None
        tp = TopicPartition(element.topic, element.partition)
        start = tracker.current_restriction().start
        self.consumer.assign([tp])
        self.consumer.seek(tp, start)
        batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=5000)
        records = batches.get(tp, [])
        for record in records:
            if not tracker.try_claim(record.offset):
                return
            value = KafkaRecord(record.topic, record.partition, record.offset, record.timestamp, record.key, record.value)
            seconds = self.event_time(value) if self.event_time is not None else None
            ts = Timestamp.of(seconds if seconds is not None else record.timestamp / 1000.0)
            yield TimestampedValue(value, ts)
            current = watermark_estimator.current_watermark()
            if current is None or ts > current:
                watermark_estimator.set_watermark(ts)
        # Lag from the high watermark the fetch response carried (no extra request to the broker).
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            set_consumer_lag(element.partition, max(0, highwater - (records[-1].offset + 1 if records else start)))
        # Caught up (or read a batch): give the runner a checkpoint and come back later.
        tracker.defer_remainder(Duration.of(self.resume_delay_s if not records else 0))

    @staticmethod
    def initial_watermark_estimator_state(element, restriction):
        return None


class ReadKafkaUnbounded(beam.PTransform):
    """Unbounded read of every partition of a topic from given offsets (for streaming runners).

    The element timestamp is ``event_time(record)`` (unix seconds) when given and not None, else
    the Kafka record time; the watermark of a partition advances with the largest timestamp read
    from it. ``stop_offsets`` makes it bounded (tests).
    """

    def __init__(
        self,
        client_options: dict[str, Any],
        topic: str,
        start_offsets: dict[int, int],
        stop_offsets: dict[int, int] | None = None,
        event_time: Callable[[KafkaRecord], float | None] | None = None,
    ):
        super().__init__()
        self.client_options = client_options
        self.topic = topic
        self.start_offsets = start_offsets
        self.stop_offsets = stop_offsets or {}
        self.event_time = event_time

    def expand(self, pbegin):
        seeds = [
            KafkaOffsetRange(self.topic, p, start, self.stop_offsets.get(p, UNBOUNDED_STOP))
            for p, start in sorted(self.start_offsets.items())
        ]
        return pbegin | "Partitions" >> beam.Create(seeds) | "Read" >> beam.ParDo(
            _ReadPartitionUnboundedFn(self.client_options, event_time=self.event_time)
        )
