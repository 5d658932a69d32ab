"""`BundleCandidates` (feature fetch + bundle candidates) and `ItemRanker` (item recommendations),
both held in-process by each ingress replica.

Both fall back cleanly: with no registered model, embeddings are deterministic hashed vectors;
with no Feast store, user contexts are zero and co-occurrence bundles are built from the popular
items the learner counts from the event log. Item recommendations are re-ranked by the registered
sequential ranker (``settings.serving.ranker_model``, SASRec) when there is one and it knows an item
of the user's sequence; otherwise they keep the retrieval order (``source`` says which).
"""

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from serving.app.candidates import (
    BundleSpec,
    COOCCURRENCE_REFS,
    EmbeddingTable,
    FeastReader,
    bundle_id_for,
    hashed_vector,
    reload_embeddings,
)
from serving.app.ranker import LoadedRanker, RankerSlot
from serving.app.refresh import BackgroundRefresh
from serving.recommend import ExactTopK, cross_category_quota, diversified_order
from serving.recommend.bundle_features import (
    BundleSource,
    CandidateBundle,
    RequestSignals,
    arm_feature_matrix,
    user_feature_vector,
)
from streamrec.runtime.config import Settings


POPULARITY_CACHE_S = 2.0
POPULAR_BUNDLES_CACHE_SIZE = 10_000  # anchors whose popular bundles are kept between pulls
# Items the learner's popularity list is pulled with: their counts and categories are features.
POPULAR_PULL = 2_000
NEXT_ITEMS_PER_REQUEST = 8  # SASRec's predicted next items that bundles are built around
RECENT_ITEMS_PER_REQUEST = 8  # the user's latest distinct items that bundles are built around


class _Embeddings:
    """Item / bundle / user embeddings of the registered models, re-read every ``refresh_s``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        s = settings.serving
        self.root = s.registry_root or str(settings.data.state_dir / "registry")
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
        query = found[0]
        known = [i for i in items if i in table.row_of]
        if not known:
            return {}
        scores = table.matrix[[table.row_of[i] for i in known]] @ query
        return {i: float(x) for i, x in zip(known, scores)}


class _PopularItems:
    """The learner's most popular items (its fold of the event log), pulled at most every
    ``POPULARITY_CACHE_S`` per replica in the background; the last list is served meanwhile."""

    def __init__(self, learner: DeploymentHandle) -> None:
        self._learner = learner
        self._items: list[tuple[str, float, str | None]] = []
        self.category_of: dict[str, str | None] = {}  # of the pulled list, built once per pull
        self.count_of: dict[str, float] = {}  # likewise: item -> popularity
        self.version = 0  # pulls that changed the list: what caches derived from it compare against
        self._refresh = BackgroundRefresh(self._pull, POPULARITY_CACHE_S, "popular items")

    async def _pull(self) -> None:
        items = await self._learner.popular_items.remote(POPULAR_PULL)
        if items != self._items:  # unchanged (no new events): the derived caches stay valid
            self._items, self.category_of = items, {i: c for i, _, c in items}
            self.count_of = {i: score for i, score, _ in items}
            self.version += 1

    async def get(self, n: int) -> list[tuple[str, float, str | None]]:
        await self._refresh.ensure()
        return self._items[:n]


@dataclass
class ReplicaSources:
    """What both request paths of an ingress replica read, one copy each: Feast, the registered
    embeddings and sequential ranker, and the learner's popular items."""

    settings: Settings
    feast: FeastReader
    embeddings: _Embeddings
    popular: _PopularItems
    ranker: RankerSlot

    @classmethod
    def create(cls, settings: Settings, learner: DeploymentHandle) -> "ReplicaSources":
        embeddings = _Embeddings(settings)
        s = settings.serving
        return cls(settings, FeastReader(settings), embeddings, _PopularItems(learner),
                   RankerSlot(embeddings.root, s.ranker_model, s.refresh_s))


@dataclass(frozen=True)
class BundleCandidateSet:
    """A request's candidate bundles and what the bandit sees of them."""

    context: np.ndarray  # (USER_DIM,) user features
    bundles: list[CandidateBundle]
    features: np.ndarray  # (len(bundles), ARM_DIM) arm features, columns ARM_FEATURES
    feast_user: bool

    @property
    def ids(self) -> list[str]:
        return [b.bundle_id for b in self.bundles]


