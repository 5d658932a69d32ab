"""Kafka -> Beam -> Feast / Parquet lake: the streaming feature pipeline.

Public surface: the composites (``transforms``), the Kafka source (``kafka_source``), the
micro-batch driver (``FeaturePipeline``), backfill and training-set builders, and ``cli.register``.
Feature definitions (windows, decay, priors, lateness) are documented in ``accumulators``.
"""

from pipelines.accumulators import FeatureSpec, LatenessPolicy
from pipelines.kafka_source import (
    KafkaOffsetRange,
    ReadKafkaOffsetRanges,
    ReadKafkaUnbounded,
    commit_offsets,
    committed_offsets,
    plan_offset_ranges,
)
from pipelines.runner import BatchSummary, FeaturePipeline, compute_batch
from pipelines.transforms import (
    ComputeBundleFeatures,
    ComputeExperimentFeatures,
    ComputeItemCooccurrence,
    ComputeItemFeatures,
    ComputeUserFeatures,
    DeduplicateEvents,
    DropLateEvents,
    DropProcessedRecords,
    EventTimeWatermark,
    ParseEvents,
)

__all__ = [
    "BatchSummary",
    "ComputeBundleFeatures",
    "ComputeExperimentFeatures",
    "ComputeItemCooccurrence",
    "ComputeItemFeatures",
    "ComputeUserFeatures",
    "DeduplicateEvents",
    "DropLateEvents",
    "DropProcessedRecords",
    "EventTimeWatermark",
    "FeaturePipeline",
    "FeatureSpec",
    "KafkaOffsetRange",
    "LatenessPolicy",
    "ParseEvents",
    "ReadKafkaOffsetRanges",
    "ReadKafkaUnbounded",
    "commit_offsets",
    "committed_offsets",
    "compute_batch",
    "plan_offset_ranges",
]
