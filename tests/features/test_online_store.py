"""``BulkSqliteOnlineStore`` (one row per entity) reads back exactly what Feast's ``SqliteOnlineStore``
(one row per feature) reads after the same writes: ``online_read`` and ``get_online_features``."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from feast import FeatureStore
from feast.infra.online_stores.helpers import compute_table_id
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.repo_config import RepoConfig
from feast.value_type import ValueType

from features.entities import ALL_ENTITIES
from features.online_store import STORE_TYPE, BulkSqliteOnlineStore
from features.repo import apply_feature_repo
from features.services import ALL_FEATURE_SERVICES
from features.views import ALL_FEATURE_VIEWS, JOIN_KEY_OF_VIEW
from pipelines.feast_sink import feature_frame, feature_frame_at, online_rows
from streamrec.runtime.config import Settings

AS_OF = 1511600000.0


def _open(root: Path, store_type: str, online: dict[str, Any]) -> FeatureStore:
    """A store of ``store_type`` on a repo applied under ``root`` (re-applied with the options)."""
    base = apply_feature_repo(Settings(data={"state_dir": str(root)}, feast={"project": "unit"})).config
    config = RepoConfig(
        project=base.project,
        provider="local",
        registry=base.registry.path,
        online_store={"type": store_type, "path": base.online_store.path, **online},
        offline_store={"type": "file"},
        entity_key_serialization_version=base.entity_key_serialization_version,
        repo_path=base.repo_path,
    )
    if store_type != STORE_TYPE:  # the tables apply_feature_repo made are of our layout
        Path(base.online_store.path).unlink()
    store = FeatureStore(config=config)
    if online or store_type != STORE_TYPE:
        store.apply([*ALL_ENTITIES, *ALL_FEATURE_VIEWS, *ALL_FEATURE_SERVICES])
    return store


def _value(value_type: ValueType, i: int, j: int, seed: int) -> Any:
    """A value of the column's type; scalars repeat (shared protos), lists may be empty."""
    n = (i + j + seed) % 4
    by_type = {
        ValueType.INT64: (i * 7 + j + seed) % 5,
        ValueType.DOUBLE: ((i + j + seed) % 4) / 3,
        ValueType.STRING: f"s{(i + seed) % 3}",
        ValueType.INT64_LIST: [i * 10 + k + seed for k in range(n)],
        ValueType.DOUBLE_LIST: [(k + seed) / 7 for k in range(n)],
        ValueType.STRING_LIST: [f"v{i}-{k}-{seed}" for k in range(n)],
        ValueType.BOOL_LIST: [(k + seed) % 2 == 0 for k in range(n)],
    }
    return by_type[value_type]  # KeyError: a new column type wants a case here


def _rows(view: Any, ids: range, seed: int) -> list[dict[str, Any]]:
    """Rows of ``view``; every fifth row has nulls only (Feast's empty Value)."""
    key = JOIN_KEY_OF_VIEW[view.name]
    rows = []
    for i in ids:
        row: dict[str, Any] = {key: f"k{i}"}
        for j, feature in enumerate(view.features):
            row[feature.name] = None if (i + seed) % 5 == 0 else _value(feature.dtype.to_value_type(), i, j, seed)
        rows.append(row)
    return rows


def _batches(view: Any) -> list[list[tuple[Any, ...]]]:
    """Three batches as Feast hands them to a store: a first write; an upsert over it with changed
    values, new keys, a key twice and a time per row; aware times with created times."""
    first = online_rows(view, feature_frame(view.name, _rows(view, range(30), 0), AS_OF))
    # k21 and k22 twice: the later row wins (k22's later row is all nulls).
    rows = _rows(view, range(20, 42), 1) + _rows(view, range(21, 22), 2) + _rows(view, range(22, 23), 3)
    times = [AS_OF + 60 * i for i in range(len(rows))]
    second = online_rows(view, feature_frame_at(view.name, rows, times))
    berlin = timezone(timedelta(hours=1))
    third = [(key, values, datetime.fromtimestamp(AS_OF + 7200, tz=berlin), datetime.fromtimestamp(AS_OF + 7300, tz=timezone.utc))
             for key, values, _, _ in online_rows(view, feature_frame(view.name, _rows(view, range(25, 31), 3), 0.0))]
    return [first, second, third]


