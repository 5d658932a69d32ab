"""The whole pipeline against a real broker: features equal a pandas oracle on the real Taobao
slice, and are identical for one batch and for many micro-batches."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipelines.accumulators import FeatureSpec
from pipelines.runner import FeaturePipeline
from pipeline_support import assert_frames_match, dedupe, offline_latest, pipeline_settings, produce, taobao_subset
from oracle import compute_features

pytestmark = pytest.mark.kafka

VIEWS = ["user_features", "item_features", "item_cooccurrence", "bundle_features", "experiment_variant_features"]


def _run(settings, chunks):
    pipeline = FeaturePipeline(settings, push_online=False)
    summaries = []
    try:
        for chunk in chunks:
            produce(settings, chunk)
            summaries.append(pipeline.run_once())
    finally:
        pipeline.close()
    return summaries


def _one_vs_ten(kafka_broker, tmp_path, users):
    events = taobao_subset(kafka_broker.settings, users=users)
    spec_settings = pipeline_settings(kafka_broker.settings, tmp_path / "one")
    spec = FeatureSpec.from_config(spec_settings.pipeline)
    expected = compute_features(dedupe(events), spec)

    started = time.monotonic()
    one = _run(spec_settings, [events])
    one_s = time.monotonic() - started
    assert one[0].records == len(events) and one[0].lag == 0

    many_settings = pipeline_settings(kafka_broker.settings, tmp_path / "many")
    chunks = [list(c) for c in np.array_split(np.array(events, dtype=object), 10)]
    started = time.monotonic()
    many = _run(many_settings, chunks)
    many_s = time.monotonic() - started
    assert len(many) == 10 and sum(s.records for s in many) == len(events)
    print(f"\n{len(events)} Taobao events: 1 batch {one_s:.1f}s, 10 micro-batches {many_s:.1f}s")

    for view in VIEWS:
        if expected[view].empty:
            continue
        got_one = offline_latest(spec_settings, view)
        got_many = offline_latest(many_settings, view)
        assert_frames_match(got_one, expected[view], f"{view} (1 batch)")
        assert_frames_match(got_many, expected[view], f"{view} (10 batches)")


@pytest.mark.parametrize("read_ahead", [False, True], ids=["read-in-driver", "read-ahead"])
def test_taobao_features_equal_oracle_one_batch_and_ten(kafka_broker, tmp_path, monkeypatch, read_ahead):
    """20 users of the real slice (about 2,200 events), so the default suite stays fast. With
    ``read_ahead`` every batch whose state is passed whole (the first ones) is read in the reader
    process while its Beam run goes (as large batches are), the others in the driver."""
    from pipelines import runner

    monkeypatch.setattr(runner, "READ_AHEAD_MIN_RECORDS", 1 if read_ahead else 10**12)
    _one_vs_ten(kafka_broker, tmp_path, users=20)


@pytest.mark.slow
def test_full_taobao_slice_features_equal_oracle_one_batch_and_ten(kafka_broker, tmp_path):
    """All 84,287 events of the slice."""
    _one_vs_ten(kafka_broker, tmp_path, users=None)
