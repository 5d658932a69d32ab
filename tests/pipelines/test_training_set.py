"""Point-in-time-correct training sets through Feast's get_historical_features: a row at t sees
exactly the features of the last batch whose as-of time is <= t, never an event after t."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from oracle import compute_features
from pipeline_support import pipeline_settings, produce, taobao_subset

from pipelines.accumulators import FeatureSpec
from pipelines.runner import FeaturePipeline
from pipelines.training import build_training_set

pytestmark = pytest.mark.kafka


def _secs(e) -> float:
    return pd.Timestamp(e["ts"]).timestamp()


def test_training_rows_never_see_events_after_their_timestamp(kafka_broker, tmp_path):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    spec = FeatureSpec.from_config(settings.pipeline)
    events = taobao_subset(kafka_broker.settings, users=6)
    chunks = [list(c) for c in np.array_split(np.array(events, dtype=object), 4)]
    pipeline = FeaturePipeline(settings, push_online=False)
    as_ofs = []
    try:
        for chunk in chunks:
            produce(settings, chunk)
            as_ofs.append(pipeline.run_once().watermark)
    finally:
        pipeline.close()
    users = sorted({e["user_id"] for e in events})
    # Rows just before, at and after each batch's as-of time, and before any feature existed.
    times = [as_ofs[0] - 3600] + [t + d for t in as_ofs for d in (-1, 0, 1800)]
    rows = pd.DataFrame(
        [{"user_id": u, "event_timestamp": pd.Timestamp(t, unit="s", tz="UTC")} for u in users for t in times]
    )
    frame = build_training_set(settings, rows, "retrieval_v1")
    assert len(frame) == len(rows)

    oracle_at = {t: compute_features([e for e in events if _secs(e) <= t], spec)["user_features"] for t in as_ofs}
    checked = 0
    for _, row in frame.iterrows():
        t = row["event_timestamp"].timestamp()
        seq_ts = row["user_features__seq_ts_unix"]
        known = [a for a in as_ofs if a <= t]
        if not known or row["user_id"] not in oracle_at[known[-1]].index:
            assert seq_ts is None or (isinstance(seq_ts, float) and np.isnan(seq_ts)) or len(seq_ts) == 0
            continue
        # Never an event after t ...
        assert all(x <= t for x in seq_ts) and row["user_features__last_seen_unix"] <= t
        # ... and exactly what the oracle computes from the events up to the batch's as-of time.
        expected = oracle_at[known[-1]].loc[row["user_id"]]
        assert list(row["user_features__seq_item_ids"]) == expected["seq_item_ids"]
        assert list(seq_ts) == expected["seq_ts_unix"]
        assert row["user_features__last_seen_unix"] == expected["last_seen_unix"]
        checked += 1
    assert checked >= len(users) * len(as_ofs)
