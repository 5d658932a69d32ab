"""User deletion end to end on a real broker: real Taobao events through a pipeline batch, then
`streamrec users delete`; the user is gone from the lake, Feast offline and online (read through the
Feast SDK), the pipeline state and the model registry, everyone else's rows are byte-identical, and
the user's later records are dropped by the next batch (not sent to the DLQ). A pipeline batch
that applies a tombstone leaves the model registry to training (``ray_jobs.registry.privacy``)."""

from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer
from pipeline_support import ev, pipeline_settings, produce, taobao_subset, write_config

from features.privacy import Tombstone, TombstoneLedger, publish_tombstone, read_tombstones
from features.repo import offline_dir, repo_config
from features.views import feature_names, user_features
from pipelines.lake import read_event_lake
from pipelines.privacy import ledger_path, purge_users
from pipelines.runner import FeaturePipeline
from pipelines.state_store import load_state, state_path
from features.registry import ModelRegistry
from ray_jobs.registry.privacy import apply_registry_tombstones, purge_registry
from streamrec.runtime.config import Settings, reload_settings
from streamrec.runtime.kafka import ensure_topics, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

VICTIM = "10008"  # views, carts and purchases late in the slice: sessions still in the state


def _private_tombstones(settings: Settings) -> Settings:
    """The test's own tombstone topic (the session broker is shared with other tests)."""
    topics = settings.kafka.topics.model_copy(update={"tombstones": f"{settings.kafka.topics.events}.tombstones"})
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"topics": topics})})
    ensure_topics(settings.kafka)
    return settings


def _lake_rows(settings: Settings) -> list[dict[str, Any]]:
    frame = read_event_lake(Path(settings.data.state_dir) / "lake" / "events", dedupe=False)
    return sorted(frame.to_dict("records"), key=lambda r: (r["kafka_partition"], r["kafka_offset"]))


def _offline_files(settings: Settings) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """file name -> (sha256 of the bytes, rows)."""
    out = {}
    for path in sorted(offline_dir(settings, "user_features").glob("*.parquet")):
        out[path.name] = (hashlib.sha256(path.read_bytes()).hexdigest(), pq.read_table(path).to_pylist())
    return out


def _online_raw(settings: Settings) -> list[tuple]:
    """Every row of the SQLite online table of user_features, as stored."""
    config = repo_config(settings)
    with sqlite3.connect(config.online_store.path) as conn:
        rows = conn.execute(
            f'SELECT entity_key, features, event_ts FROM "{config.project}_user_features" ORDER BY 1'
        ).fetchall()
    return rows


def _online_sdk(store: Any, users: list[str]) -> dict[str, list[Any]]:
    refs = [f"user_features:{name}" for name in feature_names(user_features)]
    return store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_dict()


def _register_model(settings: Settings, users: list[str]) -> None:
    rng = np.random.default_rng(1)
    ModelRegistry(settings.data.state_dir / "registry").register(
        "lightgcn", embeddings={"user": rng.standard_normal((len(users), 4)).astype(np.float32),
                                "item": rng.standard_normal((3, 4)).astype(np.float32)},
        metrics={}, config={}, data_snapshot_id="sha256:test", extra={"ids": {"user": users, "item": ["a", "b", "c"]}},
    )


def _registry_files(settings: Settings) -> dict[str, str]:
    """Every file of the registry (relative path -> sha256 of its bytes)."""
    root = settings.data.state_dir / "registry"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _without(rows: list[dict[str, Any]], user: str, key: str = "user_id") -> list[dict[str, Any]]:
    return [r for r in rows if r[key] != user]


