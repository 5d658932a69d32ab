"""What the models know about a (user, candidate bundle) pair, as the bandit sees it.

Each candidate bundle of a request becomes a small dense vector of named features (``ARM_FEATURES``)
and the user one of ``USER_FEATURES``; the linear bandits (``serving.bandit.linear``) learn one weight
per name, so ``/v1/experiments/{name}`` can say which signal a variant learned to trust.

Model scores are standardised *within the request* (z-scores over the candidates that have one,
clipped to +-3; 0 for a candidate the model cannot score): the bandit compares candidates of one
request, and a retrained model version changes the scale of its scores but not their order, so a
weight learned on one version stays meaningful on the next. Everything else is in [0, 1].

Pure numpy: the ingress replica gathers the signals (Feast, the registry, the learner's popularity)
into a :class:`RequestSignals` and calls :func:`arm_feature_matrix`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

import numpy as np

__all__ = [
    "ARM_DIM", "ARM_FEATURES", "BundleSource", "CandidateBundle", "RequestSignals", "USER_DIM", "USER_FEATURES",
    "arm_feature_matrix", "standardised_columns", "standardised_scores", "user_feature_vector",
]

ARM_FEATURES: tuple[str, ...] = (
    "bundle_model_score",  # the bundle model's (CrossCBR) user . bundle score, z within the request
    "bundle_model_known",  # 1 when the bundle model scored this bundle for this user
    "next_item_max",  # SASRec next-item score after the user's live sequence, best item of the bundle (z)
    "next_item_mean",  # the same, mean over the bundle's items (z)
    "graph_affinity",  # LightGCN user . item (else recent items . item), best item of the bundle (z)
    "cooccurrence",  # mean co-occurrence strength of the bundle's other items with the anchor item
    "popularity",  # mean log popularity of its items over that of the most popular item
    "novelty",  # share of its items outside the popular list (the long tail)
    "in_history",  # share of its items in the user's live sequence
    "history_recency",  # 1 / (1 + steps since the user last touched one of its items)
    "has_seed",  # the item the user is looking at is in the bundle
    "seed_category",  # share of its items in the seed item's category
    "category_affinity",  # mean of the user's affinity for its items' categories
    "cross_category",  # distinct known categories over items
    "from_next_items",  # built around the items SASRec predicts next (source)
    "from_catalogue",  # a merchandised catalogue bundle (source)
)
USER_FEATURES: tuple[str, ...] = (
    "views_24h", "carts_24h", "purchases_24h", "clicks_24h", "impressions_24h",  # log1p(count) / 5
    "recency",  # 1 / (1 + log1p(hours since the user's last event))
    "sequence_length",  # log1p(length of the live sequence) / log1p(50)
    "known_user",  # 1 when Feast has a row for the user
)
ARM_DIM, USER_DIM = len(ARM_FEATURES), len(USER_FEATURES)
_COLUMN = {name: i for i, name in enumerate(ARM_FEATURES)}
_MODEL_SCORES = ("bundle_model_score", "next_item_max", "next_item_mean", "graph_affinity")  # z within the request
Z_CLIP = 3.0


class BundleSource:
    """Where a candidate came from (kept with it to the response and the impression)."""

    BUNDLE_MODEL = "bundle_model"
    NEXT_ITEMS = "next_items"
    RECENT = "recent"
    COOCCURRENCE = "cooccurrence"
    CATALOGUE = "catalogue"
    POPULAR = "popular"


@dataclass(frozen=True)
class CandidateBundle:
    """One candidate of a request: its id, items, the source that produced it and why."""

    bundle_id: str
    items: tuple[str, ...]
    source: str
    reason: str


@dataclass
class RequestSignals:
    """What one request knows, gathered once (every mapping may be empty: a cold start).

    Attributes:
        seed: the item the user is looking at (the request's ``item_id``).
        anchor: the item co-occurrence was read for (the seed, else the last item of the sequence).
        history: the user's live sequence, oldest first.
        category_of: item -> category where known.
        popularity: item -> the learner's popularity count (its top items).
        cooccurrence: item -> strength of co-occurrence with ``anchor`` in [0, 1].
        user_categories: category -> the user's affinity in [0, 1].
        next_item_score: item -> SASRec next-item score after ``history`` (raw).
        graph_affinity: item -> LightGCN affinity with the user (raw).
        bundle_model_score: bundle id -> the bundle model's score for the user (raw).
    """

    seed: str | None = None
    anchor: str | None = None
    history: Sequence[str] = ()
    category_of: Mapping[str, str | None] = field(default_factory=dict)
    popularity: Mapping[str, float] = field(default_factory=dict)
    cooccurrence: Mapping[str, float] = field(default_factory=dict)
    user_categories: Mapping[str, float] = field(default_factory=dict)
    next_item_score: Mapping[str, float] = field(default_factory=dict)
    graph_affinity: Mapping[str, float] = field(default_factory=dict)
    bundle_model_score: Mapping[str, float] = field(default_factory=dict)


def arm_feature_matrix(bundles: Sequence[CandidateBundle], signals: RequestSignals) -> np.ndarray:
    """``(len(bundles), ARM_DIM)`` features of the request's candidates (columns: ``ARM_FEATURES``).

    Columnar: a request's few hundred candidates are built around a few dozen distinct items, so
    each distinct item's signals are looked up once and every per-candidate sum, maximum and count
    is a numpy reduction over the candidates' item slots (a Python loop per candidate and item was
    ~0.9 ms of a bundles request's ~3.8 ms of CPU; py-spy, BENCHMARKS.md)."""
    if not bundles:
        return np.zeros((0, ARM_DIM))
    slots = _ItemSlots.of(bundles)
    items = _ItemSignals.of(slots.distinct, signals)
    n = slots.sizes.astype(np.float64)
    seg = slots.bundle_of_slot

    def per_bundle_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(seg, weights=values[slots.codes], minlength=len(bundles))

    def per_bundle_max(values: np.ndarray) -> np.ndarray:  # -inf where no slot has a value
        out = np.full(len(bundles), -np.inf)
        np.maximum.at(out, seg, values[slots.codes])
        return out

    has_next = np.isfinite(items.next_score)
    next_n = per_bundle_sum(has_next.astype(np.float64))
    next_sum = per_bundle_sum(np.where(has_next, items.next_score, 0.0))
    next_max = per_bundle_max(np.where(has_next, items.next_score, -np.inf))
    affinity = per_bundle_max(np.where(np.isfinite(items.affinity), items.affinity, -np.inf))
    co_n = per_bundle_sum((~items.is_anchor).astype(np.float64))
    co_sum = per_bundle_sum(np.where(items.is_anchor, 0.0, items.cooccurrence))
    seen = per_bundle_sum((items.last_seen >= 0).astype(np.float64))
    latest = per_bundle_max(items.last_seen.astype(np.float64))
    top_popularity = math.log1p(max(signals.popularity.values(), default=0.0))
    model_scores = np.array([signals.bundle_model_score.get(b.bundle_id, math.nan) for b in bundles], dtype=np.float64)
    seed_category = signals.category_of.get(signals.seed) if signals.seed is not None else None

    out = np.zeros((len(bundles), ARM_DIM))
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, _COLUMN["bundle_model_score"]] = model_scores
        out[:, _COLUMN["bundle_model_known"]] = np.isfinite(model_scores)
        out[:, _COLUMN["next_item_max"]] = np.where(next_n > 0, next_max, np.nan)
        out[:, _COLUMN["next_item_mean"]] = np.where(next_n > 0, next_sum / next_n, np.nan)
        out[:, _COLUMN["graph_affinity"]] = np.where(np.isfinite(affinity), affinity, np.nan)
        out[:, _COLUMN["cooccurrence"]] = np.where(co_n > 0, co_sum / co_n, 0.0)
        if top_popularity > 0:
            out[:, _COLUMN["popularity"]] = per_bundle_sum(items.log_popularity) / (n * top_popularity)
        out[:, _COLUMN["novelty"]] = per_bundle_sum((~items.popular).astype(np.float64)) / n
        out[:, _COLUMN["in_history"]] = seen / n
        out[:, _COLUMN["history_recency"]] = np.where(seen > 0, 1.0 / (len(signals.history) - latest), 0.0)
        out[:, _COLUMN["has_seed"]] = per_bundle_sum(items.is_seed.astype(np.float64)) > 0
        if seed_category is not None:
            out[:, _COLUMN["seed_category"]] = per_bundle_sum((items.category == seed_category).astype(np.float64)) / n
        out[:, _COLUMN["category_affinity"]] = per_bundle_sum(items.category_affinity) / n
        out[:, _COLUMN["cross_category"]] = _distinct_categories(slots, items) / n
    sources = np.array([b.source for b in bundles], dtype=object)
    out[:, _COLUMN["from_next_items"]] = sources == BundleSource.NEXT_ITEMS
    out[:, _COLUMN["from_catalogue"]] = sources == BundleSource.CATALOGUE
    scored = [_COLUMN[name] for name in _MODEL_SCORES]
    out[:, scored] = standardised_columns(out[:, scored])  # raw scores (NaN: none) until here
    return out


