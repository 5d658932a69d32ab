"""SIGKILL the pipeline process in the middle of a batch, restart it: no event lost, none counted
twice (features equal the oracle; the lake holds each record once; offsets reach the end)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from oracle import compute_features
from pipeline_support import (
    assert_frames_match,
    dedupe,
    offline_latest,
    pipeline_settings,
    produce,
    subprocess_env,
    taobao_subset,
    write_config,
)

from pipelines.accumulators import FeatureSpec
from pipelines.kafka_source import committed_offsets
from pipelines.lake import read_event_lake
from pipelines.runner import FeaturePipeline
from streamrec.runtime.kafka import topic_end_offsets

pytestmark = pytest.mark.kafka
HELPER = Path(__file__).with_name("pause_pipeline.py")


def _kill_at(step: str, config: Path, marker: Path, kill_after_s: float = 0.0, *options: str) -> None:
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(HELPER), step, str(marker), *options], env=subprocess_env(config),
                            cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, f"pipeline exited ({proc.returncode}) before reaching {step}"
            assert time.monotonic() < deadline, f"pipeline did not reach {step}"
            time.sleep(0.1)
        time.sleep(kill_after_s)
        assert proc.poll() is None, f"pipeline finished before it could be killed at {step}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _assert_each_event_once(settings, events) -> None:
    """The lake holds every record once, and the features equal the oracle's."""
    lake = read_event_lake(Path(settings.data.state_dir) / "lake" / "events", dedupe=False)
    assert len(lake) == len(events) and lake["event_id"].is_unique
    expected = compute_features(dedupe(events), FeatureSpec.from_config(settings.pipeline))
    for view, frame in expected.items():
        if len(frame):
            assert_frames_match(offline_latest(settings, view), frame, view)


def test_sigkill_mid_batch_then_restart_loses_and_double_counts_nothing(kafka_broker, tmp_path):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    config = write_config(settings, tmp_path / "streamrec.yaml")
    marker = tmp_path / "reached"
    events = taobao_subset(kafka_broker.settings, users=8)
    chunks = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3], events[2 * len(events) // 3 :]]

    # Killed: before the offline/online writes; after the state was saved but before the commit;
    # while Beam computes. Each time a restarted pipeline finishes the batch.
    for chunk, (step, after_s) in zip(chunks, [("features", 0.0), ("commit", 0.0), ("beam!", 0.5)]):
        produce(settings, chunk)
        _kill_at(step, config, marker, after_s)
        recovered = FeaturePipeline(settings)
        try:
            summary = recovered.run_once()
        finally:
            recovered.close()
        assert summary.lag == 0
        if step == "commit":  # everything of the batch was already in the saved state
            assert summary.reprocessed == len(chunk) and summary.duplicates == 0 and not summary.dead_letters

    ends = topic_end_offsets(settings.kafka, settings.kafka.topics.events)
    assert committed_offsets(settings.kafka, settings.kafka.topics.events, settings.pipeline.group_id) == ends
    _assert_each_event_once(settings, events)


def _gone(pid: int, timeout_s: float) -> bool:
    """Whether process ``pid`` exits (or is a zombie: nobody here reaps an orphan) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_sigkill_while_the_reader_process_feeds_the_batch(kafka_broker, tmp_path, monkeypatch):
    """Killed while the Kafka reader process feeds a batch's Beam run: the reader goes with the
    pipeline, and the restarted pipeline (reading ahead too) finishes the batch exactly."""
    from pipelines import runner

    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    config = write_config(settings, tmp_path / "streamrec.yaml")
    marker = tmp_path / "reached"
    # Enough records that the Beam run is still going 0.1 s after it starts (8 users' ~950 events
    # were computed, sunk and committed within the 0.5 s this test waited before: nothing to recover).
    events = taobao_subset(kafka_broker.settings, users=24)
    produce(settings, events)
    _kill_at("compute!", config, marker, 0.1, "--read-ahead")
    assert _gone(int(marker.with_suffix(".reader").read_text()), 15), "the reader process outlived the pipeline"

    monkeypatch.setattr(runner, "READ_AHEAD_MIN_RECORDS", 1)
    recovered = FeaturePipeline(settings)
    try:
        summary = recovered.run_once()
    finally:
        recovered.close()
    assert summary.records == len(events) and summary.lag == 0
    _assert_each_event_once(settings, events)
