"""What `feast apply` registers: the objects defined in features/ (never retyped here)."""

from features.entities import bundle, experiment_variant, item, user  # noqa: F401
from features.services import bundle_bandit_v1, ranking_v1, retrieval_v1  # noqa: F401
from features.views import (  # noqa: F401
    bundle_features,
    experiment_variant_features,
    item_cooccurrence,
    item_features,
    user_features,
)
