"""Duplicates, late and out-of-order events, malformed records, the DLQ, the lake's idempotence and
the online store, through a real broker."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from oracle import compute_features
from pipeline_support import assert_frames_match, ev, mixed_events, offline_latest, pipeline_settings, produce

from features.repo import get_feature_store
from pipelines.accumulators import FeatureSpec
from pipelines.lake import read_event_lake
from pipelines.runner import FeaturePipeline
from streamrec.runtime.kafka import read_topic

pytestmark = pytest.mark.kafka

MALFORMED = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe\x00", "invalid_utf8"),
    (json.dumps({"schema_version": 1, "type": "teleport"}).encode(), "unknown_event_type"),
    (json.dumps({"schema_version": 1, "type": "view", "user_id": "u9"}).encode(), "missing_field"),
    (json.dumps({"schema_version": 7, "type": "view"}).encode(), "unsupported_schema_version"),
]


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def test_duplicates_late_malformed_lake_and_online(kafka_broker, tmp_path):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state", allowed_lateness_s=3600)
    spec = FeatureSpec.from_config(settings.pipeline)
    events = mixed_events()
    pipeline = FeaturePipeline(settings)
    try:
        # Batch 1: every event, three of them twice (a retried POST), five malformed records.
        produce(settings, events + events[:3], raw=[raw for raw, _ in MALFORMED])
        first = pipeline.run_once()
        assert first.records == len(events) + 3 + len(MALFORMED)
        assert first.duplicates == 3
        assert sorted(first.dead_letters.elements()) == sorted(reason for _, reason in MALFORMED)
        watermark = first.watermark
        assert watermark == max(datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp() for e in events)

        # Batch 2: a duplicate across batches, one event too late, one out of order but in time.
        late = ev("view", "u1", 0, item_id="i1", category_id="c1", ts=_iso(watermark - 7200))
        in_time = ev("add_to_cart", "u2", 0, session="s7", item_id="i9", category_id="c9", ts=_iso(watermark - 1800))
        newest = ev("view", "u2", 0, session="s7", item_id="i1", category_id="c1", ts=_iso(watermark + 60))
        produce(settings, [events[-1], late, in_time, newest])
        second = pipeline.run_once()
        assert second.duplicates == 1
        assert dict(second.dead_letters) == {"late_event": 1}
        assert second.lag == 0

        dlq = [json.loads(r.value) for r in read_topic(settings.kafka, settings.kafka.topics.dlq)]
        assert sorted(d["reason"] for d in dlq) == sorted([r for _, r in MALFORMED] + ["late_event"])
        assert all(d["source"] == "feature-pipeline" and d["kafka_offset"] is not None for d in dlq)
        assert [d["event_id"] for d in dlq if d["reason"] == "late_event"] == [late["event_id"]]

        expected = compute_features(events + [in_time, newest], spec)
        for view, frame in expected.items():
            assert_frames_match(offline_latest(settings, view), frame, view)

        # The lake holds every contract-valid record once (duplicates included, as the topic has them).
        lake_root = pipeline.lake_root
        valid = len(events) + 3 + 4
        assert len(read_event_lake(lake_root, dedupe=False)) == valid
        assert len(read_event_lake(lake_root)) == len(events) + 3  # distinct ids (late one included)
        # Re-running the same offsets replaces the lake files and counts nothing twice.
        again = pipeline.run_once(start_offsets={r.partition: 0 for r in first.ranges})
        # (the saved state already holds these offsets: nothing is counted or dead-lettered again)
        assert again.reprocessed == again.records == first.records + second.records
        assert again.duplicates == 0 and not again.dead_letters
        assert len(read_event_lake(lake_root, dedupe=False)) == valid
        for view, frame in expected.items():
            assert_frames_match(offline_latest(settings, view), frame, f"{view} after re-run")

        # Online: what Feast serves is the latest row of each key.
        store = get_feature_store(settings)
        online = store.get_online_features(
            features=store.get_feature_service("ranking_v1"),
            entity_rows=[{"user_id": "u1", "item_id": "i1"}, {"user_id": "u2", "item_id": "i9"}],
        ).to_dict()
        users, items = expected["user_features"], expected["item_features"]
        assert online["last_seen_unix"] == [users.at["u1", "last_seen_unix"], users.at["u2", "last_seen_unix"]]
        assert online["seq_item_ids"][1] == users.at["u2", "seq_item_ids"]
        assert online["carts_24h"] == [items.at["i1", "carts_24h"], items.at["i9", "carts_24h"]]
        bundles = store.get_online_features(
            features=store.get_feature_service("bundle_bandit_v1"),
            entity_rows=[{"bundle_id": "b1", "item_id": "i1", "experiment_variant": "e1 B"}],
            full_feature_names=True,
        ).to_dict()
        assert bundles["bundle_features__clicks"] == [1] and bundles["bundle_features__purchases"] == [1]
        # The click arrived before its impression: still attributed to the variant.
        assert [bundles[f"experiment_variant_features__{c}"] for c in ("impressions", "clicks", "purchases")] == [[1], [1], [1]]
        assert bundles["item_cooccurrence__co_item_ids"][0] == expected["item_cooccurrence"].at["i1", "co_item_ids"]
    finally:
        pipeline.close()
