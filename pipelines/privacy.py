"""User deletion: publish a tombstone, then remove the user from every store the pipeline writes.

What is removed, per store (``purge_users``):

* event lake (``pipelines.lake``): every row of the user; each affected Parquet file is rewritten
  without them (temporary file + rename, as the lake's own writes), other files are not touched;
* Feast offline store: the user's rows in the Parquet files of every user-keyed view, rewritten
  the same way;
* Feast online store: the user's entity rows. Feast has no API to delete one entity (0.67 has
  ``RedisOnlineStore.delete_entity_values``, which drops *every* entity of a join key, and
  ``delete_table``), so this module deletes the rows itself: SQLite rows by serialized entity key,
  the Redis hash of the entity key (both computed with Feast's own key functions);
* pipeline state (``pipelines.state_store``): the user's feature state, the sessions and requests
  only the user's events created, and the user's event ids in the de-duplication memory;
* model registry: the user's rows of the ``user`` embeddings of each registered model's latest
  version (``features.registry.privacy``), so serving returns no personalised results for them.

What is kept: item-level aggregates (item counts, co-occurrence, bundle and experiment-variant
counters) carry no user id. Windowed counts lose the user's events within the long window as the
as-of time moves on; all-time counters and co-occurrence keep the user's contribution as an
anonymous count until the offline history is rebuilt from the rewritten lake with
``streamrec pipeline backfill --from <first lake date>``. Recomputing the live aggregates on every
deletion would replay the whole lake through Beam (minutes per request on the Taobao slice), so it
is not done per request.

Kafka cannot delete the user's records from ``events`` (the embedded tansu broker keeps topics in
memory and cannot compact), nor from the DLQ. The tombstone on ``kafka.topics.tombstones`` is the
mechanism: the feature pipeline reads it at every micro-batch, purges (again, idempotently) and
drops every later record of the user *silently*, counted in the batch summary: sending them to the
DLQ would copy the deleted user's payload into another topic.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.lake import LAKE_SCHEMA
from features.online import delete_online_rows
from features.privacy import Tombstone
from features.views import USER_KEYED_VIEWS
from pipelines.records import KafkaRecord
from pipelines.state_store import load_state, save_state, state_path
from streamrec.runtime.files import atomic_path, write_atomically

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

logger = logging.getLogger(__name__)

LEDGER_NAME = "privacy.json"


@dataclass
class LakePurge:
    """What the lake rewrite removed, and the keys the pipeline state derives from those events."""

    rows: int = 0
    files: int = 0
    event_ids: set[str] = field(default_factory=set)
    # Sessions with no event of any other user left in the lake (shared session ids are kept).
    sessions: set[str] = field(default_factory=set)
    requests: set[str] = field(default_factory=set)


@dataclass
class PurgeSummary:
    """Rows removed per store; ``as_table`` is what the CLI prints."""

    users: list[str]
    lake_rows: int = 0
    lake_files: int = 0
    offline_rows: int = 0
    offline_files: int = 0
    online_rows: int = 0
    state_removed: dict[str, int] = field(default_factory=dict)
    registry_versions: dict[str, str] = field(default_factory=dict)

    def as_table(self) -> dict[str, str]:
        state = ", ".join(f"{k} {v}" for k, v in self.state_removed.items()) or "no state file"
        models = ", ".join(f"{m} -> {v}" for m, v in self.registry_versions.items()) or "no user rows"
        return {
            "event lake": f"{self.lake_rows} rows removed ({self.lake_files} files rewritten)",
            "feast offline": f"{self.offline_rows} rows removed ({self.offline_files} files rewritten)",
            "feast online": f"{self.online_rows} rows removed",
            "pipeline state": state,
            "model registry": models,
        }


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


def read_tombstones(settings: Settings, start: dict[int, int] | None = None) -> tuple[list[Tombstone], dict[int, int]]:
    """Tombstones from ``start`` (partition -> offset) to the end now, and the offsets after them."""
    from streamrec.runtime.kafka import read_topic

    offsets = dict(start or {})
    tombstones: list[Tombstone] = []
    for record in read_topic(settings.kafka, settings.kafka.topics.tombstones, start=offsets):
        offsets[record.partition] = record.offset + 1
        try:
            tombstones.append(Tombstone.from_json(record.value))
        except ValueError as exc:  # only streamrec writes this topic: say so loudly, keep going
            logger.error("unreadable tombstone at p%d/%d: %s", record.partition, record.offset, exc,
                         extra={"partition": record.partition, "offset": record.offset})
    return tombstones, offsets


@dataclass
class PrivacyLedger:
    """The pipeline's progress on the tombstone topic and the users it must keep dropping."""

    offsets: dict[int, int] = field(default_factory=dict)
    # user id -> request id of the tombstone (the suppression list; the tombstone topic holds the same).
    deleted: dict[str, str] = field(default_factory=dict)


