"""Feast feature services: one per consumer and model version (``_vN``); serving asks for these."""

from __future__ import annotations

from feast import FeatureService

from features.views import bundle_features, experiment_variant_features, item_cooccurrence, item_features, user_features

# Candidate retrieval (SASRec / LightGCN towers): the user's sequence and last-seen time.
retrieval_v1 = FeatureService(
    name="retrieval_v1",
    features=[user_features[["seq_item_ids", "seq_event_types", "seq_ts_unix", "last_seen_unix"]]],
)

# Ranking: user activity and affinities with item popularity and CTR.
ranking_v1 = FeatureService(name="ranking_v1", features=[user_features, item_features])

# Bundle bandit: bundle counters, co-occurrence of the anchor item, and experiment arms.
bundle_bandit_v1 = FeatureService(
    name="bundle_bandit_v1",
    features=[bundle_features, item_cooccurrence, experiment_variant_features],
)

ALL_FEATURE_SERVICES = [retrieval_v1, ranking_v1, bundle_bandit_v1]