@dataclass(frozen=True)
class _ItemSlots:
    """The candidates' items as flat slots: which distinct item and which candidate each slot is."""

    distinct: list[str]  # the distinct items, in order of first appearance
    codes: np.ndarray  # (slots,) distinct-item index of each slot
    bundle_of_slot: np.ndarray  # (slots,) candidate index of each slot
    sizes: np.ndarray  # (candidates,) items per candidate

    @classmethod
    def of(cls, bundles: Sequence[CandidateBundle]) -> "_ItemSlots":
        item_lists = [b.items for b in bundles]
        distinct, codes = _first_seen_codes(list(chain.from_iterable(item_lists)))
        sizes = np.fromiter(map(len, item_lists), dtype=np.int64, count=len(item_lists))
        return cls(distinct, codes, np.repeat(np.arange(len(bundles)), sizes), sizes)


@dataclass(frozen=True)
class _ItemSignals:
    """Each distinct item's signals, looked up once (NaN / -1 / None where there is none)."""

    next_score: np.ndarray
    affinity: np.ndarray
    is_anchor: np.ndarray
    is_seed: np.ndarray
    cooccurrence: np.ndarray
    popular: np.ndarray
    log_popularity: np.ndarray
    last_seen: np.ndarray  # latest position in the history, -1 if not in it
    category: np.ndarray  # object: the category, or None
    category_affinity: np.ndarray

    @classmethod
    def of(cls, items: list[str], signals: RequestSignals) -> "_ItemSignals":
        # Dict lookups through ``map`` of the bound ``get`` (no Python frame per item): a request's
        # candidates have ~100 distinct items and ten signals each.
        def looked_up(mapping: Mapping[str, Any], keys: Sequence[Any], missing: float) -> np.ndarray:
            return np.fromiter(map(mapping.get, keys, repeat(missing, len(keys))), dtype=np.float64, count=len(keys))

        last_seen = {item: pos for pos, item in enumerate(signals.history)}  # latest position of each item
        counts = looked_up(signals.popularity, items, math.nan)
        popular = ~np.isnan(counts)
        categories = list(map(signals.category_of.get, items))
        as_objects = np.array(items, dtype=object)
        return cls(
            next_score=looked_up(signals.next_item_score, items, math.nan),
            affinity=looked_up(signals.graph_affinity, items, math.nan),
            is_anchor=as_objects == signals.anchor,  # elementwise; all False for no anchor (None)
            is_seed=as_objects == signals.seed if signals.seed is not None else np.zeros(len(items), dtype=bool),
            cooccurrence=looked_up(signals.cooccurrence, items, 0.0),
            popular=popular,
            log_popularity=np.log1p(np.where(popular, counts, 0.0)),
            last_seen=looked_up(last_seen, items, -1).astype(np.int64),
            category=np.array(categories, dtype=object),
            category_affinity=looked_up(signals.user_categories, categories, 0.0),
        )


