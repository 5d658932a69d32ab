"""User deletion in the feature pipeline: remove the user from every store the pipeline writes.

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
  only the user's events created, and the user's event ids in the de-duplication memory.

Not the model registry: it is written by training, so training purges it
(``ray_jobs.registry.privacy``), and a pipeline batch never rewrites a model version.
``streamrec users delete`` (the shell) runs both purges at once; a deletion that arrives only as a
tombstone (``DELETE /v1/admin/users/{id}``) reaches the registry at the next ``streamrec retrain``
check or model registration.

What is kept: item-level aggregates (item counts, co-occurrence, bundle and experiment-variant
counters) carry no user id. Windowed counts lose the user's events within the long window as the
as-of time moves on; all-time counters and co-occurrence keep the user's contribution as an
anonymous count until the offline history is rebuilt from the rewritten lake with
``streamrec pipeline backfill --from <first lake date>``. Recomputing the live aggregates on every
deletion would replay the whole lake through Beam (minutes per request on the Taobao slice), so it
is not done per request.

Kafka cannot delete the user's records from ``events`` (the embedded tansu broker keeps topics in
memory and cannot compact), nor from the DLQ. The tombstone on ``kafka.topics.tombstones`` is the
mechanism: the feature pipeline reads it at every micro-batch (``apply_new_tombstones``, its
progress in ``privacy.json`` beside the pipeline state), purges its stores (again, idempotently)
and drops every later record of the user *silently*, counted in the batch summary: sending them to
the DLQ would copy the deleted user's payload into another topic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.lake import LAKE_SCHEMA
from features.online import delete_online_rows
from features.privacy import TombstoneLedger, read_tombstones
from features.views import USER_KEYED_VIEWS
from pipelines.records import KafkaRecord
from pipelines.state_store import load_state, save_state, state_path
from streamrec.runtime.files import atomic_path

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

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
    """Rows removed per store of the pipeline; ``as_table`` is what the CLI prints of them."""

    users: list[str]
    lake_rows: int = 0
    lake_files: int = 0
    offline_rows: int = 0
    offline_files: int = 0
    online_rows: int = 0
    state_removed: dict[str, int] = field(default_factory=dict)

    def as_table(self) -> dict[str, str]:
        state = ", ".join(f"{k} {v}" for k, v in self.state_removed.items()) or "no state file"
        return {
            "event lake": f"{self.lake_rows} rows removed ({self.lake_files} files rewritten)",
            "feast offline": f"{self.offline_rows} rows removed ({self.offline_files} files rewritten)",
            "feast online": f"{self.online_rows} rows removed",
            "pipeline state": state,
        }


# -- the pipeline's progress on the tombstone topic ------------------------------------------


def ledger_path(settings: Settings) -> Path:
    """The pipeline's :class:`~features.privacy.TombstoneLedger`, beside its state."""
    return state_path(settings).parent / LEDGER_NAME


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


def purge_users(settings: Settings, users: set[str]) -> PurgeSummary:
    """Remove ``users`` from the lake, Feast offline and online and the pipeline state (not the
    model registry: see the module docstring). Idempotent: a second call removes nothing."""
    summary = PurgeSummary(sorted(users))
    if not users:
        return summary
    lake = purge_lake(settings.data.lake_dir, users)
    summary.lake_rows, summary.lake_files = lake.rows, lake.files
    summary.offline_rows, summary.offline_files = purge_offline(settings, users)
    summary.online_rows = delete_online_rows(settings, users)
    summary.state_removed = purge_state(state_path(settings), users, lake)
    return summary


def apply_new_tombstones(settings: Settings) -> tuple[TombstoneLedger, PurgeSummary | None]:
    """The pipeline's step at each micro-batch: read tombstones since the last batch, purge their
    users from the pipeline's stores (again: a batch in flight during ``users delete`` may have
    written them back), and record them in the ledger. A crash before the ledger is saved re-reads
    and re-purges. The model registry is left to training (``ray_jobs.registry.privacy``)."""
    path = ledger_path(settings)
    ledger = TombstoneLedger.load(path)
    tombstones, offsets = read_tombstones(settings, ledger.offsets)
    summary = purge_users(settings, {t.user_id for t in tombstones}) if tombstones else None
    if offsets != ledger.offsets:
        ledger.record(tombstones, offsets)
        ledger.save(path)
    return ledger, summary
