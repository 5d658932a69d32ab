"""Typed records that flow between the pipeline's steps (events themselves are ``features.events``)."""

from __future__ import annotations

import base64
import json
import pickle
from datetime import datetime, timezone
from typing import Any, Generic, NamedTuple, TypeVar

from apache_beam.coders.observable import ObservableMixin

DLQ_SOURCE = "feature-pipeline"

T = TypeVar("T")


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


class Packed(ObservableMixin, Generic[T]):
    """A batched element's payload (a list of events, a shard's ``{key: state}``) that is pickled
    at most once, however often Beam encodes it.

    Why by hand: Beam's Python workers estimate the size of the first ten elements of every
    PCollection (and a sample after) by encoding them, and the fallback coder pickles each list
    item in a call of its own. With one element per batch or shard nearly every element is
    sampled, so every event was pickled about eight times per micro-batch (10 s of a 29 s run,
    profiled). A ``Packed`` keeps its pickled form: re-encoding it (a sample, a stage boundary, a
    copy decoded from one) costs a copy of bytes. Its payload must not be changed once packed.

    As an ``ObservableMixin`` (Beam's marker for lazily iterated values) a top-level ``Packed``
    element is not encoded at all for the size sample (Beam counts it as one byte): its events are
    then pickled only where they cross a shuffle (internal Beam API: if it changes, the cost is
    one pickle more per batch, not a wrong result).
    """

    __slots__ = ("_value", "_blob", "observers")

    def __init__(self, value: T):
        self._value: T | None = value
        self._blob: bytes | None = None
        self.observers: list[Any] = []

    @classmethod
    def _from_blob(cls, blob: bytes) -> "Packed[T]":
        packed = cls.__new__(cls)
        packed._value, packed._blob, packed.observers = None, blob, []
        return packed

    @property
    def value(self) -> T:
        """The payload (unpickled on first use after a stage boundary)."""
        if self._value is None:
            self._value = pickle.loads(self._blob)  # type: ignore[arg-type]
        return self._value

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        if self._blob is None:
            self._blob = pickle.dumps(self._value, protocol=pickle.HIGHEST_PROTOCOL)
        return (Packed._from_blob, (self._blob,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packed) and self.value == other.value

    def __repr__(self) -> str:
        return f"Packed({self.value!r})"
