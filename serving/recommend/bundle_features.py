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

import numpy as np

__all__ = [
    "ARM_DIM", "ARM_FEATURES", "BundleSource", "CandidateBundle", "RequestSignals", "USER_DIM", "USER_FEATURES",
    "arm_feature_matrix", "user_feature_vector",
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
    """``(len(bundles), ARM_DIM)`` features of the request's candidates (columns: ``ARM_FEATURES``)."""
    if not bundles:
        return np.zeros((0, ARM_DIM))
    last_seen = {item: pos for pos, item in enumerate(signals.history)}  # latest position of each item
    top_popularity = math.log1p(max(signals.popularity.values(), default=0.0))
    seed_category = signals.category_of.get(signals.seed) if signals.seed is not None else None
    rows = [_arm_row(bundle, signals, last_seen, top_popularity, seed_category) for bundle in bundles]
    out = np.array(rows, dtype=np.float64)
    for name in ("bundle_model_score", "next_item_max", "next_item_mean", "graph_affinity"):
        out[:, _COLUMN[name]] = _standardised(out[:, _COLUMN[name]])  # raw scores (NaN: none) until here
    return out


def _arm_row(bundle: CandidateBundle, signals: RequestSignals, last_seen: Mapping[str, int], top_popularity: float,
             seed_category: str | None) -> list[float]:
    """One candidate's features, model scores still raw (NaN where there is none). One pass over its
    items, plain Python floats: this runs for a few hundred candidates per request."""
    nan = math.nan
    n = len(bundle.items)
    next_max, next_sum, next_n, affinity = -math.inf, 0.0, 0, -math.inf
    co_sum, co_n, log_popularity, unpopular, seen, latest = 0.0, 0, 0.0, 0, 0, -1
    same_category, category_affinity, categories = 0, 0.0, set()
    for item in bundle.items:
        score = signals.next_item_score.get(item)
        if score is not None:
            next_max, next_sum, next_n = max(next_max, score), next_sum + score, next_n + 1
        aff = signals.graph_affinity.get(item)
        if aff is not None:
            affinity = max(affinity, aff)
        if item != signals.anchor:
            co_sum, co_n = co_sum + signals.cooccurrence.get(item, 0.0), co_n + 1
        count = signals.popularity.get(item)
        if count is None:
            unpopular += 1
        else:
            log_popularity += math.log1p(count)
        pos = last_seen.get(item)
        if pos is not None:
            seen, latest = seen + 1, max(latest, pos)
        category = signals.category_of.get(item)
        if category is not None:
            categories.add(category)
            same_category += category == seed_category
            category_affinity += signals.user_categories.get(category, 0.0)
    model_score = signals.bundle_model_score.get(bundle.bundle_id)
    row = [
        nan if model_score is None else model_score,
        0.0 if model_score is None else 1.0,
        next_max if next_n else nan,
        next_sum / next_n if next_n else nan,
        affinity if affinity > -math.inf else nan,
        co_sum / co_n if co_n else 0.0,
        log_popularity / (n * top_popularity) if top_popularity > 0 else 0.0,
        unpopular / n,
        seen / n,
        1.0 / (len(signals.history) - latest) if seen else 0.0,
        float(signals.seed is not None and signals.seed in bundle.items),
        same_category / n if seed_category is not None else 0.0,
        category_affinity / n,
        len(categories) / n,
        float(bundle.source == BundleSource.NEXT_ITEMS),
        float(bundle.source == BundleSource.CATALOGUE),
    ]
    return row


def _standardised(scores: np.ndarray) -> np.ndarray:
    """z-scores over the finite entries, clipped; 0 where there is no score (or no spread)."""
    out = np.zeros_like(scores)
    known = np.isfinite(scores)
    if known.sum() < 2:
        return out
    values = scores[known]
    spread = float(values.std())
    if spread > 1e-12:
        out[known] = np.clip((values - values.mean()) / spread, -Z_CLIP, Z_CLIP)
    return out


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
