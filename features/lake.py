"""The Parquet event lake's contract: one row per accepted event, written by the feature pipeline
(``pipelines.lake``) and read by training (``ray_jobs.data.lake``) and user deletion.

``event_json`` holds the whole contract event (``features.events``); the other columns are what
readers filter and partition on without parsing it.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["LAKE_SCHEMA"]

LAKE_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string()),
        pa.field("type", pa.string()),
        pa.field("user_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("kafka_partition", pa.int32()),
        pa.field("kafka_offset", pa.int64()),
        pa.field("event_json", pa.string()),
    ]
)
