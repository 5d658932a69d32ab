"""Versioned model registry (local directory or pyarrow filesystem URI) with an atomic ``LATEST``.

Example:
    >>> from ray_jobs.registry import ModelRegistry
    >>> model = ModelRegistry("/tmp/registry").load_latest("lightgcn_gowalla")  # doctest: +SKIP
"""

from ray_jobs.registry.model_registry import EMBEDDING_COLUMN, ID_COLUMN, ModelRegistry, RegisteredModel
from ray_jobs.registry.provenance import code_version, data_snapshot_id, describe_data

__all__ = [
    "ModelRegistry",
    "RegisteredModel",
    "ID_COLUMN",
    "EMBEDDING_COLUMN",
    "code_version",
    "data_snapshot_id",
    "describe_data",
]
