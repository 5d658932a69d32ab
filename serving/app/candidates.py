"""Plain (Ray-free) pieces of the recommender app: embeddings, registry and Feast access, bundle
candidates and user contexts. Every external source is optional: a missing model registry, a
missing Feast store or an empty feature row falls back to hashed vectors and popularity.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from features import entities

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

log = logging.getLogger(__name__)

_ID_PATTERN = r"^[\x21-\x7e]+$"


class BundleSpec(BaseModel):
    """A catalogue bundle from configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=_ID_PATTERN)
    items: tuple[str, ...] = Field(min_length=1, max_length=20)
    category: str | None = None


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached and shared between requests: nobody may change it
    return array


# Cached: a request asks for the same few thousand keys again and again, and seeding a generator
# costs more than the vector itself.
@functools.lru_cache(maxsize=1 << 16)
def hashed_vector(key: str, dim: int) -> np.ndarray:
    """A deterministic unit vector for ``key`` (same in every process; no model needed). Cached:
    seeding a generator costs tens of µs, and a cold-start request asks for dozens (read-only)."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dim)
    return _read_only(v / max(float(np.linalg.norm(v)), 1e-12))


# The contract's bundle id (features.entities), cached: a request builds hundreds of bundles.
bundle_id_for = functools.lru_cache(maxsize=1 << 16)(entities.bundle_id_for)


# -- model registry ---------------------------------------------------------------------------


@dataclass
class EmbeddingTable:
    """Embeddings of one kind from a registered model, with raw ids when the model ships them."""

    model: str
    version: str
    ids: list[str]
    matrix: np.ndarray  # (n, d) float32 as registered
    row_of: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row_of = {i: r for r, i in enumerate(self.ids)}


def _ids_from(model: Any, kind: str, n: int) -> list[str]:
    """Raw ids of the rows: from the manifest / config when present, else the row number."""
    for source in (model.manifest, model.config):
        for key in (f"{kind}_ids", "ids"):
            value = source.get(key) if isinstance(source, dict) else None
            if isinstance(value, dict):
                value = value.get(kind)
            if isinstance(value, list) and len(value) == n:
                return [str(v) for v in value]
    return [str(r) for r in range(n)]


def registered_version(registry_root: str | Path, model_name: str) -> str | None:
    """The version ``LATEST`` of ``model_name`` points at, or None when nothing is registered
    (never raises): one small read, so a refresh reloads a model only when it changed."""
    root = str(registry_root)
    if "://" not in root and not (Path(root) / model_name / "LATEST").is_file():
        return None  # checked first: ModelRegistry() would create the root directory
    try:
        from features.registry import ModelRegistry

        return ModelRegistry(root).latest_version(model_name)
    except (FileNotFoundError, OSError, ValueError, ImportError):
        return None


def reload_embeddings(current: EmbeddingTable | None, registry_root: str | Path, model_name: str,
                      kind: str) -> EmbeddingTable | None:
    """``current`` while ``LATEST`` still names its version, else the newly registered table."""
    version = registered_version(registry_root, model_name)
    if version is None:
        return None
    if current is not None and current.model == model_name and current.version == version:
        return current
    return load_embeddings(registry_root, model_name, kind, version)


def load_embeddings(registry_root: str | Path, model_name: str, kind: str,
                    version: str | None = None) -> EmbeddingTable | None:
    """The ``kind`` embeddings of ``model_name`` at ``version`` (default: the one ``LATEST`` names),
    or None (never raises)."""
    try:
        version = version or registered_version(registry_root, model_name)
        if version is None:
            return None
        from features.registry import ModelRegistry  # optional: absent or changing is a cold start

        model = ModelRegistry(str(registry_root)).load(model_name, version)
        matrix = model.embeddings.get(kind)
        if matrix is None or matrix.ndim != 2 or matrix.shape[0] == 0 or not np.all(np.isfinite(matrix)):
            return None
        ids = _ids_from(model, kind, matrix.shape[0])
        extra: dict[str, Any] = {}
        for source in (model.manifest, model.config):
            items = source.get("bundle_items") if isinstance(source, dict) else None
            if isinstance(items, list) and len(items) == matrix.shape[0]:
                extra["bundle_items"] = [tuple(str(x) for x in b) for b in items]
        return EmbeddingTable(model_name, model.version, ids, np.asarray(matrix, dtype=np.float32), extra=extra)
    except Exception as exc:  # noqa: BLE001 - a broken or half-written registry is a cold start
        log.warning("no %s embeddings of %s under %s: %s", kind, model_name, registry_root, exc)
        return None


# -- Feast -----------------------------------------------------------------------------------


class FeastReader:
    """Online feature reads through Feast when a store was applied; None / {} otherwise."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._store: Any = None
        self._readers: dict[tuple[str, ...], Any] = {}  # one OnlineReader per refs: its set-up is per refs
        self._checked_at = -math.inf
        # Imported now (it imports Feast: seconds), so that the replica's start pays for it and not
        # its first request, which would stall every request queued behind it.
        import features.repo  # noqa: F401

    def _get_store(self) -> Any:
        if self._store is not None:
            return self._store
        if time.monotonic() - self._checked_at < self._settings.serving.refresh_s:
            return None
        self._checked_at = time.monotonic()
        try:
            from features.repo import feast_repo_dir, get_feature_store

            repo = feast_repo_dir(self._settings)
            if self._settings.feast.online_store == "sqlite" and not (repo / "registry.db").exists():
                return None
            self._store = get_feature_store(self._settings)
        except Exception as exc:  # noqa: BLE001 - no Feast is a cold start
            log.info("Feast not available: %s", exc)
            self._store = None
        return self._store

    def online(self, refs: list[str], key: str, value: str) -> dict[str, Any]:
        """Feature name -> value of one entity (missing / None values dropped)."""
        store = self._get_store()
        if store is None:
            return {}
        try:
            reader = self._readers.get(tuple(refs))
            if reader is None:
                from features.online import OnlineReader

                reader = self._readers[tuple(refs)] = OnlineReader(store, refs)
            if reader.join_key != key:
                raise ValueError(f"refs {refs} are keyed by {reader.join_key!r}, not {key!r}")
            return reader.read(value)
        except Exception as exc:  # noqa: BLE001 - a failed read serves the fallbacks, never an error
            log.warning("Feast online read failed: %s", exc)
            return {}

    def user(self, user_id: str | None) -> dict[str, Any]:
        """Feast user features (empty without Feast / for an unknown user)."""
        return self.online(USER_REFS, "user_id", user_id) if user_id else {}

    def cooccurring(self, item_id: str) -> list[str]:
        """Items bought together with ``item_id`` in sessions (Feast co-occurrence), best first."""
        row = self.online(COOCCURRENCE_REFS, "item_id", item_id)
        return [i for i in (row.get("co_item_ids") or []) if isinstance(i, str)]


USER_REFS = [
    *(f"user_features:{t}_count_24h" for t in ("view", "add_to_cart", "purchase", "click", "impression")),
    "user_features:top_category_ids",
    "user_features:top_category_scores",
    "user_features:seq_item_ids",
    # what the user did to each item of the sequence: the ranker's reasons ("because you bought X")
    "user_features:seq_event_types",
    "user_features:last_seen_unix",  # the bandit's recency feature
]
COOCCURRENCE_REFS = ["item_cooccurrence:cross_item_ids", "item_cooccurrence:cross_scores", "item_cooccurrence:co_item_ids"]
