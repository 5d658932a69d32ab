"""The command-line functions (``pipelines.cli``), run in-process on a private topic."""

from __future__ import annotations

import pandas as pd
import pytest
from oracle import compute_features
from pipeline_support import assert_frames_match, mixed_events, offline_latest, pipeline_settings, produce, write_config

from pipelines.accumulators import FeatureSpec
from pipelines.cli import main
from streamrec.runtime.config import reload_settings

pytestmark = pytest.mark.kafka


def test_features_apply_run_backfill_and_training_set(kafka_broker, tmp_path, monkeypatch, capsys):
    settings = pipeline_settings(kafka_broker.settings, tmp_path / "state")
    monkeypatch.setenv("STREAMREC_CONFIG", str(write_config(settings, tmp_path / "streamrec.yaml")))
    reload_settings()
    try:
        assert main(["features", "apply"]) == 0
        assert "retrieval_v1" in capsys.readouterr().out

        events = mixed_events()
        produce(settings, events)
        assert main(["pipeline", "run", "--once"]) == 0
        out = capsys.readouterr().out
        assert f"events in {len(events)}" in out and "DLQ 0" in out and "lag 0" in out
        assert main(["pipeline", "run", "--follow", "--until-idle"]) == 0
        assert "pipeline: 0 batches" in capsys.readouterr().out

        # Backfill rebuilds the offline history from the lake: same final features as the live run.
        assert main(["pipeline", "backfill", "--from", "2017-11-25", "--step-hours", "12"]) == 0
        out = capsys.readouterr().out
        assert f"events {len(events)}" in out
        files = sorted((tmp_path / "state" / "feast" / "offline" / "user_features").glob("asof-*-backfill-*.parquet"))
        assert len(files) >= 2
        expected = compute_features(events, FeatureSpec.from_config(settings.pipeline))
        for view, frame in expected.items():
            assert_frames_match(offline_latest(settings, view), frame, f"{view} after backfill")

        target = tmp_path / "train.parquet"
        assert main(["pipeline", "training-set", "--entities", "lake", "--service", "ranking_v1", "--out", str(target)]) == 0
        frame = pd.read_parquet(target)
        assert len(frame) > 0 and {"user_id", "item_id", "user_features__seq_item_ids", "item_features__views_24h"} <= set(frame.columns)
    finally:
        monkeypatch.delenv("STREAMREC_CONFIG")
        reload_settings()