def ledger_path(settings: Settings) -> Path:
    return state_path(settings).parent / LEDGER_NAME


def load_ledger(path: Path) -> PrivacyLedger:
    if not path.exists():
        return PrivacyLedger()
    raw = json.loads(path.read_text())
    return PrivacyLedger({int(p): int(o) for p, o in raw["offsets"].items()}, dict(raw["deleted"]))


def save_ledger(path: Path, ledger: PrivacyLedger) -> None:
    write_atomically(path, json.dumps(asdict(ledger), sort_keys=True))


# -- filtering the pipeline's input ----------------------------------------------------------


def record_user_ids(record: KafkaRecord) -> set[str]:
    """The user ids a record names: its key (the collector keys by user id) and the event's ``user_id``."""
    found = {record.key.decode("utf-8", "replace")} if record.key else set()
    try:
        value = json.loads(record.value) if record.value else None
    except (ValueError, UnicodeDecodeError):
        return found
    if isinstance(value, dict) and isinstance(value.get("user_id"), str):
        found.add(value["user_id"])
    return found


def drop_deleted_users(records: Iterable[KafkaRecord], deleted: Collection[str]) -> tuple[list[KafkaRecord], int]:
    """The records of users not deleted, and how many were dropped."""
    records = list(records)
    if not deleted:
        return records, 0
    deleted = set(deleted)
    kept = [r for r in records if not record_user_ids(r) & deleted]
    return kept, len(records) - len(kept)


# -- the stores ------------------------------------------------------------------------------


def _user_mask(table: pa.Table, column: str, users: set[str]) -> pa.ChunkedArray:
    return pc.fill_null(pc.is_in(table[column], value_set=pa.array(sorted(users), pa.string())), False)


def _rewrite_without(path: Path, table: pa.Table, mask: pa.ChunkedArray) -> None:
    """Replace ``path`` by ``table`` without the masked rows (same schema), atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table.filter(pc.invert(mask)), tmp)


def purge_lake(root: Path, users: set[str]) -> LakePurge:
    """Rewrite every lake file holding events of ``users`` without them."""
    result = LakePurge()
    other_sessions: set[str] = set()
    for path in sorted(Path(root).glob("date=*/*.parquet")):
        keys = pq.read_table(path, columns=["user_id", "session_id"])
        mask = _user_mask(keys, "user_id", users)
        other_sessions.update(keys["session_id"].filter(pc.invert(mask)).to_pylist())
        if not pc.any(mask).as_py():
            continue
        table = pq.read_table(path, schema=LAKE_SCHEMA)
        removed = table.filter(mask)
        result.rows += removed.num_rows
        result.files += 1
        result.event_ids.update(removed["event_id"].to_pylist())
        result.sessions.update(removed["session_id"].to_pylist())
        for raw in removed["event_json"].to_pylist():
            request_id = json.loads(raw).get("request_id")
            if isinstance(request_id, str):
                result.requests.add(request_id)
        _rewrite_without(path, table, mask)
    result.sessions -= other_sessions
    return result


def purge_offline(settings: Settings, users: set[str]) -> tuple[int, int]:
    """Rewrite the offline Parquet files of user-keyed views without ``users``; (rows, files)."""
    from features.repo import offline_dir
    from features.views import JOIN_KEY_OF_VIEW

    rows = files = 0
    for view in USER_KEYED_VIEWS:
        for path in sorted(offline_dir(settings, view.name).glob("*.parquet")):
            table = pq.read_table(path)
            mask = _user_mask(table, JOIN_KEY_OF_VIEW[view.name], users)
            removed = pc.sum(mask).as_py() or 0
            if removed:
                _rewrite_without(path, table, mask)
                rows += removed
                files += 1
    return rows, files


def purge_state(path: Path, users: set[str], lake: LakePurge) -> dict[str, int]:
    """Drop the users' feature state and the sessions, requests and event ids of their events."""
    if not path.exists():
        return {}
    state = load_state(path)
    removed = {
        "users": _drop_keys(state.users, users),
        "sessions": _drop_keys(state.sessions, lake.sessions),
        "requests": _drop_keys(state.requests, lake.requests),
        "seen event ids": _drop_keys(state.seen, lake.event_ids),
    }
    if any(removed.values()):
        save_state(path, state)
    return removed