def test_users_delete_removes_the_user_everywhere_and_keeps_everyone_else(kafka_broker, tmp_path, monkeypatch, capsys):
    settings = _private_tombstones(pipeline_settings(kafka_broker.settings, tmp_path / "state"))
    events = taobao_subset(settings, users=5)
    users = sorted({e["user_id"] for e in events})
    assert VICTIM in users
    produce(settings, events)
    pipeline = FeaturePipeline(settings)
    try:
        first = pipeline.run_once()
        assert first.valid == len(events)
        _register_model(settings, users)

        lake_before = _lake_rows(settings)
        offline_before = _offline_files(settings)
        online_before = _online_raw(settings)
        sdk_before = _online_sdk(pipeline.store, users)
        state_before = load_state(state_path(settings))
        victim_sessions = {e["session_id"] for e in events if e["user_id"] == VICTIM}
        assert any(r["user_id"] == VICTIM for r in lake_before)
        assert VICTIM in state_before.users and victim_sessions & state_before.sessions.keys()
        assert sdk_before["last_seen_unix"][users.index(VICTIM)] is not None

        # -- the CLI, as a user runs it (settings from STREAMREC_CONFIG) ----------------------
        monkeypatch.setenv("STREAMREC_CONFIG", str(write_config(settings, tmp_path / "streamrec.yaml")))
        reload_settings()
        from streamrec.cli import main

        try:
            assert main(["users", "delete", VICTIM, "--reason", "test erasure"]) == 0
        finally:
            monkeypatch.delenv("STREAMREC_CONFIG")
            reload_settings()
        out = capsys.readouterr().out
        victim_rows = sum(r["user_id"] == VICTIM for r in lake_before)
        assert f"event lake      {victim_rows} rows removed" in out, out
        assert "feast offline   1 rows removed" in out and "lightgcn -> " in out, out
        registry = ModelRegistry(settings.data.state_dir / "registry")
        assert f"model registry  lightgcn -> {registry.latest_version('lightgcn')}" in out, out

        # -- the tombstone ---------------------------------------------------------------------
        records = read_topic(settings.kafka, settings.kafka.topics.tombstones)
        assert [r.key for r in records] == [VICTIM.encode()]
        tombstone = Tombstone.from_json(records[0].value)
        assert tombstone.user_id == VICTIM and tombstone.reason == "test erasure" and tombstone.request_id in out

        # -- gone from every store; everyone else byte-identical --------------------------------
        lake_after = _lake_rows(settings)
        assert not [r for r in lake_after if r["user_id"] == VICTIM]
        assert lake_after == _without(lake_before, VICTIM)
        assert not any(VICTIM in r["event_json"] and f'"user_id":"{VICTIM}"' in r["event_json"] for r in lake_after)

        offline_after = _offline_files(settings)
        assert offline_after.keys() == offline_before.keys()
        for name, (digest, rows) in offline_before.items():
            if any(r["user_id"] == VICTIM for r in rows):
                assert offline_after[name][1] == _without(rows, VICTIM), name
            else:
                assert offline_after[name][0] == digest, f"{name} was rewritten without holding the user"

        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        victim_key = serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(string_val=VICTIM)]), 3)
        online_after = _online_raw(settings)
        assert online_after == [r for r in online_before if r[0] != victim_key]
        assert len(online_after) < len(online_before)
        sdk_after = _online_sdk(pipeline.store, users)
        for column, values in sdk_after.items():
            for user, before, after in zip(users, sdk_before[column], values):
                if column == "user_id":
                    continue
                assert after == (None if user == VICTIM else before), (column, user)

        state_after = load_state(state_path(settings))
        assert VICTIM not in state_after.users and not victim_sessions & state_after.sessions.keys()
        for user in users:
            if user != VICTIM:
                assert pickle.dumps(state_after.users[user]) == pickle.dumps(state_before.users[user])
        # Item-level aggregates carry no user id and are kept (see pipelines/privacy.py).
        assert pickle.dumps(state_after.items) == pickle.dumps(state_before.items)
        assert pickle.dumps(state_after.cooccurrence) == pickle.dumps(state_before.cooccurrence)
        assert not {e["event_id"] for e in events if e["user_id"] == VICTIM} & state_after.seen.keys()

        latest = registry.load_latest("lightgcn")
        assert latest.manifest["ids"]["user"] == [u for u in users if u != VICTIM]
        registry_after_delete = _registry_files(settings)

        # -- later records of the user are dropped by the next batch, silently -------------------
        other = next(u for u in users if u != VICTIM)
        later = [ev("view", VICTIM, 10**6, session="late", item_id="i-late"), ev("view", other, 10**6, session="o", item_id="i-o")]
        produce(settings, later)
        producer = KafkaProducer(**settings.kafka.client_options(), acks="all")
        producer.send(settings.kafka.topics.events, key=VICTIM.encode(), value=json.dumps({"not": "an event", "user_id": VICTIM}).encode()).get(10)
        producer.close()
        second = pipeline.run_once()
        assert second.deleted_user_records == 2 and second.users_purged == 1
        assert second.valid == 1 and sum(second.dead_letters.values()) == 0
        assert "deleted users: 1 purged, 2 records dropped" in second.as_text()
        assert not [r for r in _lake_rows(settings) if r["user_id"] == VICTIM]
        assert any(r["user_id"] == other and r["session_id"] == "o" for r in _lake_rows(settings))
        assert VICTIM not in load_state(state_path(settings)).users
        assert _online_sdk(pipeline.store, [VICTIM])["last_seen_unix"] == [None]
        assert TombstoneLedger.load(ledger_path(settings)).deleted == {VICTIM: tombstone.request_id}
        assert _registry_files(settings) == registry_after_delete  # the batch wrote no registry version
        # The invalid record of the user would have been a dead letter carrying its payload.
        assert read_topic(settings.kafka, settings.kafka.topics.dlq) == []

        # -- idempotent: nothing left to remove ----------------------------------------------------
        again = purge_users(settings, {VICTIM})
        assert (again.lake_rows, again.offline_rows, again.online_rows) == (0, 0, 0)
        assert not any(again.state_removed.values())
        assert purge_registry(settings, {VICTIM}) == {}
        assert _registry_files(settings) == registry_after_delete
    finally:
        pipeline.close()


