"""The loop's retrain trigger: due after ``retrain.min_new_events`` events reached the lake since
the last retrain (the feature pipeline's committed offsets on a real broker), or when the models
are old and anything is new; a due retrain submits one Ray job per model and records its position.
Every check, due or not, drops the users of new tombstones from the registry first."""

from __future__ import annotations

import math
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

import numpy as np

from features.privacy import Tombstone, publish_tombstone
from features.registry import ModelRegistry
from ray_jobs import retrain
from streamrec.runtime.config import RetrainConfig
from streamrec.runtime.kafka import ensure_topics
from support import make_settings

CONFIG = RetrainConfig(min_new_events=5, max_age_s=3600.0)


def test_due_on_enough_new_events_or_old_models_with_something_new() -> None:
    assert not retrain.retrain_due(4, 10.0, CONFIG).due
    assert retrain.retrain_due(5, 10.0, CONFIG).due
    assert retrain.retrain_due(1, 3600.0, CONFIG).due  # old models and something new
    assert not retrain.retrain_due(0, math.inf, CONFIG).due  # nothing new: same data, same models
    assert retrain.retrain_due(0, 0.0, CONFIG, force=True).due


def _commit(settings, offset: int) -> None:
    """The pipeline's group commits ``offset`` on partition 0 (as it does once events are in the lake)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.pipeline.group_id,
                             enable_auto_commit=False)
    consumer.commit({TopicPartition(settings.kafka.topics.events, 0): OffsetAndMetadata(offset, None, -1)})
    consumer.close()


def test_a_due_retrain_submits_one_job_per_model_and_records_the_lake_position(kafka_broker, tmp_path, monkeypatch) -> None:
    settings = make_settings(tmp_path, kafka_broker.settings.broker.port,
                             pipeline={"group_id": f"retrain-test-{uuid.uuid4().hex[:8]}"},
                             retrain={"min_new_events": 5})
    submitted: list[list[str]] = []

    def submit(settings_, jobs, epochs):
        submitted.append([j.model for j in jobs])
        return [{"model": j.model, "job_id": f"raysubmit_{j.model}"} for j in jobs]

    # The Ray job submission itself is covered by tests/ray_jobs/test_job_submission.py.
    monkeypatch.setattr(retrain, "submit_jobs", submit)
    monkeypatch.setattr(retrain, "wait_for_jobs", lambda s, jobs, timeout_s: [{**j, "status": "SUCCEEDED"} for j in jobs])
    assert not retrain.run_retrain(settings).due and not submitted  # an empty lake: nothing to train on
    _commit(settings, 5)
    start = retrain.lake_position(settings)
    assert start == 5
    assert retrain.run_retrain(settings).due  # never retrained: whatever is in the lake is new
    assert submitted == [["lightgcn"], ["sasrec"]]  # one job per model, one after the other
    assert retrain.last_record(settings).position == start
    _commit(settings, 8)
    decision = retrain.run_retrain(settings)
    assert not decision.due and decision.new_events == 3 and len(submitted) == 2
    _commit(settings, 10)
    decision = retrain.run_retrain(settings)
    assert decision.due and decision.new_events == 5 and len(submitted) == 4
    record = retrain.last_record(settings)
    assert record.position == start + 5 and [j["status"] for j in record.jobs] == ["SUCCEEDED", "SUCCEEDED"]
    assert record.finished_at is not None and record.finished_at >= record.submitted_at


@pytest.mark.parametrize("epochs", [None, 2])
def test_the_job_is_streamrec_train_of_each_configured_model(epochs) -> None:
    job = CONFIG.jobs[1]
    entry = retrain._entrypoint(job, epochs)
    assert f"-m streamrec.cli train sasrec --config {job.config} --serve-as ranker" in entry
    assert ("--epochs 2" in entry) == (epochs == 2)


def test_each_job_carries_the_submitting_checkout_s_code_version(tmp_path, monkeypatch) -> None:
    """The job's working dir is uploaded without .git: the submitter reads the version and passes it
    on, so that a retrained model's manifest names the code it was trained with."""
    from ray_jobs.registry import code_version

    calls: list[dict] = []

    class Client:
        def submit_job(self, **kwargs):
            calls.append(kwargs)
            return f"raysubmit_{len(calls)}"

    monkeypatch.setattr(retrain, "_job_client", lambda settings: Client())
    monkeypatch.delenv("STREAMREC_CODE_VERSION", raising=False)
    submitted = retrain.submit_jobs(make_settings(tmp_path, 1), list(CONFIG.jobs), None)
    expected = code_version()
    assert expected != "unknown"  # the tests run in a git checkout
    assert [c["runtime_env"]["env_vars"]["STREAMREC_CODE_VERSION"] for c in calls] == [expected] * len(CONFIG.jobs)
    assert [s["job_id"] for s in submitted] == [f"raysubmit_{i + 1}" for i in range(len(CONFIG.jobs))]


@pytest.mark.kafka
def test_every_check_drops_deleted_users_from_the_registry_due_or_not(kafka_broker, tmp_path) -> None:
    """A deletion made through serving's API (only a tombstone) reaches the registry at the next check."""
    tag = uuid.uuid4().hex[:8]
    settings = make_settings(tmp_path, kafka_broker.settings.broker.port, pipeline={"group_id": f"retrain-test-{tag}"},
                             kafka={"topics": {"tombstones": f"privacy.tombstones-{tag}"}})
    ensure_topics(settings.kafka)
    registry = ModelRegistry(settings.data.state_dir / "registry")
    registry.register("lightgcn", embeddings={"user": np.ones((2, 2), np.float32)}, metrics={}, config={},
                      data_snapshot_id="sha256:x", extra={"ids": {"user": ["u1", "u2"]}})
    publish_tombstone(settings, Tombstone.for_user("u2", source="admin_api"))
    logged: list[str] = []

    decision = retrain.run_retrain(settings, log=logged.append)

    assert not decision.due  # an empty lake: no retrain, and the deletion is applied all the same
    latest = registry.load_latest("lightgcn")
    assert latest.manifest["ids"]["user"] == ["u1"]
    assert logged == [f"1 deleted users dropped from the registry: lightgcn -> {latest.version}"]
    assert not retrain.run_retrain(settings, log=logged.append).due and len(logged) == 1  # applied once
