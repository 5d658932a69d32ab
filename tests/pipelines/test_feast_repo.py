"""The Feast repository: applied to a temporary directory, a pushed frame is read back online;
names agree with what the pipeline writes; production selects Redis by configuration only."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features.online_store import STORE_TYPE
from features.repo import apply_feature_repo, repo_config
from features.services import ALL_FEATURE_SERVICES
from features.views import ALL_FEATURE_VIEWS, feature_names, user_features
from pipelines.feast_sink import feature_frame, push_online
from streamrec.runtime.config import REPO_ROOT, Settings
from support import redis_server


def _settings(tmp_path: Path, **feast) -> Settings:
    return Settings(data={"state_dir": str(tmp_path / "state")}, feast={"project": "unit", **feast})


def _user_row(user_id: str) -> dict:
    row = {"user_id": user_id, "last_seen_unix": 1511600000, "seq_item_ids": ["i1", "i2"],
           "seq_event_types": ["view", "add_to_cart"], "seq_ts_unix": [1511599000, 1511600000],
           "top_category_ids": ["c1"], "top_category_scores": [1.5]}
    from features.events import EVENT_TYPES

    row.update({f"{k}_count_{w}": 1 for k in EVENT_TYPES for w in ("1h", "24h")})
    return row


def test_apply_push_and_read_online(tmp_path):
    store = apply_feature_repo(_settings(tmp_path))
    assert {fv.name for fv in store.list_feature_views()} == {fv.name for fv in ALL_FEATURE_VIEWS}
    assert {fs.name for fs in store.list_feature_services()} == {"retrieval_v1", "ranking_v1", "bundle_bandit_v1"}
    assert all(fs.name.endswith("_v1") for fs in ALL_FEATURE_SERVICES)
    apply_feature_repo(_settings(tmp_path))  # idempotent

    push_online(store, "user_features", feature_frame("user_features", [_user_row("u1")], 1511600000))
    online = store.get_online_features(
        features=store.get_feature_service("retrieval_v1"), entity_rows=[{"user_id": "u1"}, {"user_id": "nobody"}]
    ).to_dict()
    assert online["seq_item_ids"] == [["i1", "i2"], None]
    assert online["last_seen_unix"] == [1511600000, None]


def test_committed_feature_store_yamls():
    dev = yaml.safe_load((REPO_ROOT / "features/feature_repo/feature_store.yaml").read_text())
    prod = yaml.safe_load((REPO_ROOT / "deploy/production/feast/feature_store.yaml").read_text())
    assert dev["online_store"]["type"] == STORE_TYPE and dev["offline_store"]["type"] == "file"
    assert repo_config(Settings()).online_store.type == STORE_TYPE  # the dev yaml says what Settings say
    assert prod["online_store"]["type"] == "redis" and prod["project"] == dev["project"]
    fragment = yaml.safe_load((REPO_ROOT / "deploy/production/feast/streamrec.yaml").read_text())
    settings = Settings(**fragment)
    assert repo_config(settings).online_store.type == "redis"


@pytest.mark.redis
def test_redis_online_store_by_configuration_only(tmp_path):
    with redis_server() as port:
        settings = _settings(tmp_path, online_store="redis", redis_connection_string=f"127.0.0.1:{port}")
        store = apply_feature_repo(settings)
        push_online(store, "user_features", feature_frame("user_features", [_user_row("u7")], 1511600000))
        online = store.get_online_features(features=["user_features:seq_item_ids"], entity_rows=[{"user_id": "u7"}]).to_dict()
        assert online["seq_item_ids"] == [["i1", "i2"]]
        refs = [f"{user_features.name}:{name}" for name in feature_names(user_features)]
        assert_reader_matches(store, refs, ["u7", "nobody"])


def _online_table(store, view_name: str) -> list[tuple]:
    """The view's online rows: entity key, {feature: Value bytes}, event and created time."""
    import sqlite3

    from feast.protos.feast.types.Value_pb2 import Map

    db = sqlite3.connect(store.config.online_store.path)
    try:
        rows = db.execute(
            f'SELECT entity_key, features, event_ts, created_ts FROM "{store.project}_{view_name}" ORDER BY entity_key'
        ).fetchall()
    finally:
        db.close()
    return [(key, {name: value.SerializeToString() for name, value in Map.FromString(blob).val.items()}, event, created)
            for key, blob, event, created in rows]


def test_online_write_stores_what_feast_push_stores(tmp_path):
    """``push_online`` builds the value protos itself: the online store must hold the same values (the
    same bytes per value) as after Feast's own ``store.push``, and ``get_online_features`` must read
    the same values."""
    import apache_beam as beam
    from feast.data_source import PushMode
    from pipeline_support import mixed_events

    from features.events import event_to_json, parse_event
    from features.views import JOIN_KEY_OF_VIEW, PUSH_SOURCE_OF_VIEW
    from pipelines.accumulators import FeatureSpec
    from pipelines.records import KafkaRecord
    from pipelines.runner import compute_batch
    from pipelines.state_store import PipelineState

    records = [KafkaRecord("events", 0, i, 0, b"k", event_to_json(parse_event(e))) for i, e in enumerate(mixed_events())]
    result = compute_batch(beam.Create(records), PipelineState(), FeatureSpec(), ["--runner=DirectRunner"])
    rows = {view: list(r) for view, r in result.features.items()}
    # Nulls and empty lists: an int column with a null becomes float in pandas.
    rows["user_features"].append({**_user_row("u-null"), "last_seen_unix": None, "seq_item_ids": [],
                                  "seq_ts_unix": [], "top_category_scores": None})
    ours = apply_feature_repo(_settings(tmp_path / "ours"))
    feast = apply_feature_repo(_settings(tmp_path / "feast"))
    for view in ALL_FEATURE_VIEWS:
        assert rows[view.name], view.name
        frame = feature_frame(view.name, rows[view.name], result.as_of)
        push_online(ours, view.name, frame)
        feast.push(PUSH_SOURCE_OF_VIEW[view.name], frame, to=PushMode.ONLINE)
        assert _online_table(ours, view.name) == _online_table(feast, view.name), view.name
        key = JOIN_KEY_OF_VIEW[view.name]
        entity_rows = [{key: row[key]} for row in rows[view.name]]
        refs = [f"{view.name}:{f.name}" for f in view.features]
        read = [s.get_online_features(features=refs, entity_rows=entity_rows).to_dict() for s in (ours, feast)]
        assert read[0] == read[1], view.name
        assert read[0][refs[0].split(":")[1]][0] is not None, view.name
        assert_reader_matches(ours, refs, [row[key] for row in rows[view.name]] + ["nobody"])


def assert_reader_matches(store, refs: list[str], entity_values: list[str]) -> None:
    """``OnlineReader`` (what serving reads with) gives what ``get_online_features`` gives, less the
    join key and the features an entity does not have."""
    from features.online import OnlineReader

    reader = OnlineReader(store, refs)
    asked = [list(features) for _, features in reader._views]
    for value in entity_values:
        feast = store.get_online_features(features=refs, entity_rows=[{reader.join_key: value}]).to_dict()
        expected = {k: v[0] for k, v in feast.items() if k != reader.join_key and v[0] is not None}
        assert reader.read(value) == expected, value
    # Feast's Redis store appends "_ts:<view>" to the list it is given: a reader that handed over
    # its own list asked for one more field on every read.
    assert [features for _, features in reader._views] == asked
