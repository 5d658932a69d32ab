"""Kafka -> Beam -> Feast / Parquet lake: the streaming feature pipeline.

Public surface: the composites (``transforms``), the Kafka source (``kafka_source``), the
micro-batch driver (``FeaturePipeline``), its metrics (``metrics``: Beam counters, Prometheus),
backfill and training-set builders, and ``cli.register``.
Feature definitions (windows, decay, priors, lateness) are documented in ``accumulators``.
"""

# Imported lazily (PEP 562): importing `pipelines.cli` for `streamrec --help` must not pay
# for Apache Beam's import (seconds); the names resolve on first use.
_EXPORTS = {
    "beginning_offsets": "pipelines.kafka_source",
    "run_streaming": "pipelines.streaming",
    "build_streaming_pipeline": "pipelines.streaming",
    "TrackEventTimeHead": "pipelines.streaming",
    "ComputeFeaturesStreaming": "pipelines.streaming",
    "BatchSummary": "pipelines.runner",
    "ComputeBundleFeatures": "pipelines.transforms",
    "ComputeExperimentFeatures": "pipelines.transforms",
    "ComputeItemCooccurrence": "pipelines.transforms",
    "ComputeItemFeatures": "pipelines.transforms",
    "ComputeUserFeatures": "pipelines.transforms",
    "DeduplicateEvents": "pipelines.transforms",
    "DropLateEvents": "pipelines.transforms",
    "DropProcessedRecords": "pipelines.transforms",
    "EventTimeWatermark": "pipelines.transforms",
    "FeaturePipeline": "pipelines.runner",
    "FeatureSpec": "pipelines.accumulators",
    "KafkaOffsetRange": "pipelines.kafka_source",
    "LatenessPolicy": "pipelines.accumulators",
    "PipelineMetrics": "pipelines.metrics",
    "ParseEvents": "pipelines.transforms",
    "ParseRecordBatches": "pipelines.transforms",
    "ReadKafkaOffsetRanges": "pipelines.kafka_source",
    "ReadKafkaUnbounded": "pipelines.kafka_source",
    "commit_offsets": "pipelines.kafka_source",
    "committed_offsets": "pipelines.kafka_source",
    "compute_batch": "pipelines.runner",
    "plan_offset_ranges": "pipelines.kafka_source",
}


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "beginning_offsets",
    "run_streaming",
    "build_streaming_pipeline",
    "TrackEventTimeHead",
    "ComputeFeaturesStreaming",
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
    "PipelineMetrics",
    "ParseEvents",
    "ParseRecordBatches",
    "ReadKafkaOffsetRanges",
    "ReadKafkaUnbounded",
    "commit_offsets",
    "committed_offsets",
    "compute_batch",
    "plan_offset_ranges",
]
