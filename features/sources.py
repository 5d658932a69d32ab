"""Feast data sources: one PushSource per feature family, each backed by a Parquet batch source.

The feature pipeline writes fresh rows to the online store of the view each PushSource feeds (the
provider's ``online_write_batch``, where ``store.push`` ends too) and the same rows as Parquet
files into the batch source's folder (the offline store, used for point-in-time training sets).
Paths are relative to the Feast repo directory (``FeastConfig.repo_dir``, by default
``.streamrec/feast``).
"""

from __future__ import annotations

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

TIMESTAMP_FIELD = "event_timestamp"
OFFLINE_DIR = "offline"


def _batch(name: str) -> FileSource:
    return FileSource(
        name=f"{name}_batch",
        path=f"{OFFLINE_DIR}/{name}",
        file_format=ParquetFormat(),
        timestamp_field=TIMESTAMP_FIELD,
    )


# Fresh per-user activity, sequence and affinity rows from the pipeline.
user_features_push = PushSource(name="user_features_push", batch_source=_batch("user_features"))

# Fresh per-item popularity and recommendation CTR rows.
item_features_push = PushSource(name="item_features_push", batch_source=_batch("item_features"))

# Per-item top co-occurring items (bundle construction input).
item_cooccurrence_push = PushSource(name="item_cooccurrence_push", batch_source=_batch("item_cooccurrence"))

# Per-bundle impression/click/purchase counters (bandit input).
bundle_features_push = PushSource(name="bundle_features_push", batch_source=_batch("bundle_features"))

# Per experiment-variant counters (A/B monitoring).
experiment_variant_features_push = PushSource(
    name="experiment_variant_features_push", batch_source=_batch("experiment_variant_features")
)

ALL_PUSH_SOURCES = [
    user_features_push,
    item_features_push,
    item_cooccurrence_push,
    bundle_features_push,
    experiment_variant_features_push,
]
