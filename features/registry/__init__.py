"""The model registry: the contract between training (which registers versions, including the
versions without deleted users: ``ray_jobs.registry.privacy``) and serving and the report (which
read them). Versioned, on a local directory or a pyarrow filesystem URI, with an atomic
``LATEST``. Provenance stamps are the trainer's (``ray_jobs.registry.provenance``).

Example:
    >>> from features.registry import ModelRegistry
    >>> model = ModelRegistry("/tmp/registry").load_latest("lightgcn_gowalla")  # doctest: +SKIP
"""

from features.registry.model_registry import EMBEDDING_COLUMN, ID_COLUMN, ModelRegistry, RegisteredModel

__all__ = ["EMBEDDING_COLUMN", "ID_COLUMN", "ModelRegistry", "RegisteredModel"]