def _reads(store: FeatureStore, view: Any) -> tuple[Any, Any]:
    """Feast's ``online_read`` (values in order, times) and ``get_online_features`` of every key."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    key = JOIN_KEY_OF_VIEW[view.name]
    ids = [f"k{i}" for i in range(45)]
    entity_keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=i)]) for i in ids]
    read = store.provider.online_read(store.config, view, entity_keys)
    in_order = [(ts, None if values is None else list(values.items())) for ts, values in read]
    refs = [f"{view.name}:{f.name}" for f in view.features]
    online = store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
    return in_order, online


def _table_columns(store: FeatureStore, view: Any) -> list[str]:
    table = compute_table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning)
    with sqlite3.connect(store.config.online_store.path) as db:
        return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def test_reads_what_feasts_store_reads(tmp_path):
    stock = _open(tmp_path / "stock", "sqlite", {})
    bulk = _open(tmp_path / "bulk", STORE_TYPE, {})
    assert type(stock.provider.online_store) is SqliteOnlineStore
    assert type(bulk.provider.online_store) is BulkSqliteOnlineStore
    for view in ALL_FEATURE_VIEWS:
        assert _table_columns(bulk, view) == ["entity_key", "features", "event_ts", "created_ts"], view.name
        for batch in _batches(view):
            for store in (stock, bulk):
                store.provider.online_write_batch(store.config, view, batch, progress=None)
            assert _reads(bulk, view) == _reads(stock, view), view.name
        read, _ = _reads(bulk, view)
        assert read[44] == (None, None) and read[0][1] is not None  # k44 was never written


def test_column_wise_writes_store_what_row_writes_store(tmp_path):
    """``online_write_columns`` (what the pipeline's push uses on this store) leaves the same table
    and reads as ``online_write_batch`` of the same rows: upserts, a key twice, nulls, a time per row."""
    from pipelines.feast_sink import _event_times, feature_columns

    rows_store = _open(tmp_path / "rows", STORE_TYPE, {})
    columns_store = _open(tmp_path / "columns", STORE_TYPE, {})
    for view in ALL_FEATURE_VIEWS:
        key = JOIN_KEY_OF_VIEW[view.name]
        frames = [feature_frame(view.name, _rows(view, range(30), 0), AS_OF)]
        rows = _rows(view, range(20, 42), 1) + _rows(view, range(21, 22), 2) + _rows(view, range(22, 23), 3)
        frames.append(feature_frame_at(view.name, rows, [AS_OF + 60 * i for i in range(len(rows))]))
        for frame in frames:
            rows_store.provider.online_write_batch(rows_store.config, view, online_rows(view, frame), progress=None)
            columns_store.provider.online_store.online_write_columns(
                columns_store.config, view, key, frame[key].tolist(), feature_columns(view, frame), _event_times(frame))
            assert _reads(columns_store, view) == _reads(rows_store, view), view.name
            assert _table_rows(columns_store, view) == _table_rows(rows_store, view), view.name


def _table_rows(store: FeatureStore, view: Any) -> list[tuple[Any, ...]]:
    table = compute_table_id(store.project, view, store.config.registry.enable_online_feature_view_versioning)
    with sqlite3.connect(store.config.online_store.path) as db:
        return db.execute(f'SELECT * FROM "{table}" ORDER BY entity_key').fetchall()


def test_reads_more_keys_than_sqlite_binds_at_once(tmp_path):
    store = _open(tmp_path / "bulk", STORE_TYPE, {})
    view = ALL_FEATURE_VIEWS[0]
    store.provider.online_write_batch(store.config, view, _batches(view)[0], progress=None)
    expected = _reads(store, view)
    store.provider.online_store._get_conn(store.config).setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)
    assert _reads(store, view) == expected


def test_update_replaces_a_table_of_feasts_layout(tmp_path):
    """A database written by Feast's store (an older streamrec) gets this store's tables on apply."""
    stock = _open(tmp_path / "repo", "sqlite", {})
    view = ALL_FEATURE_VIEWS[0]
    stock.provider.online_write_batch(stock.config, view, _batches(view)[0], progress=None)
    assert "feature_name" in _table_columns(stock, view)
    bulk = _open(tmp_path / "repo", STORE_TYPE, {})  # apply_feature_repo applies with this type
    assert _table_columns(bulk, view) == ["entity_key", "features", "event_ts", "created_ts"]
    bulk.provider.online_write_batch(bulk.config, view, _batches(view)[0], progress=None)
    assert _reads(bulk, view)[0][0][1] is not None


def test_bulk_reports_progress_once_per_batch(tmp_path):
    store = apply_feature_repo(Settings(data={"state_dir": str(tmp_path)}, feast={"project": "unit"}))
    view = ALL_FEATURE_VIEWS[0]
    calls: list[int] = []
    batch = _batches(view)[0]
    store.provider.online_write_batch(store.config, view, batch, progress=calls.append)
    assert calls == [len(batch)]


@pytest.mark.parametrize("online", [{"vector_enabled": True}, {"enable_openai_compatible_store": True}],
                         ids=["vector", "value_num"])
def test_options_of_feasts_layout_are_refused(tmp_path, online):
    with pytest.raises(ValueError, match="use type 'sqlite'"):
        _open(tmp_path / "bulk", STORE_TYPE, online)


def test_encoded_maps_parse_back_to_the_values():
    from feast.protos.feast.types.Value_pb2 import Map, StringList, Value

    from features.online_store import _map_bytes

    shared = Value(int64_val=3)
    rows = [
        {"a": shared, "b": Value(), "long": Value(string_val="x" * 300), "é": shared},
        {"a": shared, "list": Value(string_list_val=StringList(val=["p", "q"])), "b": Value(double_val=0.5)},
        {},
    ]
    entries: dict = {}
    for values in rows:
        assert Map.FromString(_map_bytes(values, entries)) == Map(val=values)


@pytest.mark.parametrize("version", [3, 2])
def test_entity_keys_are_feasts(version):
    """The column-wise write serializes string entity keys itself: the same bytes as Feast's."""
    import warnings

    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.online_store import _string_entity_keys

    ids = ["1003646", "", "ü-ß-漢字", "x" * 300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Feast warns on version 2
        expected = [serialize_entity_key(EntityKey(join_keys=["item_id"], entity_values=[Value(string_val=i)]),
                                         entity_key_serialization_version=version) for i in ids]
        assert _string_entity_keys("item_id", ids, version) == expected


def test_coded_columns_hold_the_protos_feast_converts_each_row_to():
    """``feature_columns`` (one proto per distinct value) hold, row by row, the ``Value`` Feast's
    own conversion makes of the same frame's values: nulls and NaNs (an int column with a null
    reads back as float) an empty ``Value``, ints as ints, repeated values equal."""
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import python_values_to_proto_values

    from pipelines.feast_sink import feature_columns

    for view in ALL_FEATURE_VIEWS:
        frame = feature_frame(view.name, _rows(view, range(40), 1), AS_OF)
        for feature in view.features:
            value_type = feature.dtype.to_value_type()
            coded = feature_columns(view, frame)[feature.name].values()
            values = [None if v is None or v != v else v for v in frame[feature.name].tolist()]
            expected = [Value() if v is None else python_values_to_proto_values([v], value_type)[0] for v in values]
            assert coded == expected, (view.name, feature.name)
            assert any(v is None for v in values) and len({p.SerializeToString() for p in coded}) > 1
