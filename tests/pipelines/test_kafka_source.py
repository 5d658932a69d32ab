"""The pure-Python Kafka source against the real broker: planned ranges, exact reads, commits
without a group join, and the unbounded splittable DoFn (bounded by stop offsets here)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pipeline_support import ev, pipeline_settings, produce

from pipelines.kafka_source import (
    ReadKafkaOffsetRanges,
    ReadKafkaUnbounded,
    commit_offsets,
    committed_offsets,
    plan_offset_ranges,
)

pytestmark = pytest.mark.kafka
BEAM_ARGS = ["--runner=DirectRunner", "--direct_num_workers=1"]


def test_plan_read_commit_and_unbounded_read(kafka_broker, tmp_path):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    topic, group = settings.kafka.topics.events, settings.pipeline.group_id
    events = [ev("view", f"u{i % 7}", i, item_id=f"i{i}") for i in range(300)]
    produce(settings, events)

    ranges = plan_offset_ranges(settings.kafka, topic, group)
    assert sum(r.size for r in ranges) == 300 and all(r.start == 0 for r in ranges)
    # Cut to at most 10 per partition, then read exactly those records.
    small = plan_offset_ranges(settings.kafka, topic, group, max_records_per_partition=10)
    with TestPipeline(argv=BEAM_ARGS) as p:
        records = p | beam.Create(small) | ReadKafkaOffsetRanges(settings.kafka.client_options())
        assert_that(
            records | beam.Map(lambda r: (r.partition, r.offset)),
            equal_to([(r.partition, o) for r in small for o in range(r.start, r.stop)]),
        )

    commit_offsets(settings.kafka, group, small)
    assert committed_offsets(settings.kafka, topic, group) == {r.partition: r.stop for r in small}
    after = plan_offset_ranges(settings.kafka, topic, group)
    assert [r.start for r in after] == [r.stop for r in small]
    assert sum(r.size for r in after) == 300 - sum(r.size for r in small)

    # The unbounded reader (what a streaming runner would run), made finite by stop offsets.
    starts = {r.partition: r.start for r in after}
    stops = {r.partition: r.stop for r in after}
    with TestPipeline(argv=BEAM_ARGS) as p:
        records = p | ReadKafkaUnbounded(settings.kafka.client_options(), topic, starts, stops)
        assert_that(
            records | beam.Map(lambda r: (r.partition, r.offset)),
            equal_to([(r.partition, o) for r in after for o in range(r.start, r.stop)]),
        )


def test_the_reader_process_reads_what_the_driver_reads(kafka_broker, tmp_path):
    """``ReadAheadReader`` serves one read after another with exactly the records of the ranges
    (less deleted users' records, parsed ahead where asked); a failed read is reported with its
    cause and the process serves the next; a process that died mid-read is an error, and the next
    read starts a new process."""
    from pipelines.event_rows import parse_ahead
    from pipelines.kafka_reader import KafkaOffsetRange, ReadAheadReader
    from pipelines.kafka_source import read_offset_ranges
    from pipelines.records import ParsedRow

    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    topic, group = settings.kafka.topics.events, settings.pipeline.group_id
    # ~1.5 MB: a read's chunks do not all fit in the pipe at once.
    produce(settings, [ev("view", f"u{i % 5}", i, item_id=f"i{i}") for i in range(5000)])
    whole = plan_offset_ranges(settings.kafka, topic, group)
    part = plan_offset_ranges(settings.kafka, topic, group, max_records_per_partition=40)

    def key(records):
        return sorted((r.partition, r.offset, r.value) for r in records)

    reader = ReadAheadReader(settings.kafka.client_options(), timeout_s=3)
    try:
        reader.start()
        for ranges in (whole, part, whole):
            chunks = [chunk.records for chunk in reader.read(ranges)]
            assert all(len({r.partition for r in chunk}) == 1 for chunk in chunks)
            assert key(r for chunk in chunks for r in chunk) == key(read_offset_ranges(settings.kafka, ranges))
        assert list(reader.read([])) == []

        # Deleted users' records are dropped and counted there; parse=True parses ahead what it can.
        chunks = list(reader.read(whole, deleted={"u1", "u3"}, parse_share=1.0))
        expected = [r for r in read_offset_ranges(settings.kafka, whole) if r.key not in (b"u1", b"u3")]
        assert sum(chunk.deleted_user_records for chunk in chunks) == 2000
        got = sorted((r for chunk in chunks for r in chunk.records), key=lambda r: (r.partition, r.offset))
        assert got == sorted(parse_ahead(expected), key=lambda r: (r.partition, r.offset))
        assert got and all(type(r) is ParsedRow for r in got)
        beyond = [KafkaOffsetRange(topic, whole[0].partition, whole[0].stop, whole[0].stop + 5)]  # never written
        with pytest.raises(RuntimeError, match="TimeoutError"):
            list(reader.read(beyond))
        assert len([r for chunk in reader.read(part) for r in chunk.records]) == sum(r.size for r in part)

        # A read left mid-way: the next read replaces the process (the rest is in the pipe), and
        # the left one, closed late (a collected generator), does not stop the newer read.
        left = reader.read(whole)
        next(left)
        newer = reader.read(part)
        left.close()
        assert len([r for chunk in newer for r in chunk.records]) == sum(r.size for r in part)

        reading = reader.read(whole)
        next(reading)
        process = reader._process
        process.kill()
        process.join()
        with pytest.raises(RuntimeError, match="died"):
            list(reading)
        assert len([r for chunk in reader.read(whole) for r in chunk.records]) == sum(r.size for r in whole)
        assert reader._process is not process
    finally:
        reader.close()
