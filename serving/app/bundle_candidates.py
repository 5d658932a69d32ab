"""The candidate bundles of a bundles request and their arm features (:class:`BundleCandidates`),
for the bandit to choose from; held in-process by each ingress replica.

It falls back cleanly: with no registered bundle model, no SASRec and no Feast store, bundles are
built from the catalogue and around the popular items the learner counts from the event log.
"""

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from features import entities
from serving.app.catalogue import BundleSpec
from serving.app.feature_reads import COOCCURRENCE_REFS, POPULAR_PULL
from serving.app.replica_sources import ReplicaSources
from serving.recommend.bundle_features import (
    BundleSource,
    CandidateBundle,
    RequestSignals,
    arm_feature_matrix,
    user_feature_vector,
)


POPULAR_BUNDLES_CACHE_SIZE = 10_000  # anchors whose popular bundles are kept between pulls
NEXT_ITEMS_PER_REQUEST = 8  # SASRec's predicted next items that bundles are built around
RECENT_ITEMS_PER_REQUEST = 8  # the user's latest distinct items that bundles are built around

# The contract's bundle id (features.entities), cached: a request builds hundreds of bundles.
bundle_id_for = functools.lru_cache(maxsize=1 << 16)(entities.bundle_id_for)


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
        self._popular_bundles_cache: dict[str | None, list[tuple[CandidateBundle, frozenset[str]]]] = {}
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
        for bundle, key in self._popular_bundles(anchor, popular[:200]) if popular and not found.full else ():
            found.add_built(bundle, key)
            if found.full:
                break
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
    ) -> list[tuple[CandidateBundle, frozenset[str]]]:
        """Bundles of the anchor (else the top item) with popular items of other categories, each
        with its item set. The same for every request with that anchor until the next popularity
        pull, so cached per pull, built: building them was most of a bundle request without Feast
        co-occurrence, and then their records and item sets ~4% of one with it (py-spy)."""
        if self._popular.version != self._popular_bundles_of:
            self._popular_bundles_cache.clear()
            self._popular_bundles_of = self._popular.version
        cached = self._popular_bundles_cache.get(anchor)
        if cached is not None:
            return cached
        size = self._settings.serving.bundle_size
        pool = [(i, c) for i, _, c in popular if i != anchor]
        out: list[tuple[CandidateBundle, frozenset[str]]] = []
        if pool:
            head = anchor or pool[0][0]
            head_cat = next((c for i, _, c in popular if i == head), None)
            others = [i for i, c in pool if i != head and (c is None or c != head_cat)] or [i for i, _ in pool if i != head]
            for j in range(max(len(others) - size + 2, 0)):
                items = (head, *others[j : j + size - 1])
                bundle = CandidateBundle(bundle_id_for(items, "pop"), items, BundleSource.POPULAR,
                                         f"popular cross-category with {head}")
                out.append((bundle, frozenset(items)))
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

    @property
    def full(self) -> bool:
        return len(self._by_id) >= self.limit

    def add(self, items: tuple[str, ...], source: str, reason: str, bundle_id: str | None = None) -> None:
        if self.full:  # first: the popular pool offers ~200 more than a full list takes
            return
        bundle_id = bundle_id or bundle_id_for(items, source[:2])
        key = frozenset(items)
        if self._is_new(bundle_id, key, len(items)):  # checked before the record is built
            self._keep(CandidateBundle(bundle_id, items, source, reason), key)

    def add_built(self, bundle: CandidateBundle, key: frozenset[str]) -> None:
        """``add`` of a candidate built before (``key``: its item set), as the popular pool's are."""
        if not self.full and self._is_new(bundle.bundle_id, key, len(bundle.items)):
            self._keep(bundle, key)

    def _is_new(self, bundle_id: str, key: frozenset[str], size: int) -> bool:
        """Neither its id nor its item set is in the list yet, and its items are distinct."""
        return bundle_id not in self._by_id and key not in self._item_sets and len(key) == size

    def _keep(self, bundle: CandidateBundle, key: frozenset[str]) -> None:
        self._by_id[bundle.bundle_id] = bundle
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
