"""`pipeline run --follow` as a separate process: a new event is readable online through Feast
within the freshness target."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pipeline_support import ev, pipeline_settings, produce, subprocess_env, write_config

from features.repo import apply_feature_repo

pytestmark = pytest.mark.kafka


def _online_last_seen(store, user_id: str):
    return store.get_online_features(
        features=["user_features:last_seen_unix"], entity_rows=[{"user_id": user_id}]
    ).to_dict()["last_seen_unix"][0]


def test_follow_mode_serves_a_new_event_online_within_the_freshness_target(kafka_broker, tmp_path):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state", poll_interval_s=0.5)
    config = write_config(settings, tmp_path / "streamrec.yaml")
    store = apply_feature_repo(settings)
    log = open(tmp_path / "follow.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "--follow", "-v"],
        env=subprocess_env(config), cwd=Path(__file__).parents[2], stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        # Warm-up: the first event shows that the process is up and batching.
        produce(settings, [ev("view", "warm", 0, item_id="i1")])
        deadline = time.monotonic() + 120
        while _online_last_seen(store, "warm") is None:
            assert proc.poll() is None, (tmp_path / "follow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "follow mode never served the warm-up event"
            time.sleep(0.2)

        latencies = []
        for i in range(2):
            ts = datetime(2017, 11, 26, 12, i, tzinfo=timezone.utc)
            event = ev("view", f"fresh{i}", 0, item_id="i2", ts=ts.isoformat().replace("+00:00", "Z"))
            sent = time.monotonic()
            produce(settings, [event])
            while _online_last_seen(store, f"fresh{i}") != int(ts.timestamp()):
                assert time.monotonic() - sent < 2 * settings.feast.freshness_target_s, "event not served online"
                time.sleep(0.1)
            latencies.append(time.monotonic() - sent)
        print(f"\nfollow mode: produce -> online read latency {[round(x, 2) for x in latencies]} s")
        assert max(latencies) < settings.feast.freshness_target_s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "follow.log").read_text()
    assert proc.returncode == 0, output[-3000:]
    assert "pipeline: " in output and "events in 3" in output, output[-2000:]
