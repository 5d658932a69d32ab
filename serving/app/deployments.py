"""`Features` (feature fetch + bundle candidates) and `ItemRanker` (item recommendations).

Both fall back cleanly: with no registered model, embeddings are deterministic hashed vectors;
with no Feast store, user contexts are zero and co-occurrence bundles are built from the popular
items the learner counts from the event log.
"""

import logging
import math
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.app.args import RecommenderArgs
from serving.app.candidates import (
    COOCCURRENCE_REFS,
    USER_REFS,
    Candidate,
    EmbeddingTable,
    FeastReader,
    bundle_id_for,
    hashed_vector,
    load_embeddings,
    normalize_rows,
    projection,
    user_context,
)
from serving.recommend import ExactTopK, cross_category_quota, mmr

log = logging.getLogger("ray.serve")

POPULARITY_CACHE_S = 2.0


class _Embeddings:
    """Item / bundle / user embeddings of the registered models, re-read every ``refresh_s``."""

    def __init__(self, settings: Any) -> None:
        self._settings = settings
        s = settings.serving
        self.root = s.registry_root or str(settings.data.state_dir / "registry")
        self.item: EmbeddingTable | None = None
        self.user: EmbeddingTable | None = None
        self.bundle: EmbeddingTable | None = None
        self.item_index: ExactTopK | None = None
        self._loaded_at = -math.inf

    def refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._settings.serving.refresh_s:
            return
        self._loaded_at = time.monotonic()
        s = self._settings.serving
        item = load_embeddings(self.root, s.item_model, "item")
        if item is not None and (self.item is None or item.version != self.item.version):
            self.item_index = ExactTopK(item.matrix)
        self.item = item
        if item is None:
            self.item_index = None
        self.user = load_embeddings(self.root, s.item_model, "user")
        self.bundle = load_embeddings(self.root, s.bundle_model, "bundle")

    def arm_vectors(self, table: EmbeddingTable, rows: list[int]) -> np.ndarray:
        m = table.matrix[rows].astype(np.float64) @ projection(table.matrix.shape[1], self._settings.serving.arm_dim)
        return normalize_rows(m)

    def item_arm_vector(self, item: str) -> np.ndarray:
        if self.item is not None and item in self.item.row_of:
            return self.arm_vectors(self.item, [self.item.row_of[item]])[0]
        return hashed_vector(f"item:{item}", self._settings.serving.arm_dim)

    def bundle_arm_vector(self, bundle_id: str, items: tuple[str, ...]) -> np.ndarray:
        if self.bundle is not None and bundle_id in self.bundle.row_of:
            return self.arm_vectors(self.bundle, [self.bundle.row_of[bundle_id]])[0]
        v = np.mean([self.item_arm_vector(i) for i in items], axis=0)
        return v / max(float(np.linalg.norm(v)), 1e-12)


@serve.deployment(name="Features", ray_actor_options={"num_cpus": 0})
class Features:
    def __init__(self, args: RecommenderArgs, learner: DeploymentHandle) -> None:
        self._settings = args.resolved_settings()
        self._catalogue = list(args.catalogue)
        self._learner = learner
        self._feast = FeastReader(self._settings)
        self._emb = _Embeddings(self._settings)
        self._popular: list[tuple[str, float, str | None]] = []
        self._popular_at = -math.inf

    async def popular(self, n: int = 500) -> list[tuple[str, float, str | None]]:
        """Most popular items (from the learner's fold of the event log), cached for 2 s."""
        if time.monotonic() - self._popular_at > POPULARITY_CACHE_S:
            try:
                self._popular = await self._learner.popular_items.remote(500)
                self._popular_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - learner restarting: serve the last list
                log.warning("popular items unavailable: %s", exc)
        return self._popular[:n]

    async def user(self, user_id: str | None) -> dict[str, Any]:
        """Feast user features (empty without Feast / for an unknown user)."""
        return self._feast.online(USER_REFS, "user_id", user_id) if user_id else {}

    async def sources(self) -> dict[str, Any]:
        self._emb.refresh()
        return {
            "item_model": f"{self._emb.item.model}@{self._emb.item.version}" if self._emb.item else None,
            "bundle_model": f"{self._emb.bundle.model}@{self._emb.bundle.version}" if self._emb.bundle else None,
            "feast": self._feast._get_store() is not None,
            "catalogue_bundles": len(self._catalogue),
        }

    async def bundle_candidates(self, user_id: str | None, seed_item: str | None) -> dict[str, Any]:
        """The user context vector and the candidate bundles (id, items, arm embedding, reason)."""
        s = self._settings.serving
        self._emb.refresh()
        features = await self.user(user_id)
        context = user_context(features, s.user_dim)
        candidates: dict[str, Candidate] = {}

        def add(bundle_id: str, items: tuple[str, ...], reason: str) -> None:
            if bundle_id not in candidates and len(candidates) < s.max_candidates:
                candidates[bundle_id] = Candidate(bundle_id, items, self._emb.bundle_arm_vector(bundle_id, items), reason)

        # 1. Constructed from co-occurrence with the seed (or the user's last item): Feast first.
        anchor = seed_item
        if anchor is None:
            seq = features.get("seq_item_ids") or []
            anchor = seq[-1] if seq else None
        if anchor is not None:
            co = self._feast.online(COOCCURRENCE_REFS, "item_id", anchor)
            partners = [i for i in (co.get("cross_item_ids") or co.get("co_item_ids") or []) if isinstance(i, str)]
            for j in range(max(len(partners) - s.bundle_size + 2, 0)):
                items = (anchor, *partners[j : j + s.bundle_size - 1])
                add(bundle_id_for(items, "co"), items, f"bought together with {anchor}")
        # 2. Catalogue bundles: those with the seed first, then the rest.
        catalogue = sorted(self._catalogue, key=lambda b: seed_item not in b.items) if seed_item else self._catalogue
        for b in catalogue:
            add(b.id, b.items, f"catalogue bundle with {seed_item}" if seed_item in b.items else "catalogue bundle")
        # 3. Registered bundle model (items known only when the model ships them).
        table = self._emb.bundle
        if table is not None:
            rows = list(range(table.matrix.shape[0]))
            if seed_item is not None and self._emb.item is not None and seed_item in self._emb.item.row_of:
                q = self._emb.item.matrix[self._emb.item.row_of[seed_item]]
                if q.shape[0] == table.matrix.shape[1]:
                    rows = [int(r) for r in np.argsort(-(table.matrix @ q))]
            bundle_items = table.extra.get("bundle_items")
            for r in rows[: s.max_candidates]:
                items = bundle_items[r] if bundle_items else ()
                add(table.ids[r], items or (f"bundle:{table.ids[r]}",), f"model {table.model}@{table.version}")
        # 4. Cold start: popular items across categories, around the seed when there is one.
        popular = await self.popular(200)
        if len(candidates) < s.max_candidates and popular:
            pool = [(i, c) for i, _, c in popular if i != anchor]
            head = anchor or pool[0][0]
            head_cat = next((c for i, _, c in popular if i == head), None)
            others = [i for i, c in pool if i != head and (c is None or c != head_cat)] or [i for i, _ in pool if i != head]
            for j in range(max(len(others) - s.bundle_size + 2, 0)):
                items = (head, *others[j : j + s.bundle_size - 1])
                add(bundle_id_for(items, "pop"), items, f"popular cross-category with {head}")
        ordered = list(candidates.values())
        return {
            "context": context,
            "ids": [c.id for c in ordered],
            "items": [list(c.items) for c in ordered],
            "reasons": [c.reason for c in ordered],
            "embeddings": np.array([c.embedding for c in ordered]) if ordered else np.zeros((0, s.arm_dim)),
            "feast_user": bool(features),
        }


