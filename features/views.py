"""Feast feature views: the schemas of the features the pipeline computes.

Column names here are the names ``pipelines.accumulators`` writes; a test checks they agree.
Definitions of every feature (windows, decay, priors) are in ``pipelines.accumulators``.
"""

from __future__ import annotations

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Bool, Float64, Int64, String

from features.entities import bundle, experiment_variant, item, user
from features.events import EVENT_TYPES
from features.sources import (
    bundle_features_push,
    experiment_variant_features_push,
    item_cooccurrence_push,
    item_features_push,
    user_features_push,
)

# Rows older than this are not served for training rows (no row is refreshed less often than daily
# while a key is active; a key idle for longer has zero windowed counts anyway).
FEATURE_TTL = timedelta(days=30)

# User: last-seen, the SASRec input sequence, windowed counts per event type, category affinity.
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=FEATURE_TTL,
    schema=[
        Field(name="last_seen_unix", dtype=Int64),
        Field(name="seq_item_ids", dtype=Array(String)),
        Field(name="seq_event_types", dtype=Array(String)),
        Field(name="seq_ts_unix", dtype=Array(Int64)),
        *[Field(name=f"{kind}_count_{w}", dtype=Int64) for kind in EVENT_TYPES for w in ("1h", "24h")],
        Field(name="top_category_ids", dtype=Array(String)),
        Field(name="top_category_scores", dtype=Array(Float64)),
    ],
    source=user_features_push,
    online=True,
    offline=True,
)

# Item: windowed views/carts/purchases, recommendation impressions/clicks with CTR, trending.
item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=FEATURE_TTL,
    schema=[
        *[Field(name=f"{n}_{w}", dtype=Int64) for n in ("views", "carts", "purchases") for w in ("1h", "24h")],
        Field(name="rec_impressions", dtype=Int64),
        Field(name="rec_clicks", dtype=Int64),
        Field(name="rec_ctr", dtype=Float64),
        Field(name="trending_score", dtype=Float64),
    ],
    source=item_features_push,
    online=True,
    offline=True,
)

# Item co-occurrence within sessions: candidates for bundles, cross-category pairs flagged.
item_cooccurrence = FeatureView(
    name="item_cooccurrence",
    entities=[item],
    ttl=FEATURE_TTL,
    schema=[
        Field(name="sessions", dtype=Int64),
        Field(name="co_item_ids", dtype=Array(String)),
        Field(name="co_counts", dtype=Array(Int64)),
        Field(name="co_scores", dtype=Array(Float64)),
        Field(name="co_cross_category", dtype=Array(Bool)),
        Field(name="cross_item_ids", dtype=Array(String)),
        Field(name="cross_scores", dtype=Array(Float64)),
    ],
    source=item_cooccurrence_push,
    online=True,
    offline=True,
)

_COUNTERS = [
    Field(name="impressions", dtype=Int64),
    Field(name="clicks", dtype=Int64),
    Field(name="purchases", dtype=Int64),
    Field(name="ctr", dtype=Float64),
]

# Bundle: all-time impressions/clicks/purchases, what the bundle bandit learns from.
bundle_features = FeatureView(
    name="bundle_features",
    entities=[bundle],
    ttl=FEATURE_TTL,
    schema=list(_COUNTERS),
    source=bundle_features_push,
    online=True,
    offline=True,
)

# Experiment variant: the same counters per (experiment, variant) arm.
experiment_variant_features = FeatureView(
    name="experiment_variant_features",
    entities=[experiment_variant],
    ttl=FEATURE_TTL,
    schema=list(_COUNTERS),
    source=experiment_variant_features_push,
    online=True,
    offline=True,
)

ALL_FEATURE_VIEWS = [user_features, item_features, item_cooccurrence, bundle_features, experiment_variant_features]
# Which push source feeds which view, and the entity join key of each view.
PUSH_SOURCE_OF_VIEW = {fv.name: fv.stream_source.name for fv in ALL_FEATURE_VIEWS if fv.stream_source is not None}
JOIN_KEY_OF_VIEW = {
    user_features.name: user.join_key,
    item_features.name: item.join_key,
    item_cooccurrence.name: item.join_key,
    bundle_features.name: bundle.join_key,
    experiment_variant_features.name: experiment_variant.join_key,
}
# The views whose entity is the user: their rows are the user's (deleted with the user).
USER_KEYED_VIEWS = [v for v in ALL_FEATURE_VIEWS if JOIN_KEY_OF_VIEW[v.name] == user.join_key]


def feature_names(view: FeatureView) -> list[str]:
    """The feature columns of a view (no join key, no timestamp), in schema order."""
    return [f.name for f in view.features]
