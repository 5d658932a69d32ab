"""The event lake's layout: one file per (UTC date of the event, partition) of an offset range, rows
in offset order; a re-run of the range replaces its files."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipelines.kafka_source import KafkaOffsetRange
from pipelines.lake import LakeRow, append_event_lake, read_event_lake, write_event_lake

DAY_US = 86_400_000_000


def _row(partition: int, offset: int, ts_us: int) -> LakeRow:
    return LakeRow(f"id-{partition}-{offset}", "view", "u1", "s1", ts_us, partition, offset, "{}")


def _files(root: Path) -> dict[str, list[int]]:
    return {str(f.relative_to(root)): pq.read_table(f)["kafka_offset"].to_pylist() for f in sorted(root.glob("date=*/*.parquet"))}


def test_rows_are_filed_by_utc_date_and_partition_in_offset_order(tmp_path):
    midnight = 17_500 * DAY_US  # 2017-11-30T00:00:00Z
    rows = [
        _row(0, 12, midnight), _row(0, 10, midnight - 1), _row(0, 11, midnight + 5),  # out of offset order
        _row(1, 3, midnight - DAY_US), _row(1, 4, -1),  # a time before the epoch: 1969-12-31
    ]
    ranges = [KafkaOffsetRange("events", 0, 10, 13), KafkaOffsetRange("events", 1, 3, 5)]
    assert write_event_lake(tmp_path, ranges, rows) == 5
    name = "events-p{}-{:020d}-{:020d}.parquet"
    assert _files(tmp_path) == {
        f"date=1969-12-31/{name.format(1, 3, 5)}": [4],
        f"date=2017-11-29/{name.format(1, 3, 5)}": [3],
        f"date=2017-11-29/{name.format(0, 10, 13)}": [10],
        f"date=2017-11-30/{name.format(0, 10, 13)}": [11, 12],
    }
    # The same range again (here with fewer valid rows) replaces its files, never adds to them.
    write_event_lake(tmp_path, ranges[:1], rows[:1])
    assert sorted(read_event_lake(tmp_path)["kafka_offset"]) == [3, 4, 12]
    assert write_event_lake(tmp_path, ranges, []) == 0 and not _files(tmp_path)


def test_appended_files_are_named_by_their_own_offsets(tmp_path):
    rows = [_row(2, 7, DAY_US), _row(2, 5, DAY_US + 1), _row(2, 9, 3 * DAY_US)]
    assert append_event_lake(tmp_path, "events", rows) == 3
    assert _files(tmp_path) == {
        "date=1970-01-02/events-p2-00000000000000000005-00000000000000000008.parquet": [5, 7],
        "date=1970-01-04/events-p2-00000000000000000009-00000000000000000010.parquet": [9],
    }


def test_the_pipeline_process_uses_jemalloc_or_the_system_allocator_unless_told(monkeypatch):
    """``use_arrow_memory_pool``: not the wheels' mimalloc (slow first large allocations), and an
    explicit ``ARROW_DEFAULT_MEMORY_POOL`` is left as it is."""
    import pyarrow as pa

    from pipelines.lake import use_arrow_memory_pool

    before = pa.default_memory_pool()
    try:
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
        assert use_arrow_memory_pool() in ("jemalloc", "system")
        pa.set_memory_pool(pa.system_memory_pool())
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "system")
        assert use_arrow_memory_pool() == "system"
    finally:
        pa.set_memory_pool(before)
