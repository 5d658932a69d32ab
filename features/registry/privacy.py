"""Dropping deleted users from a registered model: a new version without their rows.

The latest version's ``user`` embeddings lose the users' rows (and ``ids.user`` their ids), and
every weight tensor with one row per user (a name containing ``user``, first dimension = number of
users: LightGCN/BPR-MF ``user_emb.weight``, CrossCBR ``users``) gets those rows zeroed, so the
weights keep their shapes and still load. The result is registered as a new version and ``LATEST``
moves to it, so serving (which re-reads ``LATEST``) stops personalising for those users.

Older versions keep their rows: they are the rollback history and are removed by the registry's
retention, or by the next retrain, which reads the rewritten lake and so never sees the users.

Called by training, the room that writes the registry (``ray_jobs.registry.privacy``), never by a
feature pipeline batch.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from features.registry.model_registry import ModelRegistry, RegisteredModel

USER_KIND = "user"
_RESERVED = {"name", "version", "created_at", "data_snapshot_id", "code_version", "metrics", "embeddings", "files"}


def _zero_user_rows(weights: bytes, n_users: int, rows: list[int]) -> bytes:
    import torch

    state = torch.load(io.BytesIO(weights), map_location="cpu")
    for name, tensor in state.items():
        if "user" in name and isinstance(tensor, torch.Tensor) and tensor.dim() == 2 and tensor.shape[0] == n_users:
            tensor[rows] = 0
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# Copies of a model whose LATEST moved while they were written, before giving up (see drop_user_rows).
_ATTEMPTS = 3


def drop_user_rows(registry_root: str, model_name: str, user_ids: set[str], version: str | None = None) -> str | None:
    """Register a copy of ``model_name``'s latest version (or ``version``) without ``user_ids``' rows;
    ``LATEST`` moves to the copy.

    A registration that moves ``LATEST`` while the copy of the latest version is written would be
    rolled back by the copy, or keep the users if it read the deletion too early: so the copy is
    made again from the newer version. This narrows the race to the instant between the last check
    and the move; it cannot close it, as the registry has no compare-and-set on ``LATEST``.

    Args:
        registry_root: the registry's root (path or URI).
        model_name: a registered model.
        user_ids: raw user ids (as in the manifest's ``ids.user``).
        version: the version to copy (default: ``LATEST``); registration passes the version it just
            wrote without moving ``LATEST``, so a version with deleted users is never the served one.

    Returns:
        The new version, or None when the version has no row of these users (or no raw user ids,
        in which case rows cannot be matched to users).

    Raises:
        RuntimeError: ``LATEST`` moved during each of the attempts.

    Example:
        >>> drop_user_rows("/tmp/registry", "lightgcn", {"u1"})  # doctest: +SKIP
        '20250101T000000000000Z-abc123'
    """
    registry = ModelRegistry(registry_root)
    if version is not None:
        copy = _copy_without(registry, registry.load(model_name, version), user_ids)
        if copy is not None:
            registry.set_latest(model_name, copy)
        return copy
    for _ in range(_ATTEMPTS):
        source = registry.latest_version(model_name)
        copy = _copy_without(registry, registry.load(model_name, source), user_ids)
        if copy is None:
            return None
        if registry.latest_version(model_name) == source:
            registry.set_latest(model_name, copy)
            return copy
    raise RuntimeError(f"LATEST of {model_name!r} moved during each of {_ATTEMPTS} copies; purge again")


def _copy_without(registry: ModelRegistry, model: RegisteredModel, user_ids: set[str]) -> str | None:
    """Register (without moving ``LATEST``) a copy of ``model`` without the users' rows; None when
    it has none of them."""
    ids: list[str] | None = (model.manifest.get("ids") or {}).get(USER_KIND)
    matrix = model.embeddings.get(USER_KIND)
    if matrix is None or not isinstance(ids, list) or len(ids) != len(matrix):
        return None
    rows = [r for r, user in enumerate(ids) if user in user_ids]
    if not rows:
        return None
    keep = np.ones(len(ids), dtype=bool)
    keep[rows] = False
    embeddings = {**model.embeddings, USER_KIND: matrix[keep]}
    extra: dict[str, Any] = {k: v for k, v in model.manifest.items() if k not in _RESERVED}
    extra["ids"] = {**extra["ids"], USER_KIND: [u for u, k in zip(ids, keep) if k]}
    extra["derived_from"] = {"version": model.version, "dropped_users": len(rows)}
    with tempfile.TemporaryDirectory() as tmp:
        weights_file = None
        if model.weights is not None:
            weights_file = Path(tmp) / "model.pt"
            weights_file.write_bytes(_zero_user_rows(model.weights, len(ids), rows))
        return registry.register(
            model.name, embeddings=embeddings, metrics=model.manifest.get("metrics", {}), config=model.config,
            data_snapshot_id=model.manifest.get("data_snapshot_id", "unknown"),
            code_version=model.manifest.get("code_version", "unknown"), weights_file=weights_file, extra=extra,
            # Artefacts hold no user rows (a next-item model's encoder reads the live sequence).
            artefacts=model.artefacts, set_latest=False,
        )