class BundleCandidates:
    """The candidate bundles of a request and their features, for the bandit to choose from.

    Candidates, in this order (each keeps its source and reason): the bundle model's top bundles
    for the user; bundles built around the items SASRec predicts next from the user's live Feast
    sequence; around the user's latest items; co-occurrence with the seed (or last) item;
    catalogue; popular cross-category bundles (cold start and exploration).

    In-process in each ingress replica, like :class:`ItemRanker` (no handle call per request).
    """

    def __init__(self, sources: ReplicaSources, catalogue: list[BundleSpec]) -> None:
        self._settings = sources.settings
        self._catalogue = list(catalogue)
        self._feast = sources.feast
        self._emb = sources.embeddings
        self._popular = sources.popular
        self._ranker = sources.ranker
        self._popular_bundles_cache: dict[str | None, list[tuple[str, tuple[str, ...], str]]] = {}
        self._popular_bundles_of = -1  # the popularity pull the cache was built from

    async def bundle_candidates(self, user_id: str | None, seed_item: str | None) -> BundleCandidateSet:
        self._emb.refresh()
        ranker = self._ranker.refresh()
        features = self._feast.user(user_id)
        history = [str(i) for i in (features.get("seq_item_ids") or [])]
        # The live sequence: Feast's, with the item being looked at as its newest (once).
        sequence = [*history, seed_item] if seed_item is not None and history[-1:] != [seed_item] else history
        anchor = seed_item if seed_item is not None else (history[-1] if history else None)
        found = _CandidateList(self._settings.serving.max_candidates)
        self._from_bundle_model(found, user_id, seed_item)
        predicted = ranker.ranker.next_items(sequence) if ranker is not None and sequence else None
        if predicted is not None:
            self._add_around(found, anchor, predicted.top(NEXT_ITEMS_PER_REQUEST, {anchor} if anchor else set()),
                             BundleSource.NEXT_ITEMS, f"what you may look at next ({ranker.label})")
        recent = [i for i in dict.fromkeys(reversed(history)) if i != anchor][:RECENT_ITEMS_PER_REQUEST]
        self._add_around(found, anchor, recent, BundleSource.RECENT, "with items you looked at")
        cooccurrence = self._from_cooccurrence(found, anchor)
        self._from_catalogue(found, seed_item)
        popular = await self._popular.get(POPULAR_PULL)
        for bundle_id, items, reason in self._popular_bundles(anchor, popular[:200]) if popular else ():
            found.add(items, BundleSource.POPULAR, reason, bundle_id=bundle_id)
        bundles = found.bundles
        all_items = {i for b in bundles for i in b.items}
        signals = RequestSignals(
            seed=seed_item, anchor=anchor, history=sequence, category_of=self._popular.category_of,
            popularity=self._popular.count_of, cooccurrence=cooccurrence,
            user_categories=_category_affinity(features),
            next_item_score=predicted.of(all_items) if predicted is not None else {},
            graph_affinity=self._emb.item_affinity(user_id, sequence, all_items),
            bundle_model_score=self._emb.bundle_scores(user_id, [b.bundle_id for b in bundles]),
        )
        return BundleCandidateSet(user_feature_vector(features, time.time()), bundles,
                                  arm_feature_matrix(bundles, signals), bool(features))

    def _from_bundle_model(self, found: "_CandidateList", user_id: str | None, seed_item: str | None) -> None:
        """The bundle model's top bundles for the user (or holding the seed), with their items."""
        table = self._emb.bundle
        if table is None:
            return
        bundle_items = table.extra.get("bundle_items")
        rows, why = self._emb.bundle_rows_for(user_id, seed_item, self._settings.serving.max_candidates // 4)
        for r in rows:
            items = bundle_items[r] if bundle_items else ()
            found.add(items or (f"bundle:{table.ids[r]}",), BundleSource.BUNDLE_MODEL,
                      f"{why}: model {table.model}@{table.version}", bundle_id=table.ids[r])

    def _from_cooccurrence(self, found: "_CandidateList", anchor: str | None) -> dict[str, float]:
        """Bundles of the anchor with what is bought together with it (Feast); returns the strengths."""
        if anchor is None:
            return {}
        size = self._settings.serving.bundle_size
        co = self._feast.online(COOCCURRENCE_REFS, "item_id", anchor)
        partners = [i for i in (co.get("cross_item_ids") or co.get("co_item_ids") or []) if isinstance(i, str)]
        for j in range(max(len(partners) - size + 2, 0)):
            found.add((anchor, *partners[j : j + size - 1]), BundleSource.COOCCURRENCE, f"bought together with {anchor}")
        return _strengths(co)

    def _from_catalogue(self, found: "_CandidateList", seed_item: str | None) -> None:
        """Catalogue bundles: those with the seed first, then the rest."""
        catalogue = sorted(self._catalogue, key=lambda b: seed_item not in b.items) if seed_item else self._catalogue
        for b in catalogue:
            found.add(b.items, BundleSource.CATALOGUE,
                      f"catalogue bundle with {seed_item}" if seed_item in b.items else "catalogue bundle", bundle_id=b.id)

    def _add_around(self, found: "_CandidateList", anchor: str | None, items: list[str], source: str,
                    reason: str) -> None:
        """Bundles of ``bundle_size`` from ``items`` (best first) in disjoint runs, led by the anchor,
        then without it: any few of them shown together cover many different items (a slate is
        clicked when any of its bundles is, so overlapping bundles would waste its slots)."""
        size = self._settings.serving.bundle_size
        if anchor is not None:
            step = size - 1
            for j in range(0, len(items) - step + 1, step):
                found.add((anchor, *items[j : j + step]), source, reason)
        for j in range(0, len(items) - size + 1, size):
            found.add(tuple(items[j : j + size]), source, reason)

    def _popular_bundles(
        self, anchor: str | None, popular: list[tuple[str, float, str | None]]
    ) -> list[tuple[str, tuple[str, ...], str]]:
        """Bundles of the anchor (else the top item) with popular items of other categories. The
        same for every request with that anchor until the next popularity pull, so cached per
        pull: building them was most of a bundle request without Feast co-occurrence."""
        if self._popular.version != self._popular_bundles_of:
            self._popular_bundles_cache.clear()
            self._popular_bundles_of = self._popular.version
        cached = self._popular_bundles_cache.get(anchor)
        if cached is not None:
            return cached
        size = self._settings.serving.bundle_size
        pool = [(i, c) for i, _, c in popular if i != anchor]
        out: list[tuple[str, tuple[str, ...], str]] = []
        if pool:
            head = anchor or pool[0][0]
            head_cat = next((c for i, _, c in popular if i == head), None)
            others = [i for i, c in pool if i != head and (c is None or c != head_cat)] or [i for i, _ in pool if i != head]
            for j in range(max(len(others) - size + 2, 0)):
                items = (head, *others[j : j + size - 1])
                out.append((bundle_id_for(items, "pop"), items, f"popular cross-category with {head}"))
        if len(self._popular_bundles_cache) >= POPULAR_BUNDLES_CACHE_SIZE:
            self._popular_bundles_cache.clear()
        self._popular_bundles_cache[anchor] = out
        return out


class _CandidateList:
    """A request's candidates in the order found: one per id and per item set (the first source
    that built it keeps it), at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_id: dict[str, CandidateBundle] = {}
        self._item_sets: set[frozenset[str]] = set()

    @property
    def bundles(self) -> list[CandidateBundle]:
        return list(self._by_id.values())

    def add(self, items: tuple[str, ...], source: str, reason: str, bundle_id: str | None = None) -> None:
        bundle_id = bundle_id or bundle_id_for(items, source[:2])
        key = frozenset(items)
        if bundle_id in self._by_id or key in self._item_sets or len(key) != len(items) or len(self._by_id) >= self.limit:
            return
        self._by_id[bundle_id] = CandidateBundle(bundle_id, items, source, reason)
        self._item_sets.add(key)


def _relative(ids: Any, scores: Any) -> dict[str, float]:
    """id -> its score over the best, in (0, 1], from a Feast row's parallel lists (non-string ids
    and non-finite or non-positive scores dropped)."""
    pairs = [(i, float(x)) for i, x in zip(ids or [], scores or [])
             if isinstance(i, str) and isinstance(x, (int, float)) and math.isfinite(x) and x > 0]
    top = max((x for _, x in pairs), default=0.0)
    return {i: x / top for i, x in pairs}


def _strengths(row: dict[str, Any]) -> dict[str, float]:
    """item -> co-occurrence strength with the row's item in [0, 1], the stronger of its any-category
    and cross-category scores (each over its list's best)."""
    out = _relative(row.get("co_item_ids"), row.get("co_scores"))
    for item, strength in _relative(row.get("cross_item_ids"), row.get("cross_scores")).items():
        out[item] = max(out.get(item, 0.0), strength)
    return out


def _category_affinity(features: dict[str, Any]) -> dict[str, float]:
    """category -> the user's affinity (Feast top categories) over their strongest, in [0, 1]."""
    return _relative(features.get("top_category_ids"), features.get("top_category_scores"))


@dataclass
class _Pool:
    """Scored candidate items of one request, in the order the source gave them."""

    ids: list[str]
    scores: list[float]
    reasons: list[str]
    vectors: np.ndarray | None
    source: str
    policy: str
    because: list[str | None] | None = None


_VERB = {"view": "viewed", "add_to_cart": "added to your cart", "purchase": "bought", "bundle_purchase": "bought",
         "favorite": "saved", "click": "clicked", "remove_from_cart": "removed from your cart"}
# Serve metric buckets (ms) of the ranker step: one forward pass should sit in the low buckets.
# Seconds, as Prometheus names and units want (0.5 ms .. 250 ms).
_RANKER_SECONDS_BOUNDARIES = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25]


