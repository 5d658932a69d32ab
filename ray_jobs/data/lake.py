"""Interactions from the Parquet event lake that the feature pipeline writes (the production path).

The lake (``pipelines.lake``) holds every contract-valid event, partitioned as
``<root>/date=YYYY-MM-DD/<topic>-p<partition>-<start>-<stop>.parquet``; the default root is the one
the pipeline writes under the settings' state dir. This adapter reads it point-in-time (events with
event time ``<= until`` only), keeps the item interactions of the chosen event types, de-duplicates by
``event_id`` exactly as ``pipelines.lake.read_event_lake`` does, and mirrors the Taobao adapter: rows
ordered by time within a user, leave-one-out (last interaction test, second last valid), raw string
ids kept for the registry so that serving can map its ids to rows.

A purchase contributes one interaction per line item. Each load carries a :class:`LakeSnapshot`
(date partitions read, max event time, row count and a hash of the event ids used), whose ``id``
becomes the registered model's ``data_snapshot_id``.

Example (the whole Taobao slice replayed through the pipeline into a lake):
    >>> data = load_lake(root="/state/lake/events")  # doctest: +SKIP
    >>> data.source_snapshot["id"]  # doctest: +SKIP
    'lake:2017-09-11..2017-12-03(14 dates):max=2017-12-03T15:59:23Z:rows=84287:sha256=4f2327f0f49e4db8'
    >>> cut = load_lake(root="/state/lake/events", until="2017-12-02T00:00:00Z",
    ...                 event_types=("view", "add_to_cart", "purchase"))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from features.lake import LAKE_SCHEMA
from ray_jobs.data.dataset import InteractionData
from ray_jobs.data.slicing import leave_one_out

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = [
    "load_lake",
    "read_lake_snapshot",
    "read_lake_events",
    "lake_root_of",
    "default_lake_root",
    "parse_until",
    "LakeSnapshot",
    "LakeChangedError",
    "EVENT_TYPES",
    "DEFAULT_EVENT_TYPES",
]

# Event types that name the item(s) a user interacted with. remove_from_cart is left out on purpose:
# it is a negative signal. click is a click on a shown recommendation (item clicks only);
# bundle_purchase is a purchase of a shown bundle (one interaction per line item, like purchase).
EVENT_TYPES = ("view", "add_to_cart", "favorite", "purchase", "click", "bundle_purchase")
# The Taobao adapter's default (pv, cart, fav, buy), as the replay maps them.
DEFAULT_EVENT_TYPES = ("view", "add_to_cart", "favorite", "purchase")
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
_SCHEMA = pa.schema([*LAKE_SCHEMA, *_PARTITIONING.schema])  # the files' columns + the partition key
_COLUMNS = ["event_id", "type", "user_id", "ts", "kafka_partition", "kafka_offset", "event_json", "date"]


class LakeChangedError(RuntimeError):
    """The lake no longer yields the snapshot a job was pinned to (events were added or removed)."""


@dataclass(frozen=True)
class LakeSnapshot:
    """What one read of the lake used: enough to say whether two reads saw the same data.

    Attributes:
        root: the lake root read (path or URI).
        until: the event-time cut-off asked for (ISO 8601, UTC), or ``None`` for everything.
        event_types: the event types kept.
        partitions: the ``date=`` partitions that contributed events, sorted (so the id does not
            depend on partitions that only hold filtered-out events).
        max_event_time: the latest event time among the events used (ISO 8601, UTC), or ``None``.
        rows: events used (after the type and time filters and de-duplication).
        content_sha256: hash of the sorted event ids used and the event types.
    """

    root: str
    until: str | None
    event_types: tuple[str, ...]
    partitions: tuple[str, ...]
    max_event_time: str | None
    rows: int
    content_sha256: str

    @property
    def id(self) -> str:
        """Readable and exact: partitions, max event time, row count, content hash."""
        dates = [p.removeprefix("date=") for p in self.partitions]
        span = f"{dates[0]}..{dates[-1]}({len(dates)} dates)" if dates else "no-dates"
        return f"lake:{span}:max={self.max_event_time}:rows={self.rows}:sha256={self.content_sha256[:16]}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``id`` (what the registry's manifest stores as ``data_snapshot``)."""
        return {"id": self.id, **asdict(self), "event_types": list(self.event_types),
                "partitions": list(self.partitions)}


