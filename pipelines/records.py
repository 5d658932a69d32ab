"""Typed records that flow between the pipeline's steps (events themselves are ``features.events``)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any, NamedTuple

DLQ_SOURCE = "feature-pipeline"


class KafkaRecord(NamedTuple):
    """One record read from Kafka, with its coordinates."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class ParsedRecord(NamedTuple):
    """A contract-valid event and where it came from."""

    partition: int
    offset: int
    event: Any  # features.events.Event
    # The record's value where the strict parse took it (no value coerced: it parses back to the
    # same event), so it is the event's wire form already; None where only the lenient parse did.
    wire: bytes | None = None


class ParsedRow(NamedTuple):
    """A record the strict parse took, parsed ahead of the Beam run (``pipelines.event_rows.parse_ahead``):
    its coordinates and its event as an ``EventRow`` (which carries the record's value)."""

    partition: int
    offset: int
    row: tuple[Any, ...]  # pipelines.event_rows.EventRow


class DeadLetter(NamedTuple):
    """A record the pipeline refused, with a machine-readable reason (same codes as the collector)."""

    reason: str
    detail: str
    raw: bytes
    topic: str
    partition: int
    offset: int
    event_id: str | None = None

    def to_json(self, max_raw_bytes: int = 65_536) -> bytes:
        """The dead-letter record as the collector writes it, plus the Kafka coordinates."""
        kept = self.raw[:max_raw_bytes]
        try:
            raw_text, encoding = kept.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            raw_text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
        record: dict[str, Any] = {
            "reason": self.reason,
            "detail": self.detail,
            "errors": [],
            "source": DLQ_SOURCE,
            "received_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "event_id": self.event_id,
            "raw": raw_text,
            "raw_encoding": encoding,
            "raw_size": len(self.raw),
            "truncated": len(kept) < len(self.raw),
            "kafka_topic": self.topic,
            "kafka_partition": self.partition,
            "kafka_offset": self.offset,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @property
    def dlq_key(self) -> bytes:
        """Deterministic key: a re-run of the same offsets writes the same key (consumers de-duplicate)."""
        return f"{self.topic}/{self.partition}/{self.offset}".encode()