class ItemRanker:
    """Item recommendations: retrieval (registered item embeddings, else popularity), then the
    registered sequential ranker (SASRec) over the user's live Feast sequence with the request's
    context appended, then MMR diversity and the cross-category quota.

    Not a deployment of its own: each ingress replica holds one. A Serve handle call costs about
    3 ms of CPU in the callee's replica and 2 ms in the caller's (measured with wrk on 2 cores,
    when this was a deployment: 5.2 ms/request in its replica, a third of it this code), more than
    the work itself; the ingress autoscales, so the ranker scales with it.
    """

    def __init__(self, sources: ReplicaSources) -> None:
        import torch

        # One intra-op thread: a single-sequence forward pass gains nothing from more, and the
        # replica shares its cores with the rest of the app.
        torch.set_num_threads(1)
        self._settings = sources.settings
        self._feast = sources.feast
        self._popular = sources.popular
        self._emb = sources.embeddings
        s = self._settings.serving
        self._ranker = sources.ranker
        self._ranker_seconds = metrics.Histogram(
            "streamrec_ranker_latency_seconds", description="Added latency of the sequential ranker step (seconds).",
            boundaries=_RANKER_SECONDS_BOUNDARIES,
        )

    async def recommend(
        self, user_id: str | None, seed_item: str | None, k: int, diversity: float, min_cross_category: int,
        exclude: list[str], cart: list[str] | None = None,
    ) -> dict[str, Any]:
        self._emb.refresh()
        ranker = self._ranker.refresh()
        cart = list(cart or [])
        popular, user = await self._popular.get(500), self._feast.user(user_id)
        categories = self._popular.category_of
        excluded = set(exclude) | set(cart) | ({seed_item} if seed_item else set())
        pool = self._retrieve(user_id, seed_item, user, excluded, k) or self._popular_pool(popular, user, excluded, k)
        if pool is None:
            return {"items": [], "source": "none", "policy": "none",
                    "note": "no candidates yet (no model, no events)"}
        ranker_info: dict[str, Any] = {"model": ranker.label if ranker else None, "applied": False}
        if ranker is not None:
            started = time.perf_counter()
            ranked, info = await self._rank(ranker, pool, user, seed_item, cart, excluded, k)
            elapsed_s = time.perf_counter() - started
            self._ranker_seconds.observe(elapsed_s)
            elapsed_ms = elapsed_s * 1000.0
            ranker_info.update(info, applied=ranked is not None, ms=round(elapsed_ms, 3), retrieval=pool.source)
            pool = ranked or pool
        order = diversified_order(np.asarray(pool.scores), pool.vectors, k, diversity)
        anchor_category = categories.get(seed_item) if seed_item else None
        chosen = cross_category_quota(order, [categories.get(i) for i in pool.ids], anchor_category, k, min_cross_category)
        items = []
        for i in chosen:
            item = {"item_id": pool.ids[i], "score": pool.scores[i], "reason": pool.reasons[i],
                    "category": categories.get(pool.ids[i])}
            if pool.because is not None:
                item["because"] = pool.because[i]
            items.append(item)
        return {"items": items, "source": pool.source, "policy": pool.policy, "ranker": ranker_info}

    def _retrieve(self, user_id: str | None, seed_item: str | None, user: dict[str, Any], excluded: set[str],
                  k: int) -> _Pool | None:
        """Exact top-(5k) over the registered item embeddings, queried by the seed item, the user's
        embedding or the mean of their recent items (in that order); None without a usable query."""
        table = self._emb.item
        if table is None:
            return None
        if seed_item is not None and seed_item in table.row_of:
            query, why = table.matrix[table.row_of[seed_item]], f"similar to {seed_item}"
        else:
            found = self._emb.user_query(user_id, [str(i) for i in (user.get("seq_item_ids") or [])])
            if found is None:
                return None
            query, why = found
        index = self._emb.item_index or ExactTopK(table.matrix)
        ban = [table.row_of[i] for i in excluded if i in table.row_of]
        top = index.search(query[None, :], k=min(k * 5 + len(ban), index.n_items), exclude=[ban])
        rows = [int(r) for r in top.indices[0] if r >= 0]
        if not rows:
            return None
        return _Pool(
            ids=[table.ids[r] for r in rows], scores=[float(x) for x in top.scores[0][: len(rows)]],
            reasons=[why] * len(rows), vectors=table.matrix[rows].astype(np.float64),
            source=f"model {table.model}@{table.version}", policy=f"{table.model}@{table.version}",
        )

    def _popular_pool(self, popular: list[tuple[str, float, str | None]], user: dict[str, Any], excluded: set[str],
                      k: int) -> _Pool | None:
        """Popular items, boosted by the user's category affinity (the cold-start pool)."""
        affinity = dict(zip(user.get("top_category_ids") or [], user.get("top_category_scores") or []))
        ids: list[str] = []
        scores: list[float] = []
        reasons: list[str] = []
        for item, score, cat in popular:
            if item in excluded:
                continue
            boost = float(affinity.get(cat, 0.0)) if cat is not None else 0.0
            ids.append(item)
            scores.append(float(score) * (1.0 + boost))
            reasons.append(f"popular in your category {cat}" if boost > 0 else (f"popular in {cat}" if cat else "popular"))
            if len(ids) >= k * 5:
                break
        if not ids:
            return None
        categories = self._popular.category_of
        vectors = np.array([hashed_vector(f"category:{categories.get(i) or i}", 8) for i in ids])
        return _Pool(ids, scores, reasons, vectors, source="popularity", policy="popularity")

    async def _rank(self, ranker: LoadedRanker, pool: _Pool, user: dict[str, Any], seed_item: str | None,
                    cart: list[str], excluded: set[str], k: int) -> tuple[_Pool | None, dict[str, Any]]:
        """The pool plus co-occurrence partners, ordered by the sequential model, and what it used;
        the pool is None (with a note) when it cannot rank: no known item in the sequence, or fewer
        known candidates than asked for."""
        history = [str(i) for i in (user.get("seq_item_ids") or [])]
        kinds = [str(t) for t in (user.get("seq_event_types") or [])]
        # The request's context is the newest part of the sequence: the cart, then the current item.
        sequence = [*history, *cart, *([seed_item] if seed_item else [])]
        anchor = seed_item or (cart[-1] if cart else (history[-1] if history else None))
        partners = self._feast.cooccurring(anchor) if anchor else []
        candidates = [i for i in dict.fromkeys([*pool.ids, *partners]) if i not in excluded]
        started = time.perf_counter()
        ranked = ranker.ranker.rank(sequence, candidates)
        info: dict[str, Any] = {"candidates": len(candidates), "cooccurrence_anchor": anchor,
                                "model_ms": round((time.perf_counter() - started) * 1000.0, 3)}
        if ranked is None:
            return None, {**info, "note": "no item of the sequence (or no candidate) is known to the ranker"}
        info["sequence_length"] = len(ranked.history)
        if len(ranked.items) < min(k, len(candidates)):
            return None, {**info, "note": f"the ranker knows {len(ranked.items)} of {len(candidates)} candidates, fewer than k={k}"}
        source_items = set(partners) - set(pool.ids)
        reasons, because = [], []
        for item, b in zip(ranked.items, ranked.because):
            pos = ranked.history_positions[b]
            basis = ranked.history[b]
            because.append(basis)
            if pos >= len(history):
                what = "in your cart" if pos < len(history) + len(cart) else "you are looking at"
                reason = f"goes with {basis} ({what})"
            else:
                reason = f"because you {_VERB.get(kinds[pos] if pos < len(kinds) else '', 'viewed')} {basis}"
            if item in source_items:
                reason += f"; bought together with {anchor}"
            reasons.append(reason)
        return _Pool(
            ids=ranked.items, scores=[float(s) for s in ranked.scores], reasons=reasons, vectors=ranked.vectors,
            source=f"ranker {ranker.label}", policy=ranker.label, because=because,
        ), info