@serve.deployment(name="ItemRanker", ray_actor_options={"num_cpus": 0})
class ItemRanker:
    def __init__(self, args: RecommenderArgs, features: DeploymentHandle) -> None:
        self._settings = args.resolved_settings()
        self._features = features
        self._emb = _Embeddings(self._settings)

    async def recommend(
        self, user_id: str | None, seed_item: str | None, k: int, diversity: float, min_cross_category: int,
        exclude: list[str],
    ) -> dict[str, Any]:
        self._emb.refresh()
        space = {"item": self._emb.item, "user": self._emb.user}
        popular = await self._features.popular.remote(500)
        categories = {i: c for i, _, c in popular}
        user = await self._features.user.remote(user_id)
        excluded = set(exclude) | ({seed_item} if seed_item else set())
        table: EmbeddingTable | None = space["item"]
        ids: list[str] = []
        scores: list[float] = []
        reasons: list[str] = []
        vectors: np.ndarray | None = None
        source = "popularity"
        if table is not None:
            query, why = None, ""
            recent = [i for i in (user.get("seq_item_ids") or []) if i in table.row_of][-10:]
            users: EmbeddingTable | None = space["user"]
            if seed_item is not None and seed_item in table.row_of:
                query, why = table.matrix[table.row_of[seed_item]], f"similar to {seed_item}"
            elif users is not None and user_id in users.row_of and users.matrix.shape[1] == table.matrix.shape[1]:
                query, why = users.matrix[users.row_of[user_id]], "for you"
            elif recent:
                query, why = table.matrix[[table.row_of[i] for i in recent]].mean(axis=0), "based on your recent items"
            if query is not None:
                index = self._emb.item_index or ExactTopK(table.matrix)
                ban = [table.row_of[i] for i in excluded if i in table.row_of]
                top = index.search(query[None, :], k=min(k * 5 + len(ban), index.n_items), exclude=[ban])
                rows = [int(r) for r in top.indices[0] if r >= 0]
                ids = [table.ids[r] for r in rows]
                scores = [float(x) for x in top.scores[0][: len(rows)]]
                reasons = [why] * len(rows)
                vectors = table.matrix[rows].astype(np.float64)
                source = f"model {table.model}@{table.version}"
        if not ids:
            affinity = dict(zip(user.get("top_category_ids") or [], user.get("top_category_scores") or []))
            for item, score, cat in popular:
                if item in excluded:
                    continue
                boost = float(affinity.get(cat, 0.0)) if cat is not None else 0.0
                ids.append(item)
                scores.append(float(score) * (1.0 + boost))
                reasons.append(f"popular in your category {cat}" if boost > 0 else (f"popular in {cat}" if cat else "popular"))
                if len(ids) >= k * 5:
                    break
            vectors = np.array([hashed_vector(f"category:{categories.get(i) or i}", 8) for i in ids]) if ids else None
        if not ids:
            return {"items": [], "source": "none", "note": "no candidates yet (no model, no events)"}
        order = mmr(np.asarray(scores), vectors, k=len(ids), diversity=diversity)
        anchor_category = categories.get(seed_item) if seed_item else None
        chosen = cross_category_quota(order, [categories.get(i) for i in ids], anchor_category, k, min_cross_category)
        return {
            "items": [
                {"item_id": ids[i], "score": scores[i], "reason": reasons[i], "category": categories.get(ids[i])}
                for i in chosen
            ],
            "source": source,
        }