def lake_root_of(settings: Settings) -> Path:
    """The lake root the feature pipeline writes for ``settings`` (``DataConfig.lake_dir``)."""
    return settings.data.lake_dir


def default_lake_root() -> Path:
    """The lake root of the process-wide settings (``STREAMREC_*`` environment / ``STREAMREC_CONFIG``)."""
    from streamrec.runtime.config import get_settings  # only the driver resolves the default

    return lake_root_of(get_settings())


def parse_until(until: str | datetime | None) -> datetime | None:
    """``until`` as an aware UTC datetime; ISO 8601 strings without an offset are read as UTC."""
    if until is None:
        return None
    value = until if isinstance(until, datetime) else datetime.fromisoformat(str(until))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _iso(ts: datetime | pd.Timestamp | None) -> str | None:
    if ts is None:
        return None
    return pd.Timestamp(ts).tz_convert("UTC").isoformat().replace("+00:00", "Z")


def _filesystem(root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    root = str(root)
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(Path(root).resolve())


def _lake_files(fs: pafs.FileSystem, base: str, until: datetime | None) -> list[str]:
    """The complete Parquet files of the date partitions up to ``until``'s date.

    Listed by hand rather than by ``ds.dataset(base)`` so that the writer's ``*.tmp<pid>`` files
    (renamed into place when complete) are never read.
    """
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no event lake at {base}: run the feature pipeline first")
    last_date = until.date().isoformat() if until is not None else None
    files = []
    for f in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if f.type != pafs.FileType.File or not f.base_name.endswith(".parquet"):
            continue
        partition = Path(f.path).parent.name
        if not partition.startswith("date="):
            continue
        if last_date is None or partition.removeprefix("date=") <= last_date:  # ISO dates sort as text
            files.append(f.path)
    return sorted(files)


def _read_events(fs: pafs.FileSystem, base: str, files: list[str], until: datetime | None,
                 event_types: Sequence[str]) -> pd.DataFrame:
    """The events of ``files`` passing the filters, one per ``event_id``, in lake order."""
    if not files:
        return _SCHEMA.empty_table().select(_COLUMNS).to_pandas()
    dataset = ds.dataset(files, schema=_SCHEMA, format="parquet", filesystem=fs,
                         partitioning=_PARTITIONING, partition_base_dir=base)
    keep = pc.field("type").isin(list(event_types))
    if until is not None:
        keep = keep & (pc.field("ts") <= pa.scalar(until, type=LAKE_SCHEMA.field("ts").type))
    frame = dataset.to_table(columns=_COLUMNS, filter=keep).to_pandas()
    # Same order and de-duplication as pipelines.lake.read_event_lake (the lake keeps what the topic
    # carried, duplicates included).
    frame = frame.sort_values(["ts", "kafka_partition", "kafka_offset"], kind="stable")
    return frame.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def _interactions(events: pd.DataFrame) -> pd.DataFrame:
    """One row per (event, item): ``user_id, item_id, category_id, order`` (order = lake order)."""
    rows: list[tuple[str, str, str | None, int]] = []
    for order, (kind, user, raw) in enumerate(zip(events["type"], events["user_id"], events["event_json"])):
        event = json.loads(raw)
        if kind in ("purchase", "bundle_purchase"):
            rows.extend((user, line["item_id"], line.get("category_id"), order) for line in event["items"])
        elif event.get("item_id") is not None:  # a click may name a bundle only
            rows.append((user, event["item_id"], event.get("category_id"), order))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "category_id", "order"])


def _snapshot(root: str, until: datetime | None, event_types: Sequence[str], events: pd.DataFrame) -> LakeSnapshot:
    digest = hashlib.sha256(json.dumps(sorted(event_types)).encode())
    digest.update("\n".join(sorted(events["event_id"])).encode())
    return LakeSnapshot(
        root=root,
        until=_iso(until),
        event_types=tuple(event_types),
        partitions=tuple(f"date={d}" for d in sorted(events["date"].unique())),
        max_event_time=_iso(events["ts"].max()) if len(events) else None,
        rows=len(events),
        content_sha256=digest.hexdigest(),
    )


def _check_types(event_types: Sequence[str]) -> tuple[str, ...]:
    unknown = set(event_types) - set(EVENT_TYPES)
    if unknown or not event_types:
        raise ValueError(f"event_types must be a non-empty subset of {EVENT_TYPES}, got {list(event_types)}")
    return tuple(event_types)


