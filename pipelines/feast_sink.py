"""Writing feature rows to Feast: Parquet files in each view's offline folder, and a push online.

The offline write is ours rather than ``PushMode.OFFLINE`` because Feast's file offline store
rewrites one growing Parquet file on every push (not crash-safe, quadratic); one file per batch,
named by the batch, is atomic and idempotent: a re-run of the same batch replaces its file.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.repo import arrow_schema, offline_dir
from features.sources import TIMESTAMP_FIELD
from features.views import ALL_FEATURE_VIEWS, PUSH_SOURCE_OF_VIEW

VIEWS = {view.name: view for view in ALL_FEATURE_VIEWS}


def feature_frame(view_name: str, rows: list[dict[str, Any]], as_of_s: float) -> pd.DataFrame:
    """Rows of one view as a frame in the view's column order, stamped with the as-of time."""
    schema = arrow_schema(VIEWS[view_name])
    frame = pd.DataFrame(rows, columns=[n for n in schema.names if n != TIMESTAMP_FIELD])
    frame[TIMESTAMP_FIELD] = pd.Timestamp(datetime.fromtimestamp(as_of_s, tz=timezone.utc))
    return frame


def feature_frame_at(view_name: str, rows: list[dict[str, Any]], as_of_s: list[float]) -> pd.DataFrame:
    """Rows of one view, each stamped with its own as-of time (the streaming job's rows)."""
    frame = feature_frame(view_name, rows, 0.0)
    frame[TIMESTAMP_FIELD] = pd.to_datetime(pd.Series(as_of_s, dtype="float64"), unit="s", utc=True)
    return frame


def offline_file_name(as_of_s: float, batch_tag: str) -> str:
    """``asof-<unix seconds>-<tag>.parquet``: the as-of time in the name lets a backfill replace
    every file from a date on."""
    return f"asof-{int(as_of_s):012d}-{batch_tag}.parquet"


def offline_file_as_of(name: str) -> int | None:
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "asof" and parts[1].isdigit() else None


def write_offline(settings: Any, view_name: str, frame: pd.DataFrame, batch_tag: str, as_of_s: float) -> None:
    """Atomically write (or replace) the batch's offline file of one view."""
    folder = offline_dir(settings, view_name)
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, schema=arrow_schema(VIEWS[view_name]), preserve_index=False)
    for old in folder.glob(f"asof-*-{batch_tag}.parquet"):
        old.unlink()  # a re-run of the batch (after a crash) may have a later as-of time
    target = folder / offline_file_name(as_of_s, batch_tag)
    tmp = folder / f".{batch_tag}.tmp{os.getpid()}"
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def push_online(store: Any, view_name: str, frame: pd.DataFrame, chunk_rows: int = 20_000) -> None:
    """Upsert the rows into the online store through the view's PushSource."""
    from feast.data_source import PushMode

    for start in range(0, len(frame), chunk_rows):
        store.push(PUSH_SOURCE_OF_VIEW[view_name], frame.iloc[start : start + chunk_rows], to=PushMode.ONLINE)