@pytest.mark.redis
def test_redis_online_rows_of_one_user_are_deleted(tmp_path) -> None:
    """Production's online store: the user's Redis hash goes, another user's stays."""
    from features.repo import apply_feature_repo
    from pipelines.feast_sink import feature_frame, push_online
    from features.online import delete_online_rows
    from support import redis_server

    with redis_server() as port:
        settings = Settings(data={"state_dir": str(tmp_path / "state")},
                            feast={"project": "privacy", "online_store": "redis", "redis_connection_string": f"127.0.0.1:{port}"})
        store = apply_feature_repo(settings)
        rows = [_user_row("gone"), _user_row("kept")]
        push_online(store, "user_features", feature_frame("user_features", rows, 1511600000))
        assert _online_sdk(store, ["gone", "kept"])["last_seen_unix"] == [1511600000, 1511600000]

        assert delete_online_rows(settings, {"gone", "never-seen"}) == 1
        assert _online_sdk(store, ["gone", "kept"])["last_seen_unix"] == [None, 1511600000]
        assert delete_online_rows(settings, {"gone"}) == 0


def _user_row(user_id: str) -> dict[str, Any]:
    from features.events import EVENT_TYPES

    row = {"user_id": user_id, "last_seen_unix": 1511600000, "seq_item_ids": ["i1"], "seq_event_types": ["view"],
           "seq_ts_unix": [1511600000], "top_category_ids": ["c1"], "top_category_scores": [1.0]}
    row.update({f"{k}_count_{w}": 1 for k in EVENT_TYPES for w in ("1h", "24h")})
    return row


def test_tombstone_survives_json_round_trip_through_kafka(kafka_broker, tmp_path) -> None:
    """publish_tombstone / read_tombstones over the real broker, offsets advance past what was read."""
    settings = _private_tombstones(pipeline_settings(kafka_broker.settings, tmp_path / "state"))
    first, second = Tombstone.for_user("a"), Tombstone.for_user("b")
    publish_tombstone(settings, first)
    read, offsets = read_tombstones(settings)
    assert read == [first]
    publish_tombstone(settings, second)
    later, offsets = read_tombstones(settings, offsets)
    assert later == [second] and read_tombstones(settings, offsets)[0] == []
    assert json.loads(second.to_json())["user_id"] == "b"


def test_a_pipeline_batch_applies_a_tombstone_but_leaves_the_registry_to_training(kafka_broker, tmp_path) -> None:
    """A deletion that arrives only as a tombstone (the HTTP endpoint's path): the pipeline's batch
    applies it to its own stores and ledger and writes no registry version; training's pass does."""
    settings = _private_tombstones(pipeline_settings(kafka_broker.settings, tmp_path / "state"))
    users = ["a", VICTIM, "c"]
    _register_model(settings, users)
    registry = ModelRegistry(settings.data.state_dir / "registry")
    registered = _registry_files(settings)
    tombstone = Tombstone.for_user(VICTIM, source="admin_api")
    publish_tombstone(settings, tombstone)

    pipeline = FeaturePipeline(settings)
    try:
        summary = pipeline.run_once()
    finally:
        pipeline.close()
    assert summary.users_purged == 1  # the batch read and applied the tombstone...
    assert TombstoneLedger.load(ledger_path(settings)).deleted == {VICTIM: tombstone.request_id}
    assert _registry_files(settings) == registered  # ...and left every registry file as it was
    assert registry.load_latest("lightgcn").manifest["ids"]["user"] == users

    deletions = apply_registry_tombstones(settings)
    assert deletions.users == {VICTIM} and deletions.versions == {"lightgcn": registry.latest_version("lightgcn")}
    assert registry.load_latest("lightgcn").manifest["ids"]["user"] == ["a", "c"]
