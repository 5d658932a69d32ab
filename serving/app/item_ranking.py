"""Item recommendations (:class:`ItemRanker`), held in-process by each ingress replica.

They fall back cleanly: with no registered item model, retrieval is the popular items the learner
counts from the event log (boosted by the user's Feast categories, diversified over hashed
vectors). They are re-ranked by the registered sequential ranker (``settings.serving.ranker_model``,
SASRec) when there is one and it knows an item of the user's sequence; otherwise they keep the
retrieval order (``source`` says which).
"""

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray.serve import metrics

from serving.app.embeddings import hashed_vector
from serving.app.ranker import LoadedRanker
from serving.app.replica_sources import ReplicaSources
from serving.recommend import ExactTopK, cross_category_quota, diversified_order


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