def _drop_keys(family: dict[str, Any], keys: set[str]) -> int:
    present = [k for k in keys if k in family]
    for key in present:
        del family[key]
    return len(present)


def purge_registry(settings: Settings, users: set[str]) -> dict[str, str]:
    """Drop the users' rows from the latest ``user`` embeddings of every registered model."""
    root = Path(settings.serving.registry_root or settings.data.state_dir / "registry")
    if "://" not in str(root) and not root.is_dir():
        return {}
    from features.registry.privacy import drop_user_rows

    changed: dict[str, str] = {}
    for model_dir in sorted(p for p in root.iterdir() if (p / "LATEST").is_file()):
        version = drop_user_rows(str(root), model_dir.name, users)
        if version is not None:
            changed[model_dir.name] = version
    return changed


def purge_users(settings: Settings, users: set[str], registry: bool = True) -> PurgeSummary:
    """Remove ``users`` from the lake, Feast offline and online, the pipeline state and (optionally)
    the model registry. Idempotent: a second call finds nothing and removes nothing."""
    summary = PurgeSummary(sorted(users))
    if not users:
        return summary
    lake = purge_lake(settings.data.lake_dir, users)
    summary.lake_rows, summary.lake_files = lake.rows, lake.files
    summary.offline_rows, summary.offline_files = purge_offline(settings, users)
    summary.online_rows = delete_online_rows(settings, users)
    summary.state_removed = purge_state(state_path(settings), users, lake)
    if registry:
        summary.registry_versions = purge_registry(settings, users)
    return summary


def delete_user(settings: Settings, user_id: str, reason: str, source: str = "cli") -> tuple[Tombstone, PurgeSummary]:
    """What ``streamrec users delete`` does: publish the tombstone first (so every stage that runs
    concurrently drops the user from then on), then purge every store now."""
    tombstone = Tombstone.for_user(user_id, reason=reason, source=source)
    publish_tombstone(settings, tombstone)
    return tombstone, purge_users(settings, {user_id})


def apply_new_tombstones(settings: Settings) -> tuple[PrivacyLedger, PurgeSummary | None]:
    """The pipeline's step at each micro-batch: read tombstones since the last batch, purge their
    users (again: a batch in flight during ``users delete`` may have written them back), and
    record them in the ledger. A crash before the ledger is saved re-reads and re-purges."""
    path = ledger_path(settings)
    ledger = load_ledger(path)
    tombstones, offsets = read_tombstones(settings, ledger.offsets)
    summary = None
    if tombstones:
        summary = purge_users(settings, {t.user_id for t in tombstones})
        ledger.deleted.update({t.user_id: t.request_id for t in tombstones})
    if offsets != ledger.offsets:
        ledger.offsets = offsets
        save_ledger(path, ledger)
    return ledger, summary
