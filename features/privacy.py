"""The privacy contract: user deletion tombstones and what kind of data each feature column holds.

A deletion request is a :class:`Tombstone` on the ``kafka.topics.tombstones`` topic, keyed by the
user id. It is not an event of the clickstream contract (``events.v1`` is unchanged): every stage
that keeps user data reads this topic and drops the user: the feature pipeline (the lake, Feast,
its state), training (the model registry, ``ray_jobs.registry.privacy``) and the bandit learner.
Kafka itself cannot delete the user's records from ``events`` (the embedded tansu broker keeps
topics in memory and has no compaction), so the tombstone plus filtering downstream is the
mechanism.

The topic is written and read here (:func:`publish_tombstone`, :func:`read_tombstones`), and a
stage that reads it keeps its progress in its own :class:`TombstoneLedger` file, so that each stage
applies every tombstone whatever the others did.

``FEATURE_DATA_CLASS`` states what every feature column carries; a test checks that it covers
every column of every view and that no column is of a class outside ``ALLOWED_FEATURE_CLASSES``
(so a new feature with free text or other raw personal data fails review by failing the test).

Example:
    >>> from features.privacy import Tombstone
    >>> t = Tombstone.for_user("u1", reason="user_request")
    >>> Tombstone.from_json(t.to_json()).user_id
    'u1'
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from features.events import MAX_TEXT_CHARS, Id

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

logger = logging.getLogger(__name__)

TOMBSTONE_SCHEMA_VERSION = 1
DEFAULT_REASON = "user_request"

# What a feature column may carry. Ids are the pseudonymous ids of the event contract (opaque
# strings issued by the shop, never names or e-mail addresses); categories are catalogue ids.
FeatureDataClass = Literal[
    "pseudonymous_id", "count", "unix_time", "event_type", "category_id", "score", "flag"
]
ALLOWED_FEATURE_CLASSES: frozenset[str] = frozenset(FeatureDataClass.__args__)  # type: ignore[attr-defined]

# Fields of the event contract that are free text, money or order references: none of them may
# become a feature column (they stay in the event lake, which deletion rewrites).
NON_FEATURE_EVENT_FIELDS = frozenset({"query", "page", "price", "currency", "order_id", "received_at", "feedback_token"})


def _counts() -> dict[str, FeatureDataClass]:
    from features.events import EVENT_TYPES

    out: dict[str, FeatureDataClass] = {f"{kind}_count_{w}": "count" for kind in EVENT_TYPES for w in ("1h", "24h")}
    out.update({f"{n}_{w}": "count" for n in ("views", "carts", "purchases") for w in ("1h", "24h")})
    return out


# Column name -> data class, for every feature column of features.views.
FEATURE_DATA_CLASS: dict[str, FeatureDataClass] = {
    "last_seen_unix": "unix_time",
    "seq_item_ids": "pseudonymous_id",
    "seq_event_types": "event_type",
    "seq_ts_unix": "unix_time",
    "top_category_ids": "category_id",
    "top_category_scores": "score",
    "rec_impressions": "count",
    "rec_clicks": "count",
    "rec_ctr": "score",
    "trending_score": "score",
    "sessions": "count",
    "co_item_ids": "pseudonymous_id",
    "co_counts": "count",
    "co_scores": "score",
    "co_cross_category": "flag",
    "cross_item_ids": "pseudonymous_id",
    "cross_scores": "score",
    "impressions": "count",
    "clicks": "count",
    "purchases": "count",
    "ctr": "score",
    **_counts(),
}


class Tombstone(BaseModel):
    """A request to delete every trace of one user (the value of a tombstone record)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = TOMBSTONE_SCHEMA_VERSION
    user_id: Id
    requested_at: AwareDatetime
    # Correlates the CLI / endpoint answer with what each stage logs (a UUID4 hex).
    request_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] = DEFAULT_REASON
    # Who asked (``cli``, ``admin_api``): for the audit trail, never a person's name.
    source: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")] = Field(default="cli")

    @classmethod
    def for_user(cls, user_id: str, reason: str = DEFAULT_REASON, source: str = "cli") -> "Tombstone":
        """A new tombstone for ``user_id``, requested now, with a fresh request id."""
        return cls(
            user_id=user_id, requested_at=datetime.now(timezone.utc), request_id=uuid.uuid4().hex,
            reason=reason, source=source,
        )

    @property
    def key(self) -> bytes:
        """The record key: the user id, as for the user's events (same partition)."""
        return self.user_id.encode("utf-8")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str) -> "Tombstone":
        return cls.model_validate_json(data)


# -- the tombstone topic --------------------------------------------------------------------


def publish_tombstone(settings: Settings, tombstone: Tombstone) -> tuple[int, int]:
    """Produce the tombstone (``acks=all``, keyed by user id); returns (partition, offset)."""
    from streamrec.runtime.kafka import new_producer

    producer = new_producer(settings.kafka, acks="all")
    try:
        meta = producer.send(settings.kafka.topics.tombstones, key=tombstone.key, value=tombstone.to_json()).get(
            timeout=settings.kafka.produce_timeout_s
        )
        return meta.partition, meta.offset
    finally:
        producer.close()


def read_tombstones(
    settings: Settings, start: dict[int, int] | None = None, bootstrap_timeout_s: float | None = None
) -> tuple[list[Tombstone], dict[int, int]]:
    """Tombstones from ``start`` (partition -> offset) to the end now, and the offsets after them.

    Raises:
        kafka.errors.KafkaError: the broker cannot be reached (within ``bootstrap_timeout_s`` when
            given, else kafka-python's 30 s).
    """
    from streamrec.runtime.kafka import read_topic

    offsets = dict(start or {})
    tombstones: list[Tombstone] = []
    records = read_topic(settings.kafka, settings.kafka.topics.tombstones, start=offsets,
                         bootstrap_timeout_s=bootstrap_timeout_s)
    for record in records:
        offsets[record.partition] = record.offset + 1
        try:
            tombstones.append(Tombstone.from_json(record.value))
        except ValueError as exc:  # only streamrec writes this topic: say so loudly, keep going
            logger.error("unreadable tombstone at p%d/%d: %s", record.partition, record.offset, exc,
                         extra={"partition": record.partition, "offset": record.offset})
    return tombstones, offsets


@dataclass
class TombstoneLedger:
    """One reader's progress on the tombstone topic and the users it has deleted (each stage keeps
    its own file: the pipeline's ``privacy.json``, training's ``registry-privacy.json``)."""

    offsets: dict[int, int] = field(default_factory=dict)
    # user id -> request id of the tombstone (the suppression list; the tombstone topic holds the same).
    deleted: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TombstoneLedger:
        """The ledger at ``path``; an empty one (read from the topic's start) when there is none."""
        if not path.exists():
            return cls()
        raw = json.loads(path.read_text())
        return cls({int(p): int(o) for p, o in raw["offsets"].items()}, dict(raw["deleted"]))

    def save(self, path: Path) -> None:
        from streamrec.runtime.files import write_atomically

        write_atomically(path, json.dumps(asdict(self), sort_keys=True))

    def record(self, tombstones: list[Tombstone], offsets: dict[int, int]) -> None:
        """Fold tombstones read up to ``offsets`` in (call once what they ask for is done)."""
        self.deleted.update({t.user_id: t.request_id for t in tombstones})
        self.offsets = dict(offsets)