def _first_seen_codes(values: list[Any]) -> tuple[list[Any], np.ndarray]:
    """The distinct values in order of first appearance, and each value's index among them (one
    dict built and read through ``map``: no Python frame per value)."""
    distinct = list(dict.fromkeys(values))
    code_of = dict(zip(distinct, range(len(distinct))))
    return distinct, np.fromiter(map(code_of.__getitem__, values), dtype=np.int64, count=len(values))


def _distinct_categories(slots: _ItemSlots, items: _ItemSignals) -> np.ndarray:
    """(candidates,) how many distinct known categories each candidate's items have."""
    distinct, codes = _first_seen_codes(items.category.tolist())  # None (unknown) gets a code too
    slot_categories = codes[slots.codes]
    known = slot_categories != (distinct.index(None) if None in distinct else -1)
    # A (candidates, categories) presence table: a request has a few hundred candidates over a few
    # dozen categories, and marking cells is cheaper than sorting (candidate, category) pairs.
    present = np.zeros((len(slots.sizes), len(distinct)), dtype=bool)
    present[slots.bundle_of_slot[known], slot_categories[known]] = True
    return present.sum(axis=1, dtype=np.float64)


def standardised_scores(scores: np.ndarray) -> np.ndarray:
    """z-scores over the finite entries, clipped; 0 where there is no score (or no spread). How a
    request's model scores become features (also for the replay benchmarks' pair features)."""
    return standardised_columns(scores[:, None])[:, 0]


def standardised_columns(scores: np.ndarray) -> np.ndarray:
    """``standardised_scores`` of each column of a ``(rows, columns)`` matrix, in one pass: a
    request standardises four model-score columns, and numpy's per-call overhead (``std`` alone is
    ~15 us) was most of that work when done column by column."""
    known = np.isfinite(scores)
    count = known.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, scores, 0.0).sum(axis=0) / count
        centred = np.where(known, scores - mean, 0.0)
        spread = np.sqrt((centred * centred).sum(axis=0) / count)
        z = np.clip(centred / spread, -Z_CLIP, Z_CLIP)
    usable = known & ((count >= 2) & (spread > 1e-12))
    return np.where(usable, z, 0.0)


def user_feature_vector(features: Mapping[str, object], now_unix: float) -> np.ndarray:
    """``(USER_DIM,)`` features of the user from their Feast row (all 0 for an unknown user)."""
    out = np.zeros(USER_DIM)
    if not features:
        return out
    for i, kind in enumerate(("view", "add_to_cart", "purchase", "click", "impression")):
        count = features.get(f"{kind}_count_24h")
        if isinstance(count, (int, float)) and count > 0:
            out[i] = math.log1p(float(count)) / 5.0
    last_seen = features.get("last_seen_unix")
    if isinstance(last_seen, (int, float)) and last_seen > 0:
        hours = max(now_unix - float(last_seen), 0.0) / 3600.0
        out[USER_FEATURES.index("recency")] = 1.0 / (1.0 + math.log1p(hours))
    sequence = features.get("seq_item_ids") or []
    out[USER_FEATURES.index("sequence_length")] = math.log1p(len(sequence)) / math.log1p(50)  # type: ignore[arg-type]
    out[USER_FEATURES.index("known_user")] = 1.0
    return out
