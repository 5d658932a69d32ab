"""The online store's face: one entity's features read the way serving reads them on every
request (``OnlineReader``), and a user's rows deleted (``delete_online_rows``).

``OnlineReader(store, refs).read(value)`` returns ``{feature name: Python value}`` for one entity key,
the values ``store.get_online_features(features=refs, entity_rows=[{key: value}]).to_dict()`` gives
(parity tests: tests/pipelines/test_feast_repo.py, on SQLite and Redis), through the provider's ``online_read``, which is also
where ``get_online_features`` ends. Why not ``get_online_features`` itself: per call it parses the
refs, looks the views up in the registry, groups them, builds a ``GetOnlineFeaturesResponse`` proto
and converts it back to Python: ~0.7 ms of Python around a ~0.3 ms Redis read (bench-pipeline). A
reader's refs are fixed, so that work is done once, in ``__init__``. The online store's own read
(SQLite, Redis) and its keys are Feast's, unchanged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.views import JOIN_KEY_OF_VIEW, USER_KEYED_VIEWS

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["OnlineReader", "delete_online_rows"]

# The value kinds our views hold, converted directly: Feast's converter walks a chain of special
# cases (JSON, maps, timestamps) first, a sixth of a Redis read. Any other kind goes to Feast's.
_SCALAR_KINDS = frozenset({"int64_val", "int32_val", "double_val", "float_val", "string_val", "bool_val"})
_LIST_KINDS = frozenset({"int64_list_val", "int32_list_val", "double_list_val", "float_list_val",
                         "string_list_val", "bool_list_val"})


def _python_value(value: Any) -> Any:
    """The Python value of a Feast value proto; None for an unset (null) one."""
    kind = value.WhichOneof("val")
    if kind is None:
        return None
    if kind in _SCALAR_KINDS:
        return getattr(value, kind)
    if kind in _LIST_KINDS:
        return list(getattr(value, kind).val)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)


class OnlineReader:
    """Reads fixed feature refs (``"view:feature"``) of one entity per call."""

    def __init__(self, store: Any, refs: Sequence[str]) -> None:
        by_view: dict[str, list[str]] = {}
        for ref in refs:
            view_name, _, feature = ref.partition(":")
            if not feature:
                raise ValueError(f"feature ref {ref!r} is not 'view:feature'")
            by_view.setdefault(view_name, []).append(feature)
        unknown = sorted(set(by_view) - set(JOIN_KEY_OF_VIEW))
        if unknown:
            raise ValueError(f"unknown feature views {unknown}; known: {sorted(JOIN_KEY_OF_VIEW)}")
        join_keys = {JOIN_KEY_OF_VIEW[v] for v in by_view}
        if len(join_keys) != 1:
            raise ValueError(f"refs {list(refs)} span entities {sorted(join_keys)}: one reader reads one entity")
        self.join_key = join_keys.pop()
        self._store = store
        self._views = [(store.get_feature_view(name, allow_registry_cache=True), features)
                       for name, features in by_view.items()]

    def read(self, entity_value: str) -> dict[str, Any]:
        """Feature name -> value for ``entity_value``; a feature the store does not hold is absent."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        key = EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=entity_value)])
        provider, config = self._store.provider, self._store.config
        out: dict[str, Any] = {}
        for view, features in self._views:
            # A copy: Feast's Redis store appends its "_ts:<view>" field to the list it is given.
            [(_, values)] = provider.online_read(config, view, [key], list(features))
            for name in features:
                proto = values.get(name) if values else None
                value = None if proto is None else _python_value(proto)
                if value is not None:
                    out[name] = value
        return out


def _entity_keys(users: set[str]) -> list[Any]:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    from features.entities import user

    return [EntityKey(join_keys=[user.join_key], entity_values=[Value(string_val=u)]) for u in sorted(users)]


def delete_online_rows(settings: Settings, users: set[str]) -> int:
    """Delete the online rows of ``users`` (SQLite: feature rows; Redis: entity hashes); how many.

    Feast has no public call that deletes one entity's rows, so this is where streamrec reaches
    into its online stores' key layout (the SQLite table ids, Redis's hash names): in the
    contract, next to the reads, so that no other room depends on Feast's internals.
    """
    from features.repo import repo_config

    config = repo_config(settings)
    keys = _entity_keys(users)
    if settings.feast.online_store == "redis":
        return _purge_redis(config, keys)
    return _purge_sqlite(config, keys)


def _purge_sqlite(config: Any, keys: list[Any]) -> int:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import compute_table_id

    path = Path(config.online_store.path)
    if not path.exists():
        return 0
    blobs = [(serialize_entity_key(k, entity_key_serialization_version=config.entity_key_serialization_version),) for k in keys]
    versioning = config.registry.enable_online_feature_view_versioning
    removed = 0
    # timeout: the pipeline's own Feast connection may be writing at the same moment.
    with sqlite3.connect(path, timeout=30) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for view in USER_KEYED_VIEWS:
            table = compute_table_id(config.project, view, versioning)
            if table in tables:
                removed += conn.executemany(f'DELETE FROM "{table}" WHERE entity_key = ?', blobs).rowcount
    return removed


def _purge_redis(config: Any, keys: list[Any]) -> int:
    from feast.infra.online_stores.helpers import _redis_key
    from feast.infra.online_stores.redis import RedisOnlineStore

    # Feast keeps all views of one entity in one hash named by the serialized entity key + project;
    # the user entity has only user-keyed views, so the whole hash is the user's. Feast's client
    # factory parses the same connection string the feature store uses.
    client = RedisOnlineStore()._get_client(config.online_store)
    names = [_redis_key(config.project, k, config.entity_key_serialization_version) for k in keys]
    return int(client.delete(*names)) if names else 0
