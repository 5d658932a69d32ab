"""Embeddings a replica serves with: the registered models' tables, read from the model registry
and reloaded only when ``LATEST`` changes (:class:`ReplicaEmbeddings` holds one replica's item,
user and bundle tables and the queries over them), and deterministic hashed vectors for when no
model is registered. A missing or half-written registry is a cold start, never an error.
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

from serving.recommend import ExactTopK

if TYPE_CHECKING:
    from streamrec.runtime.config import Settings

log = logging.getLogger(__name__)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # cached and shared between requests: nobody may change it
    return array


@functools.lru_cache(maxsize=1 << 16)
def hashed_vector(key: str, dim: int) -> np.ndarray:
    """A deterministic unit vector for ``key`` (same in every process; no model needed). Cached:
    seeding a generator costs tens of µs, and a cold-start request asks for dozens (read-only)."""
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    v = np.random.default_rng(seed).standard_normal(dim)
    return _read_only(v / max(float(np.linalg.norm(v)), 1e-12))


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


# -- a replica's embeddings ------------------------------------------------------------------


class ReplicaEmbeddings:
    """Item / bundle / user embeddings of the registered models, re-read every ``refresh_s``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.root = settings.registry_root
        self.item: EmbeddingTable | None = None
        self.user: EmbeddingTable | None = None
        self.bundle: EmbeddingTable | None = None
        # The bundle model's user vectors: a user row . a bundle row is the model's score (CrossCBR Eq. 7).
        self.bundle_user: EmbeddingTable | None = None
        self._bundles_of_item: tuple[EmbeddingTable | None, dict[str, list[int]]] = (None, {})
        self.item_index: ExactTopK | None = None
        self._loaded_at = -math.inf

    def refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._settings.serving.refresh_s:
            return
        self._loaded_at = time.monotonic()
        s = self._settings.serving
        item = reload_embeddings(self.item, self.root, s.item_model, "item")
        if item is not None and item is not self.item:
            self.item_index = ExactTopK(item.matrix)
        self.item = item
        if item is None:
            self.item_index = None
        self.user = reload_embeddings(self.user, self.root, s.item_model, "user")
        self.bundle = reload_embeddings(self.bundle, self.root, s.bundle_model, "bundle")
        self.bundle_user = reload_embeddings(self.bundle_user, self.root, s.bundle_model, "user")

    def bundle_rows_for(self, user_id: str | None, seed_item: str | None, n: int) -> tuple[list[int], str]:
        """Rows of the bundle model's bundles for a request, best first, and why: the model's top
        ``n`` for a user it knows (personalised); else the bundles holding the seed item; else the
        bundles nearest the seed in the item model's space (when the dimensions agree); else none."""
        table = self.bundle
        if table is None or n <= 0:
            return [], ""
        users = self.bundle_user
        if user_id is not None and users is not None and user_id in users.row_of and users.matrix.shape[1] == table.matrix.shape[1]:
            scores = table.matrix @ users.matrix[users.row_of[user_id]]
            top = np.argpartition(-scores, min(n, len(scores) - 1))[:n] if len(scores) > n else np.arange(len(scores))
            return [int(r) for r in top[np.argsort(-scores[top], kind="stable")]], "for you"
        if seed_item is not None:
            holding = self._bundle_rows_holding(table).get(seed_item)
            if holding:
                return holding[:n], f"with {seed_item}"
            item = self.item
            if item is not None and seed_item in item.row_of and item.matrix.shape[1] == table.matrix.shape[1]:
                scores = table.matrix @ item.matrix[item.row_of[seed_item]]
                return [int(r) for r in np.argsort(-scores)[:n]], f"near {seed_item}"
        return [], ""

    def _bundle_rows_holding(self, table: EmbeddingTable) -> dict[str, list[int]]:
        """item id -> rows of the bundles that hold it (per loaded version of the bundle model)."""
        if self._bundles_of_item[0] is not table:
            index: dict[str, list[int]] = {}
            for row, items in enumerate(table.extra.get("bundle_items") or ()):
                for item in items:
                    index.setdefault(item, []).append(row)
            self._bundles_of_item = (table, index)
        return self._bundles_of_item[1]

    def bundle_scores(self, user_id: str | None, bundle_ids: list[str]) -> dict[str, float]:
        """The bundle model's score (user . bundle) of the bundles it knows, for a user it knows."""
        table, users = self.bundle, self.bundle_user
        if table is None or users is None or user_id is None or user_id not in users.row_of:
            return {}
        if users.matrix.shape[1] != table.matrix.shape[1]:
            return {}
        rows = [(b, table.row_of[b]) for b in bundle_ids if b in table.row_of]
        if not rows:
            return {}
        scores = table.matrix[[r for _, r in rows]] @ users.matrix[users.row_of[user_id]]
        return {b: float(x) for (b, _), x in zip(rows, scores)}

    def user_query(self, user_id: str | None, history: list[str]) -> tuple[np.ndarray, str] | None:
        """The user in the item model's space, and why: their user row when the model knows them
        (and the dimensions agree), else the mean of their last 10 known items; None without either."""
        table, users = self.item, self.user
        if table is None:
            return None
        if users is not None and user_id in users.row_of and users.matrix.shape[1] == table.matrix.shape[1]:
            return users.matrix[users.row_of[user_id]], "for you"
        recent = [table.row_of[i] for i in history if i in table.row_of][-10:]
        if recent:
            return table.matrix[recent].mean(axis=0), "based on your recent items"
        return None

    def item_affinity(self, user_id: str | None, history: list[str], items: set[str]) -> dict[str, float]:
        """The item model's (LightGCN) affinity of the user with each known item: ``user_query`` . item."""
        table, found = self.item, self.user_query(user_id, history)
        if table is None or found is None:
            return {}
        query, row_of = found[0], table.row_of
        known = [i for i in items if i in row_of]
        if not known:
            return {}
        scores = table.matrix[list(map(row_of.__getitem__, known))] @ query
        return dict(zip(known, scores.tolist()))
