"""Registering trained models: the registry itself is the contract in ``features.registry``; this
package adds what only training knows, the provenance stamps (code version, data snapshot), and
dropping deleted users from the registry it writes (``ray_jobs.registry.privacy``).

Example:
    >>> from ray_jobs.registry import ModelRegistry, code_version
    >>> ModelRegistry("/tmp/registry").load_latest("lightgcn_gowalla")  # doctest: +SKIP
"""

from features.registry import EMBEDDING_COLUMN, ID_COLUMN, ModelRegistry, RegisteredModel
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
