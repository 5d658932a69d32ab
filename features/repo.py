"""Applying the Feast repository and opening the feature store, configured from ``Settings``.

Locally: SQLite online store (Feast's, one row per entity: ``features.online_store``), Parquet
(file) offline store, file registry, all under ``feast.repo_dir`` (default ``data.state_dir/feast``).
Production (``deploy/production/feast/``): Redis online store, selected by
``feast.online_store: redis`` only.

Example:
    >>> from streamrec.runtime.config import get_settings
    >>> from features.repo import apply_feature_repo
    >>> store = apply_feature_repo(get_settings())  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from features.entities import ALL_ENTITIES
from features.services import ALL_FEATURE_SERVICES
from features.sources import OFFLINE_DIR, TIMESTAMP_FIELD
from features.views import ALL_FEATURE_VIEWS, JOIN_KEY_OF_VIEW

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

__all__ = ["apply_feature_repo", "feast_repo_dir", "get_feature_store", "offline_dir", "repo_config"]


def feast_repo_dir(settings: Settings) -> Path:
    return Path(settings.feast.repo_dir or settings.data.state_dir / "feast").expanduser().resolve()


def offline_dir(settings: Settings, view_name: str) -> Path:
    """The folder of Parquet files that backs one feature view offline."""
    return feast_repo_dir(settings) / OFFLINE_DIR / view_name


def repo_config(settings: Settings):
    """The Feast ``RepoConfig`` for these settings (what a ``feature_store.yaml`` would say)."""
    from feast.repo_config import RepoConfig

    from features.online_store import STORE_TYPE as SQLITE_STORE_TYPE

    repo = feast_repo_dir(settings)
    if settings.feast.online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.feast.redis_connection_string}
    else:
        # Feast's SQLite store with one row per entity (features/online_store.py): same reads.
        online = {"type": SQLITE_STORE_TYPE, "path": str(repo / "online_store.db")}
    return RepoConfig(
        project=settings.feast.project,
        provider="local",
        registry=str(repo / "registry.db"),
        online_store=online,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=repo,
    )


def get_feature_store(settings: Settings):
    """A ``FeatureStore`` on the applied repository (call ``apply_feature_repo`` once before)."""
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply_feature_repo(settings: Settings):
    """Register entities, views and services (idempotent) and create the offline folders.

    Returns:
        The ``FeatureStore``.
    """
    repo = feast_repo_dir(settings)
    repo.mkdir(parents=True, exist_ok=True)
    for view in ALL_FEATURE_VIEWS:
        folder = offline_dir(settings, view.name)
        folder.mkdir(parents=True, exist_ok=True)
        _ensure_schema_file(folder, view)
    store = get_feature_store(settings)
    store.apply([*ALL_ENTITIES, *ALL_FEATURE_VIEWS, *ALL_FEATURE_SERVICES])
    return store


def arrow_schema(view: Any) -> pa.Schema:
    """The Parquet schema of a view's offline rows: join key, features, event timestamp."""
    from feast.type_map import feast_value_type_to_pa

    fields = [pa.field(JOIN_KEY_OF_VIEW[view.name], pa.string())]
    for feature in view.features:
        fields.append(pa.field(feature.name, feast_value_type_to_pa(feature.dtype.to_value_type())))
    fields.append(pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")))
    return pa.schema(fields)


def _ensure_schema_file(folder: Path, view: Any) -> None:
    # An empty file with the schema, so the folder is a readable dataset before the first push
    # (not "_"-prefixed: dataset readers skip those).
    marker = folder / "empty.parquet"
    if not marker.exists():
        pq.write_table(arrow_schema(view).empty_table(), marker)
