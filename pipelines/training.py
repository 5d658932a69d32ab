"""Point-in-time-correct training sets from the Feast offline store.

A training row ``(entity keys, event_timestamp=t)`` gets, for each feature view, the row with the
largest as-of time ``<= t`` (and within the view's TTL): feature rows are stamped with the as-of
time of the batch that computed them (the largest event time folded in), so a row at ``t`` never
reflects an event after ``t``. Timestamps are inclusive: to exclude the labelled event itself,
pass ``t`` minus a small epsilon.

Example:
    >>> rows = pd.DataFrame({"user_id": ["1"], "item_id": ["2268318"],
    ...                      "event_timestamp": [pd.Timestamp("2017-11-28T12:00:00Z")]})
    >>> build_training_set(settings, rows, "ranking_v1")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import pandas as pd

from features.sources import TIMESTAMP_FIELD

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings


def build_training_set(settings: Settings, entity_rows: pd.DataFrame, feature_service: str = "ranking_v1", store: Any = None) -> pd.DataFrame:
    """Join the features of ``feature_service`` to ``entity_rows`` as of each row's timestamp.

    Args:
        settings: streamrec settings (where the Feast repo is).
        entity_rows: the join keys the service needs plus ``event_timestamp`` (UTC).
        feature_service: e.g. ``retrieval_v1``, ``ranking_v1``, ``bundle_bandit_v1``.

    Returns:
        ``entity_rows`` with one column per feature (``<view>__<feature>``), same rows in the same
        order (rows without any feature row at or before their time get nulls).
    """
    from features.repo import get_feature_store

    store = store or get_feature_store(settings)
    rows = entity_rows.copy()
    rows[TIMESTAMP_FIELD] = pd.to_datetime(rows[TIMESTAMP_FIELD], utc=True)
    rows["_row"] = range(len(rows))
    service = store.get_feature_service(feature_service)
    frame = store.get_historical_features(entity_df=rows, features=service, full_feature_names=True).to_df()
    # Feast's file offline store drops rows that have no feature row yet; keep them, with nulls.
    features = [c for c in frame.columns if c not in rows.columns]
    out = rows.merge(frame[["_row", *features]], on="_row", how="left")
    return out.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def label_rows_from_lake(settings: Settings, event_types: tuple[str, ...] = ("purchase", "add_to_cart"), epsilon_s: float = 1e-3) -> pd.DataFrame:
    """Training rows from the event lake: one per (user, item) interaction of ``event_types``, stamped
    ``epsilon_s`` before the event so its own features exclude it."""
    import json

    from pipelines.lake import read_event_lake

    lake = read_event_lake(settings.data.lake_dir)
    lake = lake[lake["type"].isin(event_types)]
    rows = []
    for kind, user, ts, raw in zip(lake["type"], lake["user_id"], lake["ts"], lake["event_json"]):
        event = json.loads(raw)
        items = [line["item_id"] for line in event["items"]] if "items" in event else [event["item_id"]]
        for item in items:
            rows.append({"user_id": user, "item_id": item, "label_type": kind,
                         TIMESTAMP_FIELD: ts - pd.Timedelta(seconds=epsilon_s)})
    return pd.DataFrame(rows, columns=["user_id", "item_id", "label_type", TIMESTAMP_FIELD])