def read_lake_events(root: str | os.PathLike[str] | None = None, until: str | datetime | None = None,
                     event_types: Sequence[str] = DEFAULT_EVENT_TYPES,
                     expect_snapshot: str | None = None) -> tuple[pd.DataFrame, LakeSnapshot]:
    """The de-duplicated lake events passing the filters (columns ``event_id, type, user_id, ts,
    kafka_partition, kafka_offset, event_json, date``, in lake order) and their snapshot: the raw
    read that :func:`load_lake` and other lake adapters (``ray_jobs.data.lake_bundles``) build on.

    Raises:
        LakeChangedError: ``expect_snapshot`` is given and the read's snapshot id differs.
    """
    root = str(root if root is not None else default_lake_root())
    cutoff, types = parse_until(until), _check_types(event_types)
    fs, base = _filesystem(root)
    files = _lake_files(fs, base, cutoff)
    events = _read_events(fs, base, files, cutoff, types)
    snapshot = _snapshot(root, cutoff, types, events)
    if expect_snapshot is not None and snapshot.id != expect_snapshot:
        raise LakeChangedError(f"the lake at {snapshot.root} now gives {snapshot.id}, "
                               f"not the pinned {expect_snapshot}")
    return events, snapshot


def read_lake_snapshot(root: str | os.PathLike[str] | None = None, until: str | datetime | None = None,
                       event_types: Sequence[str] = DEFAULT_EVENT_TYPES) -> LakeSnapshot:
    """The snapshot :func:`load_lake` would train on now (used to pin a job before its workers start)."""
    return read_lake_events(root, until, event_types)[1]


def load_lake(
    datasets_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    until: str | datetime | None = None,
    event_types: Sequence[str] = DEFAULT_EVENT_TYPES,
    expect_snapshot: str | None = None,
) -> InteractionData:
    """Load the event lake as a sequential dataset with raw ids, item categories and a snapshot.

    Args:
        datasets_dir: ignored (the catalogue passes it to every adapter; the lake is not a shared dataset).
        root: lake root, a path or a ``pyarrow.fs`` URI (``s3://bucket/lake/events``); default: the
            one the feature pipeline writes (see :func:`default_lake_root`).
        until: point-in-time cut-off: only events with event time ``<= until`` (ISO 8601 or an aware
            datetime; UTC when no offset is given). ``None`` reads everything.
        event_types: event types to keep (subset of :data:`EVENT_TYPES`).
        expect_snapshot: fail with :class:`LakeChangedError` unless the read's snapshot id equals
            this (the launcher pins it so that every worker trains on the same data).

    Returns:
        A sequential :class:`InteractionData` named ``lake``; users and items are re-indexed in
        sorted raw-id order, ``source_snapshot`` describes what was read.
    """
    events, snapshot = read_lake_events(root, until, event_types, expect_snapshot)
    inter = _interactions(events)
    if inter.empty:
        raise ValueError(f"no {list(snapshot.event_types)} events in the lake at {snapshot.root}"
                         + (f" up to {snapshot.until}" if snapshot.until else ""))
    inter = inter.sort_values(["user_id", "order"], kind="stable")  # time order within a user
    user_ids, users = np.unique(inter["user_id"].to_numpy(dtype=str), return_inverse=True)
    item_ids, items = np.unique(inter["item_id"].to_numpy(dtype=str), return_inverse=True)
    train, valid, test = leave_one_out(np.stack([users, items], axis=1).astype(np.int64))
    return InteractionData(
        name="lake",
        n_users=len(user_ids),
        n_items=len(item_ids),
        train=train,
        valid=valid,
        test=test,
        sequential=True,
        test_excludes_valid=True,
        item_category=_item_categories(inter, item_ids),
        user_ids=user_ids.astype(object),
        item_ids=item_ids.astype(object),
        source_snapshot=snapshot.as_dict(),
    )


def _item_categories(inter: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray | None:
    """Integer category per item (first category seen), or ``None`` when some item never has one."""
    known = inter.dropna(subset=["category_id"]).drop_duplicates("item_id").set_index("item_id")["category_id"]
    if len(known) < len(item_ids):
        return None  # category metrics need every item; events without category_id are allowed
    _, codes = np.unique(known.loc[item_ids].to_numpy(dtype=str), return_inverse=True)
    return codes.astype(np.int64)
